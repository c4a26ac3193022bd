"""The discretized families and mixtures: normalization, agreement with scipy, stable gradients."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from mixcodec.entropy.distributions import (
    ENTROPY_FAMILIES,
    FAMILIES,
    LATENT_MAX,
    LATENT_MIN,
    MixtureParams,
    bin_mass,
    mixture_likelihood,
    split_params,
)

SCIPY = {"gaussian": stats.norm, "laplacian": stats.laplace, "logistic": stats.logistic}
SUPPORT = torch.arange(LATENT_MIN, LATENT_MAX + 1, dtype=torch.float64)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("mean,scale", [(0.0, 1.0), (3.3, 0.2), (-100.7, 40.0), (250.0, 5.0), (-254.0, 300.0)])
def test_family_sums_to_one_and_matches_scipy(family, mean, scale):
    mass = bin_mass(family, SUPPORT, torch.tensor(mean, dtype=torch.float64), torch.tensor(scale, dtype=torch.float64))
    assert mass.sum().item() == pytest.approx(1.0, abs=1e-12)
    dist = SCIPY[family](loc=mean, scale=scale)
    expected = dist.cdf(SUPPORT.numpy() + 0.5) - dist.cdf(SUPPORT.numpy() - 0.5)
    expected[0] = dist.cdf(LATENT_MIN + 0.5)
    expected[-1] = dist.sf(LATENT_MAX - 0.5)
    np.testing.assert_allclose(mass.numpy(), expected, rtol=1e-9, atol=1e-15)


@pytest.mark.parametrize("name", sorted(ENTROPY_FAMILIES))
def test_mixture_sums_to_one_and_matches_weighted_components(name):
    spec = ENTROPY_FAMILIES[name]
    torch.manual_seed(0)
    raw = torch.randn(5, spec.params_per_channel * 2, dtype=torch.float64) * 3
    params = split_params(spec, raw)  # (F, K, 5, 2)
    assert torch.allclose(params.weights.sum((0, 1)), torch.ones(5, 2, dtype=torch.float64))
    grid = SUPPORT.view(-1, 1, 1)
    over_grid = MixtureParams(*(t.unsqueeze(2) for t in (params.weights, params.means, params.scales)))
    pmf = mixture_likelihood(spec, grid, over_grid)  # (512, 5, 2)
    # exact up to the likelihood floor (1e-9 per value) that training relies on
    torch.testing.assert_close(pmf.sum(0), torch.ones(5, 2, dtype=torch.float64), atol=SUPPORT.numel() * 1e-9, rtol=0)
    # one element against scipy, component by component
    v = SUPPORT.numpy()
    expected = np.zeros_like(v)
    for f, family in enumerate(spec.families):
        for k in range(spec.components):
            dist = SCIPY[family](loc=params.means[f, k, 2, 1].item(), scale=max(params.scales[f, k, 2, 1].item(), 0.11))
            m = dist.cdf(v + 0.5) - dist.cdf(v - 0.5)
            m[0], m[-1] = dist.cdf(LATENT_MIN + 0.5), dist.sf(LATENT_MAX - 0.5)
            expected += params.weights[f, k, 2, 1].item() * m
    np.testing.assert_allclose(pmf[:, 2, 1].numpy(), np.maximum(expected, 1e-9), rtol=1e-7, atol=1e-12)


def test_gllmm_layout_has_three_families_of_three():
    spec = ENTROPY_FAMILIES["gllmm"]
    assert spec.families == ("gaussian", "laplacian", "logistic") and spec.components == 3
    assert spec.params_per_channel == 30
    assert ENTROPY_FAMILIES["gmm"].params_per_channel == 9


@pytest.mark.parametrize("family", FAMILIES)
def test_far_tails_have_finite_values_and_gradients(family):
    distance = torch.tensor([-500.0, -300.0, -1.0, 0.0, 0.3, 250.0, 500.0])
    scales = torch.tensor([0.01, 0.11, 1.0, 50.0, 500.0])
    means = (torch.zeros(5, 7) + 0.0).requires_grad_(True)
    scale_param = scales.view(5, 1).expand(5, 7).clone().requires_grad_(True)
    values = (distance.view(1, 7) + means.detach()).clamp(LATENT_MIN - 1, LATENT_MAX + 1)
    mass = bin_mass(family, values, means, scale_param)
    assert torch.isfinite(mass).all() and (mass >= 0).all()
    torch.log(mass.clamp_min(1e-9)).sum().backward()
    assert torch.isfinite(means.grad).all() and torch.isfinite(scale_param.grad).all()


def test_mixture_likelihood_gradients_finite_in_float32():
    spec = ENTROPY_FAMILIES["gllmm"]
    raw = (torch.randn(4, spec.params_per_channel * 3) * 50).requires_grad_(True)
    values = torch.tensor([[-255.0], [0.2], [256.0], [120.0]]).expand(4, 3)
    lik = mixture_likelihood(spec, values, split_params(spec, raw))
    (-torch.log2(lik)).sum().backward()
    assert torch.isfinite(raw.grad).all()
