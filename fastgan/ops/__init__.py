"""fastgan.ops: fused GAN ops, each with a plain PyTorch reference, behind one dispatch point."""

from ._casts import autocast
from ._dispatch import IMPLS, available, last_impl
from .batch_norm_act import batch_norm_act, batch_norm_act_ref
from .image_pool import image_pool, image_pool_ref
from .instance_norm_act import instance_norm_act, instance_norm_act_ref
from .leaky_relu import leaky_relu, leaky_relu_ref
from .loss_sum import loss_sum, loss_sum_ref
from .mean_loss import mean_loss, mean_loss_ref
from .reflect_pad_conv2d import reflect_pad_conv2d, reflect_pad_conv2d_ref
from .tanh import tanh, tanh_ref

__all__ = [
    "IMPLS",
    "autocast",
    "available",
    "batch_norm_act",
    "batch_norm_act_ref",
    "image_pool",
    "image_pool_ref",
    "last_impl",
    "instance_norm_act",
    "instance_norm_act_ref",
    "leaky_relu",
    "leaky_relu_ref",
    "loss_sum",
    "loss_sum_ref",
    "mean_loss",
    "mean_loss_ref",
    "reflect_pad_conv2d",
    "reflect_pad_conv2d_ref",
    "tanh",
    "tanh_ref",
]
