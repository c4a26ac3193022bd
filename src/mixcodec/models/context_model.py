"""The joint autoregressive + hyperprior model shared by ``cheng2020-gmm`` and ``gllmm``.

``y = g_a(x) · gain_q`` is clipped to ``[-255, 256]`` and rounded to ``ŷ``;
``z = h_a(y)`` is coded with a factorized prior; the distribution of each element
of ``ŷ`` is a discretized mixture whose parameters come from the entropy-parameter
network applied to ``[h_s(ẑ), context(ŷ)]``, where ``context`` is a 5x5 type-A
masked convolution; the image is ``g_s(ŷ · inverse_gain_q)``.

``gain_q`` and ``inverse_gain_q`` are learned per-channel vectors, one pair per
quality level ``q`` (Cui et al. 2021, "gain units"): one model is trained for a
ladder of λ values and codes at any of them (or between two neighbours, by
geometric interpolation).  Everything the entropy coder sees (``ŷ``, ``ẑ`` and the
entropy-parameter path) is the same for every quality; only the two gains change.
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
from ..errors import ConfigError
from ..layers import MaskedConv2d, conv1x1
from .transforms import BACKBONES, analysis, hyper_analysis, hyper_synthesis, synthesis

#: Spatial down-sampling of ``z`` relative to the image; inputs are padded to a multiple of it.
PAD_MULTIPLE = 64
CONTEXT_KERNEL = 5


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild a model from its weights.

    Attributes:
        backbone: ``"residual"`` (Cheng 2020) or ``"crm"`` (GLLMM's concatenated residual modules).
        family: entropy family name, a key of :data:`ENTROPY_FAMILIES`.
        n: channels of the transforms (and of the hyper-latent ``z``).
        m: channels of the latent ``y`` (``None``: ``n``, as in both papers).  Every
            latent position holds ``m`` numbers for 768 pixel values, so ``m`` bounds
            the fidelity that any rate can buy.
        hidden: widths of the two hidden 1x1 layers of the entropy-parameter network.
        qualities: number of quality levels (pairs of gain vectors), 1 for a single-rate model.
        n_s: channels inside the synthesis transform ``g_s`` (``None``: ``n``).  The decoder
            can be wider than the encoder side: the synthesis caps the high qualities
            (docs/training.md), and a trained model is widened without losing what it
            learned (:mod:`.widening`).
        n_a: channels inside the analysis transform ``g_a`` (``None``: ``n``); only the
            encoder runs it, so a wider one costs encode time alone.
    """

    backbone: str = "crm"
    family: str = "gllmm"
    n: int = 128
    hidden: tuple[int, int] = (640, 1280)
    qualities: int = 1
    m: int | None = None
    n_s: int | None = None
    n_a: int | None = None

    def __post_init__(self) -> None:
        if self.m is None:
            object.__setattr__(self, "m", self.n)
        if self.n_s is None:
            object.__setattr__(self, "n_s", self.n)
        if self.n_a is None:
            object.__setattr__(self, "n_a", self.n)
        if self.backbone not in BACKBONES or self.family not in ENTROPY_FAMILIES:
            raise ConfigError(f"unknown backbone {self.backbone!r} or entropy family {self.family!r}")
        if min(self.n, self.m, self.n_s, self.n_a, self.qualities, *self.hidden) < 1:
            raise ConfigError(f"model sizes must be positive: {self}")

    def to_json(self) -> str:
        """Canonical JSON; ``n_s`` and ``n_a`` only where they differ from ``n`` (the JSON of
        the models written before they existed is unchanged)."""
        data = asdict(self)
        for key in ("n_s", "n_a"):
            if data[key] == data["n"]:
                del data[key]
        return json.dumps(data, sort_keys=True)

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


