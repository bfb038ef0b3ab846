"""tanh: y = tanh(x + bias[c]), with backward from the saved output (a generator's last layer).

Sections (../STYLE.md): 1. reference  2. Triton kernels  3. launchers  4. autograd  5. public function.

The convolution before a generator's final Tanh runs without its bias; this op adds the bias in the
activation's pass, and its backward reduces the bias gradient in the pass that computes dx, so neither the
bias add nor the bias-gradient reduction reads the image again. Backward, with z = x + bias:
  dx = dy * (1 - y^2)        dbias[c] = sum over all but dim 1 of dx
only y is kept (as torch's tanh keeps it). The kernels view x as [N, C, S] (strides for contiguous and
channels_last layouts; without a bias any dense layout, seen as flat storage); dbias is reduced
deterministically from per-program fp32 partials.

tanh is computed in fp32 as sign(z) * (1 - e) / (1 + e), e = exp(-2|z|) (no overflow for any z), and for
|z| < 0.03 as its series, where 1 - e would cancel (triton.language has no tanh builtin that Triton's
interpreter also runs); see _triton_util.bias_act_fwd.
"""

from __future__ import annotations

import torch

from . import _dispatch, _triton_util
from ._triton_util import bias_act_bwd, bias_act_fwd, kernel

try:
    import triton.language as tl
except ImportError:  # the reference path still works; _triton_util.check says why Triton cannot run
    tl = None

_OP = "tanh"
_MAX_SPLIT = 256


# 1. Reference ------------------------------------------------------------------------------------
def tanh_ref(x, *, bias=None):
    """Plain PyTorch reference: optional per-channel bias (dim 1) then tanh."""
    if bias is not None:
        x = x + bias.view(1, -1, *([1] * (x.dim() - 2)))
    return torch.tanh(x)


# 2. Triton kernels (bodies shared with leaky_relu: _triton_util.bias_act_fwd / bias_act_bwd) -------
@kernel
def _tanh_fwd_kernel(
    X,  # input, [N, C, S] with strides (stride_n, stride_c, stride_s)
    B,  # bias, [C] (unused unless HAS_BIAS)
    Y,  # output, like X
    C, S, stride_n, stride_c, stride_s,
    BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr, HAS_BIAS: tl.constexpr,
):
    bias_act_fwd(X, B, Y, C, S, stride_n, stride_c, stride_s, 0.0, BLOCK_C, BLOCK_S, HAS_BIAS, 2)


@kernel
def _tanh_bwd_kernel(
    DY,  # output gradient, [N, C, S] with strides (stride_n, stride_c, stride_s)
    Y,  # saved output, like DY
    DX,  # input gradient out, like DY
    PDB,  # fp32 out, [N, C, SPLIT]: per piece, sum of dx (unused unless HAS_BIAS)
    C, S, stride_n, stride_c, stride_s, SPLIT,
    BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr, TILES: tl.constexpr, HAS_BIAS: tl.constexpr,
):
    bias_act_bwd(DY, Y, DX, PDB, C, S, stride_n, stride_c, stride_s, SPLIT, 0.0, BLOCK_C, BLOCK_S, TILES, HAS_BIAS, 2)


# 3. Launchers ------------------------------------------------------------------------------------
def _tanh_fwd(x, bias):
    return _triton_util.launch_bias_act_fwd(_OP, _tanh_fwd_kernel, x, bias)


def _tanh_bwd(dy, y, has_bias):
    """Returns dx (y's layout and dtype) and fp32 dbias [C] (empty without a bias)."""
    return _triton_util.launch_bias_act_bwd(_OP, _tanh_bwd_kernel, dy, y, has_bias, _MAX_SPLIT)


# 4. Autograd (torch.library custom ops, so torch.compile and CUDA graphs see opaque kernels) ------
@torch.library.custom_op("fastgan::tanh_fwd", mutates_args=())
def _fwd_op(x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return _tanh_fwd(x, bias)


@_fwd_op.register_fake
def _(x, bias):
    return torch.empty_like(x)


@torch.library.custom_op("fastgan::tanh_bwd", mutates_args=())
def _bwd_op(dy: torch.Tensor, y: torch.Tensor, has_bias: bool) -> tuple[torch.Tensor, torch.Tensor]:
    return _tanh_bwd(dy, y, has_bias)


@_bwd_op.register_fake
def _(dy, y, has_bias):
    return torch.empty_like(y), y.new_empty((y.shape[1] if has_bias else 0,), dtype=torch.float32)


def _setup_context(ctx, inputs, output):
    _, bias = inputs
    ctx.save_for_backward(output)
    ctx.bias_dtype = None if bias is None else bias.dtype


def _backward(ctx, dy):
    (y,) = ctx.saved_tensors
    dx, dbias = _bwd_op(dy, y, ctx.bias_dtype is not None)
    return dx, None if ctx.bias_dtype is None else dbias.to(ctx.bias_dtype)


_fwd_op.register_autograd(_backward, setup_context=_setup_context)
_dispatch.register(_OP, "triton", _triton_util.check)


# 5. Public function ------------------------------------------------------------------------------
def tanh(x, *, bias=None, impl="auto"):
    """tanh with an optional per-channel bias add fused in: a generator's output layer after a bias-free conv.

    Args:
        x: any shape with channels in dim 1 when ``bias`` is given; fp32/bf16/fp16 on the Triton path (any
            float dtype on the reference). Without a bias any dense layout; with one, contiguous or
            channels_last.
        bias: optional [C] tensor added before the activation.
        impl: "auto", "ref", "fast" or "triton" (see fastgan.ops._dispatch).
    Returns:
        y, same shape, dtype and memory layout as x.
    """
    if bias is not None and (x.dim() < 2 or tuple(bias.shape) != (x.shape[1],)):
        raise ValueError(f"tanh: bias must have shape (x.shape[1],), got {tuple(bias.shape)} for x {tuple(x.shape)}")
    if _dispatch.resolve(_OP, impl, x.device) == "triton":
        _triton_util.check_dtype(_OP, "x", x)
        _triton_util.bias_view(_OP, x, bias is not None)
        if bias is not None and bias.device != x.device:
            raise ValueError(f"tanh: bias is on {bias.device} but x is on {x.device}")
        return _fwd_op(x, bias)
    return tanh_ref(x, bias=bias)
