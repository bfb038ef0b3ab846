"""instance_norm_act: y = act(InstanceNorm(x) * weight + bias) + residual, in one pass.

Sections (../STYLE.md): 1. reference  2. Triton kernels  3. launchers  4. autograd  5. public function.

The Triton path views x as [N, C, S] (S = H*W) with strides, so NCHW (stride_s = 1) and channels_last
(stride_c = 1) share the kernels and the output keeps x's layout without a copy. Each direction is two phases:
per-piece partial sums of each (sample, channel block) row, then the output from every piece's sums. Every
reduction is deterministic (fp32 partials summed in a fixed order by the phase that consumes them, no atomics
on the data), and a non-affine norm computes no weight or bias gradient. Three ways to run them (_plan):
  fused: both phases in one launch (PHASE 0) of at most _FUSED_PROGRAMS_PER_SM programs per SM, each row cut
         into SPLIT pieces; the pieces of a row meet at a barrier between the phases (_triton_util.group_barrier,
         a cooperative launch), and the second phase reads its piece again from L2. The default wherever that
         data fits in _FUSED_L2_SHARE of the L2; with more rows than programs at once, one piece per row and no
         barrier. The interpreter runs it as the two phases' launches (kernel.run_phases).
  split: a launch per phase (PHASE 1, then PHASE 2), for tensors too large to re-read from L2.
  rows:  with enough rows to fill the GPU by themselves (_ONE_LAUNCH_MIN_ROWS), and rows contiguous in memory
         (NCHW; see _ONE_LAUNCH_STRIDED for channels_last), one program per (sample, channel) row runs both
         phases over its row.

Forward, two phases over x:
  1 (sums):   per piece, sums of d = x - x[n, c, 0] and of d^2 (the shift keeps E[d^2] - E[d]^2 from
              cancelling when |mean| >> std)
  2 (output): sums over the pieces, mean, rstd from them; y = act(xhat * w + b) + residual,
              xhat = (x - mean) * rstd
Backward, with z = xhat * w + b, g = dy * act'(z) and S = H*W:
  dweight = sum_{n,s} g * xhat        dbias = sum_{n,s} g        dresidual = dy
  dx = rstd * (g * w - w * sum_s(g) / S - xhat * w * sum_s(g * xhat) / S)
  phase 1 for the per-piece sums of g and g * xhat, phase 2 for dx (which sums the pieces itself); dweight and
  dbias only when affine.

The padded output (pad > 0, for a following reflect-padded convolution, which then pads nothing): phase 1 is the
same; the forward's phase 2 (_fwd_padded_output) runs over the padded plane and reads each element's x at its
reflected position; both backward phases run over x's positions, each summing dy over the padded positions that
reflect onto it (_fold_load) as it reads it. A residual larger than the output (a padded block input) is read at
the output's offset into it. The padded output is never on the rows path.
"""

from __future__ import annotations

import operator
import os

import torch
import torch.nn.functional as F

from . import _dispatch, _triton_util
from ._triton_util import (
    kernel,
    norm_act_affine,
    norm_act_bwd_tile,
    norm_act_bwd_values,
    norm_act_channel,
    norm_act_fwd_at,
    norm_act_fwd_tile,
)

try:
    import triton.language as tl

    # Of triton.language the kernels use only builtins: its @jit helpers (tl.sum, tl.zeros) are compiled-only
    # when TRITON_INTERPRET=1 is set after triton's import, as a test does (our own helpers go through
    # _triton_util.device_function). tl.sum's combine function passed to tl.reduce is the exception that
    # works both ways: the interpreter sums it with numpy.
    _add = tl.standard._sum_combine
except ImportError:  # the reference path still works; _triton_util.check says why Triton cannot run
    tl = _add = None

_ACTS = ("relu", "leaky_relu", "none")
_ACT_CODE = {"none": 0, "relu": 1, "leaky_relu": 2}
# Pieces per row. Every program of the consuming pass sums all of its row's pieces again (SPLIT^2 * C * 8 bytes
# per sample, read from L2), instead of a separate launch summing them once: 32 keeps those re-reads near
# the size of a bf16 activation at the CycleGAN shapes while 32 pieces x channel blocks still give 32-256
# programs at batch 1.
_MAX_SPLIT = 32
# Elements per tile of the backward kernels that fold a padded output's gradient: their nine gathers per element
# spilled registers in tiles of 2048 and 1024 (ptxas -v, Triton 3.8, sm_90; tests/gpu_ready checks every one).
_FOLD_TILE = 512
# ...and those of every split kernel in channels_last with at most 4 channels: [4, 512] fp16 tiles spilled 8-64
# bytes in the normalise and backward passes (Triton 3.6 and 3.8, sm_80 and sm_90, by specialisation).
_FEW_CHANNELS_TILE = 1024
# ...and those of the folding backward at <= 4 channels in channels_last: its [4, 128] fp32 tiles took all 128
# registers a cooperative launch allows (_triton_util.phase_zero_options) and spilled 8 bytes (sm_90, Triton 3.8,
# FASTGAN_SPECIALISATIONS=all); [4, 64] takes about 85.
_FEW_CHANNELS_FOLD_TILE = 256
_ROW_BLOCK_S = 2048  # elements per tile of the one-launch kernels: one fp32 accumulator pair of 16 per thread
# From this many (sample, channel) rows on, each direction is one launch of one program per row, looping over
# the row twice (statistics, then the output), with no barrier and no pieces: the rows alone fill the GPU
# (132 = the SMs of an H100 SXM, one program each), and the second read of a row comes from L2 (an H100's 50 MB
# hold a row of 64K bf16 elements for each of thousands of programs in flight). Fewer rows take the fused or
# split path, whose pieces are what fills the GPU at batch 1 with few channels. Tests monkeypatch it to run
# every shape through every path.
_ONE_LAUNCH_MIN_ROWS = 132
# ...and only where a row is contiguous (NCHW, stride_s == 1). In channels_last a row is one channel read at a
# stride of C elements: each warp load touches 32 different 32-byte sectors for 64 useful bytes, so the
# neighbouring programs of a sector's other channels fetch it again from L2, about 16x the tensor's bytes
# per pass at bf16. The ledger counts DRAM bytes once and cannot see that; the fused and split paths read
# channels_last in [channel block, spatial] tiles that load whole sectors. Unmeasured on a GPU: bench/gpu-check can time
# both with this switch, and the tests run the strided one-launch kernels through it too.
_ONE_LAUNCH_STRIDED = False
# The fused path (below _ONE_LAUNCH_MIN_ROWS, or in channels_last): each direction's two phases in one launch of
# at most _FUSED_PROGRAMS_PER_SM programs per SM, the SPLIT programs of a row meeting at a barrier between the
# phases (a cooperative launch: CUDA runs every program at once or refuses the launch, so a wait never hangs).
# Phase 2 reads again what phase 1 read, from L2 where the grid's share of it fits in _FUSED_L2_SHARE of the L2
# (the rest holds what the kernel writes meanwhile); where it would not, the split path's two launches. Tests
# switch it off to run the split path; so does FASTGAN_FUSED_NORMS=0 (read at import), for a GPU where the fused
# launches fail: bench/gpu-check sets it for its later steps when its first check of them does not pass.
_FUSED = os.environ.get("FASTGAN_FUSED_NORMS", "1") != "0"
_FUSED_PROGRAMS_PER_SM = _triton_util.COOPERATIVE_PROGRAMS_PER_SM
_FUSED_L2_SHARE = 0.5
# The fused kernels' tiles in fp32 are the split path's divided by this: at full size, Triton 3.6 spilled 8 bytes in
# the forward ([1, 2048], sm_80) and 16 in the folding backward ([1, 512], sm_90, under the cooperative register
# cap) in NCHW (FASTGAN_SPECIALISATIONS=all on the GPU machines' torch 2.11 + Triton 3.6).
_FUSED_FP32_TILE = 2


