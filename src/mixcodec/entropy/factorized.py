"""Factorized (non-parametric) prior for the hyper-latent ``z``.

Each channel has its own univariate density, defined through a learned
monotonic cumulative function ``logit(CDF)`` built from small per-channel
affine layers with ``softplus`` weights and ``tanh`` gating (Ballé et al. 2018,
appendix 6.1).  Learned quantiles per channel give the coding support and the
median that ``z`` is centred on before rounding; they are fitted by
:meth:`FactorizedPrior.aux_loss`.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor, nn

from .distributions import LATENT_MAX, LATENT_MIN, LIKELIHOOD_MIN, lower_bound

_TAIL_MASS = 1e-9


class FactorizedPrior(nn.Module):
    """Per-channel learned density for ``z`` of shape ``(B, C, H, W)``.

    Args:
        channels: number of channels ``C``.
        filters: hidden widths of the per-channel cumulative function.
        init_scale: initial spread of the density (in latent units).
    """

    def __init__(self, channels: int, filters: tuple[int, ...] = (3, 3, 3), init_scale: float = 10.0):
        super().__init__()
        self.channels = channels
        widths = (1, *filters, 1)
        scale = init_scale ** (1 / (len(widths) - 1))
        self.matrices = nn.ParameterList()
        self.biases = nn.ParameterList()
        self.factors = nn.ParameterList()
        for i in range(len(widths) - 1):
            init = math.log(math.expm1(1 / scale / widths[i + 1]))
            self.matrices.append(nn.Parameter(torch.full((channels, widths[i + 1], widths[i]), init)))
            self.biases.append(nn.Parameter(torch.rand(channels, widths[i + 1], 1) - 0.5))
            if i < len(widths) - 2:
                self.factors.append(nn.Parameter(torch.zeros(channels, widths[i + 1], 1)))
        target = math.log(2 / _TAIL_MASS - 1)
        self.quantiles = nn.Parameter(torch.tensor([-init_scale, 0.0, init_scale]).repeat(channels, 1, 1))
        self.register_buffer("quantile_targets", torch.tensor([-target, 0.0, target]), persistent=False)

    def logits_cumulative(self, x: Tensor, detach_density: bool = False) -> Tensor:
        """``logit(CDF(x))`` for ``x`` of shape ``(C, 1, n)``; returns ``(C, 1, n)``.

        ``detach_density`` stops gradients into the density (used by :meth:`aux_loss`).
        """
        for i, (matrix, bias) in enumerate(zip(self.matrices, self.biases)):
            if detach_density:
                matrix, bias = matrix.detach(), bias.detach()
            x = torch.matmul(nn.functional.softplus(matrix), x) + bias
            if i < len(self.factors):
                factor = self.factors[i].detach() if detach_density else self.factors[i]
                x = x + torch.tanh(factor) * torch.tanh(x)
        return x

    @property
    def medians(self) -> Tensor:
        """Per-channel medians, shape ``(C,)``."""
        return self.quantiles[:, 0, 1].detach()

    def likelihood(self, z: Tensor) -> Tensor:
        """Mass of the unit bin around each (noisy or quantized) value of ``z`` (B, C, H, W)."""
        b, c, h, w = z.shape
        flat = z.permute(1, 0, 2, 3).reshape(c, 1, -1)
        lower = self.logits_cumulative(flat - 0.5)
        upper = self.logits_cumulative(flat + 0.5)
        sign = -torch.sign(lower + upper).detach()
        mass = (torch.sigmoid(sign * upper) - torch.sigmoid(sign * lower)).abs()
        mass = lower_bound(mass, LIKELIHOOD_MIN)
        return mass.reshape(c, b, h, w).permute(1, 0, 2, 3)

    def quantize(self, z: Tensor, noise: bool) -> Tensor:
        """Uniform noise (training), or rounding around the per-channel medians with the
        symbol clipped to the coder's range ``[LATENT_MIN, LATENT_MAX]``: the ``ẑ`` a file stores."""
        if noise:
            return z + torch.empty_like(z).uniform_(-0.5, 0.5)
        medians = self.medians.view(1, -1, 1, 1)
        return torch.round(z - medians).clamp(LATENT_MIN, LATENT_MAX) + medians

    def aux_loss(self) -> Tensor:
        """Loss that moves the learned quantiles to the tails and median of each density."""
        logits = self.logits_cumulative(self.quantiles, detach_density=True)
        return (logits - self.quantile_targets.view(1, 1, 3)).abs().sum()

    @torch.no_grad()
    def symbol_tables(self) -> tuple[np.ndarray, np.ndarray]:
        """PMFs for coding ``round(z - median)`` per channel.

        Returns:
            ``(pmf, offsets)``: ``pmf`` of shape ``(C, W)`` (float64) holds the
            probability of symbol ``offsets[c] + j`` in column ``j``.
        """
        quantiles = self.quantiles[:, 0].double()
        medians = quantiles[:, 1:2]
        low = torch.floor(quantiles[:, 0:1] - medians).clamp(LATENT_MIN, -1)
        high = torch.ceil(quantiles[:, 2:3] - medians).clamp(1, LATENT_MAX)
        width = int((high - low).max().item()) + 1
        values = low + torch.arange(width, dtype=torch.float64)  # (C, W)
        points = (values + medians).to(self.quantiles.dtype).unsqueeze(1)
        lower = self.logits_cumulative(points - 0.5).double()
        upper = self.logits_cumulative(points + 0.5).double()
        sign = -torch.sign(lower + upper)
        pmf = (torch.sigmoid(sign * upper) - torch.sigmoid(sign * lower)).abs().squeeze(1)
        return pmf.numpy(), low.squeeze(1).to(torch.int64).numpy()

    def integer_tables(self) -> dict[str, Tensor]:
        """:meth:`symbol_tables` as integers (PMF in units of ``2**-32``), to store with the
        weights: coding ``z`` then needs no floating point at all, so it is exact everywhere."""
        pmf, offsets = self.symbol_tables()
        return {
            "z_pmf": torch.from_numpy(np.round(pmf * 2.0**32)).to(torch.int64),
            "z_offsets": torch.from_numpy(offsets),
        }
