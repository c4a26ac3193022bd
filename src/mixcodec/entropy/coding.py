"""Range coding of integer symbols with batched PMF tables (``constriction``).

Every call codes a whole batch of symbols with one ``Categorical(perfect=False)``
model call.  Each row of a batch has a *window* of ``W`` consecutive values
``offsets[i] .. offsets[i] + W - 1`` with explicit probabilities, plus one
*escape* symbol.  A value outside its window is coded as the escape symbol
followed by the value itself under a uniform model over the whole latent range
``[LATENT_MIN, LATENT_MAX]``; so every value in range round-trips whatever the
model predicted.  The escape symbol gets the mass the window does not cover,
but never less than ``ESCAPE_MIN``.

What is exact: given bit-identical ``pmf`` and ``offsets`` arrays, the decoder
returns exactly the encoded values (``constriction`` quantizes the float PMF
deterministically).  Encoder and decoder must therefore build the tables from
bit-identical inputs with the same code.
"""

from __future__ import annotations

import constriction
import numpy as np

from ..errors import FormatError
from .distributions import LATENT_MAX, LATENT_MIN

ESCAPE_MIN = 1e-7
_RANGE_SIZE = LATENT_MAX - LATENT_MIN + 1
_CATEGORICAL = constriction.stream.model.Categorical(perfect=False)
_UNIFORM = constriction.stream.model.Uniform(_RANGE_SIZE)
RangeEncoder = constriction.stream.queue.RangeEncoder
RangeDecoder = constriction.stream.queue.RangeDecoder


def _with_escape(pmf: np.ndarray) -> np.ndarray:
    """``(n, W)`` window probabilities -> ``(n, W + 1)`` table with the escape column last."""
    escape = np.maximum(1.0 - pmf.sum(axis=1, keepdims=True), ESCAPE_MIN)
    return np.ascontiguousarray(np.concatenate([pmf, escape], axis=1), dtype=np.float64)


def _window_symbols(values: np.ndarray, offsets: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """``(symbols, escaped values)``: each value's column in its window (``width``, the
    escape symbol, where it falls outside), and the values that fall outside, in order."""
    values = values.astype(np.int64)
    if values.min() < LATENT_MIN or values.max() > LATENT_MAX:
        raise ValueError("value outside the latent range")
    index = values - offsets
    outside = (index < 0) | (index >= width)
    return np.where(outside, width, index).astype(np.int32), values[outside]


def _encode_escaped(encoder: RangeEncoder, escaped: np.ndarray) -> None:
    """The values coded as the escape symbol, under the uniform model of the latent range."""
    if escaped.size:
        encoder.encode((escaped - LATENT_MIN).astype(np.int32), _UNIFORM)


def _with_values(decoder: RangeDecoder, symbols: np.ndarray, offsets: np.ndarray, width: int) -> np.ndarray:
    """The values of decoded window ``symbols``, reading the escaped ones from ``decoder``."""
    values = symbols + offsets
    outside = symbols == width
    if outside.any():
        values[outside] = decoder.decode(_UNIFORM, int(outside.sum())).astype(np.int64) + LATENT_MIN
    return values


def encode_symbols(encoder: RangeEncoder, values: np.ndarray, pmf: np.ndarray, offsets: np.ndarray) -> None:
    """Append ``values`` (int, shape ``(n,)``, inside the latent range) to ``encoder``.

    Args:
        pmf: ``(n, W)`` probabilities of the window values (need not sum to one).
        offsets: ``(n,)`` integer value of column 0 of each row.
    """
    if values.size == 0:
        return
    symbols, escaped = _window_symbols(values, offsets, pmf.shape[1])
    encoder.encode(symbols, _CATEGORICAL, _with_escape(pmf))
    _encode_escaped(encoder, escaped)


def decode_symbols(decoder: RangeDecoder, pmf: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Inverse of :func:`encode_symbols`: returns the ``(n,)`` int64 values.

    Raises:
        FormatError: the stream holds data that no encoder writes under these tables.
    """
    if pmf.shape[0] == 0:
        return np.zeros(0, dtype=np.int64)
    try:
        symbols = decoder.decode(_CATEGORICAL, _with_escape(pmf)).astype(np.int64)
        return _with_values(decoder, symbols, offsets, pmf.shape[1])
    except AssertionError as exc:  # constriction's answer to words no encoder writes under these tables
        raise FormatError(f"damaged stream ({exc})") from None


#: Elements per coder call in :func:`encode_table_symbols` (bounds the per-element tables' memory).
TABLE_CHUNK = 1 << 16


def encode_table_symbols(
    encoder: RangeEncoder, values: np.ndarray, table: np.ndarray, offsets: np.ndarray, rows: np.ndarray
) -> None:
    """:func:`encode_symbols` of ``values`` with ``pmf = table[rows]``, ``offsets[rows]``, the same
    bits, without building the ``(n, W)`` per-element table: the window symbols go in calls
    of :data:`TABLE_CHUNK` (a range coder codes a sequence the same in one call or
    several), the escaped values after all of them, as one call would.

    Args:
        table: ``(T, W)`` probabilities; offsets: ``(T,)``; rows: ``(n,)`` the table row of each value.
    """
    if values.size == 0:
        return
    symbols, escaped = _window_symbols(values, offsets[rows], table.shape[1])
    with_escape = _with_escape(table)
    for start in range(0, values.size, TABLE_CHUNK):
        part = slice(start, start + TABLE_CHUNK)
        encoder.encode(symbols[part], _CATEGORICAL, with_escape[rows[part]])
    _encode_escaped(encoder, escaped)


def decode_table_symbols(decoder: RangeDecoder, table: np.ndarray, offsets: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Inverse of :func:`encode_table_symbols` (and of :func:`encode_symbols` with ``table[rows]``).

    Raises:
        FormatError: the stream holds data that no encoder writes under these tables.
    """
    with_escape = _with_escape(table)
    try:
        symbols = np.concatenate(
            [np.zeros(0, dtype=np.int64)]
            + [
                decoder.decode(_CATEGORICAL, with_escape[rows[start : start + TABLE_CHUNK]]).astype(np.int64)
                for start in range(0, rows.size, TABLE_CHUNK)
            ]
        )
        return _with_values(decoder, symbols, offsets[rows], table.shape[1])
    except AssertionError as exc:  # constriction's answer to words no encoder writes under these tables
        raise FormatError(f"damaged stream ({exc})") from None


def new_encoder() -> RangeEncoder:
    """A fresh range encoder."""
    return RangeEncoder()


def finish(encoder: RangeEncoder) -> bytes:
    """The encoder's compressed words as little-endian bytes."""
    return encoder.get_compressed().astype("<u4").tobytes()


def new_decoder(data: bytes) -> RangeDecoder:
    """A range decoder over bytes written by :func:`finish` (length must be a multiple of 4)."""
    if len(data) % 4:
        raise FormatError("stream length is not a multiple of 4 bytes")
    return RangeDecoder(np.frombuffer(data, dtype="<u4").astype(np.uint32))
