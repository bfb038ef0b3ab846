"""batch_norm_act: y = act(BatchNorm(x) * weight + bias), batch or running statistics, in one pass.

Sections (../STYLE.md): 1. reference  2. Triton kernels  3. launchers  4. autograd  5. public function.

The semantics are F.batch_norm's followed by ReLU / LeakyReLU: with ``training=True`` the batch statistics
normalise x and the running statistics (if given) are updated in place with ``momentum`` and the unbiased
variance; with ``training=False`` the running statistics normalise x. The Triton path views x as [N, C, S]
(S = H*W) with strides, so NCHW (stride_s = 1) and channels_last (stride_c = 1) share the kernels and the
output keeps x's layout, as nn.BatchNorm2d's does. Every reduction is deterministic: per-program fp32
partials, then torch's fixed-order sum, no atomics. The reductions loop with ``while`` over a kernel
argument: Triton 3.6's interpreter cannot take a runtime bound in ``range()``.

Forward with batch statistics, M = N*S values per channel:
  stats (one pass): per program (sample n, piece of S, channel block), sums of d = x - x[0, c, 0] and d^2
             (the shift keeps E[d^2] - E[d]^2 from cancelling when |mean| >> std); summed into [2, C]
  finalise ([C], torch): mean = shift + sum(d) / M, var = sum(d^2) / M - (sum(d) / M)^2, rstd = 1/sqrt(var + eps)
             running_mean = (1 - momentum) * running_mean + momentum * mean
             running_var  = (1 - momentum) * running_var  + momentum * var * M / (M - 1)
  normalise (one pass): xhat = (x - mean) * rstd, z = xhat * w + b, y = act(z)
With running statistics mean = running_mean, rstd = 1/sqrt(running_var + eps): only the normalise pass.
Backward, with g = dy * act'(z):
  dweight = sum_{n,s} g * xhat        dbias = sum_{n,s} g
  batch statistics:   dx = rstd * w * (g - sum_{n,s}(g) / M - xhat * sum_{n,s}(g * xhat) / M)
  running statistics: dx = rstd * w * g
  one pass for the per-program sums of g and g * xhat (which also writes dx with running statistics),
  and with batch statistics one more for dx.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import _dispatch, _triton_util
from ._triton_util import kernel, norm_act_bwd_tile, norm_act_channel

try:
    import triton.language as tl

    # The kernels use only triton.language builtins: its @jit helpers (tl.sum, tl.zeros) are compiled-only
    # when TRITON_INTERPRET=1 is set after triton's import, as a test does. tl.sum's combine function
    # passed to tl.reduce is the exception that works both ways: the interpreter sums it with numpy.
    _add = tl.standard._sum_combine
except ImportError:  # the reference path still works; _triton_util.check says why Triton cannot run
    tl = _add = None

_OP = "batch_norm_act"
_ACTS = ("relu", "leaky_relu", "none")
_ACT_CODE = {"none": 0, "relu": 1, "leaky_relu": 2}
_MAX_SPLIT = 64


# 1. Reference ------------------------------------------------------------------------------------
def batch_norm_act_ref(x, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1,
                       eps=1e-5, *, act="relu", negative_slope=0.2):
    """Plain PyTorch reference: F.batch_norm (which updates the running statistics when training) then the
    activation, computed in fp32 (fp64 for fp64 x), output in x's dtype."""
    compute = torch.promote_types(x.dtype, torch.float32)
    y = F.batch_norm(x.to(compute), running_mean, running_var,
                     None if weight is None else weight.to(compute), None if bias is None else bias.to(compute),
                     training, momentum, eps)
    if act == "relu":
        y = F.relu(y)
    elif act == "leaky_relu":
        y = F.leaky_relu(y, negative_slope)
    return y.to(x.dtype)


