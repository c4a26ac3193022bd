"""Coding the latents ``ŷ`` and ``ẑ`` of a :class:`ContextMixtureModel` into range-coded streams.

Decoding order (the *schedule*):

* ``wavefront`` (default): with a 5x5 type-A mask, position ``(h, w)`` depends on
  rows ``h-2, h-1`` (columns ``w-2..w+2``) and on ``(h, w-2), (h, w-1)``.  All
  positions with the same ``t = 3h + w`` are therefore independent and are coded
  together: ``3H + W - 3`` steps instead of ``H * W``.
* ``raster``: one position per step (for comparison only; same model, same bits
  up to the coder's rounding).

Every step computes the entropy parameters from 5x5 windows of the latents decoded
so far (only the 12 causal taps), the hyper features at the same positions, and the
entropy-parameter network as matrix products in float64.  The encoder runs the very
same routine on the same batches as the decoder, so both build bit-identical PMF
tables.  Channels of ``ŷ`` that are zero everywhere are flagged and skipped.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .entropy import coding
from .entropy.distributions import (
    LATENT_MAX,
    LATENT_MIN,
    MixtureParams,
    mixture_center,
    mixture_likelihood,
    mixture_spread,
    split_params,
)
from .models.context_model import CONTEXT_KERNEL, ContextMixtureModel

SCHEDULES = ("wavefront", "raster")
#: Half-widths of the PMF windows; each element uses the smallest that covers its spread.
WINDOW_HALF_WIDTHS = (4, 8, 16, 32, 64, 128, 256)

_K = CONTEXT_KERNEL // 2
#: (dy, dx) of the causal taps of the 5x5 type-A mask, in raster order.
CAUSAL_TAPS = [(dy, dx) for dy in range(-_K, 1) for dx in range(-_K, _K + 1) if dy < 0 or dx < 0]


def schedule_steps(schedule: str, height: int, width: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Positions ``(rows, cols)`` coded at each step, in coding order."""
    rows, cols = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    rows, cols = rows.ravel(), cols.ravel()
    if schedule == "raster":
        return [(rows[i : i + 1], cols[i : i + 1]) for i in range(rows.size)]
    if schedule != "wavefront":
        raise ValueError(f"unknown schedule {schedule!r}")
    t = 3 * rows + cols
    order = np.argsort(t, kind="stable")
    bounds = np.flatnonzero(np.diff(t[order])) + 1
    return [(rows[idx], cols[idx]) for idx in np.split(order, bounds)]


class EntropyPath:
    """Float64 copy of the parts of a model that produce entropy parameters.

    Args:
        model: the trained model (its weights are copied, not shared).
    """

    def __init__(self, model: ContextMixtureModel):
        self.spec = model.spec
        self.n = model.config.n
        weight = model.context.weight.detach().double()  # (2n, n, 5, 5)
        taps = torch.stack([weight[:, :, _K + dy, _K + dx] for dy, dx in CAUSAL_TAPS], dim=-1)
        self.context_weight = taps.reshape(2 * self.n, -1).T.contiguous()  # (n * taps, 2n)
        self.context_bias = model.context.bias.detach().double()
        convs = [m for m in model.entropy_parameters if isinstance(m, torch.nn.Conv2d)]
        self.layers = [(c.weight.detach().double()[:, :, 0, 0].T.contiguous(), c.bias.detach().double()) for c in convs]
        self.hyper_synthesis = copy.deepcopy(model.h_s).double()

    def hyper(self, z_hat: Tensor) -> Tensor:
        """Hyper features ``(2n, 4h, 4w)`` (float64) from ``ẑ`` ``(1, n, h, w)``."""
        with torch.no_grad():
            return self.hyper_synthesis(z_hat.double())[0]

    def params(self, y_padded: Tensor, hyper: Tensor, rows: np.ndarray, cols: np.ndarray) -> MixtureParams:
        """Mixture parameters ``(F, K, len(rows), n)`` at the given latent positions.

        Args:
            y_padded: decoded latents so far, ``(n, H + 2, W + 4)`` float64, with
                latent ``(h, w)`` at ``[:, h + 2, w + 2]`` and zeros elsewhere.
            hyper: ``(2n, H, W)`` float64 hyper features.
        """
        r = torch.from_numpy(rows + _K)[:, None] + torch.tensor([dy for dy, _ in CAUSAL_TAPS])[None]
        c = torch.from_numpy(cols + _K)[:, None] + torch.tensor([dx for _, dx in CAUSAL_TAPS])[None]
        windows = y_padded[:, r, c].permute(1, 0, 2).reshape(len(rows), -1)  # (m, n * taps)
        context = windows @ self.context_weight + self.context_bias
        x = torch.cat([hyper[:, torch.from_numpy(rows), torch.from_numpy(cols)].T, context], dim=1)
        for i, (weight, bias) in enumerate(self.layers):
            x = x @ weight + bias
            if i < len(self.layers) - 1:
                x = torch.nn.functional.leaky_relu(x)
        return split_params(self.spec, x)


@dataclass
class _Batch:
    """PMF windows for a set of elements of one step."""

    elements: np.ndarray  # indices into the step's flattened (position, active channel) grid
    pmf: np.ndarray  # (m, W) float64
    offsets: np.ndarray  # (m,) int64