# 1. Reference ------------------------------------------------------------------------------------
def instance_norm_act_ref(x, weight=None, bias=None, *, act="relu", negative_slope=0.2, eps=1e-5,
                          residual=None, pad=0):
    """Plain PyTorch reference: statistics in fp32 (fp64 for fp64 x) over H*W (biased variance), then the
    activation, the reflection pad and the residual (its centre, if larger), output in x's dtype."""
    compute = torch.promote_types(x.dtype, torch.float32)
    y = F.instance_norm(x.to(compute), weight=None if weight is None else weight.to(compute),
                        bias=None if bias is None else bias.to(compute), eps=eps)
    if act == "relu":
        y = F.relu(y)
    elif act == "leaky_relu":
        y = F.leaky_relu(y, negative_slope)
    if residual is None:  # the pad copies elements: padding after the rounding gives the same values
        y = y.to(x.dtype)
        return F.pad(y, (pad,) * 4, mode="reflect") if pad > 0 else y
    if pad > 0:
        y = F.pad(y, (pad,) * 4, mode="reflect")
    return (y + centre(residual, y.shape).to(compute)).to(x.dtype)


def centre(t, shape):
    """The centre [N, C, shape[2], shape[3]] of a tensor t larger by the same margin on every side."""
    m = (t.shape[2] - shape[2]) // 2
    return t if m == 0 else t[:, :, m:m + shape[2], m:m + shape[3]]


def _index(value) -> int | None:
    """``value`` as an int when it is one or integer-like (a numpy integer, a 0-dim integer tensor), else None
    (a bool, a float, a string)."""
    if isinstance(value, bool):
        return None
    try:
        return operator.index(value)
    except TypeError:
        return None


def _check_args(x, weight, bias, act, residual, pad=0):
    """Raises ValueError naming the bad argument; returns pad as an int."""
    if x.dim() != 4:
        raise ValueError(f"instance_norm_act: x must be 4-D [N, C, H, W], got shape {tuple(x.shape)}")
    if x.shape[2] * x.shape[3] < 2:
        raise ValueError("instance_norm_act: x needs more than one spatial element per channel, "
                         f"got {tuple(x.shape)}")
    if act not in _ACTS:
        raise ValueError(f"instance_norm_act: act={act!r} is not one of {_ACTS}")
    if (weight is None) != (bias is None):
        raise ValueError("instance_norm_act: weight and bias must both be given (affine) or both be None")
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and tuple(t.shape) != (x.shape[1],):
            raise ValueError(f"instance_norm_act: {name} must have shape ({x.shape[1]},), "
                             f"got {tuple(t.shape)}")
    pad_int = _index(pad)
    if pad_int is None or pad_int < 0 or pad_int >= min(x.shape[2], x.shape[3]):
        raise ValueError(f"instance_norm_act: pad={pad!r} must be an int with 0 <= pad < H and < W "
                         f"(reflection padding), x has shape {tuple(x.shape)}")
    pad = pad_int
    if residual is not None:
        out = _padded_shape(x, pad)
        margin = residual.shape[2] - out[2] if residual.dim() == 4 else -1
        if residual.dim() != 4 or residual.shape[:2] != x.shape[:2] or margin < 0 or margin % 2 \
                or residual.shape[3] - out[3] != margin:
            raise ValueError(f"instance_norm_act: residual shape {tuple(residual.shape)} is neither the output's "
                             f"{out} nor larger by the same margin on every side")
    return pad


# 2. Triton kernels -------------------------------------------------------------------------------
@_triton_util.device_function
def _row_sums(
    PARTS,  # fp32, [2, N, C, SPLIT]: per piece, two partial sums of each (sample, channel) row
    row, c_mask,  # [BLOCK_C] offsets n * C + c of this program's rows, and which channels exist
    SPLIT, NC,
    BLOCK_SPLIT: tl.constexpr,  # next power of two >= SPLIT
):
    """The two sums over the pieces of each row, fp32 [BLOCK_C] each, in one fixed order: every program of
    a row computes the same bits, whichever piece it covers."""
    piece = tl.arange(0, BLOCK_SPLIT)
    idx = row[:, None] * SPLIT + piece[None, :]
    mask = c_mask[:, None] & (piece < SPLIT)[None, :]
    # .cg: from L2, where the other programs' stores are (in the fused path a line of another row's pieces that
    # this SM's L1 kept could be stale)
    first = tl.reduce(tl.load(PARTS + idx, mask=mask, other=0.0, cache_modifier=".cg"), 1, _add)
    second = tl.reduce(tl.load(PARTS + NC * SPLIT + idx, mask=mask, other=0.0, cache_modifier=".cg"), 1, _add)
    return first, second


@_triton_util.device_function
def _row_stats(
    X,  # input, [N, C, S] with strides (stride_n, stride_c, stride_s)
    PARTS,  # fp32, [2, N, C, SPLIT]: per piece, sums of x - x[n, c, 0] and of its square, from the stats pass
    MEAN,  # fp32 out, [N, C]
    RSTD,  # fp32 out, [N, C]
    offset, row, c_mask,  # [BLOCK_C] offsets of x[n, c, 0], offsets n * C + c of the rows, which channels exist
    store,  # whether this program writes MEAN and RSTD (one program per row does)
    S, SPLIT, NC, eps,
    BLOCK_SPLIT: tl.constexpr,
):
    """mean and rstd of each row, fp32 [BLOCK_C] each, from the stats pass's pieces."""
    shift = tl.load(X + offset, mask=c_mask, other=0.0).to(tl.float32)
    sum_d, sum_d2 = _row_sums(PARTS, row, c_mask, SPLIT, NC, BLOCK_SPLIT)
    mean_d = sum_d / S
    var = tl.maximum(sum_d2 / S - mean_d * mean_d, 0.0)
    mean = shift + mean_d
    rstd = 1.0 / tl.sqrt(var + eps)
    if store:
        tl.store(MEAN + row, mean, mask=c_mask)
        tl.store(RSTD + row, rstd, mask=c_mask)
    return mean, rstd


