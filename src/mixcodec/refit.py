"""Refitting the entropy model of a trained model to the latents its files code.

Training measures the rate of ``y + u`` with uniform noise ``u`` (a differentiable
stand-in for rounding), while a file codes ``ŷ = round(y)``.  Once the transforms,
the hyperprior and the quality gains are final, the 5x5 context convolution and the
entropy-parameter network (:data:`REFIT_MODULES`) can be fitted to the latents that
files actually hold, by minimizing their code length ``-log2 P(ŷ | ẑ)`` directly.
Every file decodes to the same image as before; only its size changes.

The latents of random training crops (at qualities drawn uniformly from the model's
levels) are computed once and cached, so a step costs only the entropy model.
``benchmarks/entropy_ablation.py`` uses the same routine from a fresh initialization
to compare entropy families on identical latents.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from .codec import quantize_latents
from .data import CropSampler
from .models.context_model import ContextMixtureModel

#: The modules a refit trains; everything else stays as it is.
REFIT_MODULES = ("context", "entropy_parameters")


def cached_latents(
    model: ContextMixtureModel, data: Path, crops: int = 1024, crop: int = 256, seed: int = 0
) -> tuple[Tensor, Tensor]:
    """Rounded latents and hyper features of ``crops`` random crops of the images under ``data``.

    Returns:
        ``ŷ`` ``(crops, m, crop/16, crop/16)`` and ``h_s(ẑ)`` ``(crops, 2m, crop/16, crop/16)``,
        float32; each crop at a quality drawn uniformly from ``1 .. Q``.
    """
    sampler = CropSampler(data, crop, seed=seed)
    levels = torch.Generator().manual_seed(seed)
    y_hats, hypers = [], []
    with torch.no_grad():
        for start in range(0, crops, 8):
            x = sampler.sample(min(8, crops - start))
            quality = torch.randint(1, model.config.qualities + 1, (x.shape[0],), generator=levels)
            y_hat, z_hat = quantize_latents(model, x, quality)
            y_hats.append(y_hat.contiguous())
            hypers.append(model.h_s(z_hat).contiguous())
    return torch.cat(y_hats), torch.cat(hypers)


def refit(
    model: ContextMixtureModel,
    y_hats: Tensor,
    hypers: Tensor,
    steps: int = 2000,
    batch: int = 8,
    lr: float = 3e-4,
    seed: int = 0,
    progress: bool = False,
) -> list[float]:
    """Fit :data:`REFIT_MODULES` of ``model`` (in place) to cached latents.

    Adam at ``lr``, then ``lr / 10`` for the last 20 % of the steps, gradients clipped
    to norm 1; the other parameters are left untouched.

    Returns:
        Mean bits per latent element over each tenth of the steps.
    """
    params = [p for name, p in model.named_parameters() if name.split(".")[0] in REFIT_MODULES]
    optimizer = torch.optim.Adam(params, lr=lr)
    draws = torch.Generator().manual_seed(seed)
    trace, window = [], []
    for step in tqdm(range(steps), disable=not progress, dynamic_ncols=True, mininterval=5):
        for group in optimizer.param_groups:
            group["lr"] = lr if step < 0.8 * steps else lr / 10
        index = torch.randint(len(y_hats), (batch,), generator=draws)
        y_hat = y_hats[index]
        bits = model.y_codec.code_length(y_hat, hypers[index]) / y_hat.numel()
        optimizer.zero_grad(set_to_none=True)
        bits.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        window.append(bits.item())
        if (step + 1) % max(1, steps // 10) == 0 or step + 1 == steps:
            trace.append(float(np.mean(window)))
            window = []
    return trace
