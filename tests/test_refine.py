"""Encoder effort (latent refinement by SGA): never worse than effort 0 by its own loss,
deterministic, ordinary files, effort 0 unchanged, the CLI flag, eval specs and errors."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import smooth_image
from mixcodec import codec, refine
from mixcodec import eval as ev
from mixcodec.errors import InputError
from mixcodec.models.registry import load_model

#: Few iterations keep the tests fast; the levels' real counts are measured in benchmarks/.
FAST_LEVELS = (0, 6, 12)


@pytest.fixture()
def fast_levels(monkeypatch):
    monkeypatch.setattr(refine, "EFFORT_ITERATIONS", FAST_LEVELS)


def _padded(array: np.ndarray) -> torch.Tensor:
    return codec._pad(torch.from_numpy(array.copy()).permute(2, 0, 1)[None].float() / 255)


def _objective(info, array: np.ndarray) -> refine.Objective:
    return refine.Objective(load_model(info), _padded(array), info.quality, info.lmbda, info.metric, array.shape[:2])


def test_refinement_lowers_the_hard_rounded_loss_and_never_raises_it(tiny_model):
    info = tiny_model()
    array = smooth_image(70, 90, seed=3)
    objective = _objective(info, array)
    effort0 = objective.hard(*codec.quantize_latents(objective.model, objective.x, info.quality))
    for iterations in (1, 12):
        result = refine.refine(
            objective.model,
            objective.x,
            info.quality,
            info.lmbda,
            info.metric,
            refine.Annealing(iterations, lr=0.02),
            array.shape[:2],
        )
        assert result.initial_loss == effort0
        assert result.loss == objective.hard(result.y_hat, result.z_hat) <= effort0
    assert result.loss < effort0  # 12 iterations do find better latents
    assert torch.equal(result.y_hat, result.y_hat.round()) and result.y_hat.abs().max() <= 256


def test_a_refinement_that_only_gets_worse_keeps_the_encoders_latents(tiny_model):
    info = tiny_model()
    array = smooth_image(64, 64, seed=4)
    objective = _objective(info, array)
    y0, z0 = codec.quantize_latents(objective.model, objective.x, info.quality)
    wild = refine.Annealing(3, lr=50.0)  # steps far past any good latents
    result = refine.refine(objective.model, objective.x, info.quality, info.lmbda, info.metric, wild, array.shape[:2])
    assert torch.equal(result.y_hat, y0) and torch.equal(result.z_hat, z0)
    assert result.loss == result.initial_loss


def test_weights_stay_frozen_and_their_flags_are_restored(tiny_model):
    info = tiny_model()
    model = load_model(info)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [p.requires_grad for p in model.parameters()]
    array = smooth_image(64, 64, seed=5)
    refine.refine(
        model, _padded(array), info.quality, info.lmbda, info.metric, refine.Annealing(4, lr=0.02), array.shape[:2]
    )
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters())


def test_z_stays_the_encoders_unless_refined_and_stays_on_the_medians_grid(tiny_model):
    info = tiny_model()
    array = smooth_image(64, 64, seed=6)
    objective = _objective(info, array)
    _, z0 = codec.quantize_latents(objective.model, objective.x, info.quality)
    medians = objective.model.prior.medians.view(1, -1, 1, 1)
    kept = refine.refine(
        objective.model,
        objective.x,
        info.quality,
        info.lmbda,
        info.metric,
        refine.Annealing(6, refine_z=False),
        array.shape[:2],
    )
    assert torch.equal(kept.z_hat, z0)
    moved = refine.refine(
        objective.model,
        objective.x,
        info.quality,
        info.lmbda,
        info.metric,
        refine.Annealing(12, lr=0.2, refine_z=True),
        array.shape[:2],
    )
    assert not torch.equal(moved.z_hat, z0) and moved.loss <= moved.initial_loss
    offsets = moved.z_hat - medians
    assert torch.equal(offsets, offsets.round())


def test_a_refined_file_codes_the_refined_latents_and_decodes_as_any_file(installed_tiny, fast_levels):
    array = smooth_image(70, 90, seed=7)
    data = codec.compress(array, model="tiny", effort=2)
    assert data != codec.compress(array, model="tiny")
    objective = _objective(installed_tiny, array)
    expected = refine.refine(
        objective.model,
        objective.x,
        installed_tiny.quality,
        installed_tiny.lmbda,
        installed_tiny.metric,
        refine.Annealing(FAST_LEVELS[2], bf16=refine.bf16_is_fast()),  # as compress refines here
        array.shape[:2],
    )
    assert expected.loss < expected.initial_loss
    header, net, y_hat = codec.decode_latents(data)
    assert torch.equal(y_hat, expected.y_hat)
    decoded = np.asarray(codec.decompress(data))
    assert np.array_equal(decoded, codec.reconstruct(net, expected.y_hat, header.quality, 70, 90))


def test_the_same_input_gives_the_same_bytes(installed_tiny, fast_levels):
    array = smooth_image(64, 80, seed=8)
    assert codec.compress(array, model="tiny", effort=1) == codec.compress(array, model="tiny", effort=1)


_THREADS_SCRIPT = """
import sys, hashlib, numpy as np, torch
torch.set_num_threads(int(sys.argv[1]))
sys.path.insert(0, sys.argv[2])
from conftest import smooth_image
from mixcodec import codec, refine
refine.EFFORT_ITERATIONS = (0, 6)
print(hashlib.sha256(codec.compress(smooth_image(128, 192, seed=9), model="tiny", effort=1)).hexdigest())
"""


def test_separate_processes_with_the_same_thread_count_write_the_same_bytes(installed_tiny):
    """The promise is per thread count: with the shipped model 1 and 2 threads give different
    refined files (docs/effort.md), each of which decodes everywhere to the same pixels."""
    env = dict(os.environ, MIXCODEC_MODELS=str(installed_tiny.path.parent))
    tests = os.path.dirname(__file__)
    digests = [
        subprocess.run(
            [sys.executable, "-c", _THREADS_SCRIPT, "2", tests],
            capture_output=True,
            text=True,
            env=env,
            check=True,
            timeout=300,
        ).stdout
        for _ in range(2)
    ]
    assert digests[0] == digests[1] and len(digests[0].strip()) == 64
    unrefined = codec.compress(smooth_image(128, 192, seed=9), model="tiny", effort=0)
    assert hashlib.sha256(unrefined).hexdigest() != digests[0].strip()  # the refined file is not effort 0's


def test_effort_zero_is_todays_encoder(installed_tiny, monkeypatch):
    array = smooth_image(50, 60, seed=10)
    before = codec.compress(array, model="tiny")
    monkeypatch.setattr(refine, "refine", lambda *a, **k: pytest.fail("effort 0 must not refine"))
    assert codec.compress(array, model="tiny", effort=0) == before


@pytest.mark.parametrize("effort", [-1, len(refine.EFFORT_ITERATIONS), 1.5, True, "1"])
def test_bad_effort_levels_are_input_errors(installed_tiny, effort):
    with pytest.raises(InputError, match="effort must be one of 0, 1, 2, 3"):
        codec.compress(smooth_image(16, 16), model="tiny", effort=effort)


def test_effort_needs_the_models_lambda(installed_tiny):
    without = dataclasses.replace(installed_tiny, lmbda=0.0)
    with pytest.raises(InputError, match="no λ"):
        codec.compress(smooth_image(16, 16), model=without, effort=1)
    codec.compress(smooth_image(16, 16), model=without)  # effort 0 does not need it


def test_pillow_save_takes_effort(installed_tiny, fast_levels):
    array = smooth_image(40, 48, seed=11)
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="MXC", model="tiny", effort=1)
    assert buffer.getvalue() == codec.compress(array, model="tiny", effort=1, metadata=codec.bitstream.Metadata())


def test_eval_specs_name_an_effort(installed_tiny, fast_levels):
    assert ev.split_effort("gllmm:e2") == ("gllmm", 2)
    assert ev.split_effort("gllmm@7:e2") == ("gllmm@7", 2)
    assert ev.split_effort("a.safetensors+b.safetensors:e1") == ("a.safetensors+b.safetensors", 1)
    assert ev.split_effort("gllmm") == ("gllmm", 0)
    with pytest.raises(InputError, match="effort must be one of"):
        ev.split_effort("gllmm:e7")
    assert ev.learned_codec([installed_tiny]).name == "tiny"
    refined = ev.learned_codec([installed_tiny], effort=1)
    assert refined.name == "tiny:e1"
    array = smooth_image(40, 48, seed=12)
    assert refined.encode(array, 1.0) == codec.compress(array, model=installed_tiny, effort=1)


def _cli(*args, models):
    env = dict(os.environ, MIXCODEC_MODELS=str(models))
    return subprocess.run(
        [sys.executable, "-m", "mixcodec.cli", *map(str, args)], capture_output=True, text=True, env=env, timeout=300
    )


def test_cli_effort_flag_writes_the_refined_file_and_refuses_bad_levels(installed_tiny, tmp_path):
    array = smooth_image(48, 64, seed=13)
    Image.fromarray(array).save(tmp_path / "img.png")
    proc = _cli("compress", tmp_path / "img.png", "--model", "tiny", "--effort", "1", models=installed_tiny.path.parent)
    assert proc.returncode == 0, proc.stderr
    assert "refining img.png" in proc.stderr  # the progress bar
    with Image.open(tmp_path / "img.png") as image:
        assert (tmp_path / "img.mxc").read_bytes() == codec.compress(image, model=installed_tiny, effort=1)
    bad = _cli(
        "compress",
        tmp_path / "img.png",
        "--model",
        "tiny",
        "--effort",
        "9",
        "-o",
        tmp_path / "bad.mxc",
        models=installed_tiny.path.parent,
    )
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
        "mixcodec: error: effort must be one of 0, 1, 2, 3, got 9"
    ]
    assert not (tmp_path / "bad.mxc").exists()


def test_effort_refuses_images_too_large_to_refine(installed_tiny, monkeypatch):
    monkeypatch.setattr(refine, "MAX_REFINE_PIXELS", 32 * 32)
    monkeypatch.setattr(refine, "refine", lambda *a, **k: pytest.fail("too large to refine"))
    with pytest.raises(InputError, match="use effort 0"):
        codec.compress(smooth_image(32, 40), model="tiny", effort=1)
    assert codec.compress(smooth_image(32, 40), model="tiny", effort=0)


def _synthesis_dtypes(model, annealing: refine.Annealing, array: np.ndarray) -> set[torch.dtype]:
    """The dtypes of the synthesis outputs seen during one refinement."""
    seen = set()
    hook = model.g_s.register_forward_hook(lambda module, args, output: seen.add(output.dtype))
    try:
        refine.refine(model, _padded(array), 1.0, 0.01, "mse", annealing, array.shape[:2])
    finally:
        hook.remove()
    return seen


def test_bf16_runs_the_relaxed_steps_in_bf16_and_the_checks_in_float32(tiny_model):
    model = load_model(tiny_model())
    array = smooth_image(64, 64, seed=13)
    assert _synthesis_dtypes(model, refine.Annealing(3, lr=0.02), array) == {torch.float32}
    assert _synthesis_dtypes(model, refine.Annealing(3, lr=0.02, bf16=True), array) == {torch.bfloat16, torch.float32}
    objective = _objective(tiny_model(), array)
    result = refine.refine(
        objective.model, objective.x, 1.0, objective.lmbda, "mse", refine.Annealing(12, lr=0.02, bf16=True), (64, 64)
    )
    assert result.loss == objective.hard(result.y_hat, result.z_hat) <= result.initial_loss


@pytest.mark.parametrize(
    ("amx", "avx512_bf16", "fast"),
    [(False, False, False), (True, False, True), (False, True, True), (True, True, True)],
)
def test_bf16_is_fast_with_amx_tiles_or_avx512_bf16(monkeypatch, amx, avx512_bf16, fast):
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    assert refine.bf16_is_fast() is fast


@pytest.mark.parametrize("fast", [False, True])
def test_compress_refines_in_bf16_where_the_cpu_makes_it_fast(installed_tiny, fast_levels, monkeypatch, fast):
    monkeypatch.setattr(refine, "bf16_is_fast", lambda: fast)
    seen, real = [], refine.refine
    monkeypatch.setattr(refine, "refine", lambda *a, **k: seen.append(a[5].bf16) or real(*a, **k))
    codec.compress(smooth_image(40, 50, seed=14), model="tiny", effort=1)
    assert seen == [fast]
