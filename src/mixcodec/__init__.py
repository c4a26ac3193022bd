"""mixcodec: learned image compression with discretized Gaussian-Laplacian-Logistic mixtures.

``mixcodec.compress(image, model="gllmm", quality=None) -> bytes`` and
``mixcodec.decompress(data) -> PIL.Image.Image``; see :mod:`mixcodec.codec`.
Importing the package registers ``.mxc`` with Pillow (:mod:`mixcodec.pillow_plugin`)
and loads neither torch nor numba: ``compress`` and ``decompress`` import the codec on
first use, so ``import mixcodec.bitstream`` (reading a header) stays light.
Every error a user can cause is a :class:`MixcodecError` (:mod:`mixcodec.errors`).
"""

__version__ = "0.20.0"

from . import pillow_plugin  # noqa: E402
from .errors import ConfigError, FormatError, InputError, MixcodecError, ModelNotFound, ModelNotFoundError  # noqa: E402

pillow_plugin.register()

__all__ = [
    "compress",
    "decompress",
    "__version__",
    "MixcodecError",
    "FormatError",
    "InputError",
    "ModelNotFoundError",
    "ModelNotFound",
    "ConfigError",
]


def __getattr__(name: str):
    """``compress`` and ``decompress`` of :mod:`mixcodec.codec`, imported on first access."""
    if name in ("compress", "decompress"):
        from . import codec

        return getattr(codec, name)
    raise AttributeError(f"module 'mixcodec' has no attribute {name!r}")
