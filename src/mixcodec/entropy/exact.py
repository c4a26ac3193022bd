"""Exact, platform-independent evaluation of the entropy-parameter path.

A range decoder only works if it rebuilds *exactly* the probability tables the
encoder used.  Floating-point networks do not guarantee that across machines,
libraries or thread counts (summation order, vectorized vs scalar ``exp``).  So
everything between the decoded latents and the PMF tables is evaluated here in
integer arithmetic:

* **Networks** (hyper-synthesis, 5x5 context taps, entropy-parameter 1x1 layers):
  weights are rounded to integers ``round(w * 2**b)`` (``b`` per layer, from the
  exact binary exponent of the largest weight), activations are integers in units
  of ``2**-ACT_BITS`` clipped to ``±ACT_LIMIT``.  Convolutions run in float64 on
  these integers (1x1 layers of positions: :class:`IntegerLinear`, a compiled kernel
  with float32 weights and float64 sums); every product and partial sum stays below
  ``2**53``, so the result is exact whatever the summation order.  Rescaling uses
  powers of two and ``floor``; LeakyReLU multiplies by 0.01 (one correctly rounded
  IEEE operation) and floors.
* **Mixture parameters**: softmax and softplus come from integer lookup tables;
  weights are fixed-point (``2**-16``), means ``2**-8``, scales ``2**-16``
  (:func:`integer_params`, param_blocks layout of :mod:`.distributions`).
* **PMF**: the standardized CDFs come from integer tables (``2**-32``) on a grid
  of ``2**-8`` with integer linear interpolation; masses are combined with the
  weights in int64.  The result is an integer table per element.

The lookup tables ship with the package (``exact_tables.npz``); :func:`build_tables`
regenerates them (a test checks that it reproduces the shipped file).

Relation to :mod:`.distributions`: this is a fixed-point twin of
:func:`~.distributions.split_params` and :func:`~.distributions.mixture_likelihood`
(same layout, same bins and edges); tests bound their difference.
"""

from __future__ import annotations

from concurrent.futures import Executor
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

import numba
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .distributions import FAMILIES, LATENT_MAX, LATENT_MIN, SCALE_MIN, MixtureSpec, standard_cdf

ACT_BITS = 8
ACT_LIMIT = float(1 << 20)  # activations within ±4096
WEIGHT_LIMIT_BITS = 15  # |integer weights| < 2**15

GRID_BITS = 8  # table grid step 2**-8
T_RANGE = 24  # CDF table covers t in [-24, 24]
CDF_BITS = 32
SCALE_BITS = 16
MIX_BITS = 16  # mixture weights in units of 2**-16
EXP_RANGE = 32  # exp table covers exp(-x), x in [0, 32]
SOFTPLUS_RANGE = 16  # softplus table covers x in [-16, 16]
PMF_BITS = CDF_BITS + MIX_BITS  # PMF tables are integers in units of 2**-48
MIN_WEIGHT = 66  # ~1e-3 in units of 2**-16: lighter components do not widen the coding window

_TABLE_FILE = "exact_tables.npz"


def build_tables() -> dict[str, np.ndarray]:
    """The integer lookup tables, computed in float64 and rounded."""
    step = 2.0**-GRID_BITS
    t = torch.arange(-T_RANGE * 2**GRID_BITS, T_RANGE * 2**GRID_BITS + 1, dtype=torch.float64) * step
    tables = {f"cdf_{family}": torch.round(standard_cdf(family, t) * 2.0**CDF_BITS) for family in FAMILIES}
    x = torch.arange(0, EXP_RANGE * 2**GRID_BITS + 1, dtype=torch.float64) * step
    tables["exp"] = torch.round(torch.exp(-x) * 2.0**30)
    x = torch.arange(-SOFTPLUS_RANGE * 2**GRID_BITS, SOFTPLUS_RANGE * 2**GRID_BITS + 1, dtype=torch.float64) * step
    tables["softplus"] = torch.round(F.softplus(x) * 2.0**SCALE_BITS)
    return {k: v.to(torch.int64).numpy() for k, v in tables.items()}


@lru_cache(maxsize=1)
def tables() -> dict[str, Tensor]:
    """The shipped tables: CDFs as float64 (exact integers), ``exp``/``softplus`` as int64."""
    with resources.files("mixcodec.entropy").joinpath(_TABLE_FILE).open("rb") as handle:
        data = np.load(handle)
        return {
            k: torch.from_numpy(data[k].astype(np.float64 if k.startswith("cdf_") else np.int64)) for k in data.files
        }


