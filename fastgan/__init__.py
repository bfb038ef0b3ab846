"""fastgan: fast, verified GAN training on PyTorch."""

__version__ = "0.1.0"

from .nn import accelerate as accelerate
