"""Rate-distortion objectives ``L = λ·D + R`` (rate in bits per pixel)."""

from __future__ import annotations

import math

import torch
from pytorch_msssim import ms_ssim
from torch import Tensor

METRICS = ("mse", "ms-ssim")


def bits_per_pixel(likelihoods: dict[str, Tensor], num_pixels: int) -> Tensor:
    """Total ``-log2`` likelihood of ``y`` and ``z`` divided by the number of pixels."""
    return sum(-torch.log2(likelihoods[k]).sum() for k in ("y", "z")) / num_pixels


def rate_distortion_loss(output: dict[str, Tensor], target: Tensor, lmbda: float, metric: str) -> dict[str, Tensor]:
    """``λ·255²·MSE + bpp`` (metric ``mse``) or ``λ·(1 - MS-SSIM) + bpp`` (``ms-ssim``).

    Args:
        output: model output with ``x_hat`` and likelihoods ``y``, ``z``.
        target: images in ``[0, 1]``, ``(B, 3, H, W)``.
    Returns:
        ``loss``, ``bpp``, ``mse`` and ``psnr`` (dB, on [0, 1] images) as scalars,
        plus ``ms_ssim`` for the MS-SSIM objective.
    """
    b, _, h, w = target.shape
    x_hat = output["x_hat"].float()
    bpp = bits_per_pixel(output, b * h * w)
    mse = torch.mean((x_hat - target) ** 2)
    result = {"bpp": bpp, "mse": mse, "psnr": -10 * torch.log10(mse.detach().clamp_min(1e-10))}
    if metric == "mse":
        result["loss"] = lmbda * 255**2 * mse + bpp
    elif metric == "ms-ssim":
        score = ms_ssim(x_hat.clamp(0, 1), target, data_range=1.0)
        result["ms_ssim"] = score
        result["loss"] = lmbda * (1 - score) + bpp
    else:
        raise ValueError(f"unknown metric {metric!r}; choose one of {METRICS}")
    return result


def psnr(mse: float) -> float:
    """PSNR in dB of an MSE measured on 8-bit values (0..255)."""
    return 10 * math.log10(255**2 / mse) if mse > 0 else float("inf")
