"""batch_norm_act: y = act(BatchNorm(x) * weight + bias), batch or running statistics, in one pass.

Sections (../STYLE.md): 1. reference  2. Triton kernels  3. launchers  4. autograd  5. public function.

The semantics are F.batch_norm's followed by ReLU / LeakyReLU: with ``training=True`` the batch statistics
normalise x and the running statistics (if given) are updated in place with ``momentum`` and the unbiased
variance; with ``training=False`` the running statistics normalise x. The Triton path views x as [N, C, S]
(S = H*W) with strides, so NCHW (stride_s = 1) and channels_last (stride_c = 1) share the kernels and the
output keeps x's layout, as nn.BatchNorm2d's does. Every reduction is deterministic: per-program fp32
partials summed in a fixed order by the last program to finish (_triton_util.sum_over_programs: atomic
tickets on integers, never on the values). The loops run with ``while`` over kernel arguments: Triton 3.6's
interpreter cannot take a runtime bound in ``range()``.

Forward with batch statistics, M = N*S values per channel, two launches:
  stats: per program (a run of [BLOCK_C, BLOCK_S] tiles over (n, s), channel block), sums of
         d = x - x[0, c, 0] and d^2 (the shift keeps E[d^2] - E[d]^2 from cancelling when |mean| >> std);
         the last program of each channel block sums them and finishes:
           mean = shift + sum(d) / M, var = sum(d^2) / M - (sum(d) / M)^2 (biased)
           running_mean = (1 - momentum) * running_mean + momentum * mean
           running_var  = (1 - momentum) * running_var  + momentum * var * M / (M - 1)
  normalise: rstd = 1/sqrt(var + eps), xhat = (x - mean) * rstd, z = xhat * w + b, y = act(z)
With running statistics mean = running_mean, var = running_var: only the normalise pass.
Backward, with g = dy * act'(z):
  dweight = sum_{n,s} g * xhat        dbias = sum_{n,s} g
  batch statistics:   dx = rstd * w * (g - sum_{n,s}(g) / M - xhat * sum_{n,s}(g * xhat) / M)
  running statistics: dx = rstd * w * g
  one pass for the sums of g and g * xhat (their last program writes dweight and dbias; with running
  statistics the pass also writes dx), and with batch statistics one more for dx.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import _dispatch, _triton_util
from ._triton_util import kernel, norm_act_bwd_values, norm_weight_bias

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


# 1. Reference ------------------------------------------------------------------------------------
def batch_norm_act_ref(x, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1,
                       eps=1e-5, *, act="relu", negative_slope=0.2, num_batches_tracked=None):
    """Plain PyTorch reference: F.batch_norm (which updates the running statistics when training) then the
    activation, computed in fp32 (fp64 for fp64 x), output in x's dtype; when training, num_batches_tracked
    (if given) is incremented first, as nn.BatchNorm2d's forward does."""
    if training and num_batches_tracked is not None:
        num_batches_tracked.add_(1)
    compute = torch.promote_types(x.dtype, torch.float32)
    y = F.batch_norm(x.to(compute), running_mean, running_var,
                     None if weight is None else weight.to(compute), None if bias is None else bias.to(compute),
                     training, momentum, eps)
    if act == "relu":
        y = F.relu(y)
    elif act == "leaky_relu":
        y = F.leaky_relu(y, negative_slope)
    return y.to(x.dtype)


def _check_args(x, running_mean, running_var, weight, bias, training, act, num_batches_tracked=None):
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
    if num_batches_tracked is not None and (num_batches_tracked.numel() != 1
                                            or num_batches_tracked.dtype.is_floating_point):
        raise ValueError("batch_norm_act: num_batches_tracked must be a one-element integer tensor, got "
                         f"{num_batches_tracked.dtype} of shape {tuple(num_batches_tracked.shape)}")
    if training and x.numel() // max(x.shape[1], 1) < 2:
        # F.batch_norm's own message (a ValueError there too)
        raise ValueError(f"Expected more than 1 value per channel when training, got input size {x.shape}")


