"""The exact face of the latent codecs: coding ``ŷ`` and ``ẑ`` into range-coded streams.

Two objects, each the immutable integer twin (:mod:`.entropy.exact`) of float modules
of a :class:`~.models.context_model.ContextMixtureModel`, built by strict conversion
(a layer without an exact twin is refused, so a file can never be coded by a network
that differs from the trained one):

* :class:`IntegerHyperprior` codes ``ẑ`` with the factorized prior's integer tables
  and turns ``ẑ`` into hyper features through the integer twin of ``h_s``;
* :class:`IntegerContextCodec` codes ``ŷ`` given those features, with the causal
  taps of the model's masked context convolution and its entropy-parameter network.

Decoding order of ``ŷ`` (the *schedule*, a :class:`Schedule` class each, given the
causal taps of the context mask):

* ``wavefront`` (default, :class:`Wavefront`): position ``(h, w)`` depends on the taps ``(h + dy, w + dx)``
  of the mask.  With ``s`` the smallest integer such that ``s·dy + dx < 0`` for every
  tap (:func:`wavefront_slope`; 3 for the 5x5 type-A mask), all positions with the
  same ``t = s·h + w`` are independent and are coded together: ``s(H - 1) + W`` steps
  instead of ``H * W``.
* ``raster`` (:class:`Raster`): one position per step (for comparison only; same model, same bits
  up to the coder's rounding).

Every step computes the entropy parameters from the windows of the latents decoded
so far (only the causal taps), the hyper features at the same positions, and the
entropy-parameter network, all in exact integer arithmetic, so encoder and decoder
build bit-identical PMF tables on any machine and thread count.  Channels of ``ŷ``
that are zero everywhere are flagged and skipped.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

import numba
import numpy as np
import torch
from torch import Tensor, nn

from . import tiling
from .bitstream import SCHEDULES
from .entropy import coding, exact
from .entropy.distributions import MixtureSpec
from .entropy.factorized import FactorizedPrior
from .layers import MaskedConv2d
from .models.context_model import ContextLatentCodec

#: ``on_rows(done, latents)``: rows ``[0, done)`` of ``latents`` ``(m, H, W)`` are final.
RowsDone = Callable[[int, Tensor], None]

#: Half-widths of the PMF windows; each element uses the smallest that covers its spread.
WINDOW_HALF_WIDTHS = (4, 8, 16, 32, 64, 128, 256)
_HALF_WIDTHS = np.array(WINDOW_HALF_WIDTHS)


def causal_taps(mask: Tensor) -> list[tuple[int, int]]:
    """``(dy, dx)`` of the nonzero taps of a ``(k, k)`` context mask, in raster order.

    Raises:
        ValueError: the mask sees the current position or a later one in raster order.
    """
    k = mask.shape[-1] // 2
    taps = [(int(r) - k, int(c) - k) for r, c in torch.nonzero(mask)]
    if any(dy > 0 or (dy == 0 and dx >= 0) for dy, dx in taps):
        raise ValueError("the context mask is not causal in raster order")
    return taps


def wavefront_slope(taps: list[tuple[int, int]]) -> int:
    """The smallest ``s >= 1`` with ``s·dy + dx < 0`` for every tap: then ``t = s·h + w``
    of each tap is smaller than that of the position it predicts."""
    return max([1] + [dx // -dy + 1 for dy, dx in taps if dy < 0])


class Schedule(Protocol):
    """A decoding order of ``ŷ``: which latent positions each step codes.  Every tap of a
    position must lie in an earlier step (or outside the grid).  A new order is a new
    class here and a new name at the end of :data:`~.bitstream.SCHEDULES` (the format
    stores its index)."""

    def steps(self, height: int, width: int, taps: list[tuple[int, int]]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Positions ``(rows, cols)`` of each step, in coding order, for causal ``taps``."""
        ...


