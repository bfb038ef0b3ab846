"""fastgan.models: one file per model (gan, dcgan, cgan, cyclegan, pix2pix), built from fastgan.nn layers, and the
registry that maps a model's name to its definition (fastgan.models.base.GanModel).

Each file holds the networks and a ``Model`` class: recipe, data kind, phases, sampler, inference. The
trainer, the data layer, generate/translate and the benchmarks enumerate ``REGISTRY`` (or ask
``get_model(name)``) instead of naming models. Adding a model is adding a file that registers itself and
importing it at the end of this one.
"""

from __future__ import annotations

from torch import nn

from .. import nn as fnn
from ..errors import UserError

__all__ = ["REGISTRY", "ArchitectureError", "get_model", "init_weights", "model_names", "register"]


class ArchitectureError(UserError, ValueError):
    """An architecture argument out of range (e.g. image_size=32 for dcgan): a ValueError for library
    users, and a UserError so the CLI prints it as one line."""


_CONV_LINEAR = (nn.Conv2d, nn.ConvTranspose2d, nn.Linear, fnn.ReflectPadConv2d, fnn.Conv2dLeakyReLU)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.InstanceNorm2d, nn.GroupNorm, nn.LayerNorm, fnn.InstanceNormAct,
          fnn.BatchNorm2dAct)


def init_weights(module: nn.Module, std: float = 0.02) -> nn.Module:
    """DCGAN/CycleGAN initialisation (Radford et al. 2015): N(0, std) for conv and linear weights,
    N(1, std) for normalisation weights, zero biases. Embeddings keep PyTorch's N(0, 1), which puts
    the label code of a conditional generator on the same scale as z."""
    for m in module.modules():
        if isinstance(m, _CONV_LINEAR):
            nn.init.normal_(m.weight, 0.0, std)
        elif isinstance(m, _NORMS) and getattr(m, "weight", None) is not None:
            nn.init.normal_(m.weight, 1.0, std)
        else:
            continue
        if getattr(m, "bias", None) is not None:
            nn.init.zeros_(m.bias)
    return module


REGISTRY: dict = {}  # name -> GanModel instance, in registration order


def register(cls):
    """Class decorator: registers one instance of a GanModel subclass under ``cls.name``."""
    if cls.name in REGISTRY:
        raise ValueError(f"model {cls.name!r} is registered twice")
    REGISTRY[cls.name] = cls()
    return cls


def model_names() -> tuple[str, ...]:
    return tuple(REGISTRY)


def get_model(name: str):
    """The registered model definition called ``name``; a UserError naming the choices otherwise."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise UserError(f"model {name!r}: choose from {', '.join(REGISTRY)}") from None


# The built-in models register themselves on import.
from . import gan, dcgan, cgan, cyclegan, pix2pix  # noqa: E402, F401, I001