# 2. Triton kernels -------------------------------------------------------------------------------
# The two reduction kernels run on a (P, channel blocks) grid: program (p, cb) covers channels
# cb * BLOCK_C + [0, BLOCK_C) and the work items [p * PER_PROGRAM, (p + 1) * PER_PROGRAM) of the N * CHUNKS
# [BLOCK_C, BLOCK_S] tiles, item i being tile i % CHUNKS of sample i // CHUNKS; so a program covers a piece of
# one sample's row when N is small, several samples when N is large. The pointwise kernels run on an
# (S blocks, channel blocks, N) grid, one tile per program.
@_triton_util.device_function
def _channel(
    W,  # weight, [C] (unused unless HAS_AFFINE)
    B,  # bias, [C] (unused unless HAS_AFFINE)
    MEAN,  # [C]: the batch mean (fp32) or the running mean (its dtype)
    VAR,  # [C]: the biased batch variance (fp32) or the running variance (its dtype)
    c, c_mask, eps,
    BLOCK_C: tl.constexpr, HAS_AFFINE: tl.constexpr,
):
    """mean, rstd = 1 / sqrt(var + eps), weight and bias of channels c (weight 1 and bias 0 if not affine),
    fp32 [BLOCK_C] each."""
    mean = tl.load(MEAN + c, mask=c_mask, other=0.0).to(tl.float32)
    rstd = 1.0 / tl.sqrt(tl.load(VAR + c, mask=c_mask, other=0.0).to(tl.float32) + eps)
    w, b = norm_weight_bias(W, B, c, c_mask, BLOCK_C, HAS_AFFINE)
    return mean, rstd, w, b


@_triton_util.device_function
def _bwd_tile(
    X,  # input, [N, C, S] with strides (stride_n, stride_c, stride_s)
    DY,  # output gradient, [N, C, S] with its own strides (stride_dn, stride_dc, stride_ds)
    idx, idx_dy, mask,  # [BLOCK_C, BLOCK_S] offsets of the tile into X and DY, and which of them are in bounds
    mean, rstd, w, b,  # fp32 [BLOCK_C], from _channel
    negative_slope,
    ACT: tl.constexpr,  # 0 none, 1 relu, 2 leaky_relu
):
    """xhat = (x - mean) * rstd and g = dy * act'(xhat * w + b) of one tile, fp32 (zero where masked off)."""
    dy = tl.load(DY + idx_dy, mask=mask, other=0.0).to(tl.float32)
    return norm_act_bwd_values(X, idx, mask, dy, mean, rstd, w, b, negative_slope, ACT)


