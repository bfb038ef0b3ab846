"""fastgan.models: the architectures (gan, dcgan, cgan, cyclegan), built from fastgan.nn layers.

Architectures only: losses, optimisers and schedules live in fastgan.train. Import the model modules
directly (``from fastgan.models import cyclegan``); this package holds what they share.
"""

from __future__ import annotations

from torch import nn

from .. import nn as fnn
from ..errors import UserError

__all__ = ["ArchitectureError", "init_weights"]


class ArchitectureError(UserError, ValueError):
    """An architecture argument out of range (e.g. image_size=32 for dcgan): a ValueError for library
    users, and a UserError so the CLI prints it as one line."""


_CONV_LINEAR = (nn.Conv2d, nn.ConvTranspose2d, nn.Linear, fnn.ReflectPadConv2d, fnn.Conv2dLeakyReLU)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.InstanceNorm2d, nn.GroupNorm, nn.LayerNorm, fnn.InstanceNormAct)


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
