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
from ._triton_util import kernel

try:
    import triton.language as tl

    # The kernels use only triton.language builtins: its @jit helpers (tl.sum, tl.zeros) are compiled-only
    # when TRITON_INTERPRET=1 is set after triton's import, as a test does. tl.sum's combine function
    # passed to tl.reduce is the exception that works both ways: the interpreter sums it with numpy.
    _add = tl.standard._sum_combine
except ImportError:  # the reference path still works; _triton_util.check says why Triton cannot run
    tl = _add = None

_OP = "leaky_relu"
_MAX_SPLIT = 256


# 1. Reference ------------------------------------------------------------------------------------
def leaky_relu_ref(x, negative_slope=0.2, *, bias=None):
    """Plain PyTorch reference: optional per-channel bias (dim 1) then LeakyReLU."""
    if bias is not None:
        x = x + bias.view(1, -1, *([1] * (x.dim() - 2)))
    return F.leaky_relu(x, negative_slope)


# 2. Triton kernels -------------------------------------------------------------------------------
@kernel
def _leaky_relu_fwd_kernel(
    X,  # input, [N, C, S] with strides (stride_n, stride_c, stride_s)
    B,  # bias, [C] (unused unless HAS_BIAS)
    Y,  # output, like X
    C, S, stride_n, stride_c, stride_s, negative_slope,
    BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr, HAS_BIAS: tl.constexpr,
):
    pid_s, pid_c, n = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    s = pid_s.to(tl.int64) * BLOCK_S + tl.arange(0, BLOCK_S)
    mask = (c < C)[:, None] & (s < S)[None, :]
    idx = n.to(tl.int64) * stride_n + c[:, None].to(tl.int64) * stride_c + s[None, :] * stride_s
    z = tl.load(X + idx, mask=mask, other=0.0).to(tl.float32)
    if HAS_BIAS:
        z += tl.load(B + c, mask=c < C, other=0.0).to(tl.float32)[:, None]
    tl.store(Y + idx, tl.where(z > 0, z, z * negative_slope).to(Y.dtype.element_ty), mask=mask)


@kernel
def _leaky_relu_bwd_kernel(
    DY,  # output gradient, [N, C, S] with strides (stride_n, stride_c, stride_s)
    Y,  # saved output, like DY
    DX,  # input gradient out, like DY
    PDB,  # fp32 out, [N, C, SPLIT]: per piece, sum of dx (unused unless HAS_BIAS)
    C, S, stride_n, stride_c, stride_s, SPLIT, negative_slope,
    BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr, TILES: tl.constexpr, HAS_BIAS: tl.constexpr,
):
    # Program (p, cb, n) covers spatial positions p * TILES * BLOCK_S + [0, TILES * BLOCK_S); the trip
    # count is the constexpr TILES, since Triton 3.6's interpreter cannot loop over a range bounded by a
    # program id or an argument.
    pid_split, pid_c, n = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    c_mask = c < C
    offset = n.to(tl.int64) * stride_n + c.to(tl.int64) * stride_c
    acc = tl.full([BLOCK_C, BLOCK_S], 0.0, tl.float32)
    start = pid_split.to(tl.int64) * (TILES * BLOCK_S)
    for s0 in range(0, TILES * BLOCK_S, BLOCK_S):
        s = start + s0 + tl.arange(0, BLOCK_S)
        mask = c_mask[:, None] & (s < S)[None, :]
        idx = offset[:, None] + s[None, :] * stride_s
        y = tl.load(Y + idx, mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(DY + idx, mask=mask, other=0.0).to(tl.float32)
        dx = tl.where(y > 0, dy, dy * negative_slope)
        tl.store(DX + idx, dx.to(DX.dtype.element_ty), mask=mask)
        if HAS_BIAS:
            acc += dx
    if HAS_BIAS:
        tl.store(PDB + (n * C + c) * SPLIT + pid_split, tl.reduce(acc, 1, _add), mask=c_mask)


# 3. Launchers ------------------------------------------------------------------------------------
def _view(x, has_bias):
    """(N, C, S, strides) for the kernels: [N, C, S] with a bias, else any dense layout as flat storage."""
    if not has_bias and _triton_util.is_dense(x):
        return 1, 1, x.numel(), (0, 0, 1)
    n, c, s, *strides = _triton_util.channels_view(_OP, "x", x)
    return n, c, s, tuple(strides)


def _leaky_relu_fwd(x, bias, negative_slope):
    n, c, s, strides = _view(x, bias is not None)
    block_c, block_s = _triton_util.tile(c, s, strides[1], elems=4096)
    y = _triton_util.empty_like(x)
    grid = (-(-s // block_s), -(-c // block_c), n)
    with _triton_util.device_guard(x):
        _leaky_relu_fwd_kernel[grid](x, x if bias is None else bias, y, c, s, *strides, negative_slope,
                                     BLOCK_C=block_c, BLOCK_S=block_s, HAS_BIAS=bias is not None)
    return y


def _leaky_relu_bwd(dy, y, negative_slope, has_bias):
    """Returns dx (y's layout and dtype) and fp32 dbias [C] (empty without a bias)."""
    n, c, s, strides = _view(y, has_bias)
    dy = _triton_util.same_layout(dy, y)
    # Half the forward's tile: with a bias the backward also keeps an fp32 partial-sum tile, and 4096 fp32
    # elements per program spilled registers in NCHW (ptxas -v, Triton 3.8; tests/gpu_ready).
    block_c, block_s = _triton_util.tile(c, s, strides[1])
    c_blocks = -(-c // block_c)
    if has_bias:
        split, tiles = _triton_util.split(n, c_blocks, s, block_s, _MAX_SPLIT)
    else:  # nothing to reduce: one tile per program
        split, tiles = -(-s // block_s), 1
    dx = _triton_util.empty_like(y)
    pdb = _triton_util.empty((n, c, split) if has_bias else (0,), torch.float32, y.device)
    with _triton_util.device_guard(y):
        _leaky_relu_bwd_kernel[(split, c_blocks, n)](dy, y, dx, pdb, c, s, *strides, split, negative_slope,
                                                     BLOCK_C=block_c, BLOCK_S=block_s, TILES=tiles,
                                                     HAS_BIAS=has_bias)
    # A fixed-order sum over samples and pieces: deterministic, unlike atomics.
    return dx, pdb.sum(dim=(0, 2)) if has_bias else pdb


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
        _view(x, bias is not None)
        if bias is not None and bias.device != x.device:
            raise ValueError(f"leaky_relu: bias is on {bias.device} but x is on {x.device}")
        return _fwd_op(x, bias, float(negative_slope))
    return leaky_relu_ref(x, negative_slope, bias=bias)