# ----------------------------------------------------------------------------- networks


def to_fixed(x: Tensor) -> Tensor:
    """Real activations -> integer units of ``2**-ACT_BITS`` (float64 holding integers)."""
    return torch.round(x.double() * 2.0**ACT_BITS).clamp_(-ACT_LIMIT, ACT_LIMIT)


def _weight_bits(weight: Tensor) -> int:
    """Fraction bits so that the largest |weight| maps below ``2**WEIGHT_LIMIT_BITS`` (exact)."""
    largest = float(weight.abs().max())
    if largest == 0.0:
        return WEIGHT_LIMIT_BITS
    _, exponent = np.frexp(largest)  # largest = m * 2**exponent, 0.5 <= m < 1
    return int(np.clip(WEIGHT_LIMIT_BITS - exponent, 0, 30))


@dataclass
class IntegerAffine:
    """A convolution ``y = requantize(conv(x, W) + b)`` with integer W and b (1x1 layers of
    positions: :class:`IntegerLinear`).

    ``weight`` is a float64 tensor of integers in units of ``2**-bits``; ``bias`` is
    in units of ``2**-(bits + ACT_BITS)``, so the accumulator is in those units too.
    """

    weight: Tensor
    bias: Tensor
    bits: int
    stride: int = 1
    padding: int = 0

    @classmethod
    def from_weight(cls, weight: Tensor, bias: Tensor, stride: int = 1, padding: int = 0) -> "IntegerAffine":
        weight = weight.detach().double().contiguous()
        bits = _weight_bits(weight)
        return cls(
            torch.round(weight * 2.0**bits),
            torch.round(bias.detach().double() * 2.0 ** (bits + ACT_BITS)),
            bits,
            stride,
            padding,
        )

    def conv(self, x: Tensor) -> Tensor:
        """``x``: ``(B, C, H, W)`` integers; weight ``(O, C, k, k)``."""
        return requantize(F.conv2d(x, self.weight, self.bias, self.stride, self.padding), self.bits)


@numba.njit(cache=True, nogil=True)
def _leaky(x):  # pragma: no cover (compiled)
    """The integer LeakyReLU of one value: ``floor(0.01 x + 0.5)`` below 0 (two roundings, no FMA)."""
    return np.floor(x * 0.01 + 0.5) if x < 0 else x


@numba.njit(cache=True, nogil=True)
def _requantize_kernel(acc, scale, leaky, out):  # pragma: no cover (compiled)
    """``out = clip(floor(acc · scale + 0.5), ±ACT_LIMIT)``, then :func:`_leaky` where ``leaky``;
    ``acc``, ``out``: flat float64.  Not ``fastmath``: each operation rounds as IEEE says."""
    for i in range(acc.shape[0]):
        y = min(max(np.floor(acc[i] * scale + 0.5), -ACT_LIMIT), ACT_LIMIT)
        out[i] = _leaky(y) if leaky else y


@numba.njit(cache=True, nogil=True)
def _leaky_kernel(x, out):  # pragma: no cover (compiled)
    """``out = _leaky(x)`` elementwise; flat float64 arrays."""
    for i in range(x.shape[0]):
        out[i] = _leaky(x[i])


def requantize(acc: Tensor, bits: int, leaky: bool = False) -> Tensor:
    """Accumulator (units ``2**-(bits + ACT_BITS)``) -> activation (units ``2**-ACT_BITS``):
    round half up, clip to ``±ACT_LIMIT``; then, if ``leaky``, :func:`leaky_relu`.  A new
    float64 tensor of the shape of ``acc``."""
    values = np.ascontiguousarray(acc.numpy())
    out = np.empty_like(values)
    _requantize_kernel(values.reshape(-1), 2.0**-bits, leaky, out.reshape(-1))
    return torch.from_numpy(out)