def _check_args(x, running_mean, running_var, weight, bias, training, act):
    if x.dim() != 4:
        raise ValueError(f"batch_norm_act: x must be 4-D [N, C, H, W], got shape {tuple(x.shape)}")
    if act not in _ACTS:
        raise ValueError(f"batch_norm_act: act={act!r} is not one of {_ACTS}")
    if (weight is None) != (bias is None):
        raise ValueError("batch_norm_act: weight and bias must both be given (affine) or both be None")
    if (running_mean is None) != (running_var is None):
        raise ValueError("batch_norm_act: running_mean and running_var must both be given or both be None")
    if not training and running_mean is None:
        raise ValueError("batch_norm_act: training=False normalises with the running statistics, but "
                         "running_mean and running_var are None")
    for name, t in (("weight", weight), ("bias", bias), ("running_mean", running_mean),
                    ("running_var", running_var)):
        if t is not None and tuple(t.shape) != (x.shape[1],):
            raise ValueError(f"batch_norm_act: {name} must have shape ({x.shape[1]},), got {tuple(t.shape)}")
    if training and x.numel() // max(x.shape[1], 1) < 2:
        # F.batch_norm's own message (a ValueError there too)
        raise ValueError(f"Expected more than 1 value per channel when training, got input size {x.shape}")


# 2. Triton kernels -------------------------------------------------------------------------------
@kernel
def _batch_norm_act_stats_kernel(
    X,  # input, [N, C, S] with strides (stride_n, stride_c, stride_s)
    PARTS,  # fp32 out, [2, C, P] with P = N * SPLIT: per program, sums of x - x[0, c, 0] and of its square
    C, S, stride_n, stride_c, stride_s, split_len, SPLIT, P,
    BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr,
):
    pid, pid_c = tl.program_id(0), tl.program_id(1)  # pid = n * SPLIT + piece
    n, piece = pid // SPLIT, pid % SPLIT
    c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    c_mask = c < C
    shift = tl.load(X + c * stride_c, mask=c_mask, other=0.0).to(tl.float32)  # x[0, c, 0]
    row = X + n.to(tl.int64) * stride_n + c * stride_c  # [BLOCK_C] pointers to x[n, c, 0]
    first = piece * split_len
    acc = tl.full([BLOCK_C, BLOCK_S], 0.0, tl.float32)
    acc_sq = tl.full([BLOCK_C, BLOCK_S], 0.0, tl.float32)
    i = 0
    while i < split_len:  # not range(): Triton 3.6's interpreter takes no runtime bound there
        s = first + i + tl.arange(0, BLOCK_S)
        mask = c_mask[:, None] & (s < S)[None, :]
        x = tl.load(row[:, None] + s[None, :] * stride_s, mask=mask, other=0.0).to(tl.float32)
        d = tl.where(mask, x - shift[:, None], 0.0)
        acc += d
        acc_sq += d * d
        i += BLOCK_S
    tl.store(PARTS + c * P + pid, tl.reduce(acc, 1, _add), mask=c_mask)
    tl.store(PARTS + C * P + c * P + pid, tl.reduce(acc_sq, 1, _add), mask=c_mask)


@kernel
def _batch_norm_act_fwd_kernel(
    X,  # input, [N, C, S] with strides (stride_n, stride_c, stride_s)
    Y,  # output, like X
    W,  # weight, [C] (unused unless HAS_AFFINE)
    B,  # bias, [C] (unused unless HAS_AFFINE)
    MEAN,  # fp32, [C]: the batch or running mean
    RSTD,  # fp32, [C]: 1 / sqrt(var + eps)
    C, S, stride_n, stride_c, stride_s, negative_slope,
    BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr, HAS_AFFINE: tl.constexpr, ACT: tl.constexpr,
):
    pid_s, pid_c, n = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    c_mask = c < C
    s = pid_s.to(tl.int64) * BLOCK_S + tl.arange(0, BLOCK_S)
    mask = c_mask[:, None] & (s < S)[None, :]
    idx = n.to(tl.int64) * stride_n + c[:, None] * stride_c + s[None, :] * stride_s
    mean = tl.load(MEAN + c, mask=c_mask, other=0.0)
    rstd = tl.load(RSTD + c, mask=c_mask, other=0.0)
    z = (tl.load(X + idx, mask=mask, other=0.0).to(tl.float32) - mean[:, None]) * rstd[:, None]
    if HAS_AFFINE:
        w = tl.load(W + c, mask=c_mask, other=0.0).to(tl.float32)
        b = tl.load(B + c, mask=c_mask, other=0.0).to(tl.float32)
        z = z * w[:, None] + b[:, None]
    if ACT == 1:
        z = tl.maximum(z, 0.0)
    elif ACT == 2:
        z = tl.where(z > 0, z, z * negative_slope)
    tl.store(Y + idx, z.to(Y.dtype.element_ty), mask=mask)


