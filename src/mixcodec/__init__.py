"""mixcodec: learned image compression with discretized Gaussian-Laplacian-Logistic mixtures."""

__version__ = "0.1.0"