#: Integers of magnitude up to this are exact in float64 (so are sums that stay within it).
FLOAT64_EXACT = 2.0**53
#: Most positions :class:`IntegerLinear` evaluates with its kernel (faster than a float64 GEMM
#: up to about this many on one core; beyond, the GEMM's blocking wins: 1.9x at 4096 positions
#: of the 1536-input context layer).
KERNEL_POSITIONS = 512
#: Least work for which a kernel call is split between the caller and a helper thread
#: (:func:`_in_halves`): below it the hand-over costs more than the half saves (measured on
#: the 2-core AMD EPYC, ``benchmarks/entropy_speed.py --threads 2``).  Multiply-adds of an
#: :class:`IntegerLinear` call; CDF evaluations (elements x (width + 1) x components) of an
#: :func:`integer_window_pmf` call.
SPLIT_MULTIPLY_ADDS = 1_500_000
SPLIT_CDF_VALUES = 10_000


def _in_halves(helper: Executor | None, split: bool, count: int, cut: int, run) -> None:
    """``run(lo, hi)`` on ``[0, count)``: with a ``helper`` thread and ``split``, ``[cut, count)``
    runs in the helper while ``[0, cut)`` runs here (the compiled kernels release the GIL),
    else all of it here.  Each half writes its own outputs with the arithmetic of the whole,
    so the results are the same either way."""
    if helper is None or not split or not 0 < cut < count:
        run(0, count)
        return
    second = helper.submit(run, cut, count)
    run(0, cut)
    second.result()


@numba.njit(cache=True, nogil=True, fastmath={"reassoc", "contract"})
def _linear_kernel(x, rows, bias, out):  # pragma: no cover (compiled)
    """``out[p, o] = bias[o] + Σ_c x[p, c] · rows[o, c]`` in float64.

    Shapes: ``x`` ``(P, C)`` float64, ``rows`` ``(O, C)`` float32, ``bias`` ``(O,)`` float64,
    ``out`` ``(P, O)`` float64; all hold integers; ``P`` a multiple of 4.  Tiles of 4 positions
    x 4 outputs (each weight converted and each input loaded once for four products: 1.6x
    faster than one position at a time), then the remaining outputs one by one.  The sums over
    ``c`` may be reordered, vectorized and contracted to FMAs (``fastmath`` reassoc/contract):
    with every product and partial sum an integer below ``FLOAT64_EXACT`` (:class:`IntegerLinear`
    checks it) no operation rounds, so any order gives the same integers.
    """
    positions, inputs = x.shape
    outputs = rows.shape[0]
    tiled_outputs = outputs - outputs % 4
    for o in range(0, tiled_outputs, 4):
        for p in range(0, positions, 4):  # 16 named accumulators: LLVM keeps them in registers
            a0 = a1 = a2 = a3 = b0 = b1 = b2 = b3 = c0 = c1 = c2 = c3 = d0 = d1 = d2 = d3 = 0.0
            for c in range(inputs):
                w0 = np.float64(rows[o, c])
                w1 = np.float64(rows[o + 1, c])
                w2 = np.float64(rows[o + 2, c])
                w3 = np.float64(rows[o + 3, c])
                u = x[p, c]
                a0 += u * w0
                a1 += u * w1
                a2 += u * w2
                a3 += u * w3
                u = x[p + 1, c]
                b0 += u * w0
                b1 += u * w1
                b2 += u * w2
                b3 += u * w3
                u = x[p + 2, c]
                c0 += u * w0
                c1 += u * w1
                c2 += u * w2
                c3 += u * w3
                u = x[p + 3, c]
                d0 += u * w0
                d1 += u * w1
                d2 += u * w2
                d3 += u * w3
            sums = ((a0, a1, a2, a3), (b0, b1, b2, b3), (c0, c1, c2, c3), (d0, d1, d2, d3))
            for i in range(4):
                for j in range(4):
                    out[p + i, o + j] = sums[i][j] + bias[o + j]
    for o in range(tiled_outputs, outputs):
        for p in range(positions):
            a0 = 0.0
            for c in range(inputs):
                a0 += x[p, c] * rows[o, c]
            out[p, o] = a0 + bias[o]


