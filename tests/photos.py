"""Photos as phones write them, made in the tests: EXIF orientation, a Display P3 ICC
profile, a camera-sized EXIF block (optionally with a thumbnail) and an XMP packet.

Also used by ``benchmarks/metadata_overhead.py``.
"""

from __future__ import annotations

import io
import struct

import numpy as np
from PIL import ExifTags, Image

#: Display P3 primaries (red, green, blue) as ICC XYZ colorants, adapted to D50 (Bradford).
DISPLAY_P3 = ((0.515102, 0.241182, -0.001053), (0.291965, 0.692236, 0.041885), (0.157153, 0.066582, 0.784378))
#: ICC's profile connection space white (D50).
D50 = (0.9642, 1.0, 0.8249)


def displayed(stored: np.ndarray, orientation: int) -> np.ndarray:
    """What a viewer shows for pixels ``stored`` (H x W x C) under EXIF ``orientation`` 1..8."""
    turn = {
        1: lambda a: a,
        2: lambda a: a[:, ::-1],  # mirrored left-right
        3: lambda a: a[::-1, ::-1],  # rotated 180
        4: lambda a: a[::-1],  # mirrored top-bottom
        5: lambda a: a.transpose(1, 0, 2),  # mirrored along the main diagonal
        6: lambda a: np.rot90(a, k=-1),  # rotated 90 degrees clockwise
        7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),  # mirrored along the other diagonal
        8: lambda a: np.rot90(a, k=1),  # rotated 90 degrees counter-clockwise
    }[orientation]
    return np.ascontiguousarray(turn(stored))


def stored_for(display: np.ndarray, orientation: int) -> np.ndarray:
    """The pixels a camera stores with ``orientation`` for a viewer to show ``display``."""
    inverse = {6: 8, 8: 6}.get(orientation, orientation)
    return displayed(display, inverse)


def _s15(value: float) -> bytes:
    return struct.pack(">i", round(value * 65536))


def _xyz(values) -> bytes:
    return b"XYZ " + bytes(4) + b"".join(_s15(v) for v in values)


def _pad4(data: bytes) -> bytes:
    return data + bytes(-len(data) % 4)


def icc_profile(description: str = "Display P3 (test)", colour_space: str = "RGB", primaries=DISPLAY_P3) -> bytes:
    """An ICC v2 display profile: matrix/TRC with sRGB's tone curve for ``"RGB"``, a
    tone curve for ``"GRAY"``, and (for ``"CMYK"``) a header with a description only."""
    srgb_curve = (
        b"para"
        + bytes(4)
        + struct.pack(">HH", 3, 0)
        + b"".join(_s15(v) for v in (2.4, 1 / 1.055, 0.055 / 1.055, 1 / 12.92, 0.04045))
    )
    text = description.encode("ascii") + b"\0"
    tags = [
        (b"desc", b"desc" + bytes(4) + struct.pack(">I", len(text)) + text + bytes(4 + 4 + 2 + 1 + 67)),
        (b"cprt", b"text" + bytes(4) + b"No copyright, made by the mixcodec tests\0"),
        (b"wtpt", _xyz(D50)),
    ]
    if colour_space == "RGB":
        tags += [(sig, _xyz(p)) for sig, p in zip((b"rXYZ", b"gXYZ", b"bXYZ"), primaries)]
        tags += [(sig, srgb_curve) for sig in (b"rTRC", b"gTRC", b"bTRC")]
    elif colour_space == "GRAY":
        tags.append((b"kTRC", srgb_curve))
    start = 128 + 4 + 12 * len(tags)
    table, body, placed = b"", b"", {}
    for signature, data in tags:
        if data not in placed:  # the three tone curves share their bytes
            placed[data] = start + len(body)
            body += _pad4(data)
        table += signature + struct.pack(">II", placed[data], len(data))
    space = colour_space.ljust(4).encode("ascii")
    header = (
        struct.pack(">I", start + len(body))
        + b"lcms"
        + bytes([2, 0x40, 0, 0])
        + b"mntr"
        + space
        + b"XYZ "
        + bytes(12)
        + b"acsp"
        + b"APPL"
        + bytes(4 + 4 + 4 + 8 + 4)
        + b"".join(_s15(v) for v in D50)
        + bytes(4 + 16 + 28)
    )
    return header + struct.pack(">I", len(tags)) + table + body


