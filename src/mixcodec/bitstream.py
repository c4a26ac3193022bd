"""The ``.mxc`` container.

Layout (all integers big-endian)::

    magic        4 bytes  b"MXC\\x89"
    version      u8       FORMAT_VERSION
    name_len     u8       length of the model name
    name         name_len bytes, ASCII
    quality      u16      quality of the model in units of 1/256 (1 .. Q; between two
                          trained levels for fractional values)
    digest       8 bytes  first 8 bytes of the model digest (SHA-256 of its tensors and
                          config, :func:`~.models.registry.model_digest`); files written
                          before 0.2.0 hold the SHA-256 of the whole weight file instead
    height       u32      image height in pixels (1 .. MAX_SIDE)
    width        u32      image width in pixels (1 .. MAX_SIDE)
    mode         u8       0 = RGB, 1 = grayscale (decoded to an ``L`` image)
    schedule     u8       0 = wavefront, 1 = raster
    channels     u16      latent channels m
    flags        ceil(m / 8) bytes, bit c (LSB first) set = channel c coded
    z_len        u32      bytes of the z stream
    y_len        u32      bytes of the y stream
    z stream, y stream
    crc32        u32      CRC-32 of every byte before it

:func:`parse` validates everything (magic, version, lengths, limits, CRC) before
any decoding work starts, so corrupted or truncated files fail fast with a
:class:`FormatError`.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

import numpy as np

from .context_coding import SCHEDULES
from .errors import FormatError, InputError
from .models.context_model import QUALITY_RESOLUTION

MAGIC = b"MXC\x89"
FORMAT_VERSION = 2
MAX_SIDE = 1 << 15
#: Largest image (pixels) the codec accepts; bounds memory use of the transforms.
MAX_PIXELS = 1 << 24
MODES = ("RGB", "L")
SCHEDULE_IDS = SCHEDULES  # stored as the index into this tuple


@dataclass
class Header:
    """Everything in a ``.mxc`` file except the streams."""

    model: str
    quality: float  # a multiple of 1 / QUALITY_RESOLUTION
    digest: bytes
    height: int
    width: int
    mode: str
    schedule: str
    active: np.ndarray  # sorted indices of coded latent channels
    channels: int


def check_size(height: int, width: int) -> None:
    """Raise :class:`InputError` for image sizes the codec does not handle."""
    if not (1 <= height <= MAX_SIDE and 1 <= width <= MAX_SIDE):
        raise InputError(f"image size {width}x{height} outside 1..{MAX_SIDE} per side")
    if height * width > MAX_PIXELS:
        raise InputError(f"image of {width}x{height} pixels exceeds the limit of {MAX_PIXELS} pixels")


def pack(header: Header, z_stream: bytes, y_stream: bytes) -> bytes:
    """Serialize a header and its two streams into a complete file."""
    name = header.model.encode("ascii")
    flags = np.zeros(header.channels, dtype=np.uint8)
    flags[header.active] = 1
    body = b"".join(
        [
            MAGIC,
            struct.pack(">BB", FORMAT_VERSION, len(name)),
            name,
            struct.pack(">H", round(header.quality * QUALITY_RESOLUTION)),
            header.digest,
            struct.pack(">IIBBH", header.height, header.width, MODES.index(header.mode), SCHEDULE_IDS.index(header.schedule), header.channels),
            np.packbits(flags, bitorder="little").tobytes(),
            struct.pack(">II", len(z_stream), len(y_stream)),
            z_stream,
            y_stream,
        ]
    )
    return body + struct.pack(">I", zlib.crc32(body))


class _Reader:
    def __init__(self, data: bytes):
        self.data, self.pos = data, 0

    def take(self, count: int) -> bytes:
        if self.pos + count > len(self.data):
            raise FormatError("file is truncated")
        chunk = self.data[self.pos : self.pos + count]
        self.pos += count
        return chunk

    def unpack(self, fmt: str) -> tuple:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))


def parse(data: bytes) -> tuple[Header, bytes, bytes]:
    """Validate and split a file into ``(header, z_stream, y_stream)``.

    Raises:
        FormatError: with a one-line reason, for anything but a valid file.
    """
    if not data.startswith(MAGIC):
        raise FormatError("not a mixcodec file (bad magic bytes)")
    if len(data) < len(MAGIC) + 4 or zlib.crc32(data[:-4]) != struct.unpack(">I", data[-4:])[0]:
        raise FormatError("file is corrupted or truncated (CRC mismatch)")
    reader = _Reader(data[:-4])
    reader.take(len(MAGIC))
    version, name_len = reader.unpack(">BB")
    if version != FORMAT_VERSION:
        raise FormatError(f"unsupported format version {version} (this build reads {FORMAT_VERSION})")
    try:
        name = reader.take(name_len).decode("ascii")
    except UnicodeDecodeError as exc:
        raise FormatError("bad model name") from exc
    (quality,) = reader.unpack(">H")
    if quality == 0:
        raise FormatError("bad quality 0")
    digest = reader.take(8)
    height, width, mode, schedule, channels = reader.unpack(">IIBBH")
    try:
        check_size(height, width)
    except InputError as exc:
        raise FormatError(str(exc)) from exc
    if mode >= len(MODES) or schedule >= len(SCHEDULE_IDS) or channels == 0:
        raise FormatError("bad header fields")
    flags = np.unpackbits(np.frombuffer(reader.take((channels + 7) // 8), dtype=np.uint8), bitorder="little")
    z_len, y_len = reader.unpack(">II")
    z_stream, y_stream = reader.take(z_len), reader.take(y_len)
    if reader.pos != len(reader.data):
        raise FormatError("trailing bytes after the streams")
    header = Header(name, quality / QUALITY_RESOLUTION, digest, height, width, MODES[mode], SCHEDULE_IDS[schedule], np.flatnonzero(flags[:channels]), channels)
    return header, z_stream, y_stream