@_triton_util.device_function
def _reflect(k, size):
    """Index k of a reflection-padded axis (-size < k < 2 * size - 1) -> the source index in [0, size)."""
    k = tl.where(k < 0, -k, k)
    return tl.where(k >= size, 2 * size - 2 - k, k)


@_triton_util.device_function
def _fold_load(DY, base, i, j, mask, H, WIDTH, PAD, dy_stride_h, dy_stride_w):
    """The gradient of the padded output summed onto source positions (i, j) of x, fp32 [BLOCK_C, BLOCK_S]:
    position (i + PAD, j + PAD) and every border position that reflects onto (i, j). Along an axis of size H,
    source row i is also padded row PAD - i (when 1 <= i <= PAD) and PAD + 2 * (H - 1) - i (when
    H - 1 - PAD <= i <= H - 2): up to three rows by three columns, nine loads, eight of them masked off
    away from the border."""
    r0 = i + PAD
    r1 = PAD - i
    r2 = PAD + 2 * (H - 1) - i
    m1 = (i >= 1) & (i <= PAD)
    m2 = (i >= H - 1 - PAD) & (i <= H - 2)
    c0 = j + PAD
    c1 = PAD - j
    c2 = PAD + 2 * (WIDTH - 1) - j
    n1 = (j >= 1) & (j <= PAD)
    n2 = (j >= WIDTH - 1 - PAD) & (j <= WIDTH - 2)
    rows0, rows1, rows2 = r0 * dy_stride_h, r1 * dy_stride_h, r2 * dy_stride_h
    cols0, cols1, cols2 = c0 * dy_stride_w, c1 * dy_stride_w, c2 * dy_stride_w
    g = tl.load(DY + base + (rows0 + cols0)[None, :], mask=mask, other=0.0).to(tl.float32)
    g += tl.load(DY + base + (rows0 + cols1)[None, :], mask=mask & n1[None, :], other=0.0).to(tl.float32)
    g += tl.load(DY + base + (rows0 + cols2)[None, :], mask=mask & n2[None, :], other=0.0).to(tl.float32)
    g += tl.load(DY + base + (rows1 + cols0)[None, :], mask=mask & m1[None, :], other=0.0).to(tl.float32)
    g += tl.load(DY + base + (rows1 + cols1)[None, :], mask=mask & (m1 & n1)[None, :], other=0.0).to(tl.float32)
    g += tl.load(DY + base + (rows1 + cols2)[None, :], mask=mask & (m1 & n2)[None, :], other=0.0).to(tl.float32)
    g += tl.load(DY + base + (rows2 + cols0)[None, :], mask=mask & m2[None, :], other=0.0).to(tl.float32)
    g += tl.load(DY + base + (rows2 + cols1)[None, :], mask=mask & (m2 & n1)[None, :], other=0.0).to(tl.float32)
    g += tl.load(DY + base + (rows2 + cols2)[None, :], mask=mask & (m2 & n2)[None, :], other=0.0).to(tl.float32)
    return g


@_triton_util.device_function
def _bwd_tile(
    X, DY, first, offset, c_mask, S, stride_s, mean, rstd, w, b, negative_slope,
    dy_base, H, WIDTH, PAD, dy_stride_h, dy_stride_w,  # the padded gradient's geometry (unused unless FOLD)
    BLOCK_S: tl.constexpr, ACT: tl.constexpr, FOLD: tl.constexpr,
):
    """(idx, mask, xhat, g) of the tile at spatial positions first + [0, BLOCK_S) of x (offset: [BLOCK_C] offsets
    of x[n, c, 0]): with FOLD the output was padded (pad > 0, or a residual of another layout), and dy is folded
    from its [N, C, H + 2 PAD, WIDTH + 2 PAD] gradient."""
    s = first + tl.arange(0, BLOCK_S)
    mask = c_mask[:, None] & (s < S)[None, :]
    idx = offset[:, None] + s[None, :] * stride_s
    if FOLD:
        i = s // WIDTH
        dy = _fold_load(DY, dy_base, i, s - i * WIDTH, mask, H, WIDTH, PAD, dy_stride_h, dy_stride_w)
        xhat, g = norm_act_bwd_values(X, idx, mask, dy, mean, rstd, w, b, negative_slope, ACT)
    else:
        xhat, g = norm_act_bwd_tile(X, DY, idx, mask, mean, rstd, w, b, negative_slope, ACT)
    return idx, mask, xhat, g


# The split and fused paths' kernels: one per direction, each with two phases (PHASE 1: the per-piece sums;
# PHASE 2: the output, from every piece's sums). The split path launches PHASE 1 and then PHASE 2; the fused
# path launches PHASE 0, both phases with a barrier between them among the SPLIT programs of each (channel
# block, sample) row, as a cooperative launch (kernel.run_phases). Every launch runs on a (SPLIT, channel
# blocks, N) grid; program (p, cb, n) covers channels cb * BLOCK_C + [0, BLOCK_C) of sample n and spatial
# positions p * TILES * BLOCK_S + [0, TILES * BLOCK_S), one [BLOCK_C, BLOCK_S] tile per loop step (in PHASE 2
# of a padded output, positions of the padded plane, TILES_OUT tiles). Trip counts are constexprs, since Triton
# 3.6's interpreter cannot loop over a range bounded by a program id or an argument; masks cut the tail.
@_triton_util.device_function
def _fwd_sums(
    X,  # input, [N, C, S] with strides (stride_n, stride_c, stride_s)
    PARTS,  # fp32 out, [2, N, C, SPLIT]: per piece, sums of x - x[n, c, 0] and of its square
    pid_split, pid_c, n, C, S, stride_n, stride_c, stride_s, SPLIT, NC,
    BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr, TILES: tl.constexpr,
):
    """The forward's PHASE 1: this program's piece of the row sums."""
    c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    c_mask = c < C
    row = X + n.to(tl.int64) * stride_n + c * stride_c  # [BLOCK_C] pointers to x[n, c, 0]
    shift = tl.load(row, mask=c_mask, other=0.0).to(tl.float32)
    acc = tl.full([BLOCK_C, BLOCK_S], 0.0, tl.float32)
    acc_sq = tl.full([BLOCK_C, BLOCK_S], 0.0, tl.float32)
    start = pid_split * (TILES * BLOCK_S)
    for s0 in range(0, TILES * BLOCK_S, BLOCK_S):
        s = start + s0 + tl.arange(0, BLOCK_S)
        mask = c_mask[:, None] & (s < S)[None, :]
        x = tl.load(row[:, None] + s[None, :] * stride_s, mask=mask, other=0.0).to(tl.float32)
        d = tl.where(mask, x - shift[:, None], 0.0)
        acc += d
        acc_sq += d * d
    out = (n * C + c) * SPLIT + pid_split
    tl.store(PARTS + out, tl.reduce(acc, 1, _add), mask=c_mask)
    tl.store(PARTS + NC * SPLIT + out, tl.reduce(acc_sq, 1, _add), mask=c_mask)


