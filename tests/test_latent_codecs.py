"""The latent codecs: schedules derived from the context mask, strict integer twins, the
hyperprior's tables as part of its exact face."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from torch import nn

from mixcodec import bitstream
from mixcodec.context_coding import (
    SCHEDULE_ORDERS,
    IntegerContextCodec,
    IntegerHyperprior,
    Wavefront,
    causal_taps,
    wavefront_slope,
)
from mixcodec.layers import MaskedConv2d
from mixcodec.models.context_model import ContextMixtureModel, ModelConfig
from mixcodec.models.registry import load

CONFIG = ModelConfig(n=8, hidden=(24, 32))


def test_the_taps_of_the_5x5_type_a_mask():
    taps = causal_taps(MaskedConv2d(1, 1, 5).mask[0, 0])
    assert taps == [(dy, dx) for dy in (-2, -1) for dx in range(-2, 3)] + [(0, -2), (0, -1)]
    assert wavefront_slope(taps) == 3


@pytest.mark.parametrize("kernel", [3, 5, 7])
@pytest.mark.parametrize("name", list(SCHEDULE_ORDERS))
def test_every_schedule_codes_every_tap_of_a_position_in_an_earlier_step(name, kernel):
    taps = causal_taps(MaskedConv2d(1, 1, kernel).mask[0, 0])
    height, width = 6, 11
    step_of = {}
    for step, (rows, cols) in enumerate(SCHEDULE_ORDERS[name].steps(height, width, taps)):
        step_of.update({(r, c): step for r, c in zip(rows.tolist(), cols.tolist())})
    assert len(step_of) == height * width
    for (r, c), step in step_of.items():
        for dy, dx in taps:
            if (r + dy, c + dx) in step_of:
                assert step_of[(r + dy, c + dx)] < step


@pytest.mark.parametrize("kernel", [3, 5, 7])
def test_the_wavefront_slope_is_the_smallest_that_works(kernel):
    taps = causal_taps(MaskedConv2d(1, 1, kernel).mask[0, 0])
    slope = wavefront_slope(taps)
    assert slope == kernel // 2 + 1
    assert all(slope * dy + dx < 0 for dy, dx in taps)
    assert any((slope - 1) * dy + dx >= 0 for dy, dx in taps)
    assert len(Wavefront().steps(6, 11, taps)) == slope * 5 + 11


def test_the_schedules_are_those_the_format_names():
    assert tuple(SCHEDULE_ORDERS) == bitstream.SCHEDULES


def test_a_mask_that_sees_the_present_is_refused():
    mask = torch.zeros(5, 5)
    mask[2, 2] = 1
    with pytest.raises(ValueError, match="not causal"):
        causal_taps(mask)


@pytest.mark.parametrize("activation", [nn.ReLU(), nn.LeakyReLU(0.2), nn.GELU()])
def test_an_entropy_network_without_an_exact_twin_is_refused(activation):
    model = ContextMixtureModel(CONFIG)
    model.entropy_parameters[1] = activation
    with pytest.raises((TypeError, ValueError)):
        IntegerContextCodec(model.y_codec)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda layers: layers.insert(2, nn.LeakyReLU()), "must follow a 1x1 convolution"),  # two in a row
        (lambda layers: layers.insert(0, nn.LeakyReLU()), "must follow a 1x1 convolution"),  # before any layer
        (lambda layers: layers.append(nn.LeakyReLU()), "must end in a convolution"),
    ],
)
def test_an_entropy_network_whose_activations_cannot_be_folded_is_refused(edit, message):
    model = ContextMixtureModel(CONFIG)
    layers = list(model.entropy_parameters)
    edit(layers)
    model.entropy_parameters = nn.Sequential(*layers)
    with pytest.raises(ValueError, match=message):
        IntegerContextCodec(model.y_codec)


def test_a_model_not_loaded_from_a_file_codes_its_hyper_latent():
    torch.manual_seed(0)
    model = ContextMixtureModel(CONFIG)
    hyperprior = IntegerHyperprior.from_modules(model.prior, model.h_s)
    z_hat = model.prior.quantize(torch.randn(1, 8, 2, 3) * 4, noise=False)
    assert torch.equal(hyperprior.decompress(hyperprior.compress(z_hat), (2, 3)), z_hat)


def test_the_loaded_tables_are_those_the_model_computes(tiny_model):
    loaded = load(tiny_model())
    fresh = IntegerHyperprior.from_modules(loaded.net.prior, loaded.net.h_s)
    np.testing.assert_array_equal(loaded.hyperprior.pmf, fresh.pmf)
    np.testing.assert_array_equal(loaded.hyperprior.offsets, fresh.offsets)
    assert load(tiny_model()) is loaded  # one object per file


def test_the_z_quantizer_clips_to_the_coder_range():
    model = ContextMixtureModel(CONFIG)
    z_hat = model.prior.quantize(torch.full((1, 8, 1, 1), 1e4), noise=False)
    assert torch.all(z_hat - model.prior.medians.view(1, -1, 1, 1) <= 256)


def test_a_helper_thread_changes_no_bit_of_the_stream_or_the_latents(tiny_model, monkeypatch):
    """With ``threads=2`` half of each kernel call runs in a helper thread (thresholds at 0 so
    that every call of this small model splits); the stream and the latents are those of one
    thread, and both kernels did run in the helper."""
    from mixcodec.entropy import exact

    loaded = load(tiny_model(m=12))
    g = torch.Generator().manual_seed(5)
    z_hat = torch.randint(-3, 4, (1, loaded.net.config.n, 2, 3), generator=g).float()
    hyper = loaded.hyperprior.hyper(z_hat)  # (24, 8, 12)
    y_hat = torch.randint(-6, 7, (1, 12, 8, 12), generator=g).float()
    y_hat[0, 0] *= 20  # wider windows in one channel
    y_hat[0, 3] = 0  # a skipped channel
    stream, active = loaded.context.compress(y_hat, hyper, threads=1)

    monkeypatch.setattr(exact, "SPLIT_MULTIPLY_ADDS", 0)
    monkeypatch.setattr(exact, "SPLIT_CDF_VALUES", 0)
    ran_in = set()
    for name in ("_linear_kernel", "_window_pmf_kernel"):
        kernel = getattr(exact, name)

        def spy(*args, kernel=kernel, name=name):
            ran_in.add((name, threading.current_thread().name.startswith("mixcodec-exact")))
            return kernel(*args)

        monkeypatch.setattr(exact, name, spy)
    again, active_again = loaded.context.compress(y_hat, hyper, threads=2)
    assert again == stream and np.array_equal(active_again, active)
    assert torch.equal(loaded.context.decompress(stream, hyper, active, threads=2), y_hat)
    assert {("_linear_kernel", True), ("_window_pmf_kernel", True), ("_linear_kernel", False)} <= ran_in

    # ``helper_when``: the helper only at the steps it allows (the striped decoder's idle worker)
    asked = []

    def every_other_step() -> bool:
        asked.append(len(asked) % 2 == 0)
        return asked[-1]

    assert torch.equal(loaded.context.decompress(stream, hyper, active, threads=2, helper_when=every_other_step), y_hat)
    assert len(asked) == len(loaded.context.steps("wavefront", 8, 12)) and ("_linear_kernel", True) in ran_in
    ran_in.clear()
    assert torch.equal(loaded.context.decompress(stream, hyper, active, threads=2, helper_when=lambda: False), y_hat)
    assert ran_in and not any(in_helper for _, in_helper in ran_in)