@kernel
def _batch_norm_act_stats_kernel(
    X,  # input, [N, C, S] with strides (stride_n, stride_c, stride_s)
    PARTS,  # fp32 scratch, [2, C, P + GROUPS]: per program sums of x - x[0, c, 0] and of its square, then per group
    TICKETS,  # int32, [channel blocks, GROUPS + 1]: zero between launches (_triton_util.sum_over_programs)
    MEAN,  # fp32 out, [C]: the batch mean
    VAR,  # fp32 out, [C]: the biased batch variance
    RUNNING_MEAN,  # [C], updated in place (unused unless HAS_RUNNING)
    RUNNING_VAR,  # [C], updated in place with the unbiased variance (unused unless HAS_RUNNING)
    NUM_BATCHES,  # integer, one element: incremented by one (unused unless HAS_COUNT)
    C, S, stride_n, stride_c, stride_s, CHUNKS, ITEMS, PER_PROGRAM, P, GROUP, GROUPS, M, momentum,
    BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_G: tl.constexpr, HAS_RUNNING: tl.constexpr,
    HAS_COUNT: tl.constexpr,
):
    pid, pid_c = tl.program_id(0), tl.program_id(1)
    c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    c_mask = c < C
    shift = tl.load(X + c * stride_c, mask=c_mask, other=0.0).to(tl.float32)  # x[0, c, 0]
    acc = tl.full([BLOCK_C, BLOCK_S], 0.0, tl.float32)
    acc_sq = tl.full([BLOCK_C, BLOCK_S], 0.0, tl.float32)
    item = pid * PER_PROGRAM
    end = tl.minimum(item + PER_PROGRAM, ITEMS)
    while item < end:
        n = item // CHUNKS
        s = (item - n * CHUNKS) * BLOCK_S + tl.arange(0, BLOCK_S)
        mask = c_mask[:, None] & (s < S)[None, :]
        idx = n.to(tl.int64) * stride_n + c[:, None] * stride_c + s[None, :] * stride_s
        d = tl.where(mask, tl.load(X + idx, mask=mask, other=0.0).to(tl.float32) - shift[:, None], 0.0)
        acc += d
        acc_sq += d * d
        item += 1
    R = P + GROUPS
    tl.store(PARTS + c * R + pid, tl.reduce(acc, 1, _add), mask=c_mask)
    tl.store(PARTS + C * R + c * R + pid, tl.reduce(acc_sq, 1, _add), mask=c_mask)
    last, sum_d, sum_d2 = _triton_util.sum_over_programs(PARTS, TICKETS, pid, pid_c, c, c_mask, C, P, GROUP, GROUPS,
                                                         BLOCK_C, BLOCK_G)
    if last:  # one program per channel block: the statistics and the running-statistics update
        mean_d = sum_d / M
        var = tl.maximum(sum_d2 / M - mean_d * mean_d, 0.0)
        mean = shift + mean_d
        tl.store(MEAN + c, mean, mask=c_mask)
        tl.store(VAR + c, var, mask=c_mask)
        if HAS_RUNNING:  # ATen's update, in fp32: (1 - momentum) * running + momentum * batch
            running_mean = tl.load(RUNNING_MEAN + c, mask=c_mask, other=0.0).to(tl.float32)
            running_var = tl.load(RUNNING_VAR + c, mask=c_mask, other=0.0).to(tl.float32)
            running_mean = (1.0 - momentum) * running_mean + momentum * mean
            running_var = (1.0 - momentum) * running_var + momentum * (var * (M / (M - 1.0)))
            tl.store(RUNNING_MEAN + c, running_mean.to(RUNNING_MEAN.dtype.element_ty), mask=c_mask)
            tl.store(RUNNING_VAR + c, running_var.to(RUNNING_VAR.dtype.element_ty), mask=c_mask)
        if HAS_COUNT:  # nn.BatchNorm2d's num_batches_tracked += 1, by the first channel block's last program
            tl.store(NUM_BATCHES, tl.load(NUM_BATCHES) + 1, mask=pid_c == 0)


@kernel
def _batch_norm_act_fwd_kernel(
    X,  # input, [N, C, S] with strides (stride_n, stride_c, stride_s)
    Y,  # output, like X
    W,  # weight, [C] (unused unless HAS_AFFINE)
    B,  # bias, [C] (unused unless HAS_AFFINE)
    MEAN,  # [C]: the batch mean (fp32) or the running mean
    VAR,  # [C]: the biased batch variance (fp32) or the running variance
    C, S, stride_n, stride_c, stride_s, eps, negative_slope,
    BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr, HAS_AFFINE: tl.constexpr, ACT: tl.constexpr,
):
    pid_s, pid_c, n = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    c_mask = c < C
    s = pid_s.to(tl.int64) * BLOCK_S + tl.arange(0, BLOCK_S)
    mask = c_mask[:, None] & (s < S)[None, :]
    idx = n.to(tl.int64) * stride_n + c[:, None] * stride_c + s[None, :] * stride_s
    mean, rstd, w, b = _channel(W, B, MEAN, VAR, c, c_mask, eps, BLOCK_C, HAS_AFFINE)
    # (x - mean) * rstd rather than x * scale + shift: no cancellation when |mean| >> std
    z = (tl.load(X + idx, mask=mask, other=0.0).to(tl.float32) - mean[:, None]) * rstd[:, None]
    z = z * w[:, None] + b[:, None]
    if ACT == 1:
        z = tl.maximum(z, 0.0)
    elif ACT == 2:
        z = tl.where(z > 0, z, z * negative_slope)
    tl.store(Y + idx, z.to(Y.dtype.element_ty), mask=mask)


