"""Discretized continuous distributions and their mixtures.

This module is the single place where the probability of a quantized latent is
defined.  Training (likelihoods of noisy latents), entropy coding (PMF tables
over integer supports) and the tests all call :func:`mixture_likelihood`.

Conventions
-----------
* A *family* is a location-scale distribution with a closed-form CDF
  ``c((x - mean) / scale)``: ``gaussian``, ``laplacian`` or ``logistic``.
* The probability of an integer value ``v`` is the mass of the unit bin
  ``[v - 0.5, v + 0.5]``.  Latents live in the clipped range
  ``[LATENT_MIN, LATENT_MAX] = [-255, 256]``; the lowest bin extends to
  ``-inf`` (``c(-inf) = 0``) and the highest to ``+inf`` (``c(+inf) = 1``), so the
  masses over the whole range sum to exactly one.
* A :class:`MixtureSpec` names the families and the number of components per
  family.  The entropy-parameter network outputs, for every latent channel,
  ``spec.params_per_channel`` numbers laid out as ``[family][logit|mean|scale][k]``
  followed by one logit per family (only when there is more than one family).
  Component weights are ``softmax_over_families * softmax_within_family``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

LATENT_MIN = -255
LATENT_MAX = 256
SCALE_MIN = 0.11
LIKELIHOOD_MIN = 1e-9

FAMILIES = ("gaussian", "laplacian", "logistic")


class _LowerBound(torch.autograd.Function):
    """``max(x, bound)`` whose gradient still flows when it pushes ``x`` upwards."""

    @staticmethod
    def forward(ctx, x: Tensor, bound: float) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x)
        ctx.bound = bound
        return x.clamp_min(bound)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        (x,) = ctx.saved_tensors
        passthrough = (x >= ctx.bound) | (grad < 0)
        return grad * passthrough, None


def lower_bound(x: Tensor, bound: float) -> Tensor:
    """Differentiable lower bound (gradient kept where it increases ``x``)."""
    return _LowerBound.apply(x, bound)


def standard_cdf(family: str, t: Tensor) -> Tensor:
    """CDF of the standardized family at ``t`` (any shape); finite gradients everywhere."""
    if family == "gaussian":
        return torch.special.ndtr(t)
    if family == "laplacian":
        # Both branches are evaluated by torch.where; clamping keeps exp() finite.
        neg = 0.5 * torch.exp(t.clamp(max=0.0))
        pos = 1.0 - 0.5 * torch.exp(-t.clamp(min=0.0))
        return torch.where(t < 0, neg, pos)
    if family == "logistic":
        return torch.sigmoid(t)
    raise ValueError(f"unknown family {family!r}")


def bin_mass(family: str, values: Tensor, means: Tensor, scales: Tensor) -> Tensor:
    """Mass of the unit bin around ``values`` under one family (broadcasting shapes).

    The bins at ``LATENT_MIN`` and ``LATENT_MAX`` are open towards -inf and +inf.
    All three families are symmetric, so the interior mass is computed on the
    side of the mean where both CDF values are small, which keeps far tails
    (``|values - means|`` of several hundred) accurate instead of cancelling.
    """
    scales = lower_bound(scales, SCALE_MIN)
    distance = (values - means).abs()
    interior = standard_cdf(family, (0.5 - distance) / scales) - standard_cdf(family, (-0.5 - distance) / scales)
    low_edge = standard_cdf(family, (LATENT_MIN + 0.5 - means) / scales)
    high_edge = standard_cdf(family, (means - (LATENT_MAX - 0.5)) / scales)
    mass = torch.where(values < LATENT_MIN + 0.5, low_edge, interior)
    return torch.where(values > LATENT_MAX - 0.5, high_edge, mass)


@dataclass(frozen=True)
class MixtureSpec:
    """Families of a discretized mixture and the number of components in each."""

    families: tuple[str, ...]
    components: int

    def __post_init__(self) -> None:
        unknown = set(self.families) - set(FAMILIES)
        if unknown or not self.families or self.components < 1:
            raise ValueError(f"bad mixture spec {self}")

    @property
    def params_per_channel(self) -> int:
        """Entropy-parameter outputs per latent channel."""
        family_logits = len(self.families) if len(self.families) > 1 else 0
        return 3 * self.components * len(self.families) + family_logits


ENTROPY_FAMILIES: dict[str, MixtureSpec] = {
    "gaussian": MixtureSpec(("gaussian",), 1),
    "gmm": MixtureSpec(("gaussian",), 3),
    "laplacian-mixture": MixtureSpec(("laplacian",), 3),
    "logistic-mixture": MixtureSpec(("logistic",), 3),
    "gllmm": MixtureSpec(FAMILIES, 3),
}


@dataclass
class MixtureParams:
    """Per-element mixture parameters, each of shape ``(F, K, *element_shape)``."""

    weights: Tensor
    means: Tensor
    scales: Tensor


def param_blocks(spec: MixtureSpec, raw: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """Split raw network outputs into ``(logits, means, raw_scales, family_logits)``.

    Args:
        raw: ``(B, P*C, H, W)`` or ``(n, P*C)``-like tensor whose dimension 1 holds
            ``P = spec.params_per_channel`` blocks of ``C`` channels.
    Returns:
        The first three of shape ``(F, K, B, C, ...)``; family logits ``(F, B, C, ...)``
        or None for a single family.
    """
    fams, k = len(spec.families), spec.components
    p = spec.params_per_channel
    c = raw.shape[1] // p
    blocks = raw.reshape(raw.shape[0], p, c, *raw.shape[2:]).movedim(1, 0)
    comp = blocks[: 3 * k * fams].reshape(fams, 3, k, *blocks.shape[1:])
    family_logits = blocks[3 * k * fams :] if fams > 1 else None
    return comp[:, 0], comp[:, 1], comp[:, 2], family_logits


def split_params(spec: MixtureSpec, raw: Tensor) -> MixtureParams:
    """Turn raw network outputs (layout of :func:`param_blocks`) into mixture parameters
    of shape ``(F, K, B, C, ...)``; weights sum to one over F and K."""
    logits, means, raw_scales, family_logits = param_blocks(spec, raw)
    weights = torch.softmax(logits, dim=1)
    if family_logits is not None:
        weights = weights * torch.softmax(family_logits, dim=0).unsqueeze(1)
    return MixtureParams(weights=weights, means=means, scales=F.softplus(raw_scales))


def mixture_likelihood(spec: MixtureSpec, values: Tensor, params: MixtureParams) -> Tensor:
    """Probability of each (integer or noisy) value under the discretized mixture.

    Args:
        values: element values, broadcastable against ``params.means[0, 0]``.
    Returns:
        Likelihoods with the broadcast element shape, bounded below by ``LIKELIHOOD_MIN``.
    """
    total = 0.0
    for f, family in enumerate(spec.families):
        mass = bin_mass(family, values.unsqueeze(0), params.means[f], params.scales[f])
        total = total + (params.weights[f] * mass).sum(0)
    return lower_bound(total, LIKELIHOOD_MIN)
