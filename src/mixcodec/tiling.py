"""The transforms in horizontal stripes: bounded memory at any image size, the same values as whole.

Every transform (``g_a``, ``h_a``, ``g_s``) is an ``nn.Sequential`` of *stages* made of
convolutions, pixel shuffles and point-wise maps (GDN is a 1x1 convolution across
channels; the "simplified attention" is convolutional, with no global pooling), so each
output row depends on a bounded window of input rows: the stage's *footprint*
(:func:`footprint`, worked out from the modules, not measured).  :class:`StripedSequential`
streams the rows of an image through the stages: a stage computes a stripe of its output
rows from the input rows the stripe needs plus its footprint's margin (``radius`` rows
each side, clipped at the image border), keeps the rows its next stripe needs and drops
the rest.  Inside a stripe a convolution's zero padding at a cut edge only reaches
``radius`` rows inward, so the kept rows are the rows of the whole-image computation
(mathematically; in floating point, see below), and memory is a few stripes of each
stage, whatever the image height.  Stripes span the whole width (a convolution of a
different width may take a different algorithm); the stripe height follows from
:data:`STRIPE_PIXELS` (:func:`stripe_rows`).

Floating point: a stripe and the whole image run the same modules on the same width and
memory format, but a backend may pick a different kernel (a different order of the sums)
for a different height.  With the shipped model's widths (64 and 128 channels, oneDNN on
x86) the stripes are bit-identical to the whole image (``benchmarks/large_images.py
--exactness`` checks it); with very narrow layers (the 8-channel test models) they
differ by float rounding (about 1e-4 after amplification through random weights; the
margins are right: float64 agrees to 1e-9, tests/test_tiling.py).  The stripe height is a function of the
image width only, so a file always decodes to the same pixels on a machine.  Images of
at most one stripe (:func:`is_striped` false) take the whole-image path of before, so
their files and pixels are those of before whatever the backend does.

Each stage recomputes ``2 * radius`` rows of its input per stripe (3-4 rows at its own
resolution): with the default stripe height that is 3-12 % of the work of the
half-resolution stages that dominate (the latent-resolution stages, whose margins are
larger in image rows, are cheap).  Memory is about 1 KB per stripe pixel in ``g_s``
(a CRM holds five or six activations of its stripe).
"""

from __future__ import annotations

import math
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
import torch
from torch import Tensor, nn

from .entropy.distributions import LATENT_MAX, LATENT_MIN
from .layers import (
    GDN,
    AttentionUnit,
    ConcatenatedResidualModule,
    ResidualBlock,
    ResidualBlockUpsample,
    ResidualBlockWithStride,
    SimplifiedAttention,
)

#: Output pixels of one stripe of the transforms (the stripe height is this over the width).
STRIPE_PIXELS = 1 << 20
#: Stripe heights are multiples of this (the image side of ``z``'s down-sampling).
ROW_MULTIPLE = 64
#: Fewest image rows in a stripe, however wide the image.
MIN_STRIPE_ROWS = 128

_POINTWISE = (nn.LeakyReLU, nn.ReLU, nn.Identity, nn.Sigmoid, GDN)
#: Blocks whose children are parallel branches summed (or gated) at the end; point-wise
#: maps applied after the sum (AttentionUnit's ReLU) are children of radius 0.
_BRANCHING = (
    ResidualBlock,
    ResidualBlockWithStride,
    ResidualBlockUpsample,
    ConcatenatedResidualModule,
    AttentionUnit,
    SimplifiedAttention,
)


@dataclass(frozen=True)
class Footprint:
    """Which input rows a module's output rows depend on.

    Output rows ``[a, b)`` depend only on input rows
    ``[floor(a / scale) - radius, ceil(b / scale) + radius)``.

    Attributes:
        radius: margin, in input rows (an upper bound).
        scale: output rows per input row (``1/2`` for a stride-2 convolution, ``2`` for a
            pixel shuffle by 2).
    """

    radius: int
    scale: Fraction

    def then(self, other: "Footprint") -> "Footprint":
        """The footprint of this module followed by ``other``."""
        # other's first input row is floor(a / s) - r >= a / s - r - 1 (exact when 1/s is an integer)
        slack = 0 if other.scale.numerator == 1 else 1
        return Footprint(self.radius + math.ceil((other.radius + slack) / self.scale), self.scale * other.scale)