@kernel
def _batch_norm_act_bwd_stats_kernel(
    X,  # input, [N, C, S] with strides (stride_n, stride_c, stride_s)
    DY,  # output gradient, [N, C, S] with strides (stride_dn, stride_dc, stride_ds): x's, or a channel slice's
    DX,  # input gradient out, like X (written only if WRITE_DX: running statistics, dx = rstd * w * g)
    W,  # weight, [C] (unused unless HAS_AFFINE)
    B,  # bias, [C] (unused unless HAS_AFFINE)
    MEAN,  # [C]: as in the forward
    VAR,  # [C]: as in the forward
    PARTS,  # fp32 scratch, [2, C, P + GROUPS]: per program sums of g and of g * xhat, then per group
    TICKETS,  # int32, [channel blocks, GROUPS + 1]: zero between launches (_triton_util.sum_over_programs)
    DW,  # fp32 out, [C]: sum over (n, s) of g * xhat, the weight gradient
    DB,  # fp32 out, [C]: sum over (n, s) of g, the bias gradient
    C, S, stride_n, stride_c, stride_s, stride_dn, stride_dc, stride_ds, CHUNKS, ITEMS, PER_PROGRAM, P, GROUP,
    GROUPS, eps, negative_slope,
    BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_G: tl.constexpr, HAS_AFFINE: tl.constexpr,
    ACT: tl.constexpr, WRITE_DX: tl.constexpr,
):
    pid, pid_c = tl.program_id(0), tl.program_id(1)
    c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    c_mask = c < C
    mean, rstd, w, b = _channel(W, B, MEAN, VAR, c, c_mask, eps, BLOCK_C, HAS_AFFINE)
    acc_g = tl.full([BLOCK_C, BLOCK_S], 0.0, tl.float32)
    acc_gx = tl.full([BLOCK_C, BLOCK_S], 0.0, tl.float32)
    item = pid * PER_PROGRAM
    end = tl.minimum(item + PER_PROGRAM, ITEMS)
    while item < end:
        n = item // CHUNKS
        s = (item - n * CHUNKS) * BLOCK_S + tl.arange(0, BLOCK_S)
        mask = c_mask[:, None] & (s < S)[None, :]
        idx = n.to(tl.int64) * stride_n + c[:, None] * stride_c + s[None, :] * stride_s
        idx_dy = n.to(tl.int64) * stride_dn + c[:, None] * stride_dc + s[None, :] * stride_ds
        xhat, g = _bwd_tile(X, DY, idx, idx_dy, mask, mean, rstd, w, b, negative_slope, ACT)
        if WRITE_DX:
            tl.store(DX + idx, (g * (rstd * w)[:, None]).to(DX.dtype.element_ty), mask=mask)
        acc_g += g
        acc_gx += g * xhat
        item += 1
    R = P + GROUPS
    tl.store(PARTS + c * R + pid, tl.reduce(acc_g, 1, _add), mask=c_mask)
    tl.store(PARTS + C * R + c * R + pid, tl.reduce(acc_gx, 1, _add), mask=c_mask)
    last, sum_g, sum_gx = _triton_util.sum_over_programs(PARTS, TICKETS, pid, pid_c, c, c_mask, C, P, GROUP, GROUPS,
                                                         BLOCK_C, BLOCK_G)
    if last:
        tl.store(DW + c, sum_gx, mask=c_mask)
        tl.store(DB + c, sum_g, mask=c_mask)


