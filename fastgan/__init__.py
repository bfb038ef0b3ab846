"""fastgan: fast, verified GAN training on PyTorch."""

from __future__ import annotations

import importlib

__version__ = "0.1.0"
__all__ = ["accelerate"]

_SUBPACKAGES = ("data", "metrics", "models", "nn", "ops", "train")


def __getattr__(name: str):
    # Imported on first use, not here: `python -m fastgan.generate/translate --backend onnxruntime` imports
    # this package and must run where torch is not installed.
    if name == "accelerate":
        from .nn import accelerate

        return accelerate
    if name in _SUBPACKAGES:  # `import fastgan; fastgan.nn.set_impl(...)` as before
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
