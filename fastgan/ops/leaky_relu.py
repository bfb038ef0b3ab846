"""leaky_relu: y = leaky_relu(x + bias[c]), with backward from the saved output.

Sections (../STYLE.md): 1. reference  2. Triton kernels  3. launchers  4. autograd  5. public function.

With negative_slope >= 0, y > 0 exactly where z = x + bias > 0, so backward needs only y:
  dx = dy * (y > 0 ? 1 : negative_slope)        dbias[c] = sum over all but dim 1 of dx
and the input can be freed as nn.LeakyReLU(inplace=True) would. The kernels view x as [N, C, S]
(strides for contiguous and channels_last layouts; without a bias any dense layout, seen as flat
storage); dbias is reduced deterministically from per-program fp32 partials.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import _dispatch, _triton_util
from ._triton_util import bias_act_bwd, bias_act_fwd, kernel

try:
    import triton.language as tl
except ImportError:  # the reference path still works; _triton_util.check says why Triton cannot run
    tl = None

_OP = "leaky_relu"
_MAX_SPLIT = 256


# 1. Reference ------------------------------------------------------------------------------------
def leaky_relu_ref(x, negative_slope=0.2, *, bias=None):
    """Plain PyTorch reference: optional per-channel bias (dim 1) then LeakyReLU."""
    if bias is not None:
        x = x + bias.view(1, -1, *([1] * (x.dim() - 2)))
    return F.leaky_relu(x, negative_slope)


# 2. Triton kernels (bodies shared with tanh: _triton_util.bias_act_fwd / bias_act_bwd) -------------
@kernel
def _leaky_relu_fwd_kernel(
    X,  # input, [N, C, S] with strides (stride_n, stride_c, stride_s)
    B,  # bias, [C] (unused unless HAS_BIAS)
    Y,  # output, like X
    C, S, stride_n, stride_c, stride_s, negative_slope,
    BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr, HAS_BIAS: tl.constexpr,
):
    bias_act_fwd(X, B, Y, C, S, stride_n, stride_c, stride_s, negative_slope, BLOCK_C, BLOCK_S, HAS_BIAS, 1)


@kernel
def _leaky_relu_bwd_kernel(
    DY,  # output gradient, [N, C, S] with strides (stride_n, stride_c, stride_s)
    Y,  # saved output, like DY
    DX,  # input gradient out, like DY
    PDB,  # fp32 out, [N, C, SPLIT]: per piece, sum of dx (unused unless HAS_BIAS)
    C, S, stride_n, stride_c, stride_s, SPLIT, negative_slope,
    BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr, TILES: tl.constexpr, HAS_BIAS: tl.constexpr,
):
    bias_act_bwd(DY, Y, DX, PDB, C, S, stride_n, stride_c, stride_s, SPLIT, negative_slope, BLOCK_C, BLOCK_S,
                 TILES, HAS_BIAS, 1)


# 3. Launchers ------------------------------------------------------------------------------------
def _leaky_relu_fwd(x, bias, negative_slope):
    return _triton_util.launch_bias_act_fwd(_OP, _leaky_relu_fwd_kernel, x, bias, negative_slope)


def _leaky_relu_bwd(dy, y, negative_slope, has_bias):
    """Returns dx (y's layout and dtype) and fp32 dbias [C] (empty without a bias)."""
    return _triton_util.launch_bias_act_bwd(_OP, _leaky_relu_bwd_kernel, dy, y, has_bias, _MAX_SPLIT, negative_slope)


# 4. Autograd (torch.library custom ops, so torch.compile and CUDA graphs see opaque kernels) ------
@torch.library.custom_op("fastgan::leaky_relu_fwd", mutates_args=())
def _fwd_op(x: torch.Tensor, bias: torch.Tensor | None, negative_slope: float) -> torch.Tensor:
    return _leaky_relu_fwd(x, bias, negative_slope)


@_fwd_op.register_fake
def _(x, bias, negative_slope):
    return torch.empty_like(x)


@torch.library.custom_op("fastgan::leaky_relu_bwd", mutates_args=())
def _bwd_op(dy: torch.Tensor, y: torch.Tensor, negative_slope: float,
            has_bias: bool) -> tuple[torch.Tensor, torch.Tensor]:
    return _leaky_relu_bwd(dy, y, negative_slope, has_bias)


@_bwd_op.register_fake
def _(dy, y, negative_slope, has_bias):
    return torch.empty_like(y), y.new_empty((y.shape[1] if has_bias else 0,), dtype=torch.float32)


def _setup_context(ctx, inputs, output):
    _, bias, negative_slope = inputs
    ctx.save_for_backward(output)
    ctx.negative_slope, ctx.bias_dtype = negative_slope, None if bias is None else bias.dtype


def _backward(ctx, dy):
    (y,) = ctx.saved_tensors
    dx, dbias = _bwd_op(dy, y, ctx.negative_slope, ctx.bias_dtype is not None)
    return dx, None if ctx.bias_dtype is None else dbias.to(ctx.bias_dtype), None


_fwd_op.register_autograd(_backward, setup_context=_setup_context)
_dispatch.register(_OP, "triton", _triton_util.check)


# 5. Public function ------------------------------------------------------------------------------
def leaky_relu(x, negative_slope=0.2, *, bias=None, impl="auto"):
    """LeakyReLU with an optional per-channel bias add fused in.

    Args:
        x: any shape with channels in dim 1 when ``bias`` is given; fp32/bf16/fp16. Without a bias any
            dense layout; with one, contiguous or channels_last (the Triton path).
        negative_slope: slope for negative inputs (must be >= 0 so the sign survives in the output).
        bias: optional [C] tensor added before the activation.
        impl: "auto", "ref" or "triton".
    Returns:
        y, same shape, dtype and memory layout as x.
    """
    if bias is not None and (x.dim() < 2 or tuple(bias.shape) != (x.shape[1],)):
        raise ValueError(f"leaky_relu: bias must have shape (x.shape[1],), got {tuple(bias.shape)} "
                         f"for x {tuple(x.shape)}")
    if _dispatch.resolve(_OP, impl, x.device) == "triton":
        _triton_util.check_dtype(_OP, "x", x)
        if negative_slope < 0:
            raise ValueError(f"leaky_relu: negative_slope={negative_slope} < 0 flips signs, so backward "
                             "cannot work from the output; use impl='ref'")
        _triton_util.bias_view(_OP, x, bias is not None)
        if bias is not None and bias.device != x.device:
            raise ValueError(f"leaky_relu: bias is on {bias.device} but x is on {x.device}")
        return _fwd_op(x, bias, float(negative_slope))
    return leaky_relu_ref(x, negative_slope, bias=bias)