class QualityGains(nn.Module):
    """Per-quality channel gains of the latent (Cui et al. 2021).

    Quality ``q`` is a real number in ``[1, Q]``; integer ``q`` selects row ``q - 1``
    of the log-gain tables, other values interpolate the two neighbouring rows
    linearly in the log domain (geometric interpolation of the gains).
    """

    def __init__(self, qualities: int, channels: int):
        super().__init__()
        self.qualities = qualities
        self.log_gain = nn.Parameter(torch.zeros(qualities, channels))
        self.log_inverse_gain = nn.Parameter(torch.zeros(qualities, channels))

    def init_from_lmbdas(self, lmbdas: list[float]) -> None:
        """Start from gains ``sqrt(λ_q / median λ)``: the step a uniform quantizer would
        need for the trade-off ``λ·D + R`` at high rate (``D ∝ step²``)."""
        log_ratio = 0.5 * torch.log(torch.tensor(lmbdas) / float(torch.tensor(lmbdas).median()))
        with torch.no_grad():
            self.log_gain.copy_(log_ratio[:, None].expand_as(self.log_gain))
            self.log_inverse_gain.copy_(-self.log_gain)

    def forward(self, quality: Tensor) -> tuple[Tensor, Tensor]:
        """``(gain, inverse_gain)`` of shape ``(B, C, 1, 1)`` for qualities ``(B,)``."""

        def gains(table: Tensor) -> Tensor:
            return torch.exp(rows_at(table, quality))[:, :, None, None]

        return gains(self.log_gain), gains(self.log_inverse_gain)


def rows_at(table: Tensor, quality: Tensor) -> Tensor:
    """Rows of a per-quality ``table`` ``(Q, C)`` at real qualities ``(B,)`` in ``[1, Q]``.

    Integer ``q`` selects row ``q - 1``; other values interpolate the two neighbouring
    rows linearly (for log-gains: geometric interpolation of the gains).  Returns ``(B, C)``.
    """
    qualities = table.shape[0]
    position = quality.float().clamp(1, qualities) - 1
    low = position.floor().long().clamp(max=max(qualities - 2, 0))
    high = (low + 1).clamp(max=qualities - 1)
    return torch.lerp(table[low], table[high], (position - low)[:, None].to(table.dtype))


def ste_round(x: Tensor) -> Tensor:
    """Round in the forward pass, identity gradient in the backward pass."""
    return x + (torch.round(x) - x).detach()


class ContextLatentCodec:
    """The float face of the entropy model of ``ŷ``: a masked context convolution and the
    entropy-parameter network that maps ``[h_s(ẑ), context(ŷ)]`` to the parameters of a
    discretized mixture of family ``spec``.  It holds no parameters of its own: it is a
    view of its model's modules (:attr:`ContextMixtureModel.y_codec`), so weight files
    keep their tensor names.  Its exact face, which files are coded with, is
    :class:`mixcodec.context_coding.IntegerContextCodec` (built from this object).
    """

    def __init__(self, context: MaskedConv2d, entropy_parameters: nn.Sequential, spec: MixtureSpec):
        self.context = context
        self.entropy_parameters = entropy_parameters
        self.spec = spec

    def likelihood(self, y_coded: Tensor, hyper: Tensor) -> Tensor:
        """Mass of each element of ``y_coded`` ``(B, m, h, w)`` (noisy or rounded latents) given
        the hyper features ``(B, 2m, h, w)``; float32 of the shape of ``y_coded``."""
        raw = self.entropy_parameters(torch.cat([hyper, self.context(y_coded)], dim=1))
        with torch.autocast(y_coded.device.type, enabled=False):
            return mixture_likelihood(self.spec, y_coded.float(), split_params(self.spec, raw.float()))

    def code_length(self, y_hat: Tensor, hyper: Tensor) -> Tensor:
        """``-log2 P(ŷ | ẑ)`` in bits, summed over everything (a scalar): the float estimate of
        what a file spends on ``ŷ`` (refit minimizes it)."""
        return -torch.log2(self.likelihood(y_hat, hyper)).sum()