@kernel
def _batch_norm_act_bwd_kernel(
    X,  # input, [N, C, S] with strides (stride_n, stride_c, stride_s)
    DY,  # output gradient, [N, C, S] with strides (stride_dn, stride_dc, stride_ds): x's, or a channel slice's
    DX,  # input gradient out, like X
    W,  # weight, [C] (unused unless HAS_AFFINE)
    B,  # bias, [C] (unused unless HAS_AFFINE)
    MEAN,  # fp32, [C]: the batch mean
    VAR,  # fp32, [C]: the biased batch variance
    DW,  # fp32, [C]: sum over (n, s) of g * xhat, from the backward stats pass
    DB,  # fp32, [C]: sum over (n, s) of g, from the backward stats pass
    C, S, stride_n, stride_c, stride_s, stride_dn, stride_dc, stride_ds, M, eps, negative_slope,
    BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr, HAS_AFFINE: tl.constexpr, ACT: tl.constexpr,
):
    pid_s, pid_c, n = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    c_mask = c < C
    s = pid_s.to(tl.int64) * BLOCK_S + tl.arange(0, BLOCK_S)
    mask = c_mask[:, None] & (s < S)[None, :]
    idx = n.to(tl.int64) * stride_n + c[:, None] * stride_c + s[None, :] * stride_s
    idx_dy = n.to(tl.int64) * stride_dn + c[:, None] * stride_dc + s[None, :] * stride_ds
    mean, rstd, w, b = _channel(W, B, MEAN, VAR, c, c_mask, eps, BLOCK_C, HAS_AFFINE)
    mean_g = tl.load(DB + c, mask=c_mask, other=0.0) / M
    mean_gx = tl.load(DW + c, mask=c_mask, other=0.0) / M
    xhat, g = _bwd_tile(X, DY, idx, idx_dy, mask, mean, rstd, w, b, negative_slope, ACT)
    dx = (rstd * w)[:, None] * (g - mean_g[:, None] - xhat * mean_gx[:, None])
    tl.store(DX + idx, dx.to(DX.dtype.element_ty), mask=mask)


# 3. Launchers ------------------------------------------------------------------------------------
_TARGET_PROGRAMS = 1024  # reduction programs per launch: enough to fill a GPU when N * C is small
_GROUP = 32  # programs per group of sum_over_programs
_MAX_PROGRAMS = _GROUP * _GROUP  # per channel block: the last program then sums at most 32 groups' sums
# NCHW tiles of a 2x2 plane were [512, 4]: the backward statistics kernel spilled 8-16 bytes on sm_80 (pix2pix's
# bottleneck, fp16 and bf16, Triton 3.8, FASTGAN_SPECIALISATIONS=all); [256, 4] takes at most 78 registers.
_NCHW_MAX_BLOCK_C = 256


