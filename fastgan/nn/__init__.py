"""fastgan.nn: the layers fastgan's models are built from (and accelerate(), for other people's models)."""

from .layers import Conv2dLeakyReLU, InstanceNormAct, LeakyReLU, ReflectPadConv2d, set_impl

__all__ = ["Conv2dLeakyReLU", "InstanceNormAct", "LeakyReLU", "ReflectPadConv2d", "set_impl"]