def phone_exif(orientation: int = 1, maker_note: int = 1500, thumbnail: bytes | None = None) -> bytes:
    """An EXIF block (``b"Exif\\0\\0"`` + TIFF) with what a phone camera writes: make, model,
    dates, exposure, lens, GPS, a ``maker_note``-byte maker note and, given JPEG bytes,
    a thumbnail in IFD1."""
    exif = Image.Exif()
    exif.update(
        {
            ExifTags.Base.Make: "Phonemaker",
            ExifTags.Base.Model: "Phone 15 Pro",
            ExifTags.Base.Orientation: orientation,
            ExifTags.Base.XResolution: 72.0,
            ExifTags.Base.YResolution: 72.0,
            ExifTags.Base.ResolutionUnit: 2,
            ExifTags.Base.Software: "17.5.1",
            ExifTags.Base.DateTime: "2024:06:01 18:42:07",
            ExifTags.Base.HostComputer: "Phone 15 Pro",
            ExifTags.Base.YCbCrPositioning: 1,
        }
    )
    exif[ExifTags.IFD.Exif] = {
        ExifTags.Base.ExposureTime: 1 / 120,
        ExifTags.Base.FNumber: 1.78,
        ExifTags.Base.ExposureProgram: 2,
        ExifTags.Base.ISOSpeedRatings: 64,
        ExifTags.Base.ExifVersion: b"0232",
        ExifTags.Base.DateTimeOriginal: "2024:06:01 18:42:07",
        ExifTags.Base.DateTimeDigitized: "2024:06:01 18:42:07",
        ExifTags.Base.OffsetTime: "+02:00",
        ExifTags.Base.OffsetTimeOriginal: "+02:00",
        ExifTags.Base.OffsetTimeDigitized: "+02:00",
        ExifTags.Base.ComponentsConfiguration: b"\x01\x02\x03\x00",
        ExifTags.Base.ShutterSpeedValue: 6.9,
        ExifTags.Base.ApertureValue: 1.66,
        ExifTags.Base.BrightnessValue: 5.2,
        ExifTags.Base.ExposureBiasValue: 0.0,
        ExifTags.Base.MeteringMode: 5,
        ExifTags.Base.Flash: 16,
        ExifTags.Base.FocalLength: 6.86,
        0x9214: (2009, 1502, 2208, 1325),  # SubjectArea
        ExifTags.Base.MakerNote: bytes(range(256)) * (maker_note // 256) + bytes(maker_note % 256),
        ExifTags.Base.SubsecTimeOriginal: "512",
        ExifTags.Base.SubsecTimeDigitized: "512",
        ExifTags.Base.FlashPixVersion: b"0100",
        ExifTags.Base.ColorSpace: 0xFFFF,  # uncalibrated: the ICC profile says
        ExifTags.Base.ExifImageWidth: 4032,
        ExifTags.Base.ExifImageHeight: 3024,
        ExifTags.Base.SensingMethod: 2,
        ExifTags.Base.SceneType: b"\x01",
        ExifTags.Base.ExposureMode: 0,
        ExifTags.Base.WhiteBalance: 0,
        ExifTags.Base.FocalLengthIn35mmFilm: 24,
        ExifTags.Base.SceneCaptureType: 0,
        ExifTags.Base.LensSpecification: (2.22, 9.0, 1.78, 2.8),
        ExifTags.Base.LensMake: "Phonemaker",
        ExifTags.Base.LensModel: "Phone 15 Pro back triple camera 6.86mm f/1.78",
    }
    exif[ExifTags.IFD.GPSInfo] = {
        1: "N",
        2: (48.0, 51.0, 29.6),
        3: "E",
        4: (2.0, 17.0, 40.2),
        5: b"\x00",
        6: 35.4,
        7: (16.0, 42.0, 5.0),
        12: "K",
        13: 0.0,
        16: "T",
        17: 212.5,
        23: "T",
        24: 212.5,
        29: "2024:06:01",
        31: 4.7,
    }
    data = exif.tobytes()
    return data if thumbnail is None else _with_thumbnail(data, thumbnail)


def _with_thumbnail(exif: bytes, jpeg: bytes) -> bytes:
    """``exif`` (as Pillow writes it) with an IFD1 pointing at a JPEG thumbnail appended."""
    tiff = bytearray(exif[6:])
    endian = "<" if tiff[:2] == b"II" else ">"
    (ifd0,) = struct.unpack(endian + "I", tiff[4:8])
    (count,) = struct.unpack(endian + "H", tiff[ifd0 : ifd0 + 2])
    next_field = ifd0 + 2 + 12 * count
    tiff += bytes(-len(tiff) % 2)
    ifd1 = len(tiff)
    entries = [(0x0103, 3, 1, 6), (0x0128, 3, 1, 2), (0x0201, 4, 1, ifd1 + 2 + 12 * 4 + 4), (0x0202, 4, 1, len(jpeg))]
    struct.pack_into(endian + "I", tiff, next_field, ifd1)
    tiff += struct.pack(endian + "H", len(entries))
    for tag, kind, n, value in entries:
        tiff += struct.pack(endian + "HHI", tag, kind, n) + (
            struct.pack(endian + "HH", value, 0) if kind == 3 else struct.pack(endian + "I", value)
        )
    tiff += struct.pack(endian + "I", 0) + jpeg
    return b"Exif\x00\x00" + bytes(tiff)


def xmp_packet(orientation: int | None = None) -> bytes:
    """An XMP packet like a phone's photo app writes (with ``tiff:Orientation`` when given)."""
    turn = f' tiff:Orientation="{orientation}"' if orientation else ""
    return (
        '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>\n'
        '<x:xmpmeta xmlns:x="adobe:ns:meta/" x:xmptk="XMP Core 6.0.0">\n'
        ' <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">\n'
        '  <rdf:Description rdf:about="" xmlns:xmp="http://ns.adobe.com/xap/1.0/" xmlns:photoshop="http://ns.adobe.com/photoshop/1.0/"'
        f' xmlns:tiff="http://ns.adobe.com/tiff/1.0/" xmp:CreatorTool="17.5.1"'
        f' xmp:CreateDate="2024-06-01T18:42:07.512+02:00"'
        f' photoshop:DateCreated="2024-06-01T18:42:07.512+02:00"{turn}/>\n'
        " </rdf:RDF>\n</x:xmpmeta>\n"
        '<?xpacket end="w"?>'
    ).encode("utf-8")


def phone_jpeg(
    display: np.ndarray,
    orientation: int = 6,
    icc: bytes | None = None,
    exif: bytes | None = None,
    xmp: bytes | None = None,
) -> bytes:
    """JPEG bytes of a photo that shows ``display`` (H x W x 3 uint8): the pixels stored for
    ``orientation``, a Display P3 profile and a phone's EXIF unless given."""
    exif = phone_exif(orientation) if exif is None else exif
    options = {"quality": 95, "icc_profile": icc_profile() if icc is None else icc, "exif": exif}
    if xmp:
        options["xmp"] = xmp
    buffer = io.BytesIO()
    Image.fromarray(stored_for(display, orientation)).save(buffer, format="JPEG", **options)
    return buffer.getvalue()