def _plan(x):
    """Shape, strides, tiles, grids and reduction layout of x for the kernels."""
    n, c, s, stride_n, stride_c, stride_s = _triton_util.channels_view(_OP, "x", x)
    block_c, block_s = _triton_util.tile(c, s, stride_c)
    if stride_c != 1:  # NCHW with a tiny plane: at most _NCHW_MAX_BLOCK_C channels per tile
        block_c = min(block_c, _NCHW_MAX_BLOCK_C)
    c_blocks = -(-c // block_c)
    chunks = -(-s // block_s)
    items = n * chunks
    want = max(1, min(-(-_TARGET_PROGRAMS // c_blocks), items, _MAX_PROGRAMS))
    per = -(-items // want)
    programs = -(-items // per)
    group = min(_GROUP, programs)
    groups = -(-programs // group)
    block_g = min(_triton_util.next_pow2(group), max(2048 // block_c, 1))
    return dict(n=n, c=c, s=s, strides=(stride_n, stride_c, stride_s), programs=programs, groups=groups,
                tickets=c_blocks * (groups + 1), reduce=(chunks, items, per, programs, group, groups),
                reduce_grid=(programs, c_blocks), pointwise_grid=(-(-s // block_s), c_blocks, n),
                blocks=dict(BLOCK_C=block_c, BLOCK_S=block_s), block_g=block_g)


def _reduce_buffers(plan, x):
    """The partial sums' scratch and the ticket counters of one reduction launch."""
    parts = _triton_util.empty((2, plan["c"], plan["programs"] + plan["groups"]), torch.float32, x.device)
    return parts, _triton_util.ticket_counter(x, plan["tickets"])


def _batch_norm_act_stats(x, running_mean, running_var, num_batches_tracked, momentum):
    """Returns the fp32 [C] batch mean and biased variance of x; updates the running statistics in place and
    adds one to num_batches_tracked (each if given)."""
    plan = _plan(x)
    c = plan["c"]
    parts, tickets = _reduce_buffers(plan, x)
    mean = _triton_util.empty((c,), torch.float32, x.device)
    var = _triton_util.empty((c,), torch.float32, x.device)
    has_running = running_mean is not None
    with _triton_util.device_guard(x):
        _batch_norm_act_stats_kernel[plan["reduce_grid"]](
            x, parts, tickets, mean, var, running_mean if has_running else x, running_var if has_running else x,
            x if num_batches_tracked is None else num_batches_tracked, c, plan["s"], *plan["strides"],
            *plan["reduce"], plan["n"] * plan["s"], momentum, **plan["blocks"], BLOCK_G=plan["block_g"],
            HAS_RUNNING=has_running, HAS_COUNT=num_batches_tracked is not None)
    return mean, var


def _batch_norm_act_fwd(x, weight, bias, mean, var, eps, act, negative_slope):
    """Returns y (x's layout and dtype) normalised with mean and var (batch or running statistics)."""
    plan = _plan(x)
    y = _triton_util.empty_like(x)
    with _triton_util.device_guard(x):
        _batch_norm_act_fwd_kernel[plan["pointwise_grid"]](
            x, y, x if weight is None else weight, x if bias is None else bias, mean, var, plan["c"], plan["s"],
            *plan["strides"], eps, negative_slope, **plan["blocks"], HAS_AFFINE=weight is not None,
            ACT=_ACT_CODE[act])
    return y


def _gradient_strides(dy, strides):
    """dy's strides seen as [N, C, S] where the kernels can read it in place: its H and W merge into one S and
    its unit stride is x's (``strides``), so that loads stay coalesced; e.g. the channel slice of a
    concatenation's gradient (a U-Net's skip). None where it must first be copied to x's layout."""
    n, c, h, w = dy.shape
    stride_n, stride_c, stride_h, stride_w = dy.stride()
    if h > 1 and w > 1 and stride_h != w * stride_w:
        return None
    stride_s = stride_w if w > 1 else stride_h
    if (strides[1] == 1 and stride_c == 1) or (strides[2] == 1 and stride_s == 1):
        return stride_n, stride_c, stride_s
    return None


def _batch_norm_act_bwd(dy, x, weight, bias, mean, var, eps, training, act, negative_slope):
    """Returns dx (x's layout and dtype) and fp32 [C] dweight, dbias (for weight 1, bias 0 if not affine)."""
    plan = _plan(x)
    c = plan["c"]
    dy_strides = _gradient_strides(dy, plan["strides"])
    if dy_strides is None:
        dy = _triton_util.same_layout(dy, x)
        dy_strides = plan["strides"]
    parts, tickets = _reduce_buffers(plan, x)
    dx = _triton_util.empty_like(x)
    dweight = _triton_util.empty((c,), torch.float32, x.device)
    dbias = _triton_util.empty((c,), torch.float32, x.device)
    w, b = (x, x) if weight is None else (weight, bias)
    options = dict(**plan["blocks"], HAS_AFFINE=weight is not None, ACT=_ACT_CODE[act])
    with _triton_util.device_guard(x):
        _batch_norm_act_bwd_stats_kernel[plan["reduce_grid"]](
            x, dy, dx, w, b, mean, var, parts, tickets, dweight, dbias, c, plan["s"], *plan["strides"], *dy_strides,
            *plan["reduce"], eps, negative_slope, **options, BLOCK_G=plan["block_g"], WRITE_DX=not training)
        if training:
            _batch_norm_act_bwd_kernel[plan["pointwise_grid"]](
                x, dy, dx, w, b, mean, var, dweight, dbias, c, plan["s"], *plan["strides"], *dy_strides,
                plan["n"] * plan["s"],
                eps, negative_slope, **options)
    return dx, dweight, dbias


# 4. Autograd (torch.library custom ops, so torch.compile and CUDA graphs see opaque kernels) ------
# The statistics pass is its own op: it updates the running statistics in place, and an op that mutates an
# input cannot carry an autograd formula. It runs without autograd; _fwd_op's backward with training=True
# differentiates through the batch statistics.
@torch.library.custom_op("fastgan::batch_norm_act_stats",
                         mutates_args=("running_mean", "running_var", "num_batches_tracked"))
def _stats_op(x: torch.Tensor, running_mean: torch.Tensor | None, running_var: torch.Tensor | None,
              num_batches_tracked: torch.Tensor | None, momentum: float) -> tuple[torch.Tensor, torch.Tensor]:
    return _batch_norm_act_stats(x, running_mean, running_var, num_batches_tracked, momentum)


@_stats_op.register_fake
def _(x, running_mean, running_var, num_batches_tracked, momentum):
    mean = x.new_empty((x.shape[1],), dtype=torch.float32)
    return mean, torch.empty_like(mean)


@torch.library.custom_op("fastgan::batch_norm_act_fwd", mutates_args=())
def _fwd_op(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, mean: torch.Tensor,
            var: torch.Tensor, eps: float, training: bool, act: str, negative_slope: float) -> torch.Tensor:
    return _batch_norm_act_fwd(x, weight, bias, mean, var, eps, act, negative_slope)


@_fwd_op.register_fake
def _(x, weight, bias, mean, var, eps, training, act, negative_slope):
    return torch.empty_like(x)


@torch.library.custom_op("fastgan::batch_norm_act_bwd", mutates_args=())
def _bwd_op(dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
            mean: torch.Tensor, var: torch.Tensor, eps: float, training: bool, act: str,
            negative_slope: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _batch_norm_act_bwd(dy, x, weight, bias, mean, var, eps, training, act, negative_slope)


@_bwd_op.register_fake
def _(dy, x, weight, bias, mean, var, eps, training, act, negative_slope):
    grad = x.new_empty((x.shape[1],), dtype=torch.float32)
    return torch.empty_like(x), grad, torch.empty_like(grad)


def _setup_context(ctx, inputs, output):
    x, weight, bias, mean, var, eps, training, act, negative_slope = inputs
    ctx.save_for_backward(x, weight, bias, mean, var)
    ctx.eps, ctx.training, ctx.act, ctx.negative_slope = eps, training, act, negative_slope


def _backward(ctx, dy):
    x, weight, bias, mean, var = ctx.saved_tensors
    dx, dweight, dbias = _bwd_op(dy, x, weight, bias, mean, var, ctx.eps, ctx.training, ctx.act,
                                 ctx.negative_slope)
    if weight is None:
        dweight = dbias = None
    else:
        dweight, dbias = dweight.to(weight.dtype), dbias.to(bias.dtype)
    return dx, dweight, dbias, None, None, None, None, None, None


_fwd_op.register_autograd(_backward, setup_context=_setup_context)
_dispatch.register(_OP, "triton", _triton_util.check)


# 5. Public function ------------------------------------------------------------------------------
def batch_norm_act(x, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1, eps=1e-5,
                   *, act="relu", negative_slope=0.2, num_batches_tracked=None, impl="auto"):
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
        num_batches_tracked: optional one-element integer tensor (nn.BatchNorm2d's buffer), incremented by one
            in place when ``training``; the Triton path does it in its statistics pass, without a launch of its own.
        impl: "auto", "ref", "fast" or "triton" (see fastgan.ops._dispatch).
    Returns:
        y, same shape, dtype and memory layout as x.
    """
    _check_args(x, running_mean, running_var, weight, bias, training, act, num_batches_tracked)
    if _dispatch.resolve(_OP, impl, x.device) != "triton":
        return batch_norm_act_ref(x, running_mean, running_var, weight, bias, training, momentum, eps, act=act,
                                  negative_slope=negative_slope, num_batches_tracked=num_batches_tracked)
    _triton_util.check_dtype(_OP, "x", x)
    _triton_util.channels_view(_OP, "x", x)
    if x.numel() >= 2**31:
        raise ValueError(f"batch_norm_act: x has {x.numel()} elements; the Triton path takes fewer than 2**31 "
                         "(use impl='ref')")
    for name, t in (("weight", weight), ("bias", bias), ("running_mean", running_mean),
                    ("running_var", running_var), ("num_batches_tracked", num_batches_tracked)):
        if t is not None and t.device != x.device:
            raise ValueError(f"batch_norm_act: {name} is on {t.device} but x is on {x.device}")
    if training:
        # Without autograd: _fwd_op's backward (training=True) differentiates through the batch statistics.
        with torch.no_grad():
            mean, var = _stats_op(x, running_mean, running_var, num_batches_tracked,
                                  0.0 if running_mean is None else float(momentum))
    else:
        mean, var = running_mean, running_var
    y = _fwd_op(x, weight, bias, mean, var, float(eps), bool(training), act, float(negative_slope))
    return y