def _pmf_batches(spec, params: MixtureParams) -> list[_Batch]:
    """Group elements by window width and tabulate their PMFs (params of shape (F, K, m))."""
    centers = mixture_center(params)
    spreads = mixture_spread(params)
    half = torch.full_like(spreads, WINDOW_HALF_WIDTHS[-1])
    for h in reversed(WINDOW_HALF_WIDTHS):
        half = torch.where(spreads <= h, float(h), half)
    batches = []
    for h in WINDOW_HALF_WIDTHS:
        idx = torch.nonzero(half == h).flatten()
        if idx.numel() == 0:
            continue
        offsets = centers[idx] - h
        grid = offsets[:, None] + torch.arange(2 * h + 1, dtype=torch.float64)
        sub = MixtureParams(*(t[:, :, idx, None] for t in (params.weights, params.means, params.scales)))
        pmf = mixture_likelihood(spec, grid, sub)
        pmf = torch.where((grid >= LATENT_MIN) & (grid <= LATENT_MAX), pmf, 0.0)
        batches.append(_Batch(idx.numpy(), pmf.numpy(), offsets.numpy().astype(np.int64)))
    return batches


def code_latents(
    path: EntropyPath,
    hyper: Tensor,
    active: np.ndarray,
    schedule: str,
    code,
) -> Tensor:
    """Walk the schedule and code every active element of ``ŷ``.

    Args:
        hyper: ``(2n, H, W)`` float64 hyper features.
        active: sorted indices of the coded (not all-zero) channels.
        code: ``code(rows, cols, batch) -> values`` with the step's positions: the encoder writes
            the known values of ``batch.elements`` and returns them; the decoder
            reads and returns them.  ``batch.elements`` indexes the step's
            ``(position, active channel)`` grid in row-major order.
    Returns:
        The coded latents ``(n, H, W)`` (float64).
    """
    n, height, width = path.n, hyper.shape[1], hyper.shape[2]
    y_padded = torch.zeros(n, height + _K, width + 2 * _K, dtype=torch.float64)
    active_t = torch.from_numpy(active)
    with torch.no_grad():
        for rows, cols in schedule_steps(schedule, height, width):
            params = path.params(y_padded, hyper, rows, cols)
            flat = MixtureParams(*(t[:, :, :, active_t].reshape(t.shape[0], t.shape[1], -1) for t in (params.weights, params.means, params.scales)))
            values = np.zeros(len(rows) * len(active), dtype=np.int64)
            for batch in _pmf_batches(path.spec, flat):
                values[batch.elements] = code(rows, cols, batch)
            grid = torch.from_numpy(values).double().reshape(len(rows), len(active))
            y_padded[active_t[None, :], torch.from_numpy(rows + _K)[:, None], torch.from_numpy(cols + _K)[:, None]] = grid
    return y_padded[:, _K:, _K : _K + width]


def encode(model: ContextMixtureModel, y_hat: Tensor, z_hat: Tensor, schedule: str = "wavefront") -> tuple[bytes, bytes, np.ndarray]:
    """Range-code ``ŷ`` (``(1, n, H, W)`` integers) and ``ẑ`` (``(1, n, H/4, W/4)``, on the medians grid).

    Returns:
        ``(z_stream, y_stream, active_channels)``.
    """
    z_stream = encode_z(model, z_hat)
    y_int = y_hat[0].to(torch.int64)
    active = np.flatnonzero(y_int.abs().flatten(1).amax(1).numpy() != 0)
    path = EntropyPath(model)
    encoder = coding.new_encoder()

    def write(rows: np.ndarray, cols: np.ndarray, batch: _Batch) -> np.ndarray:
        pos, ch = np.divmod(batch.elements, len(active))
        values = y_int[active[ch], rows[pos], cols[pos]].numpy()
        coding.encode_symbols(encoder, values, batch.pmf, batch.offsets)
        return values

    code_latents(path, path.hyper(z_hat), active, schedule, write)
    return z_stream, coding.finish(encoder), active


def decode(
    model: ContextMixtureModel, z_stream: bytes, y_stream: bytes, active: np.ndarray, latent_size: tuple[int, int], schedule: str = "wavefront"
) -> Tensor:
    """Inverse of :func:`encode`: ``ŷ`` ``(1, n, H, W)`` float32 for latent size ``(H, W)``."""
    z_hat = decode_z(model, z_stream, (latent_size[0] // 4, latent_size[1] // 4))
    path = EntropyPath(model)
    decoder = coding.new_decoder(y_stream)

    def read(rows: np.ndarray, cols: np.ndarray, batch: _Batch) -> np.ndarray:
        return coding.decode_symbols(decoder, batch.pmf, batch.offsets)

    y_hat = code_latents(path, path.hyper(z_hat), active, schedule, read)
    return y_hat.float()[None]


def _z_tables(model: ContextMixtureModel, count_per_channel: int) -> tuple[np.ndarray, np.ndarray]:
    pmf, offsets = model.prior.symbol_tables()
    return np.repeat(pmf, count_per_channel, axis=0), np.repeat(offsets, count_per_channel)


def encode_z(model: ContextMixtureModel, z_hat: Tensor) -> bytes:
    """Code ``ẑ`` (``(1, n, h, w)``, values ``median + integer``) with the factorized prior's tables."""
    symbols = torch.round(z_hat[0] - model.prior.medians.view(-1, 1, 1)).to(torch.int64)
    pmf, offsets = _z_tables(model, symbols[0].numel())
    encoder = coding.new_encoder()
    coding.encode_symbols(encoder, symbols.flatten().numpy(), pmf, offsets)
    return coding.finish(encoder)


def decode_z(model: ContextMixtureModel, stream: bytes, size: tuple[int, int]) -> Tensor:
    """Inverse of :func:`encode_z`: ``ẑ`` ``(1, n, h, w)`` float32."""
    pmf, offsets = _z_tables(model, size[0] * size[1])
    values = coding.decode_symbols(coding.new_decoder(stream), pmf, offsets)
    symbols = torch.from_numpy(values).float().reshape(1, -1, *size)
    return symbols + model.prior.medians.view(1, -1, 1, 1)
