"""Photo metadata between Pillow images and ``.mxc`` files: orientation, ICC profile, EXIF, XMP.

Orientation: an image is coded the way a viewer shows it.  :func:`upright` applies
the EXIF orientation (``ImageOps.exif_transpose``: tag 274 of the EXIF block, or
``tiff:Orientation`` of the XMP packet) to the pixels and removes the tag, so a
decoded file shows the same way up in every program, including those that ignore
EXIF (most PNG viewers), and the size in the header is the size people see.  (The
alternative, coding the stored pixels and keeping the tag, relies on every
decoder and output format honouring it.)  Turning the pixels costs nothing in a
lossy codec; Pillow rewrites the EXIF block without the tag, which drops an EXIF
thumbnail (IFD1) -- one that would now show the wrong way up.

Kept from an image's ``info`` (the keys Pillow's readers fill): ``icc_profile``
(when its colour space is the coded one: RGB, or GRAY for grayscale; a CMYK
profile is dropped, as Pillow converts CMYK pixels to RGB without it), ``exif``
and ``xmp`` (or PNG's ``XML:com.adobe.xmp``).  TIFF inputs keep their ICC profile
and XMP; their EXIF tags live in the TIFF's own directory, which is not an EXIF
block, and are not kept (the orientation is still applied).  A decoded image
carries them in ``info`` the way Pillow's JPEG reader does (``exif`` with its
``b"Exif\\0\\0"`` prefix, ``xmp`` as bytes), and :func:`save_options` gives the
keywords that write them into another format.
"""

from __future__ import annotations

import re
import struct

from PIL import ExifTags, Image, ImageOps, PngImagePlugin

from .bitstream import ICC_COLOUR_SPACES, Metadata

#: Prefix of the EXIF block in JPEG's APP1 segment and in Pillow's ``info["exif"]``.
EXIF_PREFIX = b"Exif\x00\x00"

#: Keys of the metadata in Pillow's ``info`` and save keywords (the fields of :class:`Metadata`).
KEYS = ("icc_profile", "exif", "xmp")
#: Their names in messages.
LABELS = {"icc_profile": "ICC profile", "exif": "EXIF", "xmp": "XMP"}

#: Formats that carry all three kinds of metadata, by Pillow format name.
CARRIERS = ("PNG", "JPEG", "WEBP", "TIFF", "AVIF")

#: Save settings for decoded pixels: lossless where the format has a lossless mode,
#: otherwise high quality without chroma subsampling.
PIXEL_OPTIONS = {
    "JPEG": {"quality": 95, "subsampling": 0},
    "WEBP": {"lossless": True},
    "AVIF": {"quality": 95, "subsampling": "4:4:4"},
}


def upright(image: Image.Image) -> Image.Image:
    """``image`` turned as its EXIF orientation says, with the tag removed (a copy either way)."""
    return ImageOps.exif_transpose(image)


def without_orientation(exif: bytes) -> bytes:
    """An EXIF block (with or without :data:`EXIF_PREFIX`) without an orientation other
    than 1; byte for byte the same when it has none or does not parse."""
    block = Image.Exif()
    try:
        block.load(exif)
    except (SyntaxError, ValueError, OSError, struct.error):  # not a TIFF structure: refused by the container
        return exif
    if block.get(ExifTags.Base.Orientation, 1) == 1:
        return exif
    del block[ExifTags.Base.Orientation]
    return block.tobytes()


def read(image: Image.Image, mode: str) -> Metadata:
    """The metadata in ``image.info`` that a file of ``mode`` (``"RGB"`` or ``"L"``) carries
    (see :func:`normalized`; the caller turns the pixels first, :func:`upright`)."""
    info = image.info
    return normalized(info.get("icc_profile"), info.get("exif"), info.get("xmp") or info.get("XML:com.adobe.xmp"), mode)


def normalized(
    icc_profile: bytes | None, exif: bytes | Image.Exif | None, xmp: bytes | str | None, mode: str
) -> Metadata:
    """Metadata as a file of ``mode`` stores it, from values as Pillow has them: an ICC
    profile of another colour space than ``mode``'s is dropped, the EXIF block loses
    :data:`EXIF_PREFIX` and its orientation (:func:`without_orientation`), XMP text is
    UTF-8 encoded; ``None`` or empty values are absent."""
    icc_profile = icc_profile or b""
    if icc_profile[16:20] != ICC_COLOUR_SPACES[mode]:
        icc_profile = b""
    if isinstance(exif, Image.Exif):
        exif = exif.tobytes()
    exif = _strip_prefix(without_orientation(exif)) if exif else b""
    xmp = xmp or b""
    return Metadata(icc_profile=icc_profile, exif=exif, xmp=xmp.encode("utf-8") if isinstance(xmp, str) else xmp)


def from_options(options: dict, default: Metadata, mode: str) -> Metadata:
    """``default`` with the fields that Pillow-style save keywords (``icc_profile=``,
    ``exif=`` as bytes or ``Image.Exif``, ``xmp=``) replace; a false value drops one."""
    given = normalized(options.get("icc_profile"), options.get("exif"), options.get("xmp"), mode)
    return Metadata(**{key: getattr(given if key in options else default, key) for key in KEYS})


def attach(image: Image.Image, metadata: Metadata) -> Image.Image:
    """Put ``metadata`` into ``image.info`` under Pillow's keys; returns ``image``."""
    if metadata.icc_profile:
        image.info["icc_profile"] = metadata.icc_profile
    if metadata.exif:
        image.info["exif"] = EXIF_PREFIX + metadata.exif
    if metadata.xmp:
        image.info["xmp"] = metadata.xmp
    return image


def save_options(image: Image.Image, format: str) -> tuple[dict, list[str]]:
    """Keywords for ``image.save(..., format=format, **options)`` that write the decoded
    pixels (:data:`PIXEL_OPTIONS`) with the metadata in ``image.info``, and the names of
    the kinds of metadata ``format`` cannot carry (written without them)."""
    options = dict(PIXEL_OPTIONS.get(format, {}))
    info = image.info
    present = [key for key in KEYS if info.get(key)]
    if format not in CARRIERS:
        return options, present
    options.update({key: info[key] for key in present})
    if format == "PNG" and "xmp" in present:
        text = PngImagePlugin.PngInfo()
        text.add_itxt("XML:com.adobe.xmp", options.pop("xmp").decode("utf-8"))
        options["pnginfo"] = text
    elif format == "TIFF":
        tags = Image.Exif()
        tags.load(options.pop("exif", b""))
        if "xmp" in present:
            tags[700] = options.pop("xmp")  # TIFF's XMP tag
        if tags:
            options["exif"] = tags
    return options, []


def _strip_prefix(exif: bytes) -> bytes:
    return re.sub(b"^(" + re.escape(EXIF_PREFIX) + b")+", b"", exif)