@kernel
def _batch_norm_act_bwd_stats_kernel(
    X,  # input, [N, C, S] with strides (stride_n, stride_c, stride_s)
    DY,  # output gradient, like X
    DX,  # input gradient out, like X (written only if WRITE_DX: running statistics, dx = rstd * w * g)
    W,  # weight, [C] (unused unless HAS_AFFINE)
    B,  # bias, [C] (unused unless HAS_AFFINE)
    MEAN,  # fp32, [C]
    RSTD,  # fp32, [C]
    PARTS,  # fp32 out, [2, C, P] with P = N * SPLIT: per program, sums of g and of g * xhat
    C, S, stride_n, stride_c, stride_s, split_len, SPLIT, P, negative_slope,
    BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr, HAS_AFFINE: tl.constexpr, ACT: tl.constexpr,
    WRITE_DX: tl.constexpr,
):
    pid, pid_c = tl.program_id(0), tl.program_id(1)
    n, piece = pid // SPLIT, pid % SPLIT
    c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    c_mask = c < C
    offset = n.to(tl.int64) * stride_n + c * stride_c
    mean, rstd, w, b = norm_act_channel(W, B, MEAN, RSTD, 0, c, c_mask, BLOCK_C, HAS_AFFINE)
    first = piece * split_len
    acc_g = tl.full([BLOCK_C, BLOCK_S], 0.0, tl.float32)
    acc_gx = tl.full([BLOCK_C, BLOCK_S], 0.0, tl.float32)
    i = 0
    while i < split_len:
        s = first + i + tl.arange(0, BLOCK_S)
        mask = c_mask[:, None] & (s < S)[None, :]
        idx = offset[:, None] + s[None, :] * stride_s
        xhat, g = norm_act_bwd_tile(X, DY, idx, mask, mean, rstd, w, b, negative_slope, ACT)
        if WRITE_DX:
            tl.store(DX + idx, (g * (rstd * w)[:, None]).to(DX.dtype.element_ty), mask=mask)
        acc_g += g
        acc_gx += g * xhat
        i += BLOCK_S
    tl.store(PARTS + c * P + pid, tl.reduce(acc_g, 1, _add), mask=c_mask)
    tl.store(PARTS + C * P + c * P + pid, tl.reduce(acc_gx, 1, _add), mask=c_mask)


@kernel
def _batch_norm_act_bwd_kernel(
    X,  # input, [N, C, S] with strides (stride_n, stride_c, stride_s)
    DY,  # output gradient, like X
    DX,  # input gradient out, like X
    W,  # weight, [C] (unused unless HAS_AFFINE)
    B,  # bias, [C] (unused unless HAS_AFFINE)
    MEAN,  # fp32, [C]
    RSTD,  # fp32, [C]
    SUMS,  # fp32, [2, C]: sums over (n, s) of g and of g * xhat, from the backward stats pass
    C, S, stride_n, stride_c, stride_s, M, negative_slope,
    BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr, HAS_AFFINE: tl.constexpr, ACT: tl.constexpr,
):
    pid_s, pid_c, n = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    c_mask = c < C
    s = pid_s.to(tl.int64) * BLOCK_S + tl.arange(0, BLOCK_S)
    mask = c_mask[:, None] & (s < S)[None, :]
    idx = n.to(tl.int64) * stride_n + c[:, None] * stride_c + s[None, :] * stride_s
    mean, rstd, w, b = norm_act_channel(W, B, MEAN, RSTD, 0, c, c_mask, BLOCK_C, HAS_AFFINE)
    mean_g = tl.load(SUMS + c, mask=c_mask, other=0.0) / M
    mean_gx = tl.load(SUMS + C + c, mask=c_mask, other=0.0) / M
    xhat, g = norm_act_bwd_tile(X, DY, idx, mask, mean, rstd, w, b, negative_slope, ACT)
    dx = (rstd * w)[:, None] * (g - mean_g[:, None] - xhat * mean_gx[:, None])
    tl.store(DX + idx, dx.to(DX.dtype.element_ty), mask=mask)