@_triton_util.device_function
def _fwd_output(
    X, R, Y, W, B, PARTS, MEAN, RSTD,  # as in _instance_norm_act_fwd_kernel
    pid_split, pid_c, n, C, S, stride_n, stride_c, stride_s, SPLIT, NC, eps, negative_slope,
    BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr, TILES: tl.constexpr, BLOCK_SPLIT: tl.constexpr,
    HAS_AFFINE: tl.constexpr, HAS_RESIDUAL: tl.constexpr, ACT: tl.constexpr,
):
    """The forward's PHASE 2 for an output shaped like x: y = act(xhat * w + b) + residual."""
    c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    c_mask = c < C
    offset = n.to(tl.int64) * stride_n + c * stride_c  # [BLOCK_C] offsets of x[n, c, 0]
    mean, rstd = _row_stats(X, PARTS, MEAN, RSTD, offset, n * C + c, c_mask, pid_split == 0, S, SPLIT, NC, eps,
                            BLOCK_SPLIT)
    scale, shift_out = norm_act_affine(W, B, c, c_mask, mean, rstd, HAS_AFFINE)
    start = pid_split * (TILES * BLOCK_S)
    for s0 in range(0, TILES * BLOCK_S, BLOCK_S):
        s = start + s0 + tl.arange(0, BLOCK_S)
        mask = c_mask[:, None] & (s < S)[None, :]
        idx = offset[:, None] + s[None, :] * stride_s
        norm_act_fwd_tile(X, R, Y, idx, mask, scale, shift_out, negative_slope, HAS_RESIDUAL, ACT)


@_triton_util.device_function
def _fwd_padded_output(
    X, R, Y, W, B, PARTS, MEAN, RSTD,  # as in _instance_norm_act_fwd_kernel
    pid_split, pid_c, n, C, S, stride_n, stride_c, stride_s, SPLIT, NC, eps, negative_slope,
    H, WIDTH, PAD, y_stride_n, y_stride_c, y_stride_s, r_stride_n, r_stride_c, r_stride_h, r_stride_w, R_MARGIN,
    BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr, TILES: tl.constexpr, BLOCK_SPLIT: tl.constexpr,
    HAS_AFFINE: tl.constexpr, HAS_RESIDUAL: tl.constexpr, ACT: tl.constexpr,
):
    """The forward's PHASE 2 writing the reflection-padded output: this program covers output positions
    pid_split * TILES * BLOCK_S + [0, TILES * BLOCK_S) of the padded plane, each read from x at its reflected
    position."""
    c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    c_mask = c < C
    offset = n.to(tl.int64) * stride_n + c * stride_c
    mean, rstd = _row_stats(X, PARTS, MEAN, RSTD, offset, n * C + c, c_mask, pid_split == 0, S, SPLIT, NC, eps,
                            BLOCK_SPLIT)
    scale, shift_out = norm_act_affine(W, B, c, c_mask, mean, rstd, HAS_AFFINE)
    width_out = WIDTH + 2 * PAD
    size_out = (H + 2 * PAD) * width_out
    y_offset = n.to(tl.int64) * y_stride_n + c * y_stride_c
    r_offset = n.to(tl.int64) * r_stride_n + c * r_stride_c
    start = pid_split * (TILES * BLOCK_S)
    for s0 in range(0, TILES * BLOCK_S, BLOCK_S):
        s = start + s0 + tl.arange(0, BLOCK_S)
        mask = c_mask[:, None] & (s < size_out)[None, :]
        io = s // width_out
        jo = s - io * width_out
        src = _reflect(io - PAD, H) * WIDTH + _reflect(jo - PAD, WIDTH)
        r_idx = r_offset[:, None] + ((io + R_MARGIN) * r_stride_h + (jo + R_MARGIN) * r_stride_w)[None, :]
        norm_act_fwd_at(X, R, Y, offset[:, None] + (src * stride_s)[None, :], r_idx,
                        y_offset[:, None] + (s * y_stride_s)[None, :], mask, scale, shift_out, negative_slope,
                        HAS_RESIDUAL, ACT)


@kernel
def _instance_norm_act_fwd_kernel(
    X,  # input, [N, C, S] with strides (stride_n, stride_c, stride_s), S = H * WIDTH
    R,  # residual (unused unless HAS_RESIDUAL): like X, or with PADDED [N, C, >= H + 2 PAD, >= WIDTH + 2 PAD]
        # with the r_stride_* strides, read at padded position + R_MARGIN
    Y,  # output: like X, or with PADDED [N, C, (H + 2 PAD) * (WIDTH + 2 PAD)] with the y_stride_* strides
    W,  # weight, [C] (unused unless HAS_AFFINE)
    B,  # bias, [C] (unused unless HAS_AFFINE)
    PARTS,  # fp32, [2, N, C, SPLIT]: per piece, sums of x - x[n, c, 0] and of its square (PHASE 1 writes them)
    MEAN,  # fp32 out, [N, C]
    RSTD,  # fp32 out, [N, C]
    COUNTERS,  # int32, [2 * N * channel blocks], zero: each row's barrier (unused unless PHASE 0)
    C, S, stride_n, stride_c, stride_s, SPLIT, NC, eps, negative_slope,
    H, WIDTH, PAD, y_stride_n, y_stride_c, y_stride_s,  # the padded output's geometry (unused unless PADDED)
    r_stride_n, r_stride_c, r_stride_h, r_stride_w, R_MARGIN,
    BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr, TILES: tl.constexpr, TILES_OUT: tl.constexpr,
    BLOCK_SPLIT: tl.constexpr, HAS_AFFINE: tl.constexpr, HAS_RESIDUAL: tl.constexpr, ACT: tl.constexpr,
    PADDED: tl.constexpr, PHASE: tl.constexpr,
):
    pid_split, pid_c, n = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    if PHASE != 2:
        _fwd_sums(X, PARTS, pid_split, pid_c, n, C, S, stride_n, stride_c, stride_s, SPLIT, NC, BLOCK_C, BLOCK_S,
                  TILES)
    if PHASE == 0:
        _triton_util.group_barrier(COUNTERS + 2 * (n * tl.num_programs(1) + pid_c), SPLIT)
    if PHASE != 1:
        if PADDED:
            _fwd_padded_output(X, R, Y, W, B, PARTS, MEAN, RSTD, pid_split, pid_c, n, C, S, stride_n, stride_c,
                               stride_s, SPLIT, NC, eps, negative_slope, H, WIDTH, PAD, y_stride_n, y_stride_c,
                               y_stride_s, r_stride_n, r_stride_c, r_stride_h, r_stride_w, R_MARGIN, BLOCK_C,
                               BLOCK_S, TILES_OUT, BLOCK_SPLIT, HAS_AFFINE, HAS_RESIDUAL, ACT)
        else:
            _fwd_output(X, R, Y, W, B, PARTS, MEAN, RSTD, pid_split, pid_c, n, C, S, stride_n, stride_c, stride_s,
                        SPLIT, NC, eps, negative_slope, BLOCK_C, BLOCK_S, TILES_OUT, BLOCK_SPLIT, HAS_AFFINE,
                        HAS_RESIDUAL, ACT)


