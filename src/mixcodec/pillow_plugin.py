"""``.mxc`` as a Pillow format: ``Image.open("x.mxc")`` and ``im.save("x.mxc", ...)``.

``import mixcodec`` registers it (as pillow-avif-plugin and pillow-jxl-plugin do on
import): the package exists to read and write these files, registering only adds the
``MXC`` format and the ``.mxc`` extension to Pillow, and ``register()`` is idempotent.

Opening is lazy: :meth:`MxcImageFile._open` reads the file and validates all of it
(:func:`mixcodec.bitstream.parse`: CRC, lengths, metadata), so ``size``, ``mode`` and
``info`` (``icc_profile``, ``exif``, ``xmp``) are known; the pixels are decoded on
``load()``.  A damaged file makes ``Image.open`` raise
:class:`mixcodec.FormatError` (a ``ValueError``) with the reason; a file
written with weights that are not installed raises ``ModelNotFoundError`` on ``load()``.

Saving takes the keywords of :func:`mixcodec.compress` (``model=``, ``quality=``
1..Q of the model, ``schedule=``, and any other it has, e.g. ``effort=``) and the
metadata keywords of Pillow's savers (``icc_profile=``, ``exif=``, ``xmp=``), which
default to what the image's ``info`` holds (unlike Pillow's JPEG saver, which keeps
nothing unless asked): ``Image.open("photo.jpg").save("photo.mxc")`` keeps the
colour profile, EXIF and XMP, and turns the pixels upright; ``exif=b""`` drops one.
"""

from __future__ import annotations

import inspect
import io
from typing import IO

from PIL import Image, ImageFile

from . import bitstream
from . import metadata as photo_metadata

FORMAT = "MXC"


class MxcImageFile(ImageFile.ImageFile):
    """A ``.mxc`` file opened by Pillow (header parsed on open, pixels decoded on load)."""

    format = FORMAT
    format_description = "mixcodec learned image"

    def _open(self) -> None:
        self._data = self.fp.read()
        header, _, _ = bitstream.parse(self._data)
        self._size = (header.width, header.height)
        self._mode = header.mode
        photo_metadata.attach(self, header.metadata)
        self.tile = [ImageFile._Tile("raw", (0, 0, *self.size), 0, self.mode)]

    def load(self):
        if self.tile:
            from . import codec  # the models load on first use, not when Pillow registers the format

            pixels = codec.decompress(self._data).tobytes()
            if self.fp and self._exclusive_fp:
                self.fp.close()
            self.fp = io.BytesIO(pixels)
        return super().load()

    def load_seek(self, pos: int) -> None:
        """Seek in the decoded pixels.  Defining it also keeps ``ImageFile.load`` from
        memory-mapping the ``.mxc`` file itself as raw pixels (it would for ``L`` images
        whose file is at least as large as their pixels)."""
        self.fp.seek(pos)


def _accept(prefix: bytes) -> bool:
    return prefix.startswith(bitstream.MAGIC)


def _save(im: Image.Image, fp: IO[bytes], filename: str | bytes) -> None:
    from . import codec

    options = im.encoderinfo
    keywords = [name for name in inspect.signature(codec.compress).parameters if name not in ("image", "metadata")]
    upright = photo_metadata.upright(im)
    mode = codec.to_rgb_array(upright)[1]
    stored = photo_metadata.from_options(options, photo_metadata.read(upright, mode), mode)
    fp.write(codec.compress(upright, metadata=stored, **{name: options[name] for name in keywords if name in options}))


def register() -> None:
    """Register the ``MXC`` format (open, save, ``.mxc``) with Pillow; idempotent."""
    Image.register_open(FORMAT, MxcImageFile, _accept)
    Image.register_save(FORMAT, _save)
    Image.register_extension(FORMAT, ".mxc")
