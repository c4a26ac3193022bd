"""Encoder effort: refine the latents of one image by stochastic Gumbel annealing (SGA).

The analysis transform gives an amortized guess of ``y``; for the one image being coded,
``ŷ`` and ``ẑ`` can do better on its own ``λ·D + R`` (Yang, Bamler and Mandt, NeurIPS 2020,
"Improving Inference for Neural Image Compression").  Every weight stays frozen; only the
continuous latent ``y`` is optimized (Adam), with ``ẑ`` that of the encoder, or also ``z``
(:attr:`Annealing.refine_z`, rounded around the prior's medians; measured not to pay, docs/effort.md).  Each step rounds
them softly by SGA: for ``r = v - floor(v)`` the two candidates ``floor(v)`` and
``floor(v) + 1`` get the logits ``-atanh(r)/τ`` and ``-atanh(1 - r)/τ``, Gumbel noise is
added and a softmax weighs the two (a relaxed one-hot sample; ``τ`` enters once, through
the logits: dividing them by ``τ`` again measured worse, docs/effort.md); ``τ``
stays at ``tau_max`` for the first ``hold`` of the iterations, then decays as
``tau_max·exp(-decay·(t - t0)/T)``, so the relaxed latents approach hard rounding.

The loss is the training objective of the model's metric (:func:`~.losses.rate_distortion_loss`)
at the quality's λ, on the image without its padding, with the rate of the model's own
likelihoods (of ``ContextLatentCodec.likelihood`` and the factorized prior, as in training).  At a few
checkpoints and at the end the latents are hard-rounded and that loss is measured; the
lowest seen wins, starting with today's encoder's latents
(:func:`~.codec.quantize_latents`), so a refined file never has a larger ``λ·D + R`` (by the
model's estimate) than effort 0.  The result is ``ŷ`` and ``ẑ`` as ``quantize_latents``
gives them: integers, and ``ẑ`` on the medians grid, so the exact coding path writes an
ordinary file and the decoder does not change.

On CPUs that multiply bf16 matrices in hardware (Intel AMX, AVX512-BF16; :func:`bf16_is_fast`)
the relaxed steps run under bf16 autocast (:attr:`Annealing.bf16`), 1.7-2x as fast for files
of the same size and quality (docs/effort.md); the entropy model's likelihoods stay float32 and
the hard-rounded checks that choose the result are float32 throughout.

Deterministic: a seeded generator draws the noise in a fixed order, so the same input gives
the same bytes in any process with the same number of threads on the same machine.
Floating-point sums in the convolutions depend on the thread count: the shipped model
writes different (equally valid) refined files with 1 and 2 threads (docs/effort.md), and
so do machines with and without hardware bf16.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from .entropy.distributions import LATENT_MAX, LATENT_MIN
from .errors import InputError
from .losses import METRICS, rate_distortion_loss
from .models.context_model import ContextMixtureModel

#: Iterations of each effort level (index: the level); 0 is the encoder without refinement.
#: Chosen so that the top level codes a 768x512 Kodak image in about 3 minutes on 2 cores
#: (docs/effort.md).
EFFORT_ITERATIONS: tuple[int, ...] = (0, 10, 30, 75)

#: Largest image (pixels) that ``effort > 0`` refines: the refinement keeps the activations
#: of a whole synthesis pass for its backward pass, about 2 GB per Mpixel (docs/effort.md).
MAX_REFINE_PIXELS = 1 << 22

#: Smallest side (pixels) for which MS-SSIM is defined (5 scales); smaller images are
#: measured with their padding.
_MS_SSIM_MIN_SIDE = 161


def bf16_is_fast() -> bool:
    """Whether this CPU multiplies bf16 matrices in hardware: AMX tiles (Intel Xeon, Sapphire
    Rapids and later) or the AVX512-BF16 dot products (``avx512_bf16``: AMD EPYC of the Zen 4
    generation, Intel Cooper Lake).  There bf16 autocast runs a refinement step's synthesis
    pass 1.7-2x faster than float32 (docs/effort.md); without them (AVX2, plain AVX-512)
    bf16 is slower than float32."""
    probes = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")  # torch's own CPU feature probes
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in probes)


def effort_iterations(effort: int) -> int:
    """Iterations of effort level ``effort`` (0 .. ``len(EFFORT_ITERATIONS) - 1``).

    Raises:
        InputError: not one of the levels.
    """
    if isinstance(effort, bool) or not isinstance(effort, int) or not 0 <= effort < len(EFFORT_ITERATIONS):
        raise InputError(f"effort must be one of {', '.join(map(str, range(len(EFFORT_ITERATIONS))))}, got {effort!r}")
    return EFFORT_ITERATIONS[effort]


@dataclass(frozen=True)
class Annealing:
    """Settings of one refinement.

    Attributes:
        iterations: optimizer steps ``T`` (0: no refinement).
        lr: Adam learning rate, in latent units.
        tau_max: temperature of the first ``hold · T`` steps.
        hold: fraction of the steps at ``tau_max``.
        decay: the temperature falls by ``exp(-decay)`` over ``T`` steps after the hold.
        checks: hard-rounded evaluations spread over the steps (the last step is always one).
        refine_z: optimize ``z`` as well as ``y`` (else ``ẑ`` stays that of the encoder).
        seed: of the Gumbel noise.
        bf16: run the relaxed steps' loss under bf16 autocast (worth it where
            :func:`bf16_is_fast`); the hard-rounded checks stay float32.
    """

    iterations: int
    lr: float = 0.04
    tau_max: float = 0.5
    hold: float = 0.35
    decay: float = 7.0
    checks: int = 8
    refine_z: bool = False
    seed: int = 0
    bf16: bool = False

    def temperature(self, step: int) -> float:
        """``τ`` of step ``step`` (0-based)."""
        t0 = self.hold * self.iterations
        return self.tau_max if step < t0 else self.tau_max * math.exp(-self.decay * (step - t0) / self.iterations)

    def is_check(self, step: int) -> bool:
        """Whether the latents after step ``step`` (0-based) are hard-rounded and measured."""
        every = max(1, self.iterations // max(1, self.checks))
        return (step + 1) % every == 0 or step == self.iterations - 1


def sga_round(v: Tensor, tau: float, generator: torch.Generator) -> Tensor:
    """Relaxed rounding of ``v`` (any shape): ``floor(v) + w``, where ``w`` in ``(0, 1)`` is the
    ceiling's weight in a Gumbel-softmax sample (temperature 1) of the two-class SGA
    distribution, whose logits are divided by ``tau``.
    Differentiable in ``v``; draws ``2 · v.numel()`` uniforms from ``generator``."""
    floor = torch.floor(v.detach())
    r = (v - floor).clamp(1e-6, 1 - 1e-6)
    logits = torch.stack([-torch.atanh(r), -torch.atanh(1 - r)]) / tau
    uniform = torch.rand(logits.shape, generator=generator, dtype=v.dtype).clamp(1e-10, 1 - 1e-10)
    gumbel = -torch.log(-torch.log(uniform))
    weights = torch.softmax(logits + gumbel, dim=0)
    return floor + weights[1]


@dataclass
class Objective:
    """``λ·D + R`` of one image for latents ``(y, z)``: the model's training loss.

    Attributes:
        model: the frozen model.
        x: the padded image ``(1, 3, H, W)`` in ``[0, 1]`` (H, W multiples of 64).
        quality: the quality level, which sets the gains.
        lmbda: λ of the quality.
        metric: ``"mse"`` or ``"ms-ssim"``.
        size: ``(height, width)`` of the image inside its padding.
    """

    model: ContextMixtureModel
    x: Tensor
    quality: float
    lmbda: float
    metric: str
    size: tuple[int, int]

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise InputError(f"unknown metric {self.metric!r}; choose one of {', '.join(METRICS)}")
        height, width = self.size
        if self.metric == "ms-ssim" and min(height, width) < _MS_SSIM_MIN_SIDE:
            self.size = tuple(self.x.shape[2:])

    def __call__(self, y: Tensor, z: Tensor) -> Tensor:
        """The loss (scalar, differentiable) of ``y`` ``(1, m, H/16, W/16)`` and ``z`` ``(1, n, H/64, W/64)``
        (relaxed or rounded; ``z`` on the model's grid, i.e. with the medians added)."""
        height, width = self.size
        y_likelihood, z_likelihood = self._likelihoods(y, z)
        x_hat = self.model.synthesize(y.contiguous(memory_format=torch.channels_last), self.quality).float()
        output = {"x_hat": x_hat[:, :, :height, :width], "y": y_likelihood, "z": z_likelihood}
        return rate_distortion_loss(output, self.x[:, :, :height, :width], self.lmbda, self.metric)["loss"]

    def _likelihoods(self, y: Tensor, z: Tensor) -> tuple[Tensor, Tensor]:
        """The model's likelihoods of ``y`` given ``z`` and of ``z``: the context and the entropy
        parameters on all positions at once (in parallel, as in training)."""
        return self.model.y_codec.likelihood(y, self.model.h_s(z)), self.model.prior.likelihood(z)

    def hard(self, y_hat: Tensor, z_hat: Tensor) -> float:
        """The loss of rounded latents (as :func:`hard_round` gives them), reconstruction clamped to ``[0, 1]``."""
        height, width = self.size
        with torch.no_grad():
            y_likelihood, z_likelihood = self._likelihoods(y_hat, z_hat)
            x_hat = (
                self.model.synthesize(y_hat.contiguous(memory_format=torch.channels_last), self.quality)
                .float()
                .clamp(0, 1)
            )
            output = {"x_hat": x_hat[:, :, :height, :width], "y": y_likelihood, "z": z_likelihood}
            return float(rate_distortion_loss(output, self.x[:, :, :height, :width], self.lmbda, self.metric)["loss"])


def encoder_latents(model: ContextMixtureModel, x: Tensor, quality: float) -> tuple[Tensor, Tensor]:
    """The continuous latents of the analysis transforms for the padded image ``x``
    ``(1, 3, H, W)`` in ``[0, 1]``: ``y`` ``(1, m, H/16, W/16)`` and ``z`` ``(1, n, H/64, W/64)``."""
    with torch.no_grad():
        y = model.analyse(x.contiguous(memory_format=torch.channels_last), quality)
        return y, model.h_a(y)


def hard_round(model: ContextMixtureModel, y: Tensor, z: Tensor) -> tuple[Tensor, Tensor]:
    """``(ŷ, ẑ)`` of continuous ``y`` (within ``[LATENT_MIN, LATENT_MAX]``) and ``z``: the values
    a file stores (integers; ``ẑ`` by the prior's quantizer, on the grid of its medians)."""
    with torch.no_grad():
        return torch.round(y), model.prior.quantize(z, noise=False)


@dataclass(frozen=True)
class Refined:
    """Result of :func:`refine`: the latents to code and their hard-rounded losses."""

    y_hat: Tensor  # (1, m, H/16, W/16), integers
    z_hat: Tensor  # (1, n, H/64, W/64), integers plus the medians
    initial_loss: float  # λ·D + R of the encoder's own latents (effort 0)
    loss: float  # λ·D + R of y_hat, z_hat (never above initial_loss)


def refine(
    model: ContextMixtureModel,
    x: Tensor,
    quality: float,
    lmbda: float,
    metric: str,
    annealing: Annealing,
    size: tuple[int, int] | None = None,
    progress: Callable[[], None] | None = None,
) -> Refined:
    """Refine the latents of the padded image ``x`` ``(1, 3, H, W)`` in ``[0, 1]`` by SGA.

    Args:
        model: a loaded model; its weights are frozen during the call (their
            ``requires_grad`` flags are restored after it).
        quality: quality level (sets the gains); ``lmbda``: its λ; ``metric``: its metric.
        annealing: iterations and schedule.
        size: ``(height, width)`` of the image inside the padding (default: all of ``x``).
        progress: called once after each iteration.
    """
    objective = Objective(model, x, quality, lmbda, metric, size or tuple(x.shape[2:]))
    medians = model.prior.medians.view(1, -1, 1, 1)
    flags = [p.requires_grad for p in model.parameters()]
    model.requires_grad_(False)
    try:
        y0, z0 = encoder_latents(model, x, quality)
        best = hard_round(model, y0, z0)
        initial = best_loss = objective.hard(*best)
        y = y0.clone().requires_grad_(True)
        z = z0.clone().requires_grad_(annealing.refine_z)
        optimizer = torch.optim.Adam([y, z] if annealing.refine_z else [y], lr=annealing.lr)
        generator = torch.Generator().manual_seed(annealing.seed)
        for step in range(annealing.iterations):
            tau = annealing.temperature(step)
            y_tilde = sga_round(y, tau, generator)
            z_tilde = sga_round(z - medians, tau, generator) + medians if annealing.refine_z else best[1]
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=annealing.bf16):
                relaxed = objective(y_tilde, z_tilde)
            relaxed.backward()
            optimizer.step()
            with torch.no_grad():
                y.clamp_(LATENT_MIN, LATENT_MAX)
            if annealing.is_check(step):
                candidate = hard_round(model, y, z)  # z moves only with refine_z
                loss = objective.hard(*candidate)
                if loss < best_loss:
                    best, best_loss = candidate, loss
            if progress:
                progress()
    finally:
        for parameter, flag in zip(model.parameters(), flags):
            parameter.requires_grad_(flag)
    return Refined(y_hat=best[0], z_hat=best[1], initial_loss=initial, loss=best_loss)