_IDENTITY = Footprint(0, Fraction(1))


def footprint(module: nn.Module) -> Footprint:
    """The footprint of a transform or of one of its stages, from its modules.

    Raises:
        ValueError: a module whose footprint is not known (not local, or not handled here).
    """
    if isinstance(module, nn.Conv2d):
        (kh, _), (sh, _), (dh, _), (ph, _) = module.kernel_size, module.stride, module.dilation, module.padding
        if ph != dh * (kh - 1) // 2:
            raise ValueError(f"{module}: only 'same' padding is handled")
        return Footprint(ph, Fraction(1, sh))
    if isinstance(module, nn.PixelShuffle):
        return Footprint(0, Fraction(module.upscale_factor))
    if isinstance(module, _POINTWISE):
        return _IDENTITY
    if isinstance(module, nn.Sequential):
        result = _IDENTITY
        for child in module:
            result = result.then(footprint(child))
        return result
    if isinstance(module, _BRANCHING):
        branches = [footprint(child) for child in module.children()]
        scales = {b.scale for b in branches if b.radius or b.scale != 1} or {Fraction(1)}
        if len(scales) != 1:
            raise ValueError(f"{type(module).__name__}: branches of different scales")
        return Footprint(max(b.radius for b in branches), scales.pop())
    raise ValueError(f"{type(module).__name__}: footprint unknown (not a local operation handled by tiling)")


def _memory_format(x: Tensor) -> torch.memory_format:
    return torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format


class _Stage:
    """One stage of a :class:`StripedSequential`: buffers input rows, emits output stripes."""

    def __init__(self, function: Callable[[Tensor], Tensor], fp: Footprint, in_rows: int, chunk: int, least: int = 0):
        self.function = function
        self.radius = fp.radius
        self.scale = fp.scale
        self.in_rows = in_rows
        self.out_rows = in_rows * fp.scale
        if self.out_rows.denominator != 1:
            raise ValueError(f"{in_rows} rows do not fit the stage's scale {fp.scale}")
        self.out_rows = int(self.out_rows)
        #: input rows must start on a multiple of this (a strided convolution keeps its phase)
        self.align = fp.scale.denominator
        self.chunk = max(1, chunk)
        #: a partial stripe of at least this many rows is emitted when the whole one cannot be yet
        #: (0: never)
        self.least = least
        #: the input rows pushed and still needed, as pushed (joined only into a stripe's window)
        self.pieces: list[Tensor] = []
        self.pieces_start = 0  # input row of pieces[0][:, :, 0]
        self.received = 0  # input rows pushed so far
        self.emitted = 0  # output rows produced so far

    def _span(self, start: int, stop: int) -> tuple[int, int]:
        """Input rows ``[lo, hi)`` that output rows ``[start, stop)`` are computed from."""
        lo = max(0, math.floor(start / self.scale) - self.radius)
        lo -= lo % self.align
        hi = min(self.in_rows, math.ceil(stop / self.scale) + self.radius)
        return lo, hi

    def _window(self, lo: int, hi: int, memory_format: torch.memory_format) -> Tensor:
        """Input rows ``[lo, hi)``, one contiguous tensor."""
        parts, start = [], self.pieces_start
        for piece in self.pieces:
            stop = start + piece.shape[2]
            if stop > lo and start < hi:
                parts.append(piece[:, :, max(lo, start) - start : min(hi, stop) - start])
            start = stop
        window = parts[0] if len(parts) == 1 else torch.cat(parts, dim=2)
        return window.contiguous(memory_format=memory_format)

    def _drop_before(self, keep: int) -> None:
        """Forget the pieces that hold only input rows before ``keep``."""
        while self.pieces and self.pieces_start + self.pieces[0].shape[2] <= keep:
            self.pieces_start += self.pieces.pop(0).shape[2]

    def push(self, rows: Tensor, partial: bool = True) -> Iterator[Tensor]:
        """Take the next input rows ``(1, C, k, W)``; yield the output stripes now complete
        (``partial``: and a partial one where :attr:`least` allows)."""
        # rows are kept as pushed and copied once into each window that reads them: a push
        # costs no copy of what is buffered, however small the pieces
        self.pieces.append(rows)
        self.received += rows.shape[2]
        while self.emitted < self.out_rows:
            stop = min(self.out_rows, self.emitted + self.chunk)
            lo, hi = self._span(self.emitted, stop)
            if hi > self.received:
                computable = math.floor((self.received - self.radius) * self.scale)  # rows whose span is in
                if not (partial and self.least) or computable - self.emitted < self.least:
                    return
                stop = computable
                lo, hi = self._span(self.emitted, stop)
            # in the memory format the whole-image input has (the kernels may depend on it)
            window = self._window(lo, hi, _memory_format(rows))
            with torch.no_grad():
                out = self.function(window)
            first = self.emitted - int(lo * self.scale)
            count = stop - self.emitted
            # a copy of the kept rows, so that the margins' rows are freed before the next stage runs
            piece = (
                out
                if (first, count) == (0, out.shape[2])
                else out[:, :, first : first + count].clone(memory_format=_memory_format(out))
            )
            del out, window
            yield piece
            del piece
            self.emitted = stop
            if stop < self.out_rows:  # drop the rows no later stripe reads
                self._drop_before(self._span(stop, min(self.out_rows, stop + self.chunk))[0])
        self.pieces = []