class ContextMixtureModel(nn.Module):
    """Learned image codec with a hyperprior, 5x5 context and a discretized mixture prior."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.spec: MixtureSpec = ENTROPY_FAMILIES[config.family]
        n, m = config.n, config.m
        self.g_a = analysis(config.backbone, config.n_a, m)
        self.g_s = synthesis(config.backbone, config.n_s, m)
        self.h_a = hyper_analysis(n, m)
        self.h_s = hyper_synthesis(n, m)
        self.context = MaskedConv2d(m, 2 * m, CONTEXT_KERNEL)
        h1, h2 = config.hidden
        self.entropy_parameters = nn.Sequential(
            conv1x1(4 * m, h1),
            nn.LeakyReLU(),
            conv1x1(h1, h2),
            nn.LeakyReLU(),
            conv1x1(h2, self.spec.params_per_channel * m),
        )
        self.prior = FactorizedPrior(n)
        self.gains = QualityGains(config.qualities, m)

    def _qualities(self, quality: Tensor | float | None, batch: int) -> Tensor:
        """Qualities as a ``(batch,)`` tensor (``None``: quality 1)."""
        return torch.as_tensor(1.0 if quality is None else quality, dtype=torch.float32).expand(batch)

    def analyse(self, x: Tensor, quality: Tensor | float | None = None) -> Tensor:
        """Image in ``[0, 1]`` ``(B, 3, H, W)`` (H, W multiples of 64) -> clipped latent ``y``
        of quality ``quality`` (a number in ``[1, Q]``, or one per image)."""
        gain, _ = self.gains(self._qualities(quality, x.shape[0]))
        return (self.g_a(x).float() * gain).clamp(LATENT_MIN, LATENT_MAX)

    def synthesize(self, y_hat: Tensor, quality: Tensor | float | None = None) -> Tensor:
        """Quantized latent ``(B, m, h, w)`` of quality ``quality`` -> image ``(B, 3, 16h, 16w)`` (unclamped)."""
        _, inverse_gain = self.gains(self._qualities(quality, y_hat.shape[0]))
        return self.g_s(y_hat * inverse_gain)

    def forward(
        self, x: Tensor, quality: Tensor | float | None = None, noise: bool = True, rate_gradient: Tensor | None = None
    ) -> dict[str, Tensor]:
        """Training/evaluation pass.

        Args:
            x: images in ``[0, 1]``, ``(B, 3, H, W)`` with H, W multiples of 64.
            quality: quality level in ``[1, Q]``, one for all images or a ``(B,)`` tensor.
            noise: additive uniform noise for the likelihoods (training); when False
                latents are rounded, which gives the model's own rate estimate of a file.
            rate_gradient: a factor per latent channel ``(m,)`` on the gradient that the
                likelihoods send into ``y`` (values unchanged; the entropy model's own
                gradients are not scaled).  Training lets new channels learn to carry
                detail before their rate holds them at zero (``TrainConfig.new_channels_from``).
        Returns:
            ``x_hat`` ``(B, 3, H, W)`` (float32, unclamped) and the likelihoods
            ``y`` ``(B, m, H/16, W/16)`` and ``z`` ``(B, n, H/64, W/64)``.
        """
        y = self.analyse(x, quality)
        z = self.h_a(y).float()
        z_hat = self.prior.quantize(z, noise=noise)
        z_likelihood = self.prior.likelihood(z_hat)
        hyper = self.h_s(z_hat)
        y_rated = y if rate_gradient is None else torch.lerp(y.detach(), y, rate_gradient.view(1, -1, 1, 1))
        y_coded = y_rated + torch.empty_like(y).uniform_(-0.5, 0.5) if noise else torch.round(y)
        y_likelihood = self.y_codec.likelihood(y_coded, hyper)
        x_hat = self.synthesize(ste_round(y) if noise else torch.round(y), quality).float()
        return {"x_hat": x_hat, "y": y_likelihood, "z": z_likelihood}

    @property
    def y_codec(self) -> ContextLatentCodec:
        """The entropy model of ``ŷ`` (a view of :attr:`context` and :attr:`entropy_parameters`)."""
        return ContextLatentCodec(self.context, self.entropy_parameters, self.spec)

    def latent_groups(self) -> dict[str, tuple[int, int]]:
        """Tensors that hold several groups of ``m`` latent channels along one dimension:
        ``name -> (dimension, groups)``.  The entropy-parameter network reads
        ``[h_s(ẑ), context(ŷ)]`` (two groups of ``2m``) and writes
        ``spec.params_per_channel`` groups of ``m`` (:func:`~.entropy.distributions.param_blocks`)."""
        last = f"entropy_parameters.{len(self.entropy_parameters) - 1}"
        params = self.spec.params_per_channel
        return {"entropy_parameters.0.weight": (1, 2), f"{last}.weight": (0, params), f"{last}.bias": (0, params)}

    def aux_loss(self) -> Tensor:
        """Quantile-fitting loss of the factorized prior (minimize with its own optimizer)."""
        return self.prior.aux_loss()