def _grid(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    rows, cols = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    return rows.ravel(), cols.ravel()


class Raster:
    """One position per step, in raster order (for comparison: the same bits, ``H * W`` steps)."""

    def steps(self, height: int, width: int, taps: list[tuple[int, int]]) -> list[tuple[np.ndarray, np.ndarray]]:
        rows, cols = _grid(height, width)
        return [(rows[i : i + 1], cols[i : i + 1]) for i in range(rows.size)]


class Wavefront:
    """Every position with the same ``t = s·h + w`` in one step, ``s`` the
    :func:`wavefront_slope` of the taps: ``s(H - 1) + W`` steps."""

    def steps(self, height: int, width: int, taps: list[tuple[int, int]]) -> list[tuple[np.ndarray, np.ndarray]]:
        rows, cols = _grid(height, width)
        t = wavefront_slope(taps) * rows + cols
        order = np.argsort(t, kind="stable")
        bounds = np.flatnonzero(np.diff(t[order])) + 1
        return [(rows[idx], cols[idx]) for idx in np.split(order, bounds)]


#: The decoding orders by the name a file stores (:data:`~.bitstream.SCHEDULES`, same order).
SCHEDULE_ORDERS: dict[str, Schedule] = {"wavefront": Wavefront(), "raster": Raster()}


def _pointwise(module: nn.Module) -> exact.IntegerLinear:
    """The integer twin of a 1x1, stride-1 convolution as an affine map of positions."""
    if (
        not isinstance(module, nn.Conv2d)
        or module.kernel_size != (1, 1)
        or module.stride != (1, 1)
        or module.groups != 1
    ):
        raise TypeError(f"no pointwise integer twin for {module}")
    return exact.IntegerLinear.from_weight(module.weight[:, :, 0, 0].T, module.bias)


def _pointwise_network(network: nn.Sequential) -> tuple[list[exact.IntegerLinear], exact.IntegerLinear]:
    """``(hidden layers, output layer)`` of an ``nn.Sequential`` of 1x1 convolutions, each
    optionally followed by a LeakyReLU(0.01) (folded into the layer), ending in a convolution;
    anything else is refused."""
    layers: list[exact.IntegerLinear] = []
    for module in network:
        if not isinstance(module, nn.LeakyReLU):
            layers.append(_pointwise(module))
        elif module.negative_slope != 0.01:
            raise ValueError("only LeakyReLU(0.01) has an integer twin")
        elif not layers or layers[-1].leaky:
            raise ValueError("a LeakyReLU must follow a 1x1 convolution")
        else:
            layers[-1] = dataclasses.replace(layers[-1], leaky=True)
    *hidden, last = layers
    if last.leaky:
        raise ValueError("the entropy-parameter network must end in a convolution")
    return hidden, last


@dataclass(frozen=True)
class IntegerHyperprior:
    """The exact face of the hyperprior: ``ẑ`` coded with integer tables of the factorized
    prior, and the integer twin of ``h_s``.

    Attributes:
        pmf: ``(n, W)`` float64, probability (a multiple of ``2**-32``) of symbol
            ``offsets[c] + j`` of channel ``c`` in column ``j``.
        offsets: ``(n,)`` int64.
        medians: ``(n,)`` float32; ``ẑ = median + symbol``.
        hyper_synthesis: integer twin of ``h_s``.
    """

    pmf: np.ndarray
    offsets: np.ndarray
    medians: Tensor
    hyper_synthesis: exact.IntegerSequential

    @classmethod
    def from_tables(
        cls, prior: FactorizedPrior, hyper_synthesis: nn.Module, z_pmf: Tensor, z_offsets: Tensor
    ) -> "IntegerHyperprior":
        """From the integer tables a weight file stores (:meth:`FactorizedPrior.integer_tables`)."""
        return cls(
            z_pmf.numpy().astype(np.float64) * 2.0**-32,
            z_offsets.numpy(),
            prior.medians.clone(),
            exact.IntegerSequential(hyper_synthesis),
        )

    @classmethod
    def from_modules(cls, prior: FactorizedPrior, hyper_synthesis: nn.Module) -> "IntegerHyperprior":
        """Tables computed from the prior's current parameters (what :mod:`.models.registry` exports)."""
        tables = prior.integer_tables()
        return cls.from_tables(prior, hyper_synthesis, tables["z_pmf"], tables["z_offsets"])

    def _rows(self, count_per_channel: int) -> np.ndarray:
        """The table row (channel) of each element of ``ẑ``, in (channel, position) order."""
        return np.repeat(np.arange(len(self.pmf)), count_per_channel)

    def compress(self, z_hat: Tensor) -> bytes:
        """Code ``ẑ`` (``(1, n, h, w)``, values ``median + integer``)."""
        symbols = torch.round(z_hat[0] - self.medians.view(-1, 1, 1)).to(torch.int64)
        encoder = coding.new_encoder()
        coding.encode_table_symbols(
            encoder, symbols.flatten().numpy(), self.pmf, self.offsets, self._rows(symbols[0].numel())
        )
        return coding.finish(encoder)

    def decompress(self, stream: bytes, size: tuple[int, int]) -> Tensor:
        """Inverse of :meth:`compress`: ``ẑ`` ``(1, n, h, w)`` float32 of spatial ``size``."""
        values = coding.decode_table_symbols(
            coding.new_decoder(stream), self.pmf, self.offsets, self._rows(size[0] * size[1])
        )
        return torch.from_numpy(values).float().reshape(1, -1, *size) + self.medians.view(1, -1, 1, 1)

    def hyper(self, z_hat: Tensor) -> Tensor:
        """Hyper features ``(2m, 4h, 4w)`` from ``ẑ`` ``(1, n, h, w)``: integers in units of
        ``2**-ACT_BITS``, held in float32 (exact: they are within ``±ACT_LIMIT < 2**24``);
        in stripes (:mod:`.tiling`; the same integers) for images over one stripe."""
        height, width = 64 * z_hat.shape[2], 64 * z_hat.shape[3]
        if not tiling.is_striped(height, width):
            return self.hyper_synthesis(exact.to_fixed(z_hat))[0].float()
        stages = [
            (op, tiling.footprint(layer)) for op, layer in zip(self.hyper_synthesis.ops, self.hyper_synthesis.sources)
        ]
        with torch.no_grad():
            return tiling.run(stages, exact.to_fixed(z_hat), tiling.stripe_rows(width) // 16, dtype=torch.float32)[0]


class IntegerContextCodec:
    """The exact face of a :class:`~.models.context_model.ContextLatentCodec`: the causal
    taps of its masked convolution and its entropy-parameter network in integer
    arithmetic, and the schedule its mask allows.  Immutable after construction except
    for a cache of the output layer restricted to the last set of active channels.

    Args:
        codec: the float face (its weights are copied, not shared).
    """

    def __init__(self, codec: ContextLatentCodec):
        context = codec.context
        if not isinstance(context, MaskedConv2d) or context.stride != (1, 1) or context.groups != 1:
            raise TypeError(f"no integer twin for the context module {context}")
        self.spec: MixtureSpec = codec.spec
        self.channels: int = context.in_channels
        self.taps = causal_taps(context.mask[0, 0])
        self.reach = context.kernel_size[0] // 2
        weight = context.weight.detach()  # (2m, m, k, k)
        k = self.reach
        taps = torch.stack([weight[:, :, k + dy, k + dx] for dy, dx in self.taps], dim=-1)
        self.context = exact.IntegerLinear.from_weight(taps.reshape(context.out_channels, -1).T, context.bias)
        self.hidden, self.output = _pointwise_network(codec.entropy_parameters)
        self._output: tuple[bytes, exact.IntegerLinear] = (np.arange(self.channels).tobytes(), self.output)
        self._tap_rows = np.array([dy for dy, _ in self.taps]) + self.reach
        self._tap_cols = np.array([dx for _, dx in self.taps]) + self.reach

    def steps(self, schedule: str, height: int, width: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """The positions of each step of ``schedule`` on a ``height x width`` latent grid."""
        if schedule not in SCHEDULE_ORDERS:
            raise ValueError(f"unknown schedule {schedule!r}; choose one of {', '.join(SCHEDULES)}")
        return SCHEDULE_ORDERS[schedule].steps(height, width, self.taps)

    def output_layer(self, active: np.ndarray) -> exact.IntegerLinear:
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
            blocks = np.arange(self.spec.params_per_channel)[:, None] * self.channels
            layer = self.output.columns((blocks + active[None]).ravel())
            self._output = (key, layer)
        return layer

    def padded(self, height: int, width: int) -> Tensor:
        """Zero latents ``(m, H + reach, W + 2 reach)`` float32 (the latent range is exact in it)
        with room for the taps; latent ``(h, w)`` lives at ``[:, h + reach, w + reach]``."""
        return torch.zeros(self.channels, height + self.reach, width + 2 * self.reach, dtype=torch.float32)

    def params(
        self,
        y_padded: Tensor,
        hyper: Tensor,
        rows: np.ndarray,
        cols: np.ndarray,
        active: np.ndarray,
        helper: Executor | None = None,
    ) -> exact.IntegerMixture:
        """Mixture parameters ``(F, K, len(rows) * len(active))`` of the channels ``active`` at the
        given latent positions, elements in (position, channel) order.

        Args:
            y_padded: decoded latents so far (:meth:`padded`).
            hyper: :meth:`IntegerHyperprior.hyper` of ``ẑ``.
            helper: a thread for half of each large layer (:meth:`.exact.IntegerLinear.accumulate`).
        """
        windows = np.empty((len(rows), self.channels * len(self.taps)))
        _fixed_windows(y_padded.numpy(), rows, cols, self._tap_rows, self._tap_cols, windows)
        context = self.context(torch.from_numpy(windows), helper)
        x = torch.cat([hyper[:, torch.from_numpy(rows), torch.from_numpy(cols)].T.double(), context], dim=1)
        for layer in self.hidden:
            x = layer(x, helper)
        return exact.integer_params(self.spec, self.output_layer(active)(x, helper))

    def compress(
        self, y_hat: Tensor, hyper: Tensor, schedule: str = "wavefront", threads: int = 1
    ) -> tuple[bytes, np.ndarray]:
        """Range-code ``ŷ`` (``(1, m, H, W)`` integers) given the hyper features of its ``ẑ``.
        ``threads``: 2 or more lets a second thread compute half of each large kernel call
        (:func:`_helper`); the bytes do not depend on it.

        Returns:
            ``(stream, active channels)``.
        """
        y_int = y_hat[0].to(torch.int32)  # the latent range fits; half the memory of int64 on large images
        flat = y_int.flatten(1)
        active = np.flatnonzero(((flat.amax(1) != 0) | (flat.amin(1) != 0)).numpy())
        encoder = coding.new_encoder()
        with _helper(threads) as helper:
            self._encode(hyper, y_int, active, schedule, encoder, helper)
        return coding.finish(encoder), active

    def decompress(
        self,
        stream: bytes,
        hyper: Tensor,
        active: np.ndarray,
        schedule: str = "wavefront",
        on_rows: RowsDone | None = None,
        threads: int = 1,
        helper_when: Callable[[], bool] | None = None,
    ) -> Tensor:
        """Inverse of :meth:`compress`: ``ŷ`` ``(1, m, H, W)`` float32, the latent size that of ``hyper``;
        ``on_rows``: told as rows of ``ŷ`` become final (:meth:`_decode`); ``threads`` as in
        :meth:`compress` (the latents do not depend on it); ``helper_when``: asked before each
        step whether the helper thread may take its half now (default: always), e.g. only
        while a worker that shares the cores waits (:meth:`.tiling.BackgroundSynthesis.idle`)."""
        with _helper(threads) as helper:
            decoder = coding.new_decoder(stream)
            return self._decode(hyper, active, schedule, decoder, on_rows, helper, helper_when).float()[None]

    def _encode(
        self, hyper: Tensor, y_int: Tensor, active: np.ndarray, schedule: str, encoder, helper: Executor | None
    ) -> None:
        """Write every active element of ``ŷ`` (``(m, H, W)`` int32) in the decoder's order.

        The encoder knows all of ``ŷ``, so it evaluates the entropy parameters and PMFs of
        many steps in one batch (the integer path gives every position the same result
        whatever the batch); only the order of the coder calls follows the schedule: per
        step, per window width (as :meth:`_decode` reads them).
        """
        height, width = hyper.shape[1], hyper.shape[2]
        y_padded = self.padded(height, width)
        y_padded[:, self.reach :, self.reach : self.reach + width].copy_(y_int)  # no temporary
        active_t = torch.from_numpy(active)
        with torch.no_grad():
            for chunk in _step_chunks(self.steps(schedule, height, width), ENCODER_CHUNK_POSITIONS):
                rows, cols = np.concatenate([r for r, _ in chunk]), np.concatenate([c for _, c in chunk])
                mixture = self.params(y_padded, hyper, rows, cols, active, helper)
                values = (
                    y_int[active_t[None, :], torch.from_numpy(rows)[:, None], torch.from_numpy(cols)[:, None]]
                    .reshape(-1)
                    .numpy()
                )
                groups = _pmf_groups(self.spec, mixture, helper)
                # each step's elements are a contiguous range (elements are in step order)
                bounds = np.cumsum([0] + [len(r) * len(active) for r, _ in chunk])
                cuts = [np.searchsorted(index, bounds) for index, _, _ in groups]
                for s in range(len(chunk)):
                    for (index, pmf, offsets), cut in zip(groups, cuts):
                        a, b = cut[s], cut[s + 1]
                        if b > a:
                            coding.encode_symbols(encoder, values[index[a:b]], pmf[a:b], offsets[a:b])

    def _decode(
        self,
        hyper: Tensor,
        active: np.ndarray,
        schedule: str,
        decoder,
        on_rows: RowsDone | None = None,
        helper: Executor | None = None,
        helper_when: Callable[[], bool] | None = None,
    ) -> Tensor:
        """Walk the schedule and read every active element of ``ŷ``: one batch per step (the
        positions of a step only depend on earlier steps), one coder call per window width.
        ``on_rows`` is called (if given) each time more rows are final, last with all ``H``;
        ``helper`` computes half of a step's large kernel calls where ``helper_when()`` (if given) says so.

        Returns:
            The latents ``(m, H, W)`` (float32).
        """
        height, width = hyper.shape[1], hyper.shape[2]
        y_padded = self.padded(height, width)
        latents = y_padded[:, self.reach :, self.reach : self.reach + width]
        active_t = torch.from_numpy(active)
        steps = self.steps(schedule, height, width)
        last_step = np.zeros(height, dtype=np.int64)  # the step that finishes each row (non-decreasing)
        for i, (rows, _) in enumerate(steps):
            last_step[rows] = i
        done = 0
        with torch.no_grad():
            for step, (rows, cols) in enumerate(steps):
                now = helper if helper_when is None or helper_when() else None
                mixture = self.params(y_padded, hyper, rows, cols, active, now)
                values = np.zeros(len(rows) * len(active), dtype=np.int64)
                for index, pmf, offsets in _pmf_groups(self.spec, mixture, now):
                    values[index] = coding.decode_symbols(decoder, pmf, offsets)
                grid = torch.from_numpy(values).float().reshape(len(rows), len(active))
                y_padded[
                    active_t[None, :],
                    torch.from_numpy(rows + self.reach)[:, None],
                    torch.from_numpy(cols + self.reach)[:, None],
                ] = grid
                if on_rows is not None and done < height and last_step[done] <= step:
                    done = int(np.searchsorted(last_step, step, side="right"))
                    on_rows(done, latents)
        return latents


@numba.njit(cache=True, nogil=True)
def _fixed_windows(y_padded, rows, cols, tap_rows, tap_cols, out):  # pragma: no cover (compiled)
    """``out[p, c · T + t] = y_padded[c, rows[p] + tap_rows[t], cols[p] + tap_cols[t]] · 2**ACT_BITS``:
    the ``T`` causal taps of each of the ``P`` positions, channel-major as the context layer's
    inputs, in fixed point (the latents are integers within ``±2**8``, so the scaling is
    :func:`~.entropy.exact.to_fixed`, exactly).  ``y_padded``: :meth:`IntegerContextCodec.padded`;
    ``rows``, ``cols``: ``(P,)`` latent positions; ``tap_rows``/``tap_cols``: ``(T,)`` offsets
    into the padded grid; ``out``: ``(P, m · T)`` float64."""
    taps = tap_rows.shape[0]
    for p in range(rows.shape[0]):
        for c in range(y_padded.shape[0]):
            for t in range(taps):
                out[p, c * taps + t] = y_padded[c, rows[p] + tap_rows[t], cols[p] + tap_cols[t]] * 2.0**exact.ACT_BITS


def _helper(threads: int) -> contextlib.AbstractContextManager[Executor | None]:
    """A one-thread pool that takes half of each large kernel call of the exact path while the
    calling thread does the other half (``threads >= 2``), else None.  The halves run the same
    integer arithmetic as one call (:func:`.entropy.exact._in_halves`), so the bits and the
    latents do not depend on ``threads``; the range coder stays in the calling thread."""
    return ThreadPoolExecutor(1, thread_name_prefix="mixcodec-exact") if threads >= 2 else contextlib.nullcontext()


def _pmf_groups(
    spec: MixtureSpec, mixture: exact.IntegerMixture, helper: Executor | None = None
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
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
            pmf = exact.integer_window_pmf(spec, offsets, 2 * h + 1, mixture, index, helper)
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
