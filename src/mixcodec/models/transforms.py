"""Analysis, synthesis and hyper transforms of the Cheng 2020 / GLLMM backbone.

``backbone="residual"`` is Cheng et al.'s attention network; ``backbone="crm"``
replaces every stride-1 residual block by a concatenated residual module
(Fu et al.).  The image is down-sampled by 16 to ``y`` (``m`` channels) and by 64
to ``z`` (``n`` channels); the transforms work with ``n`` channels.
"""

from __future__ import annotations

from torch import nn

from ..layers import (
    ConcatenatedResidualModule,
    ResidualBlock,
    ResidualBlockUpsample,
    ResidualBlockWithStride,
    SimplifiedAttention,
    conv3x3,
    subpel_conv3x3,
)

BACKBONES = ("residual", "crm")


def _refine(backbone: str, channels: int) -> nn.Module:
    if backbone == "crm":
        return ConcatenatedResidualModule(channels)
    if backbone == "residual":
        return ResidualBlock(channels, channels)
    raise ValueError(f"unknown backbone {backbone!r}")


def analysis(backbone: str, n: int, m: int) -> nn.Sequential:
    """``g_a``: image ``(B, 3, H, W)`` -> latent ``y`` ``(B, m, H/16, W/16)`` (``n`` channels inside)."""
    return nn.Sequential(
        ResidualBlockWithStride(3, n),
        _refine(backbone, n),
        ResidualBlockWithStride(n, n),
        SimplifiedAttention(n),
        _refine(backbone, n),
        ResidualBlockWithStride(n, n),
        _refine(backbone, n),
        conv3x3(n, m, stride=2),
        SimplifiedAttention(m),
    )


def synthesis(backbone: str, n: int, m: int) -> nn.Sequential:
    """``g_s``: latent ``(B, m, h, w)`` -> image ``(B, 3, 16h, 16w)`` (``n`` channels inside)."""
    return nn.Sequential(
        SimplifiedAttention(m),
        _refine(backbone, m),
        ResidualBlockUpsample(m, n),
        _refine(backbone, n),
        ResidualBlockUpsample(n, n),
        SimplifiedAttention(n),
        _refine(backbone, n),
        ResidualBlockUpsample(n, n),
        _refine(backbone, n),
        subpel_conv3x3(n, 3, 2),
    )


def hyper_analysis(n: int, m: int) -> nn.Sequential:
    """``h_a``: ``y`` ``(B, m, h, w)`` -> ``z`` ``(B, n, h/4, w/4)``."""
    act = nn.LeakyReLU
    return nn.Sequential(
        conv3x3(m, n), act(), conv3x3(n, n), act(), conv3x3(n, n, 2), act(), conv3x3(n, n), act(), conv3x3(n, n, 2)
    )


def hyper_synthesis(n: int, m: int) -> nn.Sequential:
    """``h_s``: ``z`` ``(B, n, h, w)`` -> hyper features ``(B, 2m, 4h, 4w)``."""
    act = nn.LeakyReLU
    wide = m * 3 // 2
    return nn.Sequential(
        conv3x3(n, n),
        act(),
        subpel_conv3x3(n, n, 2),
        act(),
        conv3x3(n, wide),
        act(),
        subpel_conv3x3(wide, wide, 2),
        act(),
        conv3x3(wide, 2 * m),
    )