# 3. Launchers ------------------------------------------------------------------------------------
def _pieces(n, c_blocks, s, block_s, target_programs=1024):
    """Cuts each (sample, channel block) row of ``s`` elements into ``split`` pieces of ``split_len`` (a
    multiple of block_s), enough programs to fill the GPU when N * C is small. Returns (split, split_len)."""
    chunks = -(-s // block_s)
    want = max(1, min(-(-target_programs // max(n * c_blocks, 1)), chunks, _MAX_SPLIT))
    per = -(-chunks // want)
    return -(-chunks // per), per * block_s


def _plan(x):
    """Shape, strides, tiles and grids of x for the kernels."""
    n, c, s, stride_n, stride_c, stride_s = _triton_util.channels_view(_OP, "x", x)
    block_c, block_s = _triton_util.tile(c, s, stride_c)
    c_blocks = -(-c // block_c)
    split, split_len = _pieces(n, c_blocks, s, block_s)
    return dict(n=n, c=c, s=s, strides=(stride_n, stride_c, stride_s), split=split, split_len=split_len,
                reduce_grid=(n * split, c_blocks), pointwise_grid=(-(-s // block_s), c_blocks, n),
                blocks=dict(BLOCK_C=block_c, BLOCK_S=block_s))


def _batch_norm_act_fwd(x, weight, bias, running_mean, running_var, training, act, negative_slope, eps):
    """Returns y (x's layout and dtype) and the fp32 [C] mean, rstd and biased variance that normalised x."""
    plan = _plan(x)
    c, p = plan["c"], plan["n"] * plan["split"]
    if training:
        parts = _triton_util.empty((2, c, p), torch.float32, x.device)
        with _triton_util.device_guard(x):
            _batch_norm_act_stats_kernel[plan["reduce_grid"]](x, parts, c, plan["s"], *plan["strides"],
                                                              plan["split_len"], plan["split"], p, **plan["blocks"])
        count = plan["n"] * plan["s"]
        sums = parts.sum(dim=-1) / count  # [2, C], a fixed-order sum over the programs
        shift = x[0, :, 0, 0].float()  # the kernel's shift, x[0, c, 0]
        mean = shift + sums[0]
        var = (sums[1] - sums[0].square()).clamp_min(0.0)
    else:
        mean = running_mean.to(torch.float32, copy=True)
        var = running_var.to(torch.float32, copy=True)
    rstd = (var + eps).rsqrt()
    y = _triton_util.empty_like(x)
    with _triton_util.device_guard(x):
        _batch_norm_act_fwd_kernel[plan["pointwise_grid"]](
            x, y, x if weight is None else weight, x if bias is None else bias, mean, rstd, c, plan["s"],
            *plan["strides"], negative_slope, **plan["blocks"], HAS_AFFINE=weight is not None, ACT=_ACT_CODE[act])
    return y, mean, rstd, var


def _batch_norm_act_bwd(dy, x, weight, bias, mean, rstd, training, act, negative_slope):
    """Returns dx (x's layout and dtype) and fp32 [C] dweight, dbias (for weight 1, bias 0 if not affine)."""
    plan = _plan(x)
    c, p = plan["c"], plan["n"] * plan["split"]
    dy = _triton_util.same_layout(dy, x)
    parts = _triton_util.empty((2, c, p), torch.float32, x.device)
    dx = _triton_util.empty_like(x)
    w, b = (x, x) if weight is None else (weight, bias)
    options = dict(**plan["blocks"], HAS_AFFINE=weight is not None, ACT=_ACT_CODE[act])
    with _triton_util.device_guard(x):
        _batch_norm_act_bwd_stats_kernel[plan["reduce_grid"]](
            x, dy, dx, w, b, mean, rstd, parts, c, plan["s"], *plan["strides"], plan["split_len"], plan["split"],
            p, negative_slope, **options, WRITE_DX=not training)
        sums = parts.sum(dim=-1)  # [2, C], a fixed-order sum over the programs
        if training:
            _batch_norm_act_bwd_kernel[plan["pointwise_grid"]](
                x, dy, dx, w, b, mean, rstd, sums, c, plan["s"], *plan["strides"], plan["n"] * plan["s"],
                negative_slope, **options)
    # Two tensors, as a custom op's outputs may not alias.
    return dx, sums[1].clone(), sums[0].clone()


# 4. Autograd (torch.library custom ops, so torch.compile and CUDA graphs see opaque kernels) ------
@torch.library.custom_op("fastgan::batch_norm_act_fwd", mutates_args=())
def _fwd_op(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
            running_mean: torch.Tensor | None, running_var: torch.Tensor | None, training: bool, act: str,
            negative_slope: float, eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return _batch_norm_act_fwd(x, weight, bias, running_mean, running_var, training, act, negative_slope, eps)


@_fwd_op.register_fake
def _(x, weight, bias, running_mean, running_var, training, act, negative_slope, eps):
    stats = x.new_empty((x.shape[1],), dtype=torch.float32)
    return torch.empty_like(x), stats, torch.empty_like(stats), torch.empty_like(stats)


@torch.library.custom_op("fastgan::batch_norm_act_bwd", mutates_args=())
def _bwd_op(dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
            mean: torch.Tensor, rstd: torch.Tensor, training: bool, act: str,
            negative_slope: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _batch_norm_act_bwd(dy, x, weight, bias, mean, rstd, training, act, negative_slope)


@_bwd_op.register_fake
def _(dy, x, weight, bias, mean, rstd, training, act, negative_slope):
    grad = x.new_empty((x.shape[1],), dtype=torch.float32)
    return torch.empty_like(x), grad, torch.empty_like(grad)


def _setup_context(ctx, inputs, output):
    x, weight, bias, _, _, training, act, negative_slope, _ = inputs
    _, mean, rstd, var = output
    ctx.mark_non_differentiable(mean, rstd, var)
    ctx.save_for_backward(x, weight, bias, mean, rstd)
    ctx.training, ctx.act, ctx.negative_slope = training, act, negative_slope


def _backward(ctx, dy, _dmean, _drstd, _dvar):
    x, weight, bias, mean, rstd = ctx.saved_tensors
    dx, dweight, dbias = _bwd_op(dy, x, weight, bias, mean, rstd, ctx.training, ctx.act, ctx.negative_slope)
    if weight is None:
        dweight = dbias = None
    else:
        dweight, dbias = dweight.to(weight.dtype), dbias.to(bias.dtype)
    return dx, dweight, dbias, None, None, None, None, None, None


_fwd_op.register_autograd(_backward, setup_context=_setup_context)
_dispatch.register(_OP, "triton", _triton_util.check)


# 5. Public function ------------------------------------------------------------------------------
def batch_norm_act(x, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1, eps=1e-5,
                   *, act="relu", negative_slope=0.2, impl="auto"):
    """Batch normalisation fused with an activation: F.batch_norm's arguments and semantics, then ``act``.

    Args:
        x: [N, C, H, W], contiguous NCHW or channels_last, fp32/bf16/fp16 (any float dtype on the reference).
        running_mean, running_var: [C] running statistics or None (then ``training`` must be True); updated
            in place when ``training``, as F.batch_norm does.
        weight, bias: optional affine parameters, [C] each (both or neither).
        training: normalise with the batch statistics (and update the running ones) rather than the running ones.
        momentum: weight of the batch statistics in the running-statistics update.
        eps: added to the variance.
        act: "relu", "leaky_relu" or "none".
        negative_slope: slope of leaky_relu for negative inputs.
        impl: "auto", "ref", "fast" or "triton" (see fastgan.ops._dispatch).
    Returns:
        y, same shape, dtype and memory layout as x.
    """
    _check_args(x, running_mean, running_var, weight, bias, training, act)
    if _dispatch.resolve(_OP, impl, x.device) != "triton":
        return batch_norm_act_ref(x, running_mean, running_var, weight, bias, training, momentum, eps, act=act,
                                  negative_slope=negative_slope)
    _triton_util.check_dtype(_OP, "x", x)
    _triton_util.channels_view(_OP, "x", x)
    if x.numel() >= 2**31:
        raise ValueError(f"batch_norm_act: x has {x.numel()} elements; the Triton path takes fewer than 2**31 "
                         "(use impl='ref')")
    for name, t in (("weight", weight), ("bias", bias), ("running_mean", running_mean),
                    ("running_var", running_var)):
        if t is not None and t.device != x.device:
            raise ValueError(f"batch_norm_act: {name} is on {t.device} but x is on {x.device}")
    y, mean, _, var = _fwd_op(x, weight, bias, running_mean, running_var, bool(training), act,
                              float(negative_slope), float(eps))
    if training and running_mean is not None:
        count = x.numel() // x.shape[1]
        with torch.no_grad():  # F.batch_norm's update, with the unbiased batch variance: 2 launches, not 4
            unbiased = var * (count / (count - 1))
            torch._foreach_lerp_([running_mean, running_var],
                                 [mean.to(running_mean.dtype), unbiased.to(running_var.dtype)], momentum)
    return y
