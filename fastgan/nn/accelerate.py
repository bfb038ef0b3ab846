"""accelerate(model): put fastgan's fused layers into someone else's model, in place.

Existing CycleGAN / pix2pix code (pytorch-CycleGAN-and-pix2pix's ResnetGenerator, NLayerDiscriminator)
builds its networks from ``nn.Sequential`` runs such as ``ReflectionPad2d, Conv2d, InstanceNorm2d, ReLU``.
:func:`accelerate` walks any module and rewrites those runs:

==========================================  =================================================
pattern (adjacent in one Sequential)        becomes
==========================================  =================================================
``ReflectionPad2d, Conv2d``                 ``Identity, ReflectPadConv2d``
``InstanceNorm2d, ReLU | LeakyReLU``        ``InstanceNormAct(act=...), Identity``
``InstanceNorm2d`` (anything else after)    ``InstanceNormAct(act="none")``
``Conv2d`` (with bias) ``, LeakyReLU``      ``Conv2dLeakyReLU, Identity``
``LeakyReLU``                               ``fastgan.nn.LeakyReLU``
==========================================  =================================================

Outside a Sequential (a plain attribute of a module) only the single-module rewrites apply.

state_dict mapping: the identity. The fused layer sits at the index of the module that held the
parameters (the Conv2d, the InstanceNorm2d) and the module it absorbed becomes ``nn.Identity`` at its
own index, so every key (``model.1.weight``, ``model.10.conv_block.5.bias``, ...) is unchanged and
checkpoints of the original model load into the accelerated one and back. The fused layers hold the
original ``nn.Parameter`` objects, so device, dtype and any optimiser built before the call are kept.

Left alone, each for a reason:
- ``InstanceNorm2d(track_running_stats=True)``: in eval mode it normalises with running statistics
  that InstanceNormAct does not keep, so replacing it would change eval outputs and drop buffers.
- Pairs the fused layers cannot express: non-uniform reflection padding, a Conv2d with its own
  padding, groups, dilation, non-square kernels or strides, or kernel/stride outside what the fused
  convolution takes (:data:`REFLECT_CONV_KERNELS`, :data:`REFLECT_CONV_STRIDES`).
- The residual add of a ResnetBlock whose forward is ``x + self.conv_block(x)``: it is Python code,
  not a module, so it is not fused (InstanceNormAct can take it only when a model calls it with
  ``residual=``).
- Forward hooks registered on a replaced module do not move to its replacement.
"""

from __future__ import annotations

import torch
from torch import nn

from .layers import Conv2dLeakyReLU, InstanceNormAct, LeakyReLU, ReflectPadConv2d

__all__ = ["accelerate", "REFLECT_CONV_KERNELS", "REFLECT_CONV_STRIDES"]

REFLECT_CONV_KERNELS = range(1, 8)  # square kernel sizes the fused reflect-pad convolution takes
REFLECT_CONV_STRIDES = (1, 2)
_IMPLS = ("auto", "ref")


def accelerate(module: nn.Module, impl: str = "auto") -> nn.Module:
    """Replaces fusable layers of ``module`` with fastgan layers holding the same parameters.

    Args:
        module: any nn.Module; changed in place (nested Sequentials and submodules included).
        impl: "auto" (fast paths where they can run) or "ref"; set on every new layer
            (change it later with fastgan.nn.set_impl).
    Returns:
        ``module`` itself, with the same state_dict keys, device, dtype and training mode.
    """
    if impl not in _IMPLS:
        raise ValueError(f"accelerate: impl={impl!r} is not one of {_IMPLS}")
    if isinstance(module, (ReflectPadConv2d, InstanceNormAct, LeakyReLU, Conv2dLeakyReLU)):
        return module
    if isinstance(module, nn.Sequential):
        _fuse_sequential(module, impl)
    for name, child in list(module.named_children()):
        single = _replace_single(child, impl)
        if single is not None:
            setattr(module, name, single)
        else:
            accelerate(child, impl)
    return module


