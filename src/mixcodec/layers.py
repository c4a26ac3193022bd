"""Building blocks of the analysis/synthesis transforms (all tensors ``(B, C, H, W)``)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .entropy.distributions import lower_bound


def _sum(fresh: Tensor, other: Tensor) -> Tensor:
    """``fresh + other``, written into ``fresh`` (an intermediate no one else holds) when no
    autograd graph is being recorded.  The same values either way (addition commutes exactly);
    at inference it spares one full-size allocation per block, which for a Kodak-size image
    is a fresh 38 MB ``mmap`` and its page faults (docs/results.md, Speed)."""
    return fresh + other if torch.is_grad_enabled() else fresh.add_(other)


def conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1)


def conv1x1(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 1, stride=stride)


def subpel_conv3x3(cin: int, cout: int, factor: int = 2) -> nn.Sequential:
    """Sub-pixel up-sampling: 3x3 conv to ``cout * factor**2`` channels, then pixel shuffle."""
    return nn.Sequential(conv3x3(cin, cout * factor**2), nn.PixelShuffle(factor))


class GDN(nn.Module):
    """Generalized divisive normalization ``x / sqrt(beta + gamma @ x**2)`` (inverse: multiply).

    ``beta`` and ``gamma`` are re-parametrized as squares of bounded parameters so
    they stay positive during training.
    """

    _PEDESTAL = 2**-18

    def __init__(self, channels: int, inverse: bool = False, beta_min: float = 1e-6, gamma_init: float = 0.1):
        super().__init__()
        self.inverse = inverse
        self._beta_bound = (beta_min + self._PEDESTAL) ** 0.5
        self._gamma_bound = self._PEDESTAL**0.5
        self.beta = nn.Parameter(torch.sqrt(torch.ones(channels) + self._PEDESTAL))
        self.gamma = nn.Parameter(torch.sqrt(gamma_init * torch.eye(channels) + self._PEDESTAL))

    def forward(self, x: Tensor) -> Tensor:
        beta = lower_bound(self.beta, self._beta_bound) ** 2 - self._PEDESTAL
        gamma = lower_bound(self.gamma, self._gamma_bound) ** 2 - self._PEDESTAL
        norm = nn.functional.conv2d(x * x, gamma[:, :, None, None], beta)
        if torch.is_grad_enabled():
            return x * torch.sqrt(norm) if self.inverse else x * torch.rsqrt(norm)
        return (norm.sqrt_() if self.inverse else norm.rsqrt_()).mul_(x)  # the same values, in place


class MaskedConv2d(nn.Conv2d):
    """Type-A masked convolution: each output sees only positions strictly before it
    in raster order (rows above, and the same row to the left)."""

    def __init__(self, cin: int, cout: int, kernel_size: int = 5):
        super().__init__(cin, cout, kernel_size, padding=kernel_size // 2)
        mask = torch.ones_like(self.weight)
        k = kernel_size // 2
        mask[:, :, k, k:] = 0
        mask[:, :, k + 1 :] = 0
        self.register_buffer("mask", mask, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return nn.functional.conv2d(x, self.weight * self.mask, self.bias, padding=self.padding)


class ResidualBlock(nn.Module):
    """conv3x3 - LeakyReLU - conv3x3 - LeakyReLU, plus identity (1x1 conv if widths differ)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.body = nn.Sequential(
            conv3x3(cin, cout), nn.LeakyReLU(inplace=True), conv3x3(cout, cout), nn.LeakyReLU(inplace=True)
        )
        self.skip = conv1x1(cin, cout) if cin != cout else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return _sum(self.body(x), self.skip(x))


class ResidualBlockWithStride(nn.Module):
    """Down-sampling residual block: strided conv3x3 - LeakyReLU - conv3x3 - GDN, plus strided 1x1."""

    def __init__(self, cin: int, cout: int, stride: int = 2):
        super().__init__()
        self.body = nn.Sequential(
            conv3x3(cin, cout, stride), nn.LeakyReLU(inplace=True), conv3x3(cout, cout), GDN(cout)
        )
        self.skip = conv1x1(cin, cout, stride)

    def forward(self, x: Tensor) -> Tensor:
        return _sum(self.body(x), self.skip(x))


class ResidualBlockUpsample(nn.Module):
    """Up-sampling residual block: sub-pixel conv - LeakyReLU - conv3x3 - IGDN, plus sub-pixel skip."""

    def __init__(self, cin: int, cout: int, factor: int = 2):
        super().__init__()
        self.body = nn.Sequential(
            subpel_conv3x3(cin, cout, factor), nn.LeakyReLU(inplace=True), conv3x3(cout, cout), GDN(cout, inverse=True)
        )
        self.skip = subpel_conv3x3(cin, cout, factor)

    def forward(self, x: Tensor) -> Tensor:
        return _sum(self.body(x), self.skip(x))


class ConcatenatedResidualModule(nn.Module):
    """CRM of Fu et al.: ``stages`` residual blocks in series plus an outer shortcut."""

    def __init__(self, channels: int, stages: int = 2):
        super().__init__()
        self.blocks = nn.Sequential(*(ResidualBlock(channels, channels) for _ in range(stages)))

    def forward(self, x: Tensor) -> Tensor:
        return _sum(self.blocks(x), x)


class AttentionUnit(nn.Module):
    """1x1 (N/2) - ReLU - 3x3 (N/2) - ReLU - 1x1 (N), plus identity, then ReLU."""

    def __init__(self, channels: int):
        super().__init__()
        half = channels // 2
        self.body = nn.Sequential(
            conv1x1(channels, half),
            nn.ReLU(inplace=True),
            conv3x3(half, half),
            nn.ReLU(inplace=True),
            conv1x1(half, channels),
        )
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(_sum(self.body(x), x))


class SimplifiedAttention(nn.Module):
    """Cheng et al.'s simplified attention module: ``x + a(x) * sigmoid(b(x))``.

    ``a`` is three attention units; ``b`` is three units followed by a 1x1 conv.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.trunk = nn.Sequential(*(AttentionUnit(channels) for _ in range(3)))
        self.mask = nn.Sequential(*(AttentionUnit(channels) for _ in range(3)), conv1x1(channels, channels))

    def forward(self, x: Tensor) -> Tensor:
        if torch.is_grad_enabled():
            return x + self.trunk(x) * torch.sigmoid(self.mask(x))
        return self.trunk(x).mul_(self.mask(x).sigmoid_()).add_(x)  # the same values, in place
