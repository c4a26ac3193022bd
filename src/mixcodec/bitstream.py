"""The ``.mxc`` container.

Layout (all integers big-endian)::

    magic        4 bytes  b"MXC\\x89"
    version      u8       PIXELS_ONLY_VERSION (2) without metadata, FORMAT_VERSION (3) with
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
    metadata     (version 3 only) the metadata section below
    crc32        u32      CRC-32 of every byte before it

Metadata section (version 3)::

    count        u8       number of chunks, 1 .. 3
    count times:
      tag        4 bytes  b"ICCP" (ICC profile of the colour space of the mode: RGB or GRAY),
                          b"EXIF" (the TIFF structure of the EXIF block, without JPEG's
                          b"Exif\\0\\0" prefix), b"XMP " (UTF-8 XMP packet)
      length     u32      bytes of the chunk, 1 .. MAX_METADATA_BYTES
      data       length bytes

Chunks appear at most once each, in the order above, and hold at most
:data:`MAX_METADATA_BYTES` together.  A file without metadata is written as
version 2, byte for byte the layout of before; version 3 is version 2 plus the
metadata section, so the pixel streams of an image are the same in both.

:func:`parse` validates everything (magic, version, lengths, limits, metadata,
CRC) before any decoding work starts, so corrupted or truncated files fail fast
with a :class:`FormatError`.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field, fields

import numpy as np

from .errors import FormatError, InputError

MAGIC = b"MXC\x89"
#: Version of files with a metadata section.
FORMAT_VERSION = 3
#: Version of files without metadata (the layout before metadata existed).
PIXELS_ONLY_VERSION = 2
READABLE_VERSIONS = (PIXELS_ONLY_VERSION, FORMAT_VERSION)
#: Bound on the metadata of one file (all chunks' data together), in bytes.
MAX_METADATA_BYTES = 1 << 22
MAX_SIDE = 1 << 15
#: Largest image (pixels) the codec accepts; bounds memory use of the transforms.
MAX_PIXELS = 1 << 27
MODES = ("RGB", "L")
#: Context decoding orders (:mod:`.context_coding`), stored as the index into this tuple.
SCHEDULES = ("wavefront", "raster")
#: Qualities are stored in units of ``1 / QUALITY_RESOLUTION``.
QUALITY_RESOLUTION = 256


@dataclass(frozen=True)
class Metadata:
    """What a file carries besides the pixels; ``b""`` is absent.

    Attributes:
        icc_profile: ICC colour profile, of the colour space of the image's mode
            (:data:`ICC_COLOUR_SPACES`).
        exif: TIFF structure of the EXIF block (starts with ``II*\\0`` or ``MM\\0*``).
        xmp: XMP packet, UTF-8.
    """

    icc_profile: bytes = b""
    exif: bytes = b""
    xmp: bytes = b""

    def __bool__(self) -> bool:
        return any(getattr(self, f.name) for f in fields(self))

    def size(self) -> int:
        """Bytes the metadata section takes in a file (0 without metadata)."""
        return len(_pack_metadata(self))


#: Chunk tag of each :class:`Metadata` field, in the order chunks are stored.
METADATA_TAGS = {"icc_profile": b"ICCP", "exif": b"EXIF", "xmp": b"XMP "}
#: ICC data colour space signature (profile header bytes 16..19) that each mode's profile has.
ICC_COLOUR_SPACES = {"RGB": b"RGB ", "L": b"GRAY"}


def check_metadata(metadata: Metadata, mode: str) -> None:
    """Raise ``ValueError`` (one-line reason) for metadata a file of ``mode`` cannot carry."""
    total = sum(len(getattr(metadata, name)) for name in METADATA_TAGS)
    if total > MAX_METADATA_BYTES:
        raise ValueError(f"{total} bytes of metadata exceed the limit of {MAX_METADATA_BYTES}")
    icc, exif, xmp = metadata.icc_profile, metadata.exif, metadata.xmp
    if icc and (len(icc) < 132 or icc[36:40] != b"acsp"):
        raise ValueError("the ICC profile is malformed (no 'acsp' signature)")
    if icc and icc[16:20] != ICC_COLOUR_SPACES[mode]:
        raise ValueError(
            f"an ICC profile of colour space {icc[16:20].decode('latin-1').strip()!r} does not fit a {mode} image"
        )
    if exif and (len(exif) < 8 or exif[:4] not in (b"II*\0", b"MM\0*")):
        raise ValueError("the EXIF block is malformed (no TIFF header)")
    try:
        xmp.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("the XMP packet is not UTF-8") from None


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
    metadata: Metadata = field(default_factory=Metadata)


def check_size(height: int, width: int) -> None:
    """Raise :class:`InputError` for image sizes the codec does not handle."""
    if not (1 <= height <= MAX_SIDE and 1 <= width <= MAX_SIDE):
        raise InputError(f"image size {width}x{height} outside 1..{MAX_SIDE} per side")
    if height * width > MAX_PIXELS:
        raise InputError(f"image of {width}x{height} pixels exceeds the limit of {MAX_PIXELS} pixels")


def _pack_metadata(metadata: Metadata) -> bytes:
    """The metadata section of a version-3 file (``b""`` for no metadata)."""
    chunks = [(tag, getattr(metadata, name)) for name, tag in METADATA_TAGS.items() if getattr(metadata, name)]
    if not chunks:
        return b""
    return struct.pack(">B", len(chunks)) + b"".join(tag + struct.pack(">I", len(data)) + data for tag, data in chunks)


def _parse_metadata(reader: "_Reader", mode: str) -> Metadata:
    """Read and validate the metadata section of a version-3 file of ``mode``."""
    (count,) = reader.unpack(">B")
    if not 1 <= count <= len(METADATA_TAGS):
        raise FormatError(f"bad number of metadata chunks {count}")
    order = list(METADATA_TAGS.values())
    found, last, total = {}, -1, 0
    for _ in range(count):
        tag, length = reader.unpack(">4sI")
        if tag not in order:
            raise FormatError(f"unknown metadata chunk {tag!r}")
        if order.index(tag) <= last:
            raise FormatError("metadata chunks repeated or out of order")
        total += length
        if length == 0 or total > MAX_METADATA_BYTES:
            raise FormatError(f"bad metadata chunk length {length}")
        last = order.index(tag)
        found[tag] = reader.take(length)
    metadata = Metadata(**{name: found.get(tag, b"") for name, tag in METADATA_TAGS.items()})
    try:
        check_metadata(metadata, mode)
    except ValueError as exc:
        raise FormatError(str(exc)) from None
    return metadata


def pack(header: Header, z_stream: bytes, y_stream: bytes) -> bytes:
    """Serialize a header and its two streams into a complete file (version 2 without
    metadata, version 3 with it).

    Raises:
        ValueError: the metadata fails :func:`check_metadata`.
    """
    check_metadata(header.metadata, header.mode)
    name = header.model.encode("ascii")
    flags = np.zeros(header.channels, dtype=np.uint8)
    flags[header.active] = 1
    version = FORMAT_VERSION if header.metadata else PIXELS_ONLY_VERSION
    body = b"".join(
        [
            MAGIC,
            struct.pack(">BB", version, len(name)),
            name,
            struct.pack(">H", round(header.quality * QUALITY_RESOLUTION)),
            header.digest,
            struct.pack(
                ">IIBBH",
                header.height,
                header.width,
                MODES.index(header.mode),
                SCHEDULES.index(header.schedule),
                header.channels,
            ),
            np.packbits(flags, bitorder="little").tobytes(),
            struct.pack(">II", len(z_stream), len(y_stream)),
            z_stream,
            y_stream,
            _pack_metadata(header.metadata),
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
    if version not in READABLE_VERSIONS:
        raise FormatError(
            f"unsupported format version {version} (this build reads {', '.join(map(str, READABLE_VERSIONS))})"
        )
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
    if mode >= len(MODES) or schedule >= len(SCHEDULES) or channels == 0:
        raise FormatError("bad header fields")
    flags = np.unpackbits(np.frombuffer(reader.take((channels + 7) // 8), dtype=np.uint8), bitorder="little")
    z_len, y_len = reader.unpack(">II")
    z_stream, y_stream = reader.take(z_len), reader.take(y_len)
    metadata = _parse_metadata(reader, MODES[mode]) if version == FORMAT_VERSION else Metadata()
    if reader.pos != len(reader.data):
        raise FormatError("trailing bytes after the streams")
    header = Header(
        name,
        quality / QUALITY_RESOLUTION,
        digest,
        height,
        width,
        MODES[mode],
        SCHEDULES[schedule],
        np.flatnonzero(flags[:channels]),
        channels,
        metadata,
    )
    return header, z_stream, y_stream
