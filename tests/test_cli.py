"""The command line: round trip, refusal to overwrite, and one-line errors with exit code 2."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from conftest import smooth_image


def mixcodec(*args, env_models=None, timeout=120):
    env = dict(os.environ)
    if env_models is not None:
        env["MIXCODEC_MODELS"] = str(env_models)
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "mixcodec.cli", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )
    proc.seconds = time.monotonic() - start
    return proc


@pytest.fixture()
def encoded(installed_tiny, tmp_path):
    """A PNG and its .mxc written by the CLI with the tiny model."""
    Image.fromarray(smooth_image(70, 90, seed=6)).save(tmp_path / "img.png")
    proc = mixcodec("compress", tmp_path / "img.png", "--model", "tiny", env_models=installed_tiny.path.parent)
    assert proc.returncode == 0, proc.stderr
    return tmp_path / "img.png", tmp_path / "img.mxc", installed_tiny.path.parent


def assert_one_line_error(proc):
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mixcodec: error:"), proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.seconds < 30


def test_compress_decompress_info(encoded, tmp_path):
    png, mxc, models = encoded
    proc = mixcodec("decompress", mxc, "-o", tmp_path / "out.png", env_models=models)
    assert proc.returncode == 0, proc.stderr
    assert Image.open(tmp_path / "out.png").size == (90, 70)
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "out.png").stat().st_mode & 0o777 == 0o666 & ~umask
    info = mixcodec("info", mxc, env_models=models)
    assert info.returncode == 0 and "tiny quality 1" in info.stdout and "90x70" in info.stdout
    assert f"bytes:    {mxc.stat().st_size} " in info.stdout


def test_existing_outputs_and_inputs_are_not_overwritten(encoded, tmp_path):
    png, mxc, models = encoded
    before = mxc.read_bytes()
    assert_one_line_error(mixcodec("compress", png, "--model", "tiny", env_models=models))
    assert mxc.read_bytes() == before
    assert_one_line_error(mixcodec("decompress", mxc, env_models=models))  # would write img.png, the input image
    assert_one_line_error(mixcodec("compress", png, "-o", png, "--model", "tiny", env_models=models))
    assert Image.open(png).size == (90, 70)
    assert mixcodec("compress", png, "--model", "tiny", "--force", env_models=models).returncode == 0
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize(
    "damage",
    [
        lambda d: d[: len(d) // 2],
        lambda d: d[:10],
        lambda d: d[:-1],
        lambda d: d[:40] + bytes([d[40] ^ 0x10]) + d[41:],
        lambda d: d[:-3] + bytes([d[-3] ^ 1]) + d[-2:],
        lambda d: bytes(np.random.default_rng(0).integers(0, 256, 500, dtype=np.uint8)),
        lambda d: b"MXC\x89" + bytes(np.random.default_rng(1).integers(0, 256, 300, dtype=np.uint8)),
        lambda d: b"",
    ],
)
def test_damaged_files_fail_cleanly(encoded, tmp_path, damage):
    _, mxc, models = encoded
    bad = tmp_path / "bad.mxc"
    bad.write_bytes(damage(mxc.read_bytes()))
    assert_one_line_error(mixcodec("decompress", bad, "-o", tmp_path / "bad.png", env_models=models))
    assert not (tmp_path / "bad.png").exists()
    assert_one_line_error(mixcodec("info", bad))


def test_non_images_and_missing_files_fail_cleanly(installed_tiny, tmp_path):
    models = installed_tiny.path.parent
    (tmp_path / "text.png").write_text("not an image")
    assert_one_line_error(mixcodec("compress", tmp_path / "text.png", "--model", "tiny", env_models=models))
    assert_one_line_error(mixcodec("compress", tmp_path / "missing.png", "--model", "tiny", env_models=models))
    assert_one_line_error(mixcodec("compress", tmp_path / "text.png", "--model", "no-such-model", env_models=models))
    assert_one_line_error(mixcodec("decompress", tmp_path / "text.png", "-o", tmp_path / "x.png", env_models=models))


def test_absurd_sizes_are_refused_before_decoding(installed_tiny, tmp_path):
    huge = tmp_path / "huge.png"
    Image.new("L", (40000, 2)).save(huge)
    assert_one_line_error(mixcodec("compress", huge, "--model", "tiny", env_models=installed_tiny.path.parent))


def test_file_from_unknown_weights_is_refused(encoded, tmp_path):
    _, mxc, _ = encoded
    assert_one_line_error(mixcodec("decompress", mxc, "-o", tmp_path / "o.png", env_models=tmp_path / "empty"))


def test_transparent_images_are_refused_and_grayscale_round_trips(installed_tiny, tmp_path):
    models = installed_tiny.path.parent
    rgba = Image.new("RGBA", (20, 20), (10, 20, 30, 100))
    rgba.save(tmp_path / "alpha.png")
    assert_one_line_error(mixcodec("compress", tmp_path / "alpha.png", "--model", "tiny", env_models=models))
    Image.fromarray(smooth_image(30, 40)[:, :, 0]).save(tmp_path / "gray.png")
    assert mixcodec("compress", tmp_path / "gray.png", "--model", "tiny", env_models=models).returncode == 0
    assert (
        mixcodec("decompress", tmp_path / "gray.mxc", "-o", tmp_path / "gray-out.png", env_models=models).returncode
        == 0
    )
    assert Image.open(tmp_path / "gray-out.png").mode == "L"


def test_several_files_to_an_output_folder(installed_tiny, tmp_path):
    models = installed_tiny.path.parent
    for i in range(3):
        Image.fromarray(smooth_image(20 + i, 30, seed=i)).save(tmp_path / f"{i}.png")
    proc = mixcodec(
        "compress",
        *(tmp_path / f"{i}.png" for i in range(3)),
        "--out-dir",
        tmp_path / "out",
        "--model",
        "tiny",
        env_models=models,
    )
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["0.mxc", "1.mxc", "2.mxc"]


def test_models_lists_each_installed_model_with_its_numbers(tiny_ladder):
    proc = mixcodec("models")
    assert proc.returncode == 0, proc.stderr
    rows = [line.split() for line in proc.stdout.splitlines() if line.startswith("ladder")]
    assert [r[:5] for r in rows] == [
        ["ladder", "1*", "1", "8", "8"],
        ["ladder", "1*", "2", "8", "8"],
    ]  # one file (version 1), two qualities; N, M
    assert all(r[7:10] == ["-", "-", "-"] for r in rows)  # not measured
    assert all(float(r[10]) > 0 and len(r[11]) == 16 for r in rows)  # MB, digest prefix


def test_decompress_with_an_explicit_weight_file(encoded, tmp_path):
    import torch

    from mixcodec.models.context_model import ContextMixtureModel, ModelConfig
    from mixcodec.models.registry import export

    _, mxc, models = encoded
    proc = mixcodec(
        "decompress",
        mxc,
        "-o",
        tmp_path / "o.png",
        "--model",
        models / "tiny.safetensors",
        env_models=tmp_path / "empty",
    )
    assert proc.returncode == 0, proc.stderr
    torch.manual_seed(99)  # other weights: refused in one line naming both
    config = ModelConfig(n=8, hidden=(24, 32))
    export(ContextMixtureModel(config).state_dict(), config, tmp_path / "other.safetensors", name="tiny", lmbdas=[0.01])
    proc = mixcodec(
        "decompress",
        mxc,
        "-o",
        tmp_path / "p.png",
        "--model",
        tmp_path / "other.safetensors",
        env_models=tmp_path / "empty",
    )
    assert_one_line_error(proc)
    assert "not with tiny" in proc.stderr and not (tmp_path / "p.png").exists()


def test_missing_weights_say_which_and_where(tmp_path):
    from mixcodec.bitstream import Header, pack
    from mixcodec.models import releases

    release = next(r for r in releases.catalog() if r.name == "gllmm" and r.version == 6)
    header = Header(
        "gllmm", 4, bytes.fromhex(release.legacy_digests[0])[:8], 16, 16, "RGB", "wavefront", np.arange(0), 128
    )
    (tmp_path / "old.mxc").write_bytes(pack(header, b"", b""))
    proc = mixcodec("decompress", tmp_path / "old.mxc", "-o", tmp_path / "old.png", env_models="")
    assert_one_line_error(proc)
    for part in ("gllmm version 6", "094cd38b56983e63", "weights-archive/gllmm-v6.safetensors", "MIXCODEC_MODELS"):
        assert part in proc.stderr