@dataclass(frozen=True)
class IntegerLinear:
    """``y = requantize(x @ W + b)`` of positions ``(P, C) -> (P, O)``, then the integer LeakyReLU
    if ``leaky``: the integer twin of a 1x1 convolution (or of the taps of a context
    convolution) and of the activation after it, rounded as :class:`IntegerAffine`.

    Up to :data:`KERNEL_POSITIONS` positions, evaluated by a compiled kernel that reads the
    weights as float32 (exact: they are integers below ``2**WEIGHT_LIMIT_BITS < 2**24``),
    half the bytes of a float64 GEMM's operand, and accumulates in float64; beyond, by a
    float64 GEMM.  Both give the integers of ``x @ W + b``, bit for bit, because no product
    or partial sum can reach :data:`FLOAT64_EXACT` for inputs within ``±ACT_LIMIT`` (checked
    at construction).  At the ~11 positions of a wavefront step reading the weights is what
    costs: the kernel takes a third of the GEMM's time there.

    Attributes:
        rows: ``(O, C)`` float32, ``W`` transposed, integers in units of ``2**-bits``.
        bias: ``(O,)`` float64, integers in units of ``2**-(bits + ACT_BITS)``.
        bits: fraction bits of the weights.
        leaky: whether :func:`leaky_relu` follows.

    Raises:
        ValueError: some output's bound ``ACT_LIMIT · Σ_c |w| + |b|`` reaches ``FLOAT64_EXACT``.
    """

    rows: np.ndarray
    bias: np.ndarray
    bits: int
    leaky: bool = False

    def __post_init__(self) -> None:
        bound = ACT_LIMIT * np.abs(self.rows).sum(axis=1, dtype=np.float64) + np.abs(self.bias)
        if bound.size and bound.max() >= FLOAT64_EXACT:
            raise ValueError("an output of this layer could exceed 2**53: its integer twin would not be exact")

    @classmethod
    def from_weight(cls, weight: Tensor, bias: Tensor) -> "IntegerLinear":
        """From float ``weight`` ``(C, O)`` and ``bias`` ``(O,)`` (rounded as :meth:`IntegerAffine.from_weight`)."""
        affine = IntegerAffine.from_weight(weight, bias)
        rows = np.ascontiguousarray(affine.weight.numpy().T, dtype=np.float32)
        if not np.array_equal(rows, affine.weight.numpy().T):  # cannot happen for |w| <= 2**WEIGHT_LIMIT_BITS
            raise ValueError("the integer weights are not exact in float32")
        return cls(rows, affine.bias.numpy().copy(), affine.bits)

    def columns(self, outputs: np.ndarray) -> "IntegerLinear":
        """The layer restricted to the outputs ``outputs`` (``(n,)`` indices): those columns of its results."""
        return IntegerLinear(np.ascontiguousarray(self.rows[outputs]), self.bias[outputs], self.bits, self.leaky)

    def accumulate(self, x: Tensor, helper: Executor | None = None) -> Tensor:
        """``x @ W + b`` before requantization: ``(P, C)`` float64 integers within ``±ACT_LIMIT``
        -> ``(P, O)`` float64 integers in units of ``2**-(bits + ACT_BITS)``.  Up to
        :data:`KERNEL_POSITIONS` positions by the kernel, more by a float64 GEMM (cache-blocked,
        threaded: faster there); the same integers.  ``helper``: a thread that computes half
        of the outputs of a large enough kernel call (:func:`_in_halves`)."""
        if x.shape[0] > KERNEL_POSITIONS:
            return torch.addmm(torch.from_numpy(self.bias), x, torch.from_numpy(self.rows).T.double())
        padded = np.zeros((-(-x.shape[0] // 4) * 4, x.shape[1]))  # whole tiles of 4 positions
        padded[: x.shape[0]] = x.numpy()
        outputs = self.rows.shape[0]
        parts: dict[int, np.ndarray] = {}

        def run(lo: int, hi: int) -> None:
            parts[lo] = np.empty((padded.shape[0], hi - lo))
            _linear_kernel(padded, self.rows[lo:hi], self.bias[lo:hi], parts[lo])

        cut = outputs // 8 * 4  # on a tile of 4 outputs
        _in_halves(helper, padded.size * outputs >= SPLIT_MULTIPLY_ADDS, outputs, cut, run)
        out = parts[0] if len(parts) == 1 else np.concatenate([parts[k] for k in sorted(parts)], axis=1)
        return torch.from_numpy(out[: x.shape[0]])

    def __call__(self, x: Tensor, helper: Executor | None = None) -> Tensor:
        """``x``: ``(P, C)`` float64 integers within ``±ACT_LIMIT`` -> ``(P, O)`` float64 activations;
        ``helper`` as in :meth:`accumulate`."""
        out = self.accumulate(x, helper).numpy()
        _requantize_kernel(out.reshape(-1), 2.0**-self.bits, self.leaky, out.reshape(-1))  # in place
        return torch.from_numpy(out)


def leaky_relu(x: Tensor) -> Tensor:
    """Integer LeakyReLU with slope 0.01 (as ``nn.LeakyReLU()``): a new float64 tensor."""
    values = np.ascontiguousarray(x.double().numpy())
    out = np.empty_like(values)
    _leaky_kernel(values.reshape(-1), out.reshape(-1))
    return torch.from_numpy(out)


class IntegerSequential:
    """Integer twin of an ``nn.Sequential`` of Conv2d / LeakyReLU / PixelShuffle layers."""

    def __init__(self, module: nn.Module):
        self.ops: list = []
        #: the float layer of each op (same order)
        self.sources: list[nn.Module] = []
        self._collect(module)

    def _collect(self, module: nn.Module) -> None:
        if isinstance(module, nn.Sequential):
            for child in module:
                self._collect(child)
            return
        if isinstance(module, nn.Conv2d):
            layer = IntegerAffine.from_weight(module.weight, module.bias, module.stride[0], module.padding[0])
            self.ops.append(layer.conv)
        elif isinstance(module, nn.LeakyReLU):
            if module.negative_slope != 0.01:
                raise ValueError("only LeakyReLU(0.01) has an integer twin")
            self.ops.append(leaky_relu)
        elif isinstance(module, nn.PixelShuffle):
            self.ops.append(module)
        else:
            raise TypeError(f"no integer twin for {type(module).__name__}")
        self.sources.append(module)

    def __call__(self, x: Tensor) -> Tensor:
        with torch.no_grad():
            for op in self.ops:
                x = op(x)
        return x


# ----------------------------------------------------------------------------- mixtures


@dataclass
class IntegerMixture:
    """Fixed-point mixture parameters, each an int64 array of shape ``(F, K, elements)``.

    weights: units of ``2**-MIX_BITS`` (sum about ``2**MIX_BITS``);
    means: units of ``2**-ACT_BITS``; scales: units of ``2**-SCALE_BITS`` (>= SCALE_MIN).
    """

    weights: np.ndarray
    means: np.ndarray
    scales: np.ndarray


@numba.njit(cache=True, nogil=True)
def _softmax_kernel(logits, count, exp_table, out):  # pragma: no cover (compiled)
    """Integer softmax of ``logits[:count]`` (int64, units ``2**-ACT_BITS``) into ``out[:count]``
    (units ``2**-MIX_BITS``): ``floor((e_i << MIX_BITS) / Σ e)`` with
    ``e_i = exp_table[min(max - logit_i, EXP_RANGE << GRID_BITS)]``.  A count, not a slice:
    a slice per call costs the params kernel 2.5x its time (reference counting)."""
    top = logits[0]
    for i in range(1, count):
        top = max(top, logits[i])
    total = 0
    for i in range(count):
        out[i] = exp_table[min(top - logits[i], EXP_RANGE << GRID_BITS)]
        total += out[i]
    for i in range(count):
        out[i] = (out[i] << MIX_BITS) // total


@numba.njit(cache=True, nogil=True)
def _params_kernel(
    raw, families, components, exp_table, softplus_table, weights, means, scales
):  # pragma: no cover (compiled)
    """Mixture parameters of integer network outputs.

    ``raw`` ``(m, P * C)`` float64 holding integers (layout of :func:`~.distributions.param_blocks`);
    outputs ``(F, K, m * C)`` int64 in (position, channel) order, units as :class:`IntegerMixture`.
    """
    channels = raw.shape[1] // (3 * components * families + (families if families > 1 else 0))
    limit = SOFTPLUS_RANGE << GRID_BITS
    scale_min = round(SCALE_MIN * 2**SCALE_BITS)
    within = np.empty(components, dtype=np.int64)
    across = np.ones(families, dtype=np.int64)
    logits = np.empty(max(components, families), dtype=np.int64)
    for p in range(raw.shape[0]):
        for c in range(channels):
            e = p * channels + c
            if families > 1:
                for f in range(families):
                    logits[f] = np.int64(raw[p, (3 * components * families + f) * channels + c])
                _softmax_kernel(logits, families, exp_table, across)
            for f in range(families):
                block = 3 * components * f
                for k in range(components):
                    logits[k] = np.int64(raw[p, (block + k) * channels + c])
                _softmax_kernel(logits, components, exp_table, within)
                for k in range(components):
                    weights[f, k, e] = (within[k] * across[f]) >> MIX_BITS if families > 1 else within[k]
                    means[f, k, e] = min(
                        max(np.int64(raw[p, (block + components + k) * channels + c]), -(1 << 19)), 1 << 19
                    )
                    x = np.int64(raw[p, (block + 2 * components + k) * channels + c])
                    scale = x << (SCALE_BITS - ACT_BITS) if x > limit else softplus_table[max(x, -limit) + limit]
                    scales[f, k, e] = max(scale, scale_min)


def integer_params(spec: MixtureSpec, raw: Tensor) -> IntegerMixture:
    """Integer network outputs ``(m, P * C)`` (units ``2**-ACT_BITS``, layout of :func:`param_blocks`)
    -> mixture of the ``C`` channels, elements ``(F, K, m * C)`` in (position, channel) order.

    Softmax: ``exp`` table on the gap to the largest logit, then an integer division;
    component weight = within-family weight × family weight ``>> MIX_BITS``.  Scales:
    ``softplus`` table (identity above 16), at least ``SCALE_MIN``.  Compiled with numba;
    bit-identical to the same arithmetic as torch tensor operations (tests).
    """
    families, components = len(spec.families), spec.components
    channels = raw.shape[1] // spec.params_per_channel
    shape = (families, components, raw.shape[0] * channels)
    weights, means, scales = (np.empty(shape, dtype=np.int64) for _ in range(3))
    table = tables()
    _params_kernel(
        np.ascontiguousarray(raw.numpy()),
        families,
        components,
        table["exp"].numpy(),
        table["softplus"].numpy(),
        weights,
        means,
        scales,
    )
    return IntegerMixture(weights, means, scales)


@numba.njit(cache=True, nogil=True)
def _window_pmf_kernel(elements, lowest, width, weights, means, scales, cdf_tables, out):  # pragma: no cover (compiled)
    """``out[i, j] = Σ_f,k weight · (CDF(upper edge) − CDF(lower edge))`` of value ``lowest[i] + j``
    under the mixture of element ``elements[i]``.

    Shapes: ``elements``, ``lowest`` ``(m,)`` int64; ``weights``/``means``/``scales`` ``(F, K, E)``
    int64 (units as :class:`IntegerMixture`); ``cdf_tables`` ``(F, T)``; ``out``
    ``(m, width)`` float64 zeros.  The CDF at ``t = offset / scale`` (units ``2**-CDF_BITS``)
    is the table value at grid index ``floor(t · 2**GRID_BITS)`` plus an integer linear
    interpolation with an 8-bit fraction.  The quotient is one correctly rounded IEEE
    division; every other operation is on integers below ``2**53`` (exact), so the
    result does not depend on the machine or on the order of the sums.
    """
    half = 1 << (ACT_BITS - 1)
    scale_shift = 2.0 ** (SCALE_BITS - ACT_BITS + 2 * GRID_BITS)  # t in units of 2**-(2 GRID_BITS)
    grid = 2.0**GRID_BITS
    inv_grid = 2.0**-GRID_BITS
    shift = float(T_RANGE << GRID_BITS)
    last = cdf_tables.shape[1] - 1
    top = float(1 << CDF_BITS)
    open_low = (LATENT_MIN << ACT_BITS) - half  # lower edge of LATENT_MIN's bin and below: -inf
    open_high = (LATENT_MAX << ACT_BITS) + half  # upper edge of LATENT_MAX's bin and above: +inf
    for i in range(lowest.shape[0]):
        e = elements[i]
        for f in range(weights.shape[0]):
            for k in range(weights.shape[1]):
                weight, mean, scale = float(weights[f, k, e]), float(means[f, k, e]), float(scales[f, k, e])
                if weight == 0.0:  # adds exactly nothing (common: family weights of 2**-16 and below)
                    continue
                previous = 0.0
                for j in range(width + 1):
                    edge = ((lowest[i] + j) << ACT_BITS) - half  # lower edge of value lowest + j
                    if edge <= open_low:
                        cdf = 0.0
                    elif edge >= open_high:
                        cdf = top
                    else:
                        q = np.floor((float(edge) - mean) * scale_shift / scale)
                        index = np.floor(q * inv_grid)
                        fraction = q - index * grid
                        index += shift
                        if index < 0:
                            cdf = 0.0
                        elif index >= last:
                            cdf = top
                        else:
                            at = int(index)
                            low = cdf_tables[f, at]
                            cdf = low + np.floor((cdf_tables[f, at + 1] - low) * fraction * inv_grid)
                    if j > 0:
                        out[i, j - 1] += weight * (cdf - previous)
                    previous = cdf


def integer_window_pmf(
    spec: MixtureSpec,
    lowest: np.ndarray,
    width: int,
    mixture: IntegerMixture,
    elements: np.ndarray | None = None,
    helper: Executor | None = None,
) -> np.ndarray:
    """Probabilities of the values ``lowest[i] + j`` (``j < width``) under the mixture of
    element ``elements[i]`` (default: element ``i``), in units of ``2**-PMF_BITS``.

    Args:
        lowest: ``(m,)`` int64, the first value of each window.
        mixture: parameters of shape ``(F, K, E)``.
    Returns:
        ``(m, width)`` float64 holding exact integers.  Bins as in
        :func:`~.distributions.bin_mass`: the bin of ``LATENT_MIN`` extends to -inf,
        that of ``LATENT_MAX`` to +inf, values outside the range get 0.
        Compiled with numba (one pass per element, about 10x faster than the same
        arithmetic as torch tensor operations, and bit-identical to it: tests).  ``helper``: a
        thread that computes half of the elements of a large enough call (:func:`_in_halves`).
    """
    lowest = np.asarray(lowest, dtype=np.int64)
    elements = np.arange(len(lowest)) if elements is None else np.asarray(elements, dtype=np.int64)
    out = np.zeros((len(lowest), width))
    cdf_tables = _cdf_tables(spec.families)

    def run(lo: int, hi: int) -> None:
        _window_pmf_kernel(
            elements[lo:hi],
            lowest[lo:hi],
            width,
            mixture.weights,
            mixture.means,
            mixture.scales,
            cdf_tables,
            out[lo:hi],
        )

    components = mixture.weights.shape[0] * mixture.weights.shape[1]
    _in_halves(helper, len(lowest) * (width + 1) * components >= SPLIT_CDF_VALUES, len(lowest), len(lowest) // 2, run)
    return out


@lru_cache(maxsize=None)
def _cdf_tables(families: tuple[str, ...]) -> np.ndarray:
    """The CDF tables of ``families``, stacked ``(F, T)``."""
    return np.stack([tables()[f"cdf_{family}"].numpy() for family in families])


@numba.njit(cache=True, nogil=True)
def _center_and_spread_kernel(weights, means, scales, center, spread):  # pragma: no cover (compiled)
    one = 1 << ACT_BITS
    for e in range(weights.shape[2]):
        weight_sum = numerator = 0
        for f in range(weights.shape[0]):
            for k in range(weights.shape[1]):
                weight_sum += weights[f, k, e]
                numerator += weights[f, k, e] * means[f, k, e]
        unit = weight_sum << ACT_BITS
        c = min(max((2 * numerator + unit) // (2 * unit), LATENT_MIN), LATENT_MAX)
        reach = 0
        for f in range(weights.shape[0]):
            for k in range(weights.shape[1]):
                if weights[f, k, e] >= MIN_WEIGHT:
                    reach = max(
                        reach,
                        abs(means[f, k, e] - (c << ACT_BITS)) + ((10 * scales[f, k, e]) >> (SCALE_BITS - ACT_BITS)),
                    )
        center[e] = c
        spread[e] = (reach + one - 1) // one


def integer_center_and_spread(mixture: IntegerMixture) -> tuple[np.ndarray, np.ndarray]:
    """Per element ``(F, K, E)``: the mixture mean rounded to an integer and clipped to the
    latent range, and a half-width covering every component of weight >= ``MIN_WEIGHT``
    (``ceil(max |mean - center| + 10 scale)``); both ``(E,)`` int64 in latent units."""
    center, spread = (
        np.empty(mixture.weights.shape[2], dtype=np.int64),
        np.empty(mixture.weights.shape[2], dtype=np.int64),
    )
    _center_and_spread_kernel(mixture.weights, mixture.means, mixture.scales, center, spread)
    return center, spread
