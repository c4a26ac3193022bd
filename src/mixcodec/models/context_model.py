"""The joint autoregressive + hyperprior model shared by ``cheng2020-gmm`` and ``gllmm``.

``y = g_a(x)`` is clipped to ``[-255, 256]`` and rounded to ``ŷ``; ``z = h_a(y)``
is coded with a factorized prior; the distribution of each element of ``ŷ`` is a
discretized mixture whose parameters come from the entropy-parameter network
applied to ``[h_s(ẑ), context(ŷ)]``, where ``context`` is a 5x5 type-A masked
convolution.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

from ..entropy.distributions import (
    ENTROPY_FAMILIES,
    LATENT_MAX,
    LATENT_MIN,
    MixtureSpec,
    mixture_likelihood,
    split_params,
)
from ..entropy.factorized import FactorizedPrior
from ..layers import MaskedConv2d, conv1x1
from .transforms import analysis, hyper_analysis, hyper_synthesis, synthesis

#: Spatial down-sampling of ``z`` relative to the image; inputs are padded to a multiple of it.
PAD_MULTIPLE = 64
CONTEXT_KERNEL = 5


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild a model from its weights.

    Attributes:
        backbone: ``"residual"`` (Cheng 2020) or ``"crm"`` (GLLMM's concatenated residual modules).
        family: entropy family name, a key of :data:`ENTROPY_FAMILIES`.
        n: channels of the transforms and of the latent ``y``.
        hidden: widths of the two hidden 1x1 layers of the entropy-parameter network.
    """

    backbone: str = "crm"
    family: str = "gllmm"
    n: int = 128
    hidden: tuple[int, int] = (640, 1280)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "ModelConfig":
        data = json.loads(text)
        data["hidden"] = tuple(data["hidden"])
        return cls(**data)


#: The papers' architectures (N may be overridden).
ARCHITECTURES: dict[str, ModelConfig] = {
    "cheng2020-gmm": ModelConfig(backbone="residual", family="gmm", n=128, hidden=(640, 640)),
    "gllmm": ModelConfig(backbone="crm", family="gllmm", n=128, hidden=(640, 1280)),
}


def ste_round(x: Tensor) -> Tensor:
    """Round in the forward pass, identity gradient in the backward pass."""
    return x + (torch.round(x) - x).detach()


class ContextMixtureModel(nn.Module):
    """Learned image codec with a hyperprior, 5x5 context and a discretized mixture prior."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.spec: MixtureSpec = ENTROPY_FAMILIES[config.family]
        n = config.n
        self.g_a = analysis(config.backbone, n)
        self.g_s = synthesis(config.backbone, n)
        self.h_a = hyper_analysis(n)
        self.h_s = hyper_synthesis(n)
        self.context = MaskedConv2d(n, 2 * n, CONTEXT_KERNEL)
        h1, h2 = config.hidden
        self.entropy_parameters = nn.Sequential(
            conv1x1(4 * n, h1), nn.LeakyReLU(), conv1x1(h1, h2), nn.LeakyReLU(), conv1x1(h2, self.spec.params_per_channel * n)
        )
        self.prior = FactorizedPrior(n)

    def analyse(self, x: Tensor) -> Tensor:
        """Image in ``[0, 1]`` ``(B, 3, H, W)`` (H, W multiples of 64) -> clipped latent ``y``."""
        return self.g_a(x).float().clamp(LATENT_MIN, LATENT_MAX)

    def forward(self, x: Tensor, noise: bool = True) -> dict[str, Tensor]:
        """Training/evaluation pass.

        Args:
            x: images in ``[0, 1]``, ``(B, 3, H, W)`` with H, W multiples of 64.
            noise: additive uniform noise for the likelihoods (training); when False
                latents are rounded, which gives the model's own rate estimate of a file.
        Returns:
            ``x_hat`` ``(B, 3, H, W)`` (float32, unclamped) and the likelihoods
            ``y`` ``(B, n, H/16, W/16)`` and ``z`` ``(B, n, H/64, W/64)``.
        """
        y = self.analyse(x)
        z = self.h_a(y).float()
        z_hat = self.prior.quantize(z, noise=noise)
        z_likelihood = self.prior.likelihood(z_hat)
        hyper = self.h_s(z_hat)
        y_coded = y + torch.empty_like(y).uniform_(-0.5, 0.5) if noise else torch.round(y)
        raw = self.entropy_parameters(torch.cat([hyper, self.context(y_coded)], dim=1))
        with torch.autocast(x.device.type, enabled=False):
            params = split_params(self.spec, raw.float())
            y_likelihood = mixture_likelihood(self.spec, y_coded, params)
        x_hat = self.g_s(ste_round(y) if noise else torch.round(y)).float()
        return {"x_hat": x_hat, "y": y_likelihood, "z": z_likelihood}

    def aux_loss(self) -> Tensor:
        """Quantile-fitting loss of the factorized prior (minimize with its own optimizer)."""
        return self.prior.aux_loss()
