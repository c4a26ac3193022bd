"""The integer entropy-parameter path: shipped tables, agreement with the float model."""

from __future__ import annotations

import numpy as np
import torch

from mixcodec.entropy import exact
from mixcodec.entropy.distributions import ENTROPY_FAMILIES, LATENT_MAX, LATENT_MIN, mixture_likelihood, split_params
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
        mixture = exact.integer_params(spec, fixed)
        values = torch.arange(-40, 41)
        expected = mixture_likelihood(spec, values.double()[:, None, None], type(reference)(*(t[:, :, None] for t in (reference.weights, reference.means, reference.scales))))
        flat = exact.IntegerMixture(*(t[..., 0] for t in (mixture.weights, mixture.means, mixture.scales)))  # (F, K, 200)
        got = exact.integer_window_pmf(spec, torch.full((200,), -40), values.numel(), flat.select(torch.arange(200)))
        got = (got * 2.0**-exact.PMF_BITS).T[:, :, None]  # (81, 200, 1) like expected
        assert torch.isfinite(got).all() and (got >= 0).all()
        # bits under the integer PMF vs the float PMF, weighted by the float PMF
        cost = (expected * (torch.log2(expected) - torch.log2(got.clamp_min(1e-12)))).sum(0)
        assert cost.max() < 0.01, name  # < 0.01 bit per symbol everywhere


def test_edge_bins_are_open():
    spec = ENTROPY_FAMILIES["gaussian"]
    mixture = exact.IntegerMixture(
        torch.tensor([[[[1 << exact.MIX_BITS]]]]), torch.tensor([[[[-300 << exact.ACT_BITS]]]]), torch.tensor([[[[1 << exact.SCALE_BITS]]]])
    )  # (F, K, m, 1)
    low = exact.integer_window_pmf(spec, torch.tensor([LATENT_MIN - 2]), 4, mixture)[0]
    assert low.tolist() == [0, 0, 1 << exact.PMF_BITS, 0]  # nothing below the range; the lowest bin holds all the mass
    far = exact.IntegerMixture(mixture.weights, torch.tensor([[[[300 << exact.ACT_BITS]]]]), mixture.scales)
    high = exact.integer_window_pmf(spec, torch.tensor([LATENT_MAX - 1]), 3, far)[0]
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


def test_compiled_pmf_is_bit_identical_to_tensor_arithmetic():
    g = torch.Generator().manual_seed(1)
    for spec in ENTROPY_FAMILIES.values():
        m, shape = 3000, (len(spec.families), spec.components, 3000, 1)
        mixture = exact.IntegerMixture(
            torch.randint(0, 1 << 14, shape, generator=g),
            torch.randint(-(1 << 17), 1 << 17, shape, generator=g),
            torch.randint(7000, 1 << 24, shape, generator=g),
        )
        for lowest, width in ((torch.randint(-300, 300, (m,), generator=g), 17), (torch.full((m,), LATENT_MIN - 3), 9),
                              (torch.full((m,), LATENT_MAX - 5), 9), (torch.randint(-5, 5, (m,), generator=g), 513)):
            expected = reference_window_pmf(spec, lowest, width, mixture)
            assert torch.equal(exact.integer_window_pmf(spec, lowest, width, mixture), expected)
