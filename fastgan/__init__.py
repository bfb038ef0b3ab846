"""fastgan: fast, verified GAN training on PyTorch."""

__version__ = "0.1.0"
