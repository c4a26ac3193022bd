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
        torch.tensor([[[1 << exact.MIX_BITS]]]), torch.tensor([[[-300 << exact.ACT_BITS]]]), torch.tensor([[[1 << exact.SCALE_BITS]]])
    )
    low = exact.integer_window_pmf(spec, torch.tensor([LATENT_MIN - 2]), 4, mixture)[0]
    assert low.tolist() == [0, 0, 1 << exact.PMF_BITS, 0]  # nothing below the range; the lowest bin holds all the mass
    far = exact.IntegerMixture(mixture.weights, torch.tensor([[[300 << exact.ACT_BITS]]]), mixture.scales)
    high = exact.integer_window_pmf(spec, torch.tensor([LATENT_MAX - 1]), 3, far)[0]
    assert high.tolist() == [0, 1 << exact.PMF_BITS, 0]


def test_integer_networks_follow_the_float_networks(tiny_model):
    model = load_model(tiny_model())
    z = torch.randn(1, model.config.n, 2, 3) * 4
    with torch.no_grad():
        expected = model.h_s(z.double().float()).double()
    got = exact.IntegerSequential(model.h_s)(exact.to_fixed(z)) * 2.0**-exact.ACT_BITS
    assert (got - expected).abs().max() < 0.05
