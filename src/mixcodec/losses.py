"""Rate-distortion objectives ``L = λ·D + R`` (rate in bits per pixel)."""

from __future__ import annotations

import math

import torch
from pytorch_msssim import ms_ssim
from torch import Tensor

METRICS = ("mse", "ms-ssim")


def bits_per_image(likelihoods: dict[str, Tensor]) -> Tensor:
    """``-log2`` likelihood of ``y`` and ``z``, summed per image: ``(B,)`` bits."""
    return sum(-torch.log2(likelihoods[k]).flatten(1).sum(1) for k in ("y", "z"))


def rate_distortion_loss(
    output: dict[str, Tensor], target: Tensor, lmbda: float | Tensor, metric: str, weight: float | Tensor = 1.0
) -> dict[str, Tensor]:
    """Weighted mean over the images of ``λ·255²·MSE + bpp`` (metric ``mse``) or ``λ·(1 - MS-SSIM) + bpp``
    (``ms-ssim``).

    Args:
        output: model output with ``x_hat`` and likelihoods ``y``, ``z``.
        target: images in ``[0, 1]``, ``(B, 3, H, W)``.
        lmbda: one λ, or one per image ``(B,)`` (a variable-rate model trained at several qualities).
        weight: a factor per image (``(B,)``) or for all; a constant factor does not move the
            optimum of one λ, but balances the gradients of parameters shared by several λ.
    Returns:
        ``loss`` (scalar); ``bpp``, ``mse``, ``psnr`` (dB, on [0, 1] images) per image ``(B,)``,
        plus ``ms_ssim`` per image for the MS-SSIM objective.
    """
    b, _, h, w = target.shape
    x_hat = output["x_hat"].float()
    bpp = bits_per_image(output) / (h * w)
    mse = ((x_hat - target) ** 2).flatten(1).mean(1)
    result = {"bpp": bpp, "mse": mse, "psnr": -10 * torch.log10(mse.detach().clamp_min(1e-10))}
    lmbda = torch.as_tensor(lmbda, dtype=torch.float32).expand(b)
    if metric == "mse":
        distortion = 255**2 * mse
    elif metric == "ms-ssim":
        result["ms_ssim"] = ms_ssim(x_hat.clamp(0, 1), target, data_range=1.0, size_average=False)
        distortion = 1 - result["ms_ssim"]
    else:
        raise ValueError(f"unknown metric {metric!r}; choose one of {METRICS}")
    result["loss"] = (torch.as_tensor(weight, dtype=torch.float32) * (lmbda * distortion + bpp)).mean()
    return result


def psnr(mse: float) -> float:
    """PSNR in dB of an MSE measured on 8-bit values (0..255)."""
    return 10 * math.log10(255**2 / mse) if mse > 0 else float("inf")