def _fuse_sequential(seq: nn.Sequential, impl: str) -> None:
    names = list(seq._modules)
    i = 0
    while i < len(names) - 1:
        first, second = seq._modules[names[i]], seq._modules[names[i + 1]]
        fused = _fuse_pair(first, second, impl)
        if fused is None:
            i += 1
            continue
        keep_first, new = fused  # keep_first: the parameters were in ``first``, so the fused layer goes there
        absorbed = nn.Identity().train(seq.training)
        pair = (new, absorbed) if keep_first else (absorbed, new)
        seq._modules[names[i]], seq._modules[names[i + 1]] = pair
        i += 2


def _fuse_pair(first: nn.Module, second: nn.Module, impl: str):
    if isinstance(first, nn.ReflectionPad2d) and _reflect_conv_fusable(first, second):
        return False, _reflect_pad_conv(first, second, impl)
    if _instance_norm_fusable(first) and isinstance(second, (nn.ReLU, nn.LeakyReLU)):
        act = "relu" if isinstance(second, nn.ReLU) else "leaky_relu"
        slope = second.negative_slope if act == "leaky_relu" else 0.2
        return True, _instance_norm_act(first, act, slope, impl)
    if isinstance(second, nn.LeakyReLU) and _conv_leaky_fusable(first):
        return True, _conv_leaky_relu(first, second, impl)
    return None


def _replace_single(m: nn.Module, impl: str):
    if _instance_norm_fusable(m):
        return _instance_norm_act(m, "none", 0.2, impl)
    if type(m) is nn.LeakyReLU:
        new = LeakyReLU(m.negative_slope, impl=impl)
        new.train(m.training)
        return new
    return None


def _instance_norm_fusable(m) -> bool:
    # Exact type: a subclass may have changed forward.
    return type(m) is nn.InstanceNorm2d and not m.track_running_stats


def _reflect_conv_fusable(pad: nn.ReflectionPad2d, conv) -> bool:
    if type(pad) is not nn.ReflectionPad2d or type(conv) is not nn.Conv2d:
        return False
    return (len(set(pad.padding)) == 1 and conv.padding in ((0, 0), 0) and conv.groups == 1
            and conv.dilation == (1, 1) and conv.kernel_size[0] == conv.kernel_size[1]
            and conv.stride[0] == conv.stride[1] and conv.kernel_size[0] in REFLECT_CONV_KERNELS
            and conv.stride[0] in REFLECT_CONV_STRIDES)


def _conv_leaky_fusable(conv) -> bool:
    return (type(conv) is nn.Conv2d and conv.bias is not None and conv.groups == 1
            and conv.dilation == (1, 1) and conv.padding_mode == "zeros" and isinstance(conv.padding, tuple))


def _adopt(new: nn.Module, old: nn.Module, **params) -> nn.Module:
    """Gives ``new`` the Parameter objects of ``old`` (same storage, device, dtype) and its mode."""
    for name, p in params.items():
        setattr(new, name, p)
    new.train(old.training)
    return new


def _reflect_pad_conv(pad: nn.ReflectionPad2d, conv: nn.Conv2d, impl: str) -> ReflectPadConv2d:
    with torch.device("meta"):  # no throw-away allocation; the real parameters are adopted below
        new = ReflectPadConv2d(conv.in_channels, conv.out_channels, conv.kernel_size[0], pad.padding[0],
                               conv.stride[0], bias=conv.bias is not None, impl=impl)
    return _adopt(new, conv, weight=conv.weight, bias=conv.bias)


def _instance_norm_act(norm: nn.InstanceNorm2d, act: str, slope: float, impl: str) -> InstanceNormAct:
    with torch.device("meta"):
        new = InstanceNormAct(norm.num_features, act=act, negative_slope=slope, eps=norm.eps,
                              affine=norm.affine, impl=impl)
    if not norm.affine:
        new.train(norm.training)
        return new
    return _adopt(new, norm, weight=norm.weight, bias=norm.bias)


def _conv_leaky_relu(conv: nn.Conv2d, act: nn.LeakyReLU, impl: str) -> Conv2dLeakyReLU:
    with torch.device("meta"):
        new = Conv2dLeakyReLU(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                              conv.padding, bias=True, negative_slope=act.negative_slope, impl=impl)
    return _adopt(new, conv, weight=conv.weight, bias=conv.bias)