@kernel
def _instance_norm_act_bwd_kernel(
    X,  # input, [N, C, S] with strides (stride_n, stride_c, stride_s)
    DY,  # output gradient: like X, or with FOLD [N, C, H + 2 PAD, WIDTH + 2 PAD] with the dy_stride_* strides
    DX,  # input gradient out, like X
    W,  # weight, [C] (unused unless HAS_AFFINE)
    B,  # bias, [C] (unused unless HAS_AFFINE)
    MEAN,  # fp32, [N, C]
    RSTD,  # fp32, [N, C]
    PARTS,  # fp32, [2, N, C, SPLIT]: per piece, sums of g and of g * xhat (PHASE 1 writes them)
    COUNTERS,  # int32, [2 * N * channel blocks], zero: each row's barrier (unused unless PHASE 0)
    C, S, stride_n, stride_c, stride_s, SPLIT, NC, negative_slope,
    H, WIDTH, PAD, dy_stride_n, dy_stride_c, dy_stride_h, dy_stride_w,  # DY's geometry (unused unless FOLD)
    BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr, TILES: tl.constexpr, BLOCK_SPLIT: tl.constexpr,
    HAS_AFFINE: tl.constexpr, ACT: tl.constexpr, FOLD: tl.constexpr, PHASE: tl.constexpr,
):
    pid_split, pid_c, n = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    c_mask = c < C
    offset = n.to(tl.int64) * stride_n + c * stride_c
    dy_base = (n.to(tl.int64) * dy_stride_n + c * dy_stride_c)[:, None]
    mean, rstd, w, b = norm_act_channel(W, B, MEAN, RSTD, n * C, c, c_mask, BLOCK_C, HAS_AFFINE)
    start = pid_split * (TILES * BLOCK_S)
    if PHASE != 2:  # the per-piece sums of g and g * xhat
        acc_g = tl.full([BLOCK_C, BLOCK_S], 0.0, tl.float32)
        acc_gx = tl.full([BLOCK_C, BLOCK_S], 0.0, tl.float32)
        for s0 in range(0, TILES * BLOCK_S, BLOCK_S):
            _, _, xhat, g = _bwd_tile(X, DY, start + s0, offset, c_mask, S, stride_s, mean, rstd, w, b,
                                      negative_slope, dy_base, H, WIDTH, PAD, dy_stride_h, dy_stride_w, BLOCK_S,
                                      ACT, FOLD)
            acc_g += g
            acc_gx += g * xhat
        out = (n * C + c) * SPLIT + pid_split
        tl.store(PARTS + out, tl.reduce(acc_g, 1, _add), mask=c_mask)
        tl.store(PARTS + NC * SPLIT + out, tl.reduce(acc_gx, 1, _add), mask=c_mask)
    if PHASE == 0:
        _triton_util.group_barrier(COUNTERS + 2 * (n * tl.num_programs(1) + pid_c), SPLIT)
    if PHASE != 1:  # dx
        sum_g, sum_gx = _row_sums(PARTS, n * C + c, c_mask, SPLIT, NC, BLOCK_SPLIT)
        mean_dxhat = w * sum_g / S
        mean_dxhat_xhat = w * sum_gx / S
        for s0 in range(0, TILES * BLOCK_S, BLOCK_S):
            idx, mask, xhat, g = _bwd_tile(X, DY, start + s0, offset, c_mask, S, stride_s, mean, rstd, w, b,
                                           negative_slope, dy_base, H, WIDTH, PAD, dy_stride_h, dy_stride_w,
                                           BLOCK_S, ACT, FOLD)
            dx = rstd[:, None] * (g * w[:, None] - mean_dxhat[:, None] - xhat * mean_dxhat_xhat[:, None])
            tl.store(DX + idx, dx.to(DX.dtype.element_ty), mask=mask)


def _fwd_touched(X, R, Y, W, B, PARTS, MEAN, RSTD, COUNTERS, *_, HAS_AFFINE, HAS_RESIDUAL, PHASE, **__):
    """What one launch of _instance_norm_act_fwd_kernel reads and writes, for fastgan.testing.ledger's byte count:
    its phases' tensors (arguments a phase does not use are not traffic)."""
    touched = [X, PARTS]
    if PHASE != 1:
        touched += [Y, MEAN, RSTD, *([R] if HAS_RESIDUAL else []), *([W, B] if HAS_AFFINE else [])]
    return touched + ([COUNTERS] if PHASE == 0 else [])


def _bwd_touched(X, DY, DX, W, B, MEAN, RSTD, PARTS, COUNTERS, *_, HAS_AFFINE, PHASE, **__):
    """As _fwd_touched, for _instance_norm_act_bwd_kernel."""
    touched = [X, DY, MEAN, RSTD, PARTS, *([W, B] if HAS_AFFINE else [])]
    return touched + ([DX] if PHASE != 1 else []) + ([COUNTERS] if PHASE == 0 else [])


_instance_norm_act_fwd_kernel.ledger_tensors = _fwd_touched
_instance_norm_act_bwd_kernel.ledger_tensors = _bwd_touched


