"""Layers the models are written against. Each calls a fastgan.ops op, so switching an op's
implementation (impl="auto" | "ref" | fast) never touches model code."""

from __future__ import annotations

import math

import torch
from torch import nn

from .. import ops


class ReflectPadConv2d(nn.Module):
    """Drop-in for ``nn.Sequential(nn.ReflectionPad2d(padding), nn.Conv2d(in, out, k, stride))``.

    Parameters are named like nn.Conv2d's (``weight``, ``bias``); use :meth:`from_modules` to take
    them from an existing pad + conv pair.
    """

    def __init__(self, in_channels, out_channels, kernel_size, padding=None, stride=1, bias=True, impl="auto"):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size = kernel_size
        self.padding = kernel_size // 2 if padding is None else padding
        self.stride = stride
        self.impl = impl
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        self.reset_parameters()

    def reset_parameters(self):
        # Same initialisation as nn.Conv2d.
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1 / math.sqrt(self.in_channels * self.kernel_size**2)
            nn.init.uniform_(self.bias, -bound, bound)

    @classmethod
    def from_modules(cls, pad: nn.ReflectionPad2d, conv: nn.Conv2d, impl="auto"):
        p = pad.padding
        if len(set(p)) != 1 or conv.padding not in ((0, 0), 0) or conv.groups != 1 or conv.dilation != (1, 1) \
                or conv.kernel_size[0] != conv.kernel_size[1] or conv.stride[0] != conv.stride[1]:
            raise ValueError(f"ReflectPadConv2d.from_modules: unsupported pair {pad} + {conv}")
        m = cls(conv.in_channels, conv.out_channels, conv.kernel_size[0], p[0], conv.stride[0],
                bias=conv.bias is not None, impl=impl)
        m.to(device=conv.weight.device, dtype=conv.weight.dtype)
        with torch.no_grad():
            m.weight.copy_(conv.weight)
            if conv.bias is not None:
                m.bias.copy_(conv.bias)
        return m

    def forward(self, x):
        return ops.reflect_pad_conv2d(x, self.weight, self.bias, self.padding, self.stride, impl=self.impl)

    def extra_repr(self):
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"padding={self.padding} (reflect), stride={self.stride}, bias={self.bias is not None}, "
                f"impl={self.impl}")


class InstanceNormAct(nn.Module):
    """Drop-in for ``nn.InstanceNorm2d(C, affine=...)`` followed by ReLU / LeakyReLU / nothing.

    Same state_dict keys as nn.InstanceNorm2d (``weight``, ``bias`` when affine; no running stats).
    ``forward(x, residual=None)`` adds ``residual`` after the activation in the same pass.
    """

    def __init__(self, num_features, act="relu", negative_slope=0.2, eps=1e-5, affine=False, impl="auto"):
        super().__init__()
        self.num_features, self.act, self.negative_slope, self.eps = num_features, act, negative_slope, eps
        self.affine = affine
        self.impl = impl
        if affine:
            self.weight = nn.Parameter(torch.ones(num_features))
            self.bias = nn.Parameter(torch.zeros(num_features))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)

    def forward(self, x, residual=None):
        return ops.instance_norm_act(x, self.weight, self.bias, act=self.act, negative_slope=self.negative_slope,
                                     eps=self.eps, residual=residual, impl=self.impl)

    def extra_repr(self):
        return f"{self.num_features}, act={self.act}, eps={self.eps}, affine={self.affine}, impl={self.impl}"


class LeakyReLU(nn.Module):
    """Drop-in for ``nn.LeakyReLU(negative_slope)``; backward needs only the output."""

    def __init__(self, negative_slope=0.2, inplace=False, impl="auto"):
        super().__init__()
        self.negative_slope = negative_slope
        self.impl = impl  # ``inplace`` is accepted for drop-in use; the op never keeps its input anyway

    def forward(self, x):
        return ops.leaky_relu(x, self.negative_slope, impl=self.impl)

    def extra_repr(self):
        return f"negative_slope={self.negative_slope}, impl={self.impl}"


class Conv2dLeakyReLU(nn.Module):
    """``nn.Conv2d`` (zero padding) then LeakyReLU, with the conv bias fused into the activation.

    Parameters are named like nn.Conv2d's (``weight``, ``bias``).
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, bias=True,
                 negative_slope=0.2, impl="auto"):
        super().__init__()
        conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, bias=bias)
        self.weight, self.bias = conv.weight, conv.bias
        self.stride, self.padding, self.negative_slope, self.impl = stride, padding, negative_slope, impl
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, kernel_size

    def forward(self, x):
        y = nn.functional.conv2d(x, self.weight, None, self.stride, self.padding)
        return ops.leaky_relu(y, self.negative_slope, bias=self.bias, impl=self.impl)

    def extra_repr(self):
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, negative_slope={self.negative_slope}, impl={self.impl}")


def set_impl(module: nn.Module, impl: str) -> nn.Module:
    """Sets ``impl`` on every fastgan layer inside ``module``: "auto", "ref" (force the reference paths) or
    "fast" (each layer's own fast path, Triton or the extension, raising where it cannot run)."""
    for m in module.modules():
        if isinstance(m, (ReflectPadConv2d, InstanceNormAct, LeakyReLU, Conv2dLeakyReLU)):
            m.impl = impl
    return module
