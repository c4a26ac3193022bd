"""The README's first command works with the shipped default model."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from mixcodec.eval import psnr_rgb
from mixcodec.models.registry import DEFAULT_MODEL, installed_models

README = Path(__file__).resolve().parents[1] / "README.md"


def first_command() -> list[list[str]]:
    """The commands of the README's first bash block, without the install step."""
    block = re.search(r"```bash\n(.*?)\n```", README.read_text(), re.S).group(1)
    steps = [shlex.split(part) for part in block.split("&&")]
    assert steps[0][:2] == ["pip", "install"]
    return steps[1:]


def test_a_trained_default_model_is_shipped():
    shipped = [i for i in installed_models() if i.name == DEFAULT_MODEL]
    assert shipped, "no default model in mixcodec/weights"
    for info in shipped:
        assert info.kodak.get("psnr", 0) > 20 and info.kodak.get("bpp", 0) > 0, "shipped weights need measured Kodak RD"


def test_readme_first_command_round_trips_the_sample(tmp_path):
    for step in first_command():
        assert step[0] == "mixcodec"
        proc = subprocess.run(
            [sys.executable, "-m", "mixcodec.cli", *step[1:]], cwd=tmp_path, capture_output=True, text=True, timeout=300
        )
        assert proc.returncode == 0, proc.stderr
    original = np.asarray(Image.open(tmp_path / "hopper.png"))
    decoded = np.asarray(Image.open(tmp_path / "hopper-decoded.png"))
    assert decoded.shape == original.shape
    assert psnr_rgb(original, decoded) > 22
    assert (tmp_path / "hopper.mxc").stat().st_size < original.size / 8  # under 1 bit per pixel