# The one-launch path: a (C, N) grid, program (c, n) owning row x[n, c, :] and looping over it twice in
# [1, BLOCK_S] tiles, TILES (constexpr, as above) of them per pass.
@kernel
def _instance_norm_act_row_fwd_kernel(
    X,  # input, [N, C, S] with strides (stride_n, stride_c, stride_s)
    R,  # residual, like X (unused unless HAS_RESIDUAL)
    Y,  # output, like X
    W,  # weight, [C] (unused unless HAS_AFFINE)
    B,  # bias, [C] (unused unless HAS_AFFINE)
    MEAN,  # fp32 out, [N, C]
    RSTD,  # fp32 out, [N, C]
    C, S, stride_n, stride_c, stride_s, eps, negative_slope,
    BLOCK_S: tl.constexpr, TILES: tl.constexpr,
    HAS_AFFINE: tl.constexpr, HAS_RESIDUAL: tl.constexpr, ACT: tl.constexpr,
):
    pid_c, n = tl.program_id(0), tl.program_id(1)
    c = pid_c + tl.arange(0, 1)  # [1]: this program's channel, as a block for the shared tile code
    offset = n.to(tl.int64) * stride_n + c * stride_c  # [1] offset of x[n, c, 0]
    shift = tl.load(X + offset).to(tl.float32)
    # Pass 1: sums of d = x - x[n, c, 0] and of d^2, as the split path's stats pass computes them.
    acc = tl.full([1, BLOCK_S], 0.0, tl.float32)
    acc_sq = tl.full([1, BLOCK_S], 0.0, tl.float32)
    for s0 in range(0, TILES * BLOCK_S, BLOCK_S):
        s = s0 + tl.arange(0, BLOCK_S)
        mask = (s < S)[None, :]
        x = tl.load(X + offset[:, None] + s[None, :].to(tl.int64) * stride_s, mask=mask, other=0.0).to(tl.float32)
        d = tl.where(mask, x - shift[:, None], 0.0)
        acc += d
        acc_sq += d * d
    mean_d = tl.reduce(acc, 1, _add) / S
    var = tl.maximum(tl.reduce(acc_sq, 1, _add) / S - mean_d * mean_d, 0.0)
    mean = shift + mean_d
    rstd = 1.0 / tl.sqrt(var + eps)
    tl.store(MEAN + n * C + c, mean)
    tl.store(RSTD + n * C + c, rstd)
    # Pass 2: y = act(xhat * w + b) + residual.
    scale, shift_out = norm_act_affine(W, B, c, c < C, mean, rstd, HAS_AFFINE)
    for s0 in range(0, TILES * BLOCK_S, BLOCK_S):
        s = s0 + tl.arange(0, BLOCK_S)
        mask = (s < S)[None, :]
        idx = offset[:, None] + s[None, :].to(tl.int64) * stride_s
        norm_act_fwd_tile(X, R, Y, idx, mask, scale, shift_out, negative_slope, HAS_RESIDUAL, ACT)


@kernel
def _instance_norm_act_row_bwd_kernel(
    X,  # input, [N, C, S] with strides (stride_n, stride_c, stride_s)
    DY,  # output gradient, like X
    DX,  # input gradient out, like X
    W,  # weight, [C] (unused unless HAS_AFFINE)
    B,  # bias, [C] (unused unless HAS_AFFINE)
    MEAN,  # fp32, [N, C]
    RSTD,  # fp32, [N, C]
    PARTS,  # fp32 out, [2, N, C, 1]: per row, sums of g and of g * xhat (unused unless HAS_AFFINE)
    C, S, stride_n, stride_c, stride_s, NC, negative_slope,
    BLOCK_S: tl.constexpr, TILES: tl.constexpr, HAS_AFFINE: tl.constexpr, ACT: tl.constexpr,
):
    pid_c, n = tl.program_id(0), tl.program_id(1)
    c = pid_c + tl.arange(0, 1)
    c_mask = c < C  # all true: the shared tile code takes a mask
    offset = n.to(tl.int64) * stride_n + c * stride_c
    mean, rstd, w, b = norm_act_channel(W, B, MEAN, RSTD, n * C, c, c_mask, 1, HAS_AFFINE)
    # Pass 1: the row sums of g and g * xhat.
    acc_g = tl.full([1, BLOCK_S], 0.0, tl.float32)
    acc_gx = tl.full([1, BLOCK_S], 0.0, tl.float32)
    for s0 in range(0, TILES * BLOCK_S, BLOCK_S):
        s = s0 + tl.arange(0, BLOCK_S)
        mask = c_mask[:, None] & (s < S)[None, :]
        idx = offset[:, None] + s[None, :].to(tl.int64) * stride_s
        xhat, g = norm_act_bwd_tile(X, DY, idx, mask, mean, rstd, w, b, negative_slope, ACT)
        acc_g += g
        acc_gx += g * xhat
    sum_g = tl.reduce(acc_g, 1, _add)
    sum_gx = tl.reduce(acc_gx, 1, _add)
    if HAS_AFFINE:
        tl.store(PARTS + n * C + c, sum_g)
        tl.store(PARTS + NC + n * C + c, sum_gx)
    # Pass 2: dx.
    mean_dxhat = w * sum_g / S
    mean_dxhat_xhat = w * sum_gx / S
    for s0 in range(0, TILES * BLOCK_S, BLOCK_S):
        s = s0 + tl.arange(0, BLOCK_S)
        mask = c_mask[:, None] & (s < S)[None, :]
        idx = offset[:, None] + s[None, :].to(tl.int64) * stride_s
        xhat, g = norm_act_bwd_tile(X, DY, idx, mask, mean, rstd, w, b, negative_slope, ACT)
        dx = rstd[:, None] * (g * w[:, None] - mean_dxhat[:, None] - xhat * mean_dxhat_xhat[:, None])
        tl.store(DX + idx, dx.to(DX.dtype.element_ty), mask=mask)


# 3. Launchers ------------------------------------------------------------------------------------
_OP = "instance_norm_act"


