"""Refitting the entropy model changes file sizes, never the decoded image."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import torch
from PIL import Image

import mixcodec
from conftest import smooth_image
from mixcodec.models.context_model import ContextMixtureModel, ModelConfig
from mixcodec.models.registry import read_infos
from mixcodec.refit import REFIT_MODULES, cached_latents, refit
from mixcodec.train import TrainConfig, to_toml


def _images(folder, count=2, size=(96, 100)):
    folder.mkdir(parents=True)
    for i in range(count):
        Image.fromarray(smooth_image(*size, seed=i)).save(folder / f"{i}.png")
    return folder


def test_refit_lowers_the_code_length_and_touches_only_the_entropy_model(tmp_path):
    torch.manual_seed(0)
    model = ContextMixtureModel(ModelConfig(n=8, hidden=(16, 24), qualities=2))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    y_hats, hypers = cached_latents(model, _images(tmp_path / "data"), crops=6, crop=64)
    assert y_hats.shape == (6, 8, 4, 4) and hypers.shape == (6, 16, 4, 4) and y_hats.abs().sum() > 0
    with torch.no_grad():
        start = model.y_codec.code_length(y_hats, hypers).item()
    trace = refit(model, y_hats, hypers, steps=30, batch=4, lr=1e-3)
    with torch.no_grad():
        end = model.y_codec.code_length(y_hats, hypers).item()
    assert len(trace) == 10 and end < 0.9 * start
    for key, value in model.state_dict().items():
        changed = not torch.equal(value, before[key])
        assert changed == (key.split(".")[0] in REFIT_MODULES), key


def test_refit_command_gives_the_same_images_from_other_bytes(tmp_path):
    data = _images(tmp_path / "data")
    (tmp_path / "p.toml").write_text(
        to_toml(TrainConfig(n=8, hidden=[16, 24], lmbdas=[0.005, 0.02], crop=64, batch=2, steps=2, threads=1))
    )

    def run(*args):
        proc = subprocess.run(
            [sys.executable, "-m", "mixcodec.cli", *map(str, args)], capture_output=True, text=True, timeout=300
        )
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    run("train", "--preset", tmp_path / "p.toml", "--data", data, "--out", tmp_path / "run")
    out = run(
        "refit",
        tmp_path / "run" / "last.pt",
        "--data",
        data,
        "-o",
        tmp_path / "refit.pt",
        "--steps",
        20,
        "--crops",
        4,
        "--crop",
        64,
        "--lr",
        1e-3,
    )
    assert "bits per latent element" in out
    for name in ("last", "refit"):
        checkpoint = tmp_path / ("run" if name == "last" else "") / f"{name}.pt"
        run("export", checkpoint, "-o", tmp_path / f"{name}.safetensors", "--name", name)
    image = smooth_image(70, 90, seed=5)
    decoded, sizes = {}, {}
    for name in ("last", "refit"):
        data_bytes = mixcodec.compress(image, model=read_infos(tmp_path / f"{name}.safetensors")[1])
        sizes[name] = len(data_bytes)
        decoded[name] = np.asarray(mixcodec.decompress(data_bytes, read_infos(tmp_path / f"{name}.safetensors")[1]))
    assert np.array_equal(decoded["last"], decoded["refit"]) and sizes["last"] != sizes["refit"]
    err = subprocess.run(
        [
            sys.executable,
            "-m",
            "mixcodec.cli",
            "refit",
            tmp_path / "run" / "last.pt",
            "--data",
            data,
            "-o",
            tmp_path / "x.pt",
            "--crop",
            "100",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert err.returncode == 2 and "multiple of 64" in err.stderr
