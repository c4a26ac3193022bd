"""The integer entropy-parameter path: shipped tables, agreement with the float model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mixcodec.entropy import exact
from mixcodec.entropy.distributions import (
    ENTROPY_FAMILIES,
    LATENT_MAX,
    LATENT_MIN,
    SCALE_MIN,
    mixture_likelihood,
    param_blocks,
    split_params,
)
from mixcodec.models.registry import load_model


def test_shipped_tables_are_reproduced_by_build_tables():
    built = exact.build_tables()
    shipped = exact.tables()
    assert set(built) == set(shipped)
    for key, table in built.items():
        np.testing.assert_array_equal(table, shipped[key].numpy(), err_msg=key)


def test_integer_pmf_matches_the_float_mixture():
    torch.manual_seed(0)
    for name, spec in ENTROPY_FAMILIES.items():
        raw = torch.randn(200, spec.params_per_channel) * 2
        raw[:, -spec.params_per_channel :] += torch.linspace(-3, 3, 200)[:, None]
        fixed = exact.to_fixed(raw)
        reference = split_params(spec, fixed.double() * 2.0**-exact.ACT_BITS)  # (F, K, 200, 1)
        mixture = exact.integer_params(spec, fixed)  # (F, K, 200)
        values = torch.arange(-40, 41)
        expected = mixture_likelihood(
            spec,
            values.double()[:, None, None],
            type(reference)(*(t[:, :, None] for t in (reference.weights, reference.means, reference.scales))),
        )
        got = exact.integer_window_pmf(spec, np.full(200, -40), values.numel(), mixture)
        got = torch.from_numpy(got * 2.0**-exact.PMF_BITS).T[:, :, None]  # (81, 200, 1) like expected
        assert torch.isfinite(got).all() and (got >= 0).all()
        # bits under the integer PMF vs the float PMF, weighted by the float PMF
        cost = (expected * (torch.log2(expected) - torch.log2(got.clamp_min(1e-12)))).sum(0)
        assert cost.max() < 0.01, name  # < 0.01 bit per symbol everywhere


def test_edge_bins_are_open():
    spec = ENTROPY_FAMILIES["gaussian"]
    mixture = exact.IntegerMixture(
        np.array([[[1 << exact.MIX_BITS]]]),
        np.array([[[-300 << exact.ACT_BITS]]]),
        np.array([[[1 << exact.SCALE_BITS]]]),
    )  # (F, K, m)
    low = exact.integer_window_pmf(spec, np.array([LATENT_MIN - 2]), 4, mixture)[0]
    assert low.tolist() == [0, 0, 1 << exact.PMF_BITS, 0]  # nothing below the range; the lowest bin holds all the mass
    far = exact.IntegerMixture(mixture.weights, np.array([[[300 << exact.ACT_BITS]]]), mixture.scales)
    high = exact.integer_window_pmf(spec, np.array([LATENT_MAX - 1]), 3, far)[0]
    assert high.tolist() == [0, 1 << exact.PMF_BITS, 0]


def test_integer_networks_follow_the_float_networks(tiny_model):
    model = load_model(tiny_model())
    z = torch.randn(1, model.config.n, 2, 3) * 4
    with torch.no_grad():
        expected = model.h_s(z.double().float()).double()
    got = exact.IntegerSequential(model.h_s)(exact.to_fixed(z)) * 2.0**-exact.ACT_BITS
    assert (got - expected).abs().max() < 0.05


def reference_window_pmf(spec, lowest: torch.Tensor, width: int, mixture) -> torch.Tensor:
    """The arithmetic of :func:`exact.integer_window_pmf` written as torch tensor operations
    (the implementation before it was compiled with numba)."""
    half = 1 << (exact.ACT_BITS - 1)
    bounds = ((lowest[:, None] + torch.arange(width + 1)) << exact.ACT_BITS) - half
    open_low = bounds <= (LATENT_MIN << exact.ACT_BITS) - half
    open_high = bounds >= (LATENT_MAX << exact.ACT_BITS) + half
    bounds = bounds.double()
    total = torch.zeros(len(lowest), width, dtype=torch.float64)
    for f, family in enumerate(spec.families):
        table = exact.tables()[f"cdf_{family}"]
        offset, scales = bounds - mixture.means[f].double(), mixture.scales[f].double()
        q = torch.floor(offset * 2.0 ** (exact.SCALE_BITS - exact.ACT_BITS + 2 * exact.GRID_BITS) / scales)
        index = torch.floor(q * 2.0**-exact.GRID_BITS)
        frac = q - index * 2.0**exact.GRID_BITS
        index = index + (exact.T_RANGE << exact.GRID_BITS)
        last = table.numel() - 1
        inside = index.clamp(0, last - 1).long()
        low, high = table[inside], table[inside + 1]
        cdf = low + torch.floor((high - low) * frac * 2.0**-exact.GRID_BITS)
        cdf = torch.where(index < 0, 0.0, torch.where(index >= last, float(1 << exact.CDF_BITS), cdf))
        cdf = torch.where(open_low, 0.0, torch.where(open_high, float(1 << exact.CDF_BITS), cdf))
        total += (mixture.weights[f].double() * (cdf[..., 1:] - cdf[..., :-1])).sum(0)
    return total


def reference_integer_params(spec, raw: torch.Tensor) -> exact.IntegerMixture:
    """The arithmetic of :func:`exact.integer_params` (all channels) written as torch tensor
    operations (the implementation before it was compiled with numba)."""

    def softmax(logits, dim):
        gap = (logits.amax(dim, keepdim=True) - logits).clamp_(max=exact.EXP_RANGE << exact.GRID_BITS)
        e = exact.tables()["exp"][gap]
        return torch.div(e << exact.MIX_BITS, e.sum(dim, keepdim=True), rounding_mode="floor")

    logits, means, raw_scales, family_logits = (
        None if t is None else t.to(torch.int64) for t in param_blocks(spec, raw)
    )
    weights = softmax(logits, dim=1)
    if family_logits is not None:
        weights = (weights * softmax(family_logits, dim=0).unsqueeze(1)) >> exact.MIX_BITS
    limit = exact.SOFTPLUS_RANGE << exact.GRID_BITS
    softplus = exact.tables()["softplus"][raw_scales.clamp(-limit, limit) + limit]
    scales = torch.where(raw_scales > limit, raw_scales << (exact.SCALE_BITS - exact.ACT_BITS), softplus)
    scales = scales.clamp_(min=round(SCALE_MIN * 2**exact.SCALE_BITS))
    flat = (weights, means.clamp(-(1 << 19), 1 << 19), scales)  # (F, K, m, C) -> (F, K, m * C)
    return exact.IntegerMixture(*(t.reshape(t.shape[0], t.shape[1], -1) for t in flat))


def test_compiled_params_are_bit_identical_to_tensor_arithmetic():
    g = torch.Generator().manual_seed(2)
    for spec in ENTROPY_FAMILIES.values():
        channels = 5
        raw = torch.randint(-(1 << 14), 1 << 14, (300, spec.params_per_channel * channels), generator=g).double()
        raw[:7] = torch.randint(
            -(1 << 20), 1 << 20, (7, raw.shape[1]), generator=g
        ).double()  # clamps and edges of the tables
        expected = reference_integer_params(spec, raw)
        got = exact.integer_params(spec, raw)
        for name in ("weights", "means", "scales"):
            np.testing.assert_array_equal(getattr(got, name), getattr(expected, name).numpy(), err_msg=f"{spec} {name}")


def test_compiled_pmf_is_bit_identical_to_tensor_arithmetic():
    g = torch.Generator().manual_seed(1)
    for spec in ENTROPY_FAMILIES.values():
        m, shape = 3000, (len(spec.families), spec.components, 3000, 1)
        params = (
            torch.randint(0, 1 << 14, shape, generator=g),
            torch.randint(-(1 << 17), 1 << 17, shape, generator=g),
            torch.randint(7000, 1 << 24, shape, generator=g),
        )
        params[0][:, :, ::3] = 0  # components of weight 0 are skipped
        reference = exact.IntegerMixture(*params)  # (F, K, m, 1): broadcasts against the windows
        mixture = exact.IntegerMixture(*(t[..., 0].numpy() for t in params))
        for lowest, width in (
            (torch.randint(-300, 300, (m,), generator=g), 17),
            (torch.full((m,), LATENT_MIN - 3), 9),
            (torch.full((m,), LATENT_MAX - 5), 9),
            (torch.randint(-5, 5, (m,), generator=g), 513),
        ):
            expected = reference_window_pmf(spec, lowest, width, reference).numpy()
            np.testing.assert_array_equal(exact.integer_window_pmf(spec, lowest.numpy(), width, mixture), expected)
            order = torch.randperm(m, generator=g).numpy()  # elements picked by index
            np.testing.assert_array_equal(
                exact.integer_window_pmf(spec, lowest.numpy()[order], width, mixture, order), expected[order]
            )


def test_compiled_center_and_spread_are_bit_identical_to_tensor_arithmetic():
    g = torch.Generator().manual_seed(3)
    shape = (3, 3, 5000)
    weights = torch.randint(0, 1 << 15, shape, generator=g)
    weights[:, :, ::4] //= 1000  # some components under MIN_WEIGHT
    means, scales = (
        torch.randint(-(1 << 19), 1 << 19, shape, generator=g),
        torch.randint(7000, 1 << 26, shape, generator=g),
    )
    unit = weights.sum((0, 1)) << exact.ACT_BITS
    center = torch.div(2 * (weights * means).sum((0, 1)) + unit, 2 * unit, rounding_mode="floor").clamp(
        LATENT_MIN, LATENT_MAX
    )
    reach = (means - (center << exact.ACT_BITS)).abs() + ((10 * scales) >> (exact.SCALE_BITS - exact.ACT_BITS))
    reach = torch.where(weights >= exact.MIN_WEIGHT, reach, torch.zeros_like(reach)).amax((0, 1))
    spread = torch.div(reach + (1 << exact.ACT_BITS) - 1, 1 << exact.ACT_BITS, rounding_mode="floor")
    got = exact.integer_center_and_spread(exact.IntegerMixture(weights.numpy(), means.numpy(), scales.numpy()))
    np.testing.assert_array_equal(got[0], center.numpy())
    np.testing.assert_array_equal(got[1], spread.numpy())


def test_parameters_of_some_channels_are_those_channels_of_all(tiny_model):
    from mixcodec.models.registry import load

    loaded = load(tiny_model(m=12))
    model, path = loaded.net, loaded.context
    g = torch.Generator().manual_seed(3)
    y_padded = torch.randint(-6, 7, (12, 4 + 2, 8 + 4), generator=g).double()
    hyper = loaded.hyperprior.hyper(torch.randint(-3, 4, (1, model.config.n, 1, 2), generator=g).float())
    rows, cols = np.array([0, 1, 3]), np.array([2, 7, 0])
    everything = path.params(y_padded, hyper, rows, cols, np.arange(12))
    some = np.array([0, 5, 11])
    subset = path.params(y_padded, hyper, rows, cols, some)
    again = path.params(y_padded, hyper, rows, cols, np.arange(12))  # the cache follows the channels
    assert subset.means.shape[2] == 3 * len(some)
    for name in ("weights", "means", "scales"):
        full = getattr(everything, name)
        np.testing.assert_array_equal(
            getattr(subset, name),
            full.reshape(*full.shape[:2], 3, 12)[..., some].reshape(*full.shape[:2], -1),
            err_msg=name,
        )
        np.testing.assert_array_equal(getattr(again, name), full, err_msg=name)
    assert len(np.unique(everything.means)) > 3  # the comparison is not between constants


@pytest.mark.parametrize("split", [False, True])
def test_integer_linear_is_the_float64_product_at_the_extreme_bounds(split, monkeypatch):
    """Weights ±(2**15 - 1) and inputs ±ACT_LIMIT of one sign make the largest sums the
    bound allows (2**46.6, far beyond float32's 2**24); random ones of mixed signs the
    usual case.  Output counts that are not multiples of the kernel's tile of four, a
    single position, and more positions than the kernel takes (the GEMM) are covered;
    ``split``: every kernel call shares its outputs with a helper thread."""
    from concurrent.futures import ThreadPoolExecutor

    if split:
        monkeypatch.setattr(exact, "SPLIT_MULTIPLY_ADDS", 0)
    helper = ThreadPoolExecutor(1) if split else None
    g = np.random.default_rng(4)
    top = 2**exact.WEIGHT_LIMIT_BITS - 1
    for positions, inputs, outputs in ((1, 1536, 7), (11, 640, 18), (3, 5, 1), (exact.KERNEL_POSITIONS + 1, 64, 5)):
        weights = g.integers(-top, top + 1, (inputs, outputs))
        weights[:, 0] = top  # every product of output 0 is as large as it may be, all of one sign
        x = g.integers(-int(exact.ACT_LIMIT), int(exact.ACT_LIMIT) + 1, (positions, inputs))
        x[0] = exact.ACT_LIMIT
        bias = g.integers(-(2**40), 2**40, outputs)
        layer = exact.IntegerLinear(
            np.ascontiguousarray(weights.T, dtype=np.float32), bias.astype(np.float64), bits=exact.ACT_BITS
        )
        got = layer.accumulate(torch.from_numpy(x.astype(np.float64)), helper)
        expected = x @ weights + bias  # int64: exact
        assert expected[0, 0] == exact.ACT_LIMIT * top * inputs + bias[0]
        np.testing.assert_array_equal(got.numpy().astype(np.int64), expected)
        torch.testing.assert_close(layer(torch.from_numpy(x.astype(np.float64))), exact.requantize(got, layer.bits))


def test_integer_linear_refuses_a_layer_whose_sums_could_exceed_2_to_53():
    inputs = 2**12
    rows = np.full((2, inputs), 2.0**exact.WEIGHT_LIMIT_BITS - 1, dtype=np.float32)
    largest = exact.ACT_LIMIT * rows[0].sum(dtype=np.float64)  # 2**20 · 2**12 · (2**15 - 1) < 2**47
    room = exact.FLOAT64_EXACT - largest
    exact.IntegerLinear(rows, np.array([room - 1, -(room - 1)]), bits=0)  # the edge: still exact
    with pytest.raises(ValueError, match="2\\*\\*53"):
        exact.IntegerLinear(rows, np.array([0.0, -room]), bits=0)
    with pytest.raises(ValueError, match="2\\*\\*53"):
        exact.IntegerLinear(np.full((1, 2**19), 2.0**14, dtype=np.float32), np.zeros(1), bits=0)  # 2**53 exactly


def test_sums_beyond_2_to_53_would_round():
    """Why the bound is checked: past ``2**53`` the kernel's float64 sums are no longer the
    integers (here ``2**53 + 1`` comes out as ``2**53``)."""
    rows = np.array([[2.0**14] * 2**19 + [1.0]], dtype=np.float32)
    x = np.full((1, rows.shape[1]), exact.ACT_LIMIT)
    x[0, -1] = 1.0
    out = np.empty((1, 1))
    exact._linear_kernel(x, rows, np.zeros(1), out)
    assert int(out[0, 0]) != 2**53 + 1 == int((x.astype(np.int64) @ rows.T.astype(np.int64))[0, 0])


def test_integer_linear_columns_are_those_outputs_of_the_whole_layer():
    g = torch.Generator().manual_seed(5)
    layer = exact.IntegerLinear.from_weight(torch.randn(40, 9, generator=g), torch.randn(9, generator=g))
    x = exact.to_fixed(torch.randn(6, 40, generator=g) * 30)
    some = np.array([8, 0, 3, 4, 5])
    torch.testing.assert_close(layer.columns(some)(x), layer(x)[:, some], rtol=0, atol=0)
    assert len(torch.unique(layer(x))) > 10


def test_compiled_activations_are_the_torch_arithmetic():
    """Every integer activation: the compiled LeakyReLU rounds ``0.01 x`` and ``+ 0.5``
    separately (a kernel contracted to an FMA differs at one of the 2**20 negative values),
    and requantization rounds half up and clips."""
    x = torch.arange(-exact.ACT_LIMIT, exact.ACT_LIMIT + 1, dtype=torch.float64)
    leaky = torch.where(x < 0, torch.floor(x * 0.01 + 0.5), x)
    torch.testing.assert_close(exact.leaky_relu(x), leaky, rtol=0, atol=0)
    acc = x * 2.0**3 + torch.arange(len(x)) % 8 - 4  # every fraction, ties included
    for bits in (0, 3):
        expected = torch.floor(acc * 2.0**-bits + 0.5).clamp(-exact.ACT_LIMIT, exact.ACT_LIMIT)
        torch.testing.assert_close(exact.requantize(acc, bits), expected, rtol=0, atol=0)
        expected = torch.where(expected < 0, torch.floor(expected * 0.01 + 0.5), expected)
        torch.testing.assert_close(exact.requantize(acc, bits, leaky=True), expected, rtol=0, atol=0)
