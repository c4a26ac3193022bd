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
entropy-parameter network, all in exact integer arithmetic (:mod:`.entropy.exact`),
so encoder and decoder build bit-identical PMF tables on any machine and thread
count.  Channels of ``ŷ`` that are zero everywhere are flagged and skipped.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from . import tiling
from .entropy import coding, exact
from .models.context_model import CONTEXT_KERNEL, ContextMixtureModel

SCHEDULES = ("wavefront", "raster")
#: Half-widths of the PMF windows; each element uses the smallest that covers its spread.
WINDOW_HALF_WIDTHS = (4, 8, 16, 32, 64, 128, 256)
_HALF_WIDTHS = np.array(WINDOW_HALF_WIDTHS)

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
    """Integer twin (:mod:`.entropy.exact`) of the parts of a model that produce entropy
    parameters: hyper-synthesis, the causal taps of the context convolution and the
    entropy-parameter network.  Results are exact, hence identical on every machine.

    Args:
        model: the trained model (its weights are copied, not shared).
    """

    def __init__(self, model: ContextMixtureModel):
        self.spec = model.spec
        self.channels = model.config.m
        weight = model.context.weight.detach()  # (2m, m, 5, 5)
        taps = torch.stack([weight[:, :, _K + dy, _K + dx] for dy, dx in CAUSAL_TAPS], dim=-1)
        self.context = exact.IntegerAffine.from_weight(taps.reshape(2 * self.channels, -1).T, model.context.bias)
        convs = [m for m in model.entropy_parameters if isinstance(m, torch.nn.Conv2d)]
        self.layers = [exact.IntegerAffine.from_weight(c.weight[:, :, 0, 0].T, c.bias) for c in convs]
        self.hyper_synthesis = exact.IntegerSequential(model.h_s)
        self._hyper_stages = [(op, tiling.footprint(layer)) for op, layer in zip(self.hyper_synthesis.ops, self.hyper_synthesis.sources)]
        self._output: tuple[bytes, exact.IntegerAffine] = (np.arange(self.channels).tobytes(), self.layers[-1])

    def output_layer(self, active: np.ndarray) -> exact.IntegerAffine:
        """The last layer of the entropy-parameter network with only the outputs of the
        channels ``active`` (``P`` blocks of ``len(active)`` columns).  Its results are
        those columns of the whole layer, bit for bit (sums of integers below ``2**53``
        are exact in any order); skipping the others saves most of the network's work
        where many channels are zero (low qualities).  The last one asked for is cached.
        """
        active = np.asarray(active, dtype=np.int64)
        key = active.tobytes()
        cached_key, layer = self._output
        if cached_key != key:
            full = self.layers[-1]
            blocks = np.arange(self.spec.params_per_channel)[:, None] * self.channels
            columns = torch.from_numpy((blocks + active[None]).ravel())
            layer = dataclasses.replace(full, weight=full.weight[:, columns].contiguous(), bias=full.bias[columns])
            self._output = (key, layer)
        return layer

    def hyper(self, z_hat: Tensor) -> Tensor:
        """Hyper features ``(2m, 4h, 4w)`` (integers, units ``2**-ACT_BITS``) from ``ẑ`` ``(1, n, h, w)``;
        in stripes (:mod:`.tiling`; the same integers) for images over one stripe."""
        height, width = 64 * z_hat.shape[2], 64 * z_hat.shape[3]
        if not tiling.is_striped(height, width):
            return self.hyper_synthesis(exact.to_fixed(z_hat))[0]
        with torch.no_grad():
            return tiling.run(self._hyper_stages, exact.to_fixed(z_hat), tiling.stripe_rows(width) // 16)[0]

    def params(self, y_padded: Tensor, hyper: Tensor, rows: np.ndarray, cols: np.ndarray, active: np.ndarray) -> exact.IntegerMixture:
        """Mixture parameters ``(F, K, len(rows) * len(active))`` of the channels ``active`` at the
        given latent positions, elements in (position, channel) order.

        Args:
            y_padded: decoded latents so far, ``(m, H + 2, W + 4)`` float64, with
                latent ``(h, w)`` at ``[:, h + 2, w + 2]`` and zeros elsewhere.
            hyper: output of :meth:`hyper`.
        """
        r = torch.from_numpy(rows + _K)[:, None] + torch.tensor([dy for dy, _ in CAUSAL_TAPS])[None]
        c = torch.from_numpy(cols + _K)[:, None] + torch.tensor([dx for _, dx in CAUSAL_TAPS])[None]
        windows = y_padded[:, r, c].permute(1, 0, 2).reshape(len(rows), -1)  # (positions, m * taps)
        context = self.context.linear(exact.to_fixed(windows))
        x = torch.cat([hyper[:, torch.from_numpy(rows), torch.from_numpy(cols)].T, context], dim=1)
        for layer in self.layers[:-1]:
            x = exact.leaky_relu(layer.linear(x))
        return exact.integer_params(self.spec, self.output_layer(active).linear(x))


def _pmf_groups(spec, mixture: exact.IntegerMixture) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """PMF windows of the elements of ``mixture`` (parameters ``(F, K, m)``), grouped by width.

    Each element gets the smallest half-width of :data:`WINDOW_HALF_WIDTHS` covering its
    spread.  Returns, per width in that order, ``(elements, pmf, offsets)``: the sorted
    element indices, their probabilities ``(len, 2h + 1)`` and the first value of each
    window.  One coder call per group, in this order, is the file format.
    """
    centers, spreads = exact.integer_center_and_spread(mixture)
    half = _HALF_WIDTHS[np.minimum(np.searchsorted(_HALF_WIDTHS, spreads), len(_HALF_WIDTHS) - 1)]
    groups = []
    for h in WINDOW_HALF_WIDTHS:
        index = np.flatnonzero(half == h)
        if index.size:
            offsets = centers[index] - h
            pmf = exact.integer_window_pmf(spec, offsets, 2 * h + 1, mixture, index)
            groups.append((index, pmf * 2.0**-exact.PMF_BITS, offsets))
    return groups


def _step_chunks(steps: list, max_positions: int) -> list[list]:
    """Consecutive steps grouped so that a group holds at most ``max_positions`` positions (or one step)."""
    chunks, current, size = [], [], 0
    for step in steps:
        if current and size + len(step[0]) > max_positions:
            chunks.append(current)
            current, size = [], 0
        current.append(step)
        size += len(step[0])
    return chunks + [current] if current else chunks


#: Positions whose entropy parameters the encoder evaluates in one batch (bounds memory).
ENCODER_CHUNK_POSITIONS = 4096


def _encode_latents(path: EntropyPath, hyper: Tensor, y_int: Tensor, active: np.ndarray, schedule: str, encoder) -> None:
    """Write every active element of ``ŷ`` (``(m, H, W)`` int64) in the decoder's order.

    The encoder knows all of ``ŷ``, so it evaluates the entropy parameters and PMFs of
    many steps in one batch (the integer path gives every position the same result
    whatever the batch); only the order of the coder calls follows the schedule: per
    step, per window width (as :func:`_decode_latents` reads them).
    """
    height, width = hyper.shape[1], hyper.shape[2]
    y_padded = torch.zeros(path.channels, height + _K, width + 2 * _K, dtype=torch.float64)
    y_padded[:, _K:, _K : _K + width] = y_int.double()
    active_t = torch.from_numpy(active)
    with torch.no_grad():
        for chunk in _step_chunks(schedule_steps(schedule, height, width), ENCODER_CHUNK_POSITIONS):
            rows, cols = np.concatenate([r for r, _ in chunk]), np.concatenate([c for _, c in chunk])
            mixture = path.params(y_padded, hyper, rows, cols, active)
            values = y_int[active_t[None, :], torch.from_numpy(rows)[:, None], torch.from_numpy(cols)[:, None]].reshape(-1).numpy()
            groups = _pmf_groups(path.spec, mixture)
            # each step's elements are a contiguous range (elements are in step order)
            bounds = np.cumsum([0] + [len(r) * len(active) for r, _ in chunk])
            cuts = [np.searchsorted(index, bounds) for index, _, _ in groups]
            for s in range(len(chunk)):
                for (index, pmf, offsets), cut in zip(groups, cuts):
                    a, b = cut[s], cut[s + 1]
                    if b > a:
                        coding.encode_symbols(encoder, values[index[a:b]], pmf[a:b], offsets[a:b])


#: ``on_rows(done, latents)``: rows ``[0, done)`` of ``latents`` ``(m, H, W)`` are final.
RowsDone = Callable[[int, Tensor], None]


def _decode_latents(path: EntropyPath, hyper: Tensor, active: np.ndarray, schedule: str, decoder, on_rows: RowsDone | None = None) -> Tensor:
    """Walk the schedule and read every active element of ``ŷ``: one batch per step (the
    positions of a step only depend on earlier steps), one coder call per window width.
    ``on_rows`` is called (if given) each time more rows are final, last with all ``H``.

    Returns:
        The latents ``(m, H, W)`` (float64).
    """
    height, width = hyper.shape[1], hyper.shape[2]
    y_padded = torch.zeros(path.channels, height + _K, width + 2 * _K, dtype=torch.float64)
    latents = y_padded[:, _K:, _K : _K + width]
    active_t = torch.from_numpy(active)
    steps = schedule_steps(schedule, height, width)
    last_step = np.zeros(height, dtype=np.int64)  # the step that finishes each row (non-decreasing)
    for i, (rows, _) in enumerate(steps):
        last_step[rows] = i
    done = 0
    with torch.no_grad():
        for step, (rows, cols) in enumerate(steps):
            mixture = path.params(y_padded, hyper, rows, cols, active)
            values = np.zeros(len(rows) * len(active), dtype=np.int64)
            for index, pmf, offsets in _pmf_groups(path.spec, mixture):
                values[index] = coding.decode_symbols(decoder, pmf, offsets)
            grid = torch.from_numpy(values).double().reshape(len(rows), len(active))
            y_padded[active_t[None, :], torch.from_numpy(rows + _K)[:, None], torch.from_numpy(cols + _K)[:, None]] = grid
            if on_rows is not None and done < height and last_step[done] <= step:
                done = int(np.searchsorted(last_step, step, side="right"))
                on_rows(done, latents)
    return latents


def encode(
    model: ContextMixtureModel, y_hat: Tensor, z_hat: Tensor, schedule: str = "wavefront", path: EntropyPath | None = None
) -> tuple[bytes, bytes, np.ndarray]:
    """Range-code ``ŷ`` (``(1, m, H, W)`` integers) and ``ẑ`` (``(1, n, H/4, W/4)``, on the medians grid).

    ``path``: the model's :class:`EntropyPath`, when the caller keeps one (building it takes ~0.1 s).

    Returns:
        ``(z_stream, y_stream, active_channels)``.
    """
    z_stream = encode_z(model, z_hat)
    y_int = y_hat[0].to(torch.int64)
    active = np.flatnonzero(y_int.abs().flatten(1).amax(1).numpy() != 0)
    path = path or EntropyPath(model)
    encoder = coding.new_encoder()
    _encode_latents(path, path.hyper(z_hat), y_int, active, schedule, encoder)
    return z_stream, coding.finish(encoder), active


def decode(
    model: ContextMixtureModel, z_stream: bytes, y_stream: bytes, active: np.ndarray, latent_size: tuple[int, int], schedule: str = "wavefront",
    path: EntropyPath | None = None, on_rows: RowsDone | None = None,
) -> Tensor:
    """Inverse of :func:`encode`: ``ŷ`` ``(1, m, H, W)`` float32 for latent size ``(H, W)``;
    ``on_rows``: told as rows of ``ŷ`` become final (:func:`_decode_latents`)."""
    z_hat = decode_z(model, z_stream, (latent_size[0] // 4, latent_size[1] // 4))
    path = path or EntropyPath(model)
    y_hat = _decode_latents(path, path.hyper(z_hat), active, schedule, coding.new_decoder(y_stream), on_rows)
    return y_hat.float()[None]


def _z_rows(model: ContextMixtureModel, count_per_channel: int) -> np.ndarray:
    """The factorized prior's table row (its channel) of each element of ``ẑ``, in (channel, position) order."""
    return np.repeat(np.arange(model.config.n), count_per_channel)


def encode_z(model: ContextMixtureModel, z_hat: Tensor) -> bytes:
    """Code ``ẑ`` (``(1, n, h, w)``, values ``median + integer``) with the factorized prior's tables."""
    symbols = torch.round(z_hat[0] - model.prior.medians.view(-1, 1, 1)).to(torch.int64)
    pmf, offsets = model.prior.coding_tables
    encoder = coding.new_encoder()
    coding.encode_table_symbols(encoder, symbols.flatten().numpy(), pmf, offsets, _z_rows(model, symbols[0].numel()))
    return coding.finish(encoder)


def decode_z(model: ContextMixtureModel, stream: bytes, size: tuple[int, int]) -> Tensor:
    """Inverse of :func:`encode_z`: ``ẑ`` ``(1, n, h, w)`` float32."""
    pmf, offsets = model.prior.coding_tables
    values = coding.decode_table_symbols(coding.new_decoder(stream), pmf, offsets, _z_rows(model, size[0] * size[1]))
    symbols = torch.from_numpy(values).float().reshape(1, -1, *size)
    return symbols + model.prior.medians.view(1, -1, 1, 1)
