"""reflect_pad_conv2d: reflection padding fused into a 2-D convolution.

The fast path is the compiled extension fastgan._C (csrc/reflect_pad_conv2d/), or the same kernels from the
CMake library that ``FASTGAN_OPS_LIBRARY`` names (fastgan.ops._extension), reached as
``torch.ops.fastgan.reflect_pad_conv2d``: on CUDA the pad is written by one vectorised kernel straight
into the convolution's input, the convolution runs through cuDNN, and backward folds the padded
gradient back onto dx with a gather (no atomics). The reference is F.pad(mode="reflect") + F.conv2d.

Dispatch (fastgan.ops._dispatch): under ``impl="auto"`` CUDA tensors take the extension and CPU tensors
the reference. An explicit ``impl="cuda"`` runs the extension on any device it has a kernel for,
including its C++ CPU kernel on CPU tensors (what the CPU tests exercise), and raises if it cannot.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import _casts, _dispatch, _extension

# What registered torch.ops.fastgan.* (fastgan._C, or FASTGAN_OPS_LIBRARY=path), or why nothing did.
_EXT_SOURCE, _EXT_ERROR = _extension.load()


# 1. Reference ------------------------------------------------------------------------------------
def reflect_pad_conv2d_ref(x, weight, bias=None, padding=1, stride=1):
    """Plain PyTorch reference: the same result as nn.Conv2d(..., padding_mode="reflect")."""
    if padding > 0:
        x = F.pad(x, (padding,) * 4, mode="reflect")
    return F.conv2d(x, weight, bias, stride=stride)


def extension_check(device: torch.device) -> str | None:
    """None when the compiled ops can run reflect_pad_conv2d on ``device``, else why not."""
    if _EXT_ERROR is not None:
        return _EXT_ERROR
    if not _EXT_HAS_AUTOGRAD:  # a library built from sources older than the C++ autograd registration
        return f"{_EXT_SOURCE} has no autograd kernel for reflect_pad_conv2d (an older build); rebuild it with " \
               "`pip install --no-build-isolation -e .` (a library: README's CMake commands or bench/prebuilt-ops)"
    if device.type not in _EXT_DEVICE_TYPES:
        return f"{_EXT_SOURCE} has no {device.type.upper()} kernel (built without a CUDA toolkit?)"
    return None


# Queried once: the dispatcher query is not traceable by torch.compile, and builds do not change at run time.
_EXT_DEVICE_TYPES = frozenset() if _EXT_ERROR is not None else frozenset(
    t for t in ("cpu", "cuda")
    if torch._C._dispatch_has_kernel_for_dispatch_key("fastgan::reflect_pad_conv2d", t.upper()))
_EXT_HAS_AUTOGRAD = _EXT_ERROR is None and torch._C._dispatch_has_kernel_for_dispatch_key(
    "fastgan::reflect_pad_conv2d", "Autograd")


_dispatch.register("reflect_pad_conv2d", "cuda", extension_check)


# 3. Launches (the C++ launchers' work on CUDA, for fastgan.testing.ledger) --------------------------------
# reflect_pad_conv2d.cpp's launchers replayed step by step on meta tensors: the ATen calls as the C++ makes them,
# and ``kernel(name, *tensors)`` for each launch of this extension's own CUDA kernels (reflect_pad_conv2d_cuda.cu).
# tests/gpu_ready/test_ledger.py checks the ATen calls against the C++ CPU path and the launches against the .cu.
def _layout_of(x):  # layout_of: only NCHW and channels_last exist there
    cl = torch._prims_common.suggest_memory_format(x) == torch.channels_last
    return torch.channels_last if cl else torch.contiguous_format


def _with_layout(t, fmt):  # with_layout: t itself when its strides are a fresh tensor's in fmt, else a copy
    if t.stride() == torch.empty(t.shape, device="meta", memory_format=fmt).stride():
        return t
    return torch.empty(t.shape, dtype=t.dtype, device=t.device, memory_format=fmt).copy_(t)


def _pad_launches(xc, padding, fmt, kernel):  # reflect_pad: a workspace and one reflect_pad_kernel launch
    if padding == 0:
        return xc
    n, c, h, w = xc.shape
    padded = torch.empty((n, c, h + 2 * padding, w + 2 * padding), dtype=xc.dtype, device=xc.device,
                         memory_format=fmt)
    kernel("reflect_pad_kernel", xc, padded)
    return padded


def _forward_launches(x, weight, bias, padding, stride, *, kernel):
    fmt = _layout_of(x)
    xc = x.contiguous(memory_format=fmt)
    padded = _pad_launches(xc, padding, fmt, kernel)
    y = torch.ops.aten.convolution(padded, weight, bias, [stride, stride], [0, 0], [1, 1], False, [0, 0], 1)
    _with_layout(y, fmt)


def _backward_launches(grad_out, x, weight, padding, stride, output_mask, *, kernel):
    fmt = _layout_of(x)
    xc = x.contiguous(memory_format=fmt)
    padded = _pad_launches(xc, padding, fmt, kernel)  # recomputed, not saved
    dpadded, dweight, _ = torch.ops.aten.convolution_backward(
        grad_out.contiguous(memory_format=fmt), padded, weight, [weight.shape[0]] if output_mask[2] else None,
        [stride, stride], [0, 0], [1, 1], False, [0, 0], 1, list(output_mask))
    if output_mask[0]:
        if padding == 0:
            _with_layout(dpadded, fmt)
        else:  # reflect_fold: one reflect_fold_kernel launch
            dp = dpadded.contiguous(memory_format=fmt)
            dx = torch.empty(xc.shape, dtype=xc.dtype, device=xc.device, memory_format=fmt)
            kernel("reflect_fold_kernel", dp, dx)
    if output_mask[1]:
        _with_layout(dweight, _layout_of(weight))


EXTENSION_LAUNCHES = {"fastgan::reflect_pad_conv2d": _forward_launches,
                      "fastgan::reflect_pad_conv2d_backward": _backward_launches}


# 4. Autograd -------------------------------------------------------------------------------------
# Registered in C++ for the Autograd key (csrc/reflect_pad_conv2d/reflect_pad_conv2d_autograd.cpp), so
# torch.ops.fastgan.reflect_pad_conv2d is differentiable whoever loads the library and in any import
# order; double backward (a gradient penalty through the op) is supported there too.


# 5. Public function ------------------------------------------------------------------------------
def reflect_pad_conv2d(x, weight, bias=None, padding=1, stride=1, impl="auto"):
    """Reflection-padded convolution: reflection pad by ``padding``, then a convolution with no padding.

    Args:
        x: [N, C_in, H, W], NCHW or channels_last, fp32/bf16/fp16 (fp64 too, for tests).
        weight: [C_out, C_in, K, K], K in 1..7 (no groups, no dilation).
        bias: optional [C_out].
        padding: reflection padding on each side, < H and < W.
        stride: 1 or 2.
        impl: "auto", "ref" or "cuda" (the compiled extension; on a CPU tensor its C++ kernel).

    Returns:
        [N, C_out, (H + 2*padding - K) // stride + 1, (W + 2*padding - K) // stride + 1], in x's layout
        on the extension path.
    """
    if _dispatch.resolve("reflect_pad_conv2d", impl, x.device) == "cuda":
        if x.device.type in ("cpu", "cuda") and torch.is_autocast_enabled(x.device.type):
            # Autocast casts the inputs of ATen's convolutions but not of a custom op, whose kernels take one
            # dtype: under --amp a bf16 activation would meet fp32 weights. Apply conv2d's autocast policy,
            # weights cast once per autocast region as autocast's cache does (fastgan/ops/_casts.py).
            dtype = torch.get_autocast_dtype(x.device.type)
            x, weight, bias = x.to(dtype), _casts.autocast_to(weight, dtype), _casts.autocast_to(bias, dtype)
        return torch.ops.fastgan.reflect_pad_conv2d(x, weight, bias, padding, stride)
    return reflect_pad_conv2d_ref(x, weight, bias, padding, stride)
