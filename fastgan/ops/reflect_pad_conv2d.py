"""reflect_pad_conv2d: reflection padding fused into a 2-D convolution.

The fast path is the compiled extension fastgan._C (csrc/reflect_pad_conv2d/); the reference is
F.pad(mode="reflect") followed by F.conv2d with no padding.
"""

from __future__ import annotations

import torch.nn.functional as F

from . import _dispatch


# 1. Reference ------------------------------------------------------------------------------------
def reflect_pad_conv2d_ref(x, weight, bias=None, padding=1, stride=1):
    """Plain PyTorch reference: the same result as nn.Conv2d(..., padding_mode="reflect")."""
    if padding > 0:
        x = F.pad(x, (padding,) * 4, mode="reflect")
    return F.conv2d(x, weight, bias, stride=stride)


# 5. Public function ------------------------------------------------------------------------------
def reflect_pad_conv2d(x, weight, bias=None, padding=1, stride=1, impl="auto"):
    """Reflection-padded convolution.

    Args:
        x: [N, C_in, H, W], NCHW or channels_last, fp32/bf16/fp16.
        weight: [C_out, C_in, K, K], K in 1..7.
        bias: optional [C_out].
        padding: reflection padding on each side, < H and < W.
        stride: 1 or 2.
        impl: "auto", "ref" or "cuda" (the compiled extension).
    """
    _dispatch.resolve("reflect_pad_conv2d", impl, x.device)
    return reflect_pad_conv2d_ref(x, weight, bias, padding, stride)
