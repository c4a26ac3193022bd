"""Packed crops, split checkpoints and the device option: the paths a GPU run uses, tested on the CPU."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import smooth_image
from mixcodec.data import CropSampler, pack_crops
from mixcodec.train import atomic_save, checkpoint_exists, load_checkpoint, resolve_device, train
from test_train import tiny_config


@pytest.fixture()
def photos(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for i, (h, w) in enumerate([(90, 120), (100, 80), (40, 40)]):  # the last is too small for 64x64 crops
        Image.fromarray(smooth_image(h, w, seed=i)).save(folder / f"{i}.png")
    return folder


def test_packed_crops_fit_the_budget_and_come_from_the_images(photos):
    crops = pack_crops(photos, size=64, max_bytes=10 * 64 * 64 * 3 + 100, seed=3)
    assert crops.shape == (10, 64, 64, 3) and crops.dtype == np.uint8
    sources = [np.asarray(Image.open(photos / f"{i}.png")) for i in range(2)]

    def found(crop):
        return any(
            (s[y : y + 64, x : x + 64] == crop).all()
            for s in sources
            for y in range(s.shape[0] - 63)
            for x in range(s.shape[1] - 63)
        )

    assert all(found(c) for c in crops[:3])
    assert np.array_equal(crops, pack_crops(photos, size=64, max_bytes=10 * 64 * 64 * 3 + 100, seed=3))
    with pytest.raises(ValueError, match="no crop"):
        pack_crops(photos, size=512)


def test_pack_command_and_training_from_the_packed_file(photos, tmp_path):
    packed = tmp_path / "crops.npy"
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "mixcodec.cli",
            "pack",
            str(photos),
            "-o",
            str(packed),
            "--size",
            "64",
            "--max-mb",
            "0.1",
        ],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr
    assert packed.stat().st_size <= 100_000 and np.load(packed).shape[1:] == (64, 64, 3)
    again = subprocess.run(
        [sys.executable, "-m", "mixcodec.cli", "pack", str(photos), "-o", str(packed)], capture_output=True, text=True
    )
    assert again.returncode == 2 and "exists" in again.stderr and len(again.stderr.splitlines()) == 1
    batch = CropSampler(packed, 48, seed=0).sample(3)
    assert batch.shape == (3, 3, 48, 48) and 0 <= float(batch.min()) and float(batch.max()) <= 1
    model = train(tiny_config(steps=2), packed, tmp_path / "run")
    assert model.config.n == 8 and checkpoint_exists(tmp_path / "run" / "last.pt")
    np.save(tmp_path / "bad.npy", np.zeros((2, 8, 9, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="not a packed-crop file"):
        CropSampler(tmp_path / "bad.npy", 4)


def test_split_checkpoints_round_trip_and_replace_each_other(tmp_path):
    path = tmp_path / "last.pt"
    state = {"model": {"w": torch.arange(20_000, dtype=torch.float32)}, "step": 7}
    atomic_save(state, path, part_bytes=30_000)
    manifest = json.loads((tmp_path / "last.pt.parts").read_text())
    assert len(manifest["parts"]) >= 3 and not path.exists()
    assert all((tmp_path / p).stat().st_size <= 30_000 for p in manifest["parts"])
    for name in (path, tmp_path / "last.pt.parts"):
        loaded = load_checkpoint(name)
        assert loaded["step"] == 7 and torch.equal(loaded["model"]["w"], state["model"]["w"])
    # a new save replaces the old parts; a whole save replaces a split one
    state["step"] = 8
    atomic_save(state, path, part_bytes=50_000)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["last.pt.parts", *json.loads((tmp_path / "last.pt.parts").read_text())["parts"]]
    )
    atomic_save(state, path)
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"] and load_checkpoint(path)["step"] == 8
    # a missing or damaged part is reported, not loaded
    atomic_save(state, path, part_bytes=30_000)
    parts = json.loads((tmp_path / "last.pt.parts").read_text())["parts"]
    (tmp_path / parts[1]).write_bytes(b"x" * 30_000)
    with pytest.raises(ValueError, match="do not add up"):
        load_checkpoint(path)
    (tmp_path / parts[1]).unlink()
    with pytest.raises(ValueError, match="is missing"):
        load_checkpoint(path)


def test_training_resumes_from_a_split_checkpoint(photos, tmp_path):
    cfg = tiny_config(steps=2, checkpoint_part_mib=0.05)
    train(cfg, photos, tmp_path / "run")
    assert (tmp_path / "run" / "last.pt.parts").exists() and not (tmp_path / "run" / "last.pt").exists()
    train(tiny_config(steps=3, checkpoint_part_mib=0.05), photos, tmp_path / "run", resume=True)
    assert load_checkpoint(tmp_path / "run" / "last.pt")["step"] == 3


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the fallback on a machine without a GPU")
def test_cuda_without_a_gpu_falls_back_to_the_cpu_with_one_line(capsys):
    assert resolve_device("cuda") == "cpu"
    message = capsys.readouterr().err.splitlines()
    assert len(message) == 1 and "training on the CPU" in message[0]
    assert resolve_device("auto") == "cpu" and capsys.readouterr().err == ""
    with pytest.raises(ValueError, match="unknown device"):
        resolve_device("tpu")