def _plan(x, rows_ok=True, backward_pad=None, carried=None):
    """How the kernels cover x: plan["path"] is "rows" (the one-launch path, where ``rows_ok``: the padded output
    has none), "fused" (both phases in one launch) or "split" (a launch per phase). ``backward_pad``: the
    backward's plan, for an output padded by that much; ``carried``: bytes per element of x that the fused path
    reads again after its barrier (x, and dy in the backward; default x's element size)."""
    n, c, s, stride_n, stride_c, stride_s = _triton_util.channels_view(_OP, "x", x)
    args = (c, s, stride_n, stride_c, stride_s)
    if rows_ok and n * c >= _ONE_LAUNCH_MIN_ROWS and (stride_s == 1 or _ONE_LAUNCH_STRIDED):
        block_s = min(_triton_util.next_pow2(s), _ROW_BLOCK_S)
        return dict(path="rows", grid=(c, n), n=n, c=c, args=args,
                    blocks=dict(BLOCK_S=block_s, TILES=_triton_util.next_pow2(-(-s // block_s))))
    tile_elems = 2048
    few_channels = stride_c == 1 and c <= 4
    if backward_pad:
        tile_elems = _FEW_CHANNELS_FOLD_TILE if few_channels else _FOLD_TILE
    elif few_channels:
        tile_elems = _FEW_CHANNELS_TILE
    plan = None
    if _FUSED:  # both phases in one kernel hold more registers: half the tile for fp32 (see _FUSED_FP32_TILE)
        fused_elems = tile_elems // _FUSED_FP32_TILE if x.element_size() > 2 else tile_elems
        plan = _fused_plan(x, n, c, s, stride_c, *_triton_util.tile(c, s, stride_c, fused_elems),
                           carried or x.element_size())
    block_c, block_s = _triton_util.tile(c, s, stride_c, tile_elems)
    if plan is None:
        c_blocks = -(-c // block_c)
        split, tiles = _triton_util.split(n, c_blocks, s, block_s, _MAX_SPLIT)
        plan = dict(path="split", grid=(split, c_blocks, n), split=split,
                    blocks=dict(BLOCK_C=block_c, BLOCK_S=block_s, TILES=tiles))
    return plan | dict(n=n, c=c, args=args, sums=dict(BLOCK_SPLIT=_triton_util.next_pow2(plan["split"])))


def _fused_plan(x, n, c, s, stride_c, block_c, block_s, carried):
    """The fused path's grid and tiles, or None where the bytes it reads again after its barrier would not fit in
    its share of L2 (see _FUSED_L2_SHARE), or where there are no rows (the split path launches nothing)."""
    if n * c == 0:
        return None
    sms, l2_bytes = _triton_util.device_limits(x)
    capacity = sms * _FUSED_PROGRAMS_PER_SM
    if stride_c == 1 and c > 1:  # channels_last: narrower channel blocks (to one 32-byte sector) for more rows
        narrowest = max(32 // x.element_size(), 1)
        while block_c > narrowest and n * -(-c // block_c) * _MAX_SPLIT < capacity:
            block_c //= 2
            block_s = min(block_s * 2, _triton_util.next_pow2(s))
    c_blocks = -(-c // block_c)
    rows = n * c_blocks
    chunks = -(-s // block_s)
    split = max(1, min(chunks, _MAX_SPLIT, capacity // rows))
    tiles = _triton_util.next_pow2(-(-chunks // split))
    split = -(-chunks // tiles)
    resident = min(split * rows, capacity)  # all programs when split > 1: each row's wait for one another
    if resident * tiles * block_c * block_s * carried > l2_bytes * _FUSED_L2_SHARE:
        return None
    return dict(path="fused", grid=(split, c_blocks, n), split=split,
                blocks=dict(BLOCK_C=block_c, BLOCK_S=block_s, TILES=tiles))


def _counters(x, plan):
    """Each row's two barrier counters on the fused path; on the split path a stand-in (unused)."""
    if plan["path"] != "fused":
        return _triton_util.ticket_counter(x, 1)
    return _triton_util.ticket_counter(x, 2 * plan["grid"][1] * plan["grid"][2])


def _instance_norm_act_fwd(x, weight, bias, residual, act, negative_slope, eps, pad):
    """Returns y (x's layout and dtype, padded by ``pad``) and the fp32 [N, C] mean and rstd that backward
    needs."""
    # The padded-output code also takes a residual larger than the output (the centre of a padded tensor).
    padded = pad > 0 or (residual is not None and residual.shape != x.shape)
    plan = _plan(x, rows_ok=not padded)
    n, c = plan["n"], plan["c"]
    mean = _triton_util.empty((n, c), torch.float32, x.device)
    rstd = _triton_util.empty((n, c), torch.float32, x.device)
    w, b = (x, x) if weight is None else (weight, bias)
    options = dict(HAS_AFFINE=weight is not None, HAS_RESIDUAL=residual is not None, ACT=_ACT_CODE[act])
    if plan["path"] == "rows":
        y = _triton_util.empty_like(x)
        with _triton_util.device_guard(x):
            _instance_norm_act_row_fwd_kernel[plan["grid"]](
                x, x if residual is None else residual, y, w, b, mean, rstd, *plan["args"], eps, negative_slope,
                **plan["blocks"], **options)
        return y, mean, rstd
    if padded:
        h, width = x.shape[2], x.shape[3]
        y = _triton_util.empty_shaped_like(x, (n, c, h + 2 * pad, width + 2 * pad))
        _, _, s_out, *y_strides = _triton_util.channels_view(_OP, "y", y)
        if residual is None:
            r, r_strides, margin = y, (0, 0, 0, 0), 0
        else:
            r, r_strides, margin = residual, residual.stride(), (residual.shape[2] - y.shape[2]) // 2
        geometry = (h, width, pad, *y_strides, *r_strides, margin)
    else:
        y = _triton_util.empty_like(x)
        s_out, r, geometry = plan["args"][1], x if residual is None else residual, (0,) * 11
    split, grid, blocks = plan["split"], plan["grid"], plan["blocks"]
    parts = _triton_util.empty((2, n, c, split), torch.float32, x.device)
    args = (x, r, y, w, b, parts, mean, rstd, _counters(x, plan), *plan["args"], split, n * c, eps, negative_slope,
            *geometry)
    options |= dict(blocks, **plan["sums"], PADDED=padded)
    chunks_out = -(-s_out // blocks["BLOCK_S"])
    with _triton_util.device_guard(x):
        if plan["path"] == "fused":
            tiles_out = _triton_util.next_pow2(-(-chunks_out // split)) if padded else blocks["TILES"]
            _instance_norm_act_fwd_kernel.run_phases(grid, *args, **options, TILES_OUT=tiles_out,
                                                        cooperative=split > 1)
            return y, mean, rstd
        # PHASE 1's unused constexprs at one value each: one compiled variant per tile, not per option.
        _instance_norm_act_fwd_kernel[grid](*args, **blocks, TILES_OUT=1, BLOCK_SPLIT=1, HAS_AFFINE=False,
                                            HAS_RESIDUAL=False, ACT=0, PADDED=False, PHASE=1)
        grid_out, tiles_out = grid, blocks["TILES"]
        if padded:  # PHASE 2 over the padded plane, cut into its own pieces
            split_out, tiles_out = _triton_util.split(n, grid[1], s_out, blocks["BLOCK_S"], _MAX_SPLIT)
            grid_out = (split_out, grid[1], n)
        _instance_norm_act_fwd_kernel[grid_out](*args, **options, TILES_OUT=tiles_out, PHASE=2)
    return y, mean, rstd


def _instance_norm_act_bwd(dy, x, weight, bias, mean, rstd, act, negative_slope, pad):
    """Returns dx (x's layout and dtype) and fp32 [C] dweight, dbias; without weight and bias, two empty
    tensors: no launch computes the gradients of parameters that do not exist. With ``pad`` dy is the
    gradient of the padded output (any strides), folded onto x's positions as it is read."""
    if pad == 0:
        dy = _triton_util.same_layout(dy, x)
    carried = x.element_size() + dy.element_size() * dy.numel() / max(x.numel(), 1)
    plan = _plan(x, rows_ok=pad == 0, backward_pad=pad, carried=carried)
    n, c = plan["n"], plan["c"]
    dx = _triton_util.empty_like(x)
    options = dict(**plan["blocks"], HAS_AFFINE=weight is not None, ACT=_ACT_CODE[act])
    w, b = (x, x) if weight is None else (weight, bias)
    if plan["path"] == "rows":  # one partial sum per row, and only for the weight and bias gradients
        parts = _triton_util.empty((2, n, c, 1) if weight is not None else (0,), torch.float32, x.device)
        with _triton_util.device_guard(x):
            _instance_norm_act_row_bwd_kernel[plan["grid"]](x, dy, dx, w, b, mean, rstd, parts, *plan["args"],
                                                            n * c, negative_slope, **options)
    else:
        split, grid = plan["split"], plan["grid"]
        parts = _triton_util.empty((2, n, c, split), torch.float32, x.device)
        fold = (x.shape[2], x.shape[3], pad, *dy.stride()) if pad else (0,) * 7
        args = (x, dy, dx, w, b, mean, rstd, parts, _counters(x, plan), *plan["args"], split, n * c,
                negative_slope, *fold)
        options |= dict(FOLD=pad > 0)
        with _triton_util.device_guard(x):
            if plan["path"] == "fused":
                _instance_norm_act_bwd_kernel.run_phases(grid, *args, **options, **plan["sums"],
                                                        cooperative=split > 1)
            else:
                _instance_norm_act_bwd_kernel[grid](*args, **options, BLOCK_SPLIT=1, PHASE=1)
                _instance_norm_act_bwd_kernel[grid](*args, **options, **plan["sums"], PHASE=2)
    if weight is None:
        return dx, parts.new_empty((0,)), parts.new_empty((0,))
    # Sums over pieces and samples in a fixed order: deterministic, unlike atomics; two tensors, as a custom
    # op's outputs may not alias.
    return dx, parts[1].sum(dim=(0, 2)), parts[0].sum(dim=(0, 2))


# 4. Autograd (torch.library custom ops, so torch.compile and CUDA graphs see opaque kernels) ------
def _padded_shape(x, pad):
    return (x.shape[0], x.shape[1], x.shape[2] + 2 * pad, x.shape[3] + 2 * pad)


@torch.library.custom_op("fastgan::instance_norm_act_fwd", mutates_args=())
def _fwd_op(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
            residual: torch.Tensor | None, act: str, negative_slope: float,
            eps: float, pad: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _instance_norm_act_fwd(x, weight, bias, residual, act, negative_slope, eps, pad)


@_fwd_op.register_fake
def _(x, weight, bias, residual, act, negative_slope, eps, pad):
    stats = x.new_empty((x.shape[0], x.shape[1]), dtype=torch.float32)
    y = torch.empty(_padded_shape(x, pad), dtype=x.dtype, device=x.device, memory_format=_layout(x))
    return y, stats, torch.empty_like(stats)


@torch.library.custom_op("fastgan::instance_norm_act_bwd", mutates_args=())
def _bwd_op(dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
            mean: torch.Tensor, rstd: torch.Tensor, act: str,
            negative_slope: float, pad: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _instance_norm_act_bwd(dy, x, weight, bias, mean, rstd, act, negative_slope, pad)


@_bwd_op.register_fake
def _(dy, x, weight, bias, mean, rstd, act, negative_slope, pad):
    grad = x.new_empty((0 if weight is None else x.shape[1],), dtype=torch.float32)
    return torch.empty_like(x), grad, torch.empty_like(grad)


def _setup_context(ctx, inputs, output):
    x, weight, bias, residual, act, negative_slope, eps, pad = inputs
    _, mean, rstd = output
    ctx.mark_non_differentiable(mean, rstd)
    ctx.save_for_backward(x, weight, bias, mean, rstd)
    ctx.act, ctx.negative_slope, ctx.pad = act, negative_slope, pad
    # The residual's margin around the output (a padded tensor whose centre was added), or None.
    ctx.margin = None if residual is None else (residual.shape[2] - x.shape[2]) // 2 - pad


def _backward(ctx, dy, _dmean, _drstd):
    x, weight, bias, mean, rstd = ctx.saved_tensors
    dx, dweight, dbias = _bwd_op(dy, x, weight, bias, mean, rstd, ctx.act, ctx.negative_slope, ctx.pad)
    if weight is None:
        dweight = dbias = None
    else:
        dweight, dbias = dweight.to(weight.dtype), dbias.to(bias.dtype)
    dresidual = None if ctx.margin is None else dy if ctx.margin == 0 else F.pad(dy, (ctx.margin,) * 4)
    return dx, dweight, dbias, dresidual, None, None, None, None


_fwd_op.register_autograd(_backward, setup_context=_setup_context)
_dispatch.register(_OP, "triton", _triton_util.check)


# 5. Public function ------------------------------------------------------------------------------
def instance_norm_act(x, weight=None, bias=None, *, act="relu", negative_slope=0.2, eps=1e-5, residual=None,
                      pad=0, impl="auto"):
    """Instance normalisation fused with an activation, a reflection pad and a residual add, in one pass.

    Args:
        x: [N, C, H, W], contiguous NCHW or channels_last, fp32/bf16/fp16.
        weight, bias: optional affine parameters, [C] each (both or neither).
        act: "relu", "leaky_relu" or "none".
        negative_slope: slope of leaky_relu for negative inputs.
        eps: added to the variance.
        residual: optional, added after the activation (and the pad): shaped like the output, or larger by the
            same margin on every side (a padded tensor), whose centre is added.
        pad: reflection padding of the output on each side, < H and < W: the output is what a following
            ``F.pad(y, (pad,) * 4, mode="reflect")`` would give, written in the same pass, and its gradient is
            folded back in the backward's passes (a reflect-padded convolution that consumes it pads nothing).
        impl: "auto", "ref" or "triton" (see fastgan.ops._dispatch).
    Returns:
        y: [N, C, H + 2 * pad, W + 2 * pad], x's dtype and memory layout.
    """
    pad = _check_args(x, weight, bias, act, residual, pad)
    if _dispatch.resolve(_OP, impl, x.device) == "triton":
        _triton_util.check_dtype(_OP, "x", x)
        _triton_util.channels_view(_OP, "x", x)
        if x.shape[1] * (x.shape[2] + 2 * pad) * (x.shape[3] + 2 * pad) >= 2**31:
            raise ValueError(f"instance_norm_act: one sample of the output has {x[0].numel()} elements or more; "
                             "the Triton path takes fewer than 2**31 (use impl='ref')")
        for name, t in (("weight", weight), ("bias", bias), ("residual", residual)):
            if t is not None and t.device != x.device:
                raise ValueError(f"instance_norm_act: {name} is on {t.device} but x is on {x.device}")
        if residual is not None and pad == 0 and residual.shape == x.shape:
            residual = _triton_util.same_layout(residual, x)  # the padded-output kernel takes any strides
        return _fwd_op(x, weight, bias, residual, act, float(negative_slope), float(eps), pad)[0]
    y = instance_norm_act_ref(x, weight, bias, act=act, negative_slope=negative_slope, eps=eps,
                              residual=residual, pad=pad)
    return y.contiguous(memory_format=_layout(x))


def _layout(x):
    channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    return torch.channels_last if channels_last else torch.contiguous_format
