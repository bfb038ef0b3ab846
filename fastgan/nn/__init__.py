"""fastgan.nn: the layers fastgan's models are built from (and accelerate(), for other people's models)."""

from .accelerate import accelerate as accelerate
from .layers import BatchNorm2dAct, Conv2dLeakyReLU, InstanceNormAct, LeakyReLU, ReflectPadConv2d, set_impl

__all__ = ["BatchNorm2dAct", "Conv2dLeakyReLU", "InstanceNormAct", "LeakyReLU", "ReflectPadConv2d", "accelerate",
           "set_impl"]
