"""mixcodec: learned image compression with discretized Gaussian-Laplacian-Logistic mixtures.

``mixcodec.compress(image, model="gllmm", quality=None) -> bytes`` and
``mixcodec.decompress(data) -> PIL.Image.Image``; see :mod:`mixcodec.codec`.
"""

__version__ = "0.1.0"

from .codec import compress, decompress  # noqa: E402

__all__ = ["compress", "decompress", "__version__"]
