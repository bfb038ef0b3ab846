"""instance_norm_act: y = act(InstanceNorm(x) * weight + bias) + residual, in one pass.

Sections (../STYLE.md): 1. reference  2. Triton kernels  3. launchers  4. autograd  5. public function.
The Triton sections are added by the fused-kernel work; the public API below is fixed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import _dispatch

_ACTS = ("relu", "leaky_relu", "none")


# 1. Reference ------------------------------------------------------------------------------------
def instance_norm_act_ref(x, weight=None, bias=None, *, act="relu", negative_slope=0.2, eps=1e-5, residual=None):
    """Plain PyTorch reference: statistics in fp32 over H*W (biased variance), output in x's dtype."""
    y = F.instance_norm(x.float(), weight=None if weight is None else weight.float(),
                        bias=None if bias is None else bias.float(), eps=eps)
    if act == "relu":
        y = F.relu(y)
    elif act == "leaky_relu":
        y = F.leaky_relu(y, negative_slope)
    if residual is not None:
        y = y + residual.float()
    return y.to(x.dtype)


def _check_args(x, weight, bias, act, residual):
    if x.dim() != 4:
        raise ValueError(f"instance_norm_act: x must be 4-D [N, C, H, W], got shape {tuple(x.shape)}")
    if x.shape[2] * x.shape[3] < 2:
        raise ValueError(f"instance_norm_act: x needs more than one spatial element per channel, got {tuple(x.shape)}")
    if act not in _ACTS:
        raise ValueError(f"instance_norm_act: act={act!r} is not one of {_ACTS}")
    if (weight is None) != (bias is None):
        raise ValueError("instance_norm_act: weight and bias must both be given (affine) or both be None")
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and tuple(t.shape) != (x.shape[1],):
            raise ValueError(f"instance_norm_act: {name} must have shape ({x.shape[1]},), got {tuple(t.shape)}")
    if residual is not None and residual.shape != x.shape:
        raise ValueError(f"instance_norm_act: residual shape {tuple(residual.shape)} != x shape {tuple(x.shape)}")


# 5. Public function ------------------------------------------------------------------------------
def instance_norm_act(x, weight=None, bias=None, *, act="relu", negative_slope=0.2, eps=1e-5, residual=None,
                      impl="auto"):
    """Instance normalisation fused with an activation and an optional residual add.

    Args:
        x: [N, C, H, W], contiguous NCHW or channels_last, fp32/bf16/fp16.
        weight, bias: optional affine parameters, [C] each (both or neither).
        act: "relu", "leaky_relu" or "none".
        negative_slope: slope of leaky_relu for negative inputs.
        eps: added to the variance.
        residual: optional tensor shaped like x, added after the activation.
        impl: "auto", "ref" or "triton" (see fastgan.ops._dispatch).
    Returns:
        y, same shape, dtype and memory layout as x.
    """
    _check_args(x, weight, bias, act, residual)
    _dispatch.resolve("instance_norm_act", impl, x.device)
    y = instance_norm_act_ref(x, weight, bias, act=act, negative_slope=negative_slope, eps=eps, residual=residual)
    return y.contiguous(memory_format=_layout(x))


def _layout(x):
    return torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous() \
        else torch.contiguous_format
