"""fastgan.nn: the layers fastgan's models are built from (and accelerate(), for other people's models)."""

from .accelerate import accelerate, unfuse_batch_norm_act
from .layers import (
    BatchNorm2dAct,
    Conv2d,
    Conv2dLeakyReLU,
    Conv2dTanh,
    ConvTranspose2d,
    ConvTranspose2dTanh,
    InstanceNormAct,
    InstanceNormTrackedAct,
    LeakyReLU,
    NormThenAct,
    ReflectPadConv2d,
    samples_independent,
    set_impl,
)

__all__ = ["BatchNorm2dAct", "Conv2d", "Conv2dLeakyReLU", "Conv2dTanh", "ConvTranspose2d", "ConvTranspose2dTanh",
           "InstanceNormAct", "InstanceNormTrackedAct", "LeakyReLU", "NormThenAct", "ReflectPadConv2d", "accelerate",
           "samples_independent", "set_impl", "unfuse_batch_norm_act"]