class StripedSequential:
    """Push rows of an input through a sequence of stages; get output stripes.

    Args:
        stages: ``(function, footprint)`` of each stage, in order (:meth:`of` for an
            ``nn.Sequential``); a function maps ``(1, C, h, W)`` to ``(1, C', h * scale, W')``.
        in_rows: rows of the whole input.
        out_chunk: output rows per stripe of the last stage (earlier stages get the
            same stripe height in image terms, at least one row).
        progressive: a stage whose next whole stripe cannot be computed yet emits the rows it
            can (at least a quarter of a stripe), so that output does not wait for the input of
            one stripe per stage (a decoder fed rows as they become final).
    """

    def __init__(
        self,
        stages: Sequence[tuple[Callable[[Tensor], Tensor], Footprint]],
        in_rows: int,
        out_chunk: int,
        progressive: bool = False,
    ):
        scales = [fp.scale for _, fp in stages]
        remaining = [math.prod(scales[i + 1 :], start=Fraction(1)) for i in range(len(scales))]
        self.stages, rows = [], in_rows
        for (function, fp), after in zip(stages, remaining):
            chunk = math.ceil(out_chunk / after)
            stage = _Stage(function, fp, rows, chunk, max(1, chunk // 4) if progressive else 0)
            self.stages.append(stage)
            rows = stage.out_rows
        self.out_rows = rows

    @classmethod
    def of(
        cls, sequential: nn.Sequential, in_rows: int, out_chunk: int, progressive: bool = False
    ) -> "StripedSequential":
        """The children of ``sequential`` as stages (each with its :func:`footprint`)."""
        return cls([(child, footprint(child)) for child in sequential], in_rows, out_chunk, progressive)

    def push(self, rows: Tensor, partial: bool = True) -> Iterator[Tensor]:
        """Feed the next input rows ``(1, C, k, W)`` (in order); yield finished output stripes.
        ``partial=False``: whole stripes only this time (more input is on its way at once)."""
        yield from self._push(0, rows, partial)

    def _push(self, index: int, rows: Tensor, partial: bool) -> Iterator[Tensor]:
        if index == len(self.stages):
            yield rows
            return
        for out in self.stages[index].push(rows, partial):
            yield from self._push(index + 1, out, partial)


def stripe_rows(width: int) -> int:
    """Image rows per stripe for a (padded) image ``width`` pixels wide: a multiple of
    :data:`ROW_MULTIPLE`, about :data:`STRIPE_PIXELS` pixels, at least :data:`MIN_STRIPE_ROWS`."""
    return max(MIN_STRIPE_ROWS, STRIPE_PIXELS // width // ROW_MULTIPLE * ROW_MULTIPLE)


def is_striped(height: int, width: int, rows: int | None = None) -> bool:
    """Whether a padded ``height x width`` image is transformed in stripes of ``rows``
    image rows (default :func:`stripe_rows`): more than one stripe high."""
    return height > (rows or stripe_rows(width))


def analyse(model: nn.Module, image: np.ndarray, quality: float, padded: tuple[int, int], rows: int) -> Tensor:
    """``y`` ``(1, m, H/16, W/16)`` of ``model.analyse`` on an ``HxWx3`` uint8 image
    replicate-padded to ``padded`` = ``(H, W)``, computed in stripes of ``rows`` image rows.
    Equal to ``model.analyse(pad(image / 255), quality)``."""
    height, width = padded
    with torch.no_grad():
        gain, _ = model.gains(model._qualities(quality, 1))
    columns = np.minimum(np.arange(width), image.shape[1] - 1)  # replicate padding on the right...
    g_a = StripedSequential.of(model.g_a, height, rows // 16)
    out, done = (
        torch.empty((1, gain.shape[1], height // 16, width // 16), memory_format=torch.channels_last),
        0,
    )  # as model.analyse
    for start in range(0, height, rows):
        index = np.minimum(np.arange(start, min(height, start + rows)), image.shape[0] - 1)  # ...and the bottom
        x = torch.from_numpy(image[index][:, columns]).permute(2, 0, 1)[None].float() / 255
        for y in g_a.push(x.contiguous(memory_format=torch.channels_last)):
            out[:, :, done : done + y.shape[2]] = (y.float() * gain).clamp_(LATENT_MIN, LATENT_MAX)
            done += y.shape[2]
    return out


def run(
    stages: nn.Sequential | Sequence[tuple[Callable[[Tensor], Tensor], Footprint]],
    x: Tensor,
    rows: int,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """``stages(x)`` for ``x`` ``(1, C, H, W)``, computed in stripes of ``rows`` output rows;
    ``stages``: an ``nn.Sequential`` or the ``stages`` argument of :class:`StripedSequential`;
    ``dtype``: of the result (default that of the stripes), each stripe converted as it comes."""
    striped = (
        StripedSequential.of(stages, x.shape[2], rows)
        if isinstance(stages, nn.Sequential)
        else StripedSequential(stages, x.shape[2], rows)
    )
    step = max(1, math.ceil(rows * x.shape[2] / striped.out_rows))
    result, done = None, 0
    for start in range(0, x.shape[2], step):
        for out in striped.push(x[:, :, start : start + step]):
            if result is None:  # filled in place: no second copy of the output
                result = out.new_empty(
                    (out.shape[0], out.shape[1], striped.out_rows, out.shape[3]), dtype=dtype or out.dtype
                )
            result[:, :, done : done + out.shape[2]] = out
            done += out.shape[2]
    return result


class Synthesis:
    """``model.synthesize`` in stripes, written into an ``height x width x 3`` uint8 array as
    latent rows arrive (:meth:`push`): pixels equal to the whole-image
    ``codec.reconstruct``.

    Args:
        rows: image rows per stripe (a multiple of 16).
    """

    def __init__(
        self, model: nn.Module, quality: float, latent_size: tuple[int, int], height: int, width: int, rows: int
    ):
        with torch.no_grad():
            _, self.inverse_gain = model.gains(model._qualities(quality, 1))
        self.g_s = StripedSequential.of(model.g_s, latent_size[0], rows, progressive=True)
        self.height, self.width = height, width
        self.image = np.empty((height, width, 3), dtype=np.uint8)
        self.done = 0  # image rows written

    def push(self, y_rows: Tensor, after_stripe: Callable[[], None] | None = None, partial: bool = True) -> None:
        """The next rows ``(1, m, k, W/16)`` of ``ŷ`` (float32, in order); ``after_stripe`` is
        called after each stripe of pixels written (one push may finish several); ``partial``:
        as :meth:`StripedSequential.push`."""
        rows = y_rows.float().contiguous(memory_format=torch.channels_last) * self.inverse_gain
        for x in self.g_s.push(rows, partial):
            stop = min(self.height, self.done + x.shape[2])
            if stop > self.done:
                pixels = (x[0, :, : stop - self.done, : self.width].clamp(0, 1) * 255).round().to(torch.uint8)
                self.image[self.done : stop] = pixels.permute(1, 2, 0).numpy()
            self.done += x.shape[2]
            if after_stripe is not None:
                after_stripe()


class BackgroundSynthesis:
    """A :class:`Synthesis` run in a worker thread, fed rows of ``ŷ`` as the entropy decoder
    finishes them (:meth:`feed`, a :data:`~.context_coding.RowsDone`), so that the two
    run side by side.  Use as a context manager around the entropy decoding::

        with BackgroundSynthesis(synthesis, threads=1) as background:
            loaded.context.decompress(..., on_rows=background.feed)
        synthesis.image  # complete

    PyTorch keeps an intra-op thread count per thread: the worker uses ``threads`` while
    the entropy decoding runs, then the caller's own count from the next stripe on once the
    block ends (the synthesis usually lags behind the entropy decoding, and one push can
    finish many stripes; the same pixels where the forward convolutions do not depend on the thread
    count, as measured for the shipped model on x86; docs/large-images.md); the caller uses
    ``caller_threads`` inside the block (the entropy path is exact whatever its count) and
    its own count again after it.  An error in the worker
    is raised on exit.
    """

    def __init__(self, synthesis: Synthesis, threads: int, caller_threads: int = 1):
        self.synthesis, self.threads, self.caller_threads = synthesis, threads, caller_threads
        self._restore = 0
        self._wanted = threads  # the worker's thread count from its next stripe on (set by the caller)
        self.sent = 0  # rows of ŷ handed over
        self._queue: "queue.Queue[Tensor | None]" = queue.Queue()  # rows, then the end
        self._ready = threading.Event()
        self._waiting = False  # the worker is blocked on an empty queue
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._work, name="mixcodec-synthesis", daemon=True)

    def _work(self) -> None:
        torch.set_num_threads(self.threads)
        torch.get_num_threads()  # makes this thread's count its own before the caller sets the default again
        self._ready.set()
        while (rows := self._next()) is not None:
            if self._error is None:
                try:
                    self._follow_threads()
                    # partial stripes (each recomputing its margins) only when no more rows wait:
                    # a worker that lags behind computes whole stripes
                    self.synthesis.push(rows, self._follow_threads, partial=self._queue.empty())
                except BaseException as exc:  # re-raised in the caller's thread by __exit__
                    self._error = exc

    def _next(self) -> "Tensor | None":
        """In the worker: the next rows from the queue (or the end), waiting for them if none are there."""
        self._waiting = True
        try:
            return self._queue.get()
        finally:
            self._waiting = False

    def idle(self) -> bool:
        """Whether the worker waits for rows now (nothing queued, no stripe under way): then its
        cores are free for the entropy decoding's helper thread (the ``helper_when`` of
        :meth:`~.context_coding.IntegerContextCodec.decompress`).  A hint for scheduling only:
        what is decoded does not depend on it."""
        return self._waiting and self._queue.empty()

    def _follow_threads(self) -> None:
        """In the worker: take the thread count the caller wants now."""
        if torch.get_num_threads() != self._wanted:
            torch.set_num_threads(self._wanted)

    def feed(self, done: int, latents: Tensor) -> None:
        """Rows ``[0, done)`` of ``latents`` ``(m, H, W)`` are final: hand the new ones over (copied)."""
        if done > self.sent:
            self._queue.put(latents[:, self.sent : done].to(torch.float32, copy=True)[None])
            self.sent = done

    def __enter__(self) -> "BackgroundSynthesis":
        self._restore = torch.get_num_threads()
        self._thread.start()
        self._ready.wait()  # torch.set_num_threads in the worker also set the default: set the caller's after it
        torch.set_num_threads(self.caller_threads)
        return self

    def __exit__(self, *exc_info) -> None:
        torch.set_num_threads(self._restore)
        self._wanted = self._restore  # the entropy decoding is over: all the caller's threads
        self._queue.put(None)
        self._thread.join()
        torch.set_num_threads(self._restore)  # the worker's call set the default too
        if self._error is not None and exc_info[0] is None:
            raise self._error
