"""mean_loss: weight * mean(f(x, target)) in fp32, the GAN losses (LSGAN, BCE, L1) in one launch each way.

Sections (../STYLE.md): 1. reference  2. Triton kernels  3. launchers  4. autograd  5. public function.

The losses of a GAN step are reductions of small tensors (30x30 PatchGAN logits, 3x256x256 images) that
ATen runs as chains of tiny kernels: a cast to fp32, the target's ones_like, the difference, its square or
abs, the mean, the multiply by lambda, and as many again in backward. Here each loss is one launch forward
and one backward, reading x (and a target tensor) in their own dtype and computing in fp32:

  kind             f(x, t)                                df/dx                 df/dt
  mse              (x - t)^2                              2 (x - t)             -2 (x - t)
  l1               |x - t|                                sign(x - t)           -sign(x - t)
  bce_with_logits  (1 - t) x - log_sigmoid(x)             sigmoid(x) - t        -x

  loss = weight * sum(f) / numel          dx = g * weight / numel * df/dx   (g: the incoming gradient)

with t a constant (the LSGAN/BCE real or fake label) or a tensor of x's shape (the L1 losses' target).
log_sigmoid(x) = min(x, 0) - log1p(exp(-|x|)), with log1p(e) = log(u) * e / (u - 1), u = 1 + e (exact to a
few ulps where 1 + e rounds; triton.language has no log1p that the interpreter also runs).

Forward is deterministic in one launch: every program stores the fp32 sum of its slice, then takes a ticket
(an atomic add on a per-device counter, acq_rel, so the slices' stores are visible to whoever draws the last
ticket); the program with the last ticket sums the partials in a fixed order, writes the loss and resets the
counter to 0 for the next launch (_triton_util.ticket_counter: zeroed once per device, so a CUDA graph
replays no zeroing launch). Backward reads g on the device (no host sync) and writes dx in x's
memory layout (the kernels see x as flat storage: any dense layout, channels_last included).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import _dispatch, _triton_util
from ._triton_util import device_function, kernel

try:
    import triton.language as tl

    _add = tl.standard._sum_combine  # tl.reduce's combine function that the interpreter also runs (see tl.sum)
except ImportError:  # the reference path still works; _triton_util.check says why Triton cannot run
    tl = _add = None

_OP = "mean_loss"
KINDS = ("mse", "l1", "bce_with_logits")
_KIND_CODE = {kind: i for i, kind in enumerate(KINDS)}
_BLOCK = 1024  # elements per tile: 8 per thread at 4 warps
# Programs of the forward at most: the last one sums their partials in one tile of next_pow2(programs). 512
# slices of at least one tile fill an H100's 132 SMs several times over for the largest losses (a batch of
# 256x256 images) and cost the last program one 2 KB read.
_MAX_PROGRAMS = 512


# 1. Reference ------------------------------------------------------------------------------------
def mean_loss_ref(x, target, kind, *, weight=1.0, dtype=torch.float32):
    """Plain PyTorch reference: ``F.mse_loss`` / ``F.l1_loss`` / ``F.binary_cross_entropy_with_logits`` of
    ``x.float()`` and the target in fp32 (a number: a tensor of x's shape filled with it; 1 and 0 as
    ``ones_like`` / ``zeros_like``), mean over all elements, times ``weight`` unless it is 1. ``dtype``: what
    it is computed in (fp32, as a training step computes its losses; float64 for the tests' reference).

    A channels_last x is reduced through its NHWC view (the same elements in the same memory order, so the same
    value bit for bit): F.l1_loss's backward would otherwise expand the gradient into a fresh NCHW tensor and
    the network's output layer would get a layout copy.
    """
    if kind not in _KIND_CODE:
        raise ValueError(f"mean_loss: kind={kind!r}; expected one of {', '.join(map(repr, KINDS))}")
    x = x.to(dtype)
    if isinstance(target, torch.Tensor):
        t = target.to(dtype)
    elif target in (0, 1):
        t = torch.ones_like(x) if target == 1 else torch.zeros_like(x)
    else:
        t = torch.full_like(x, float(target))
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        x, t = x.permute(0, 2, 3, 1), t.permute(0, 2, 3, 1)
    criterion = {"mse": F.mse_loss, "l1": F.l1_loss, "bce_with_logits": F.binary_cross_entropy_with_logits}[kind]
    loss = criterion(x, t)
    return loss if weight == 1 else loss * weight


# 2. Triton kernels -------------------------------------------------------------------------------
@device_function
def _elementwise(X, Y, offs, mask, target, KIND: tl.constexpr, HAS_TARGET: tl.constexpr):
    """x and t of one tile, fp32 (t: the loaded target, or the constant ``target``)."""
    x = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_TARGET:
        t = tl.load(Y + offs, mask=mask, other=0.0).to(tl.float32)
    else:
        t = tl.full(x.shape, 0.0, tl.float32) + target
    return x, t


@kernel
def _mean_loss_fwd_kernel(
    X,  # input, [numel] in storage order (any dense layout)
    Y,  # target, like X (unused unless HAS_TARGET)
    PARTS,  # fp32 scratch, [programs]: each program's sum of f
    TICKETS,  # int32, [1]: programs finished; 0 between launches (the last program resets it)
    OUT,  # fp32 out, []: weight * mean of f
    numel, target, weight,
    BLOCK: tl.constexpr, TILES: tl.constexpr, BLOCK_P: tl.constexpr, KIND: tl.constexpr,
    HAS_TARGET: tl.constexpr,
):
    pid = tl.program_id(0)
    acc = tl.full([BLOCK], 0.0, tl.float32)
    start = pid.to(tl.int64) * (TILES * BLOCK)
    for i in range(0, TILES * BLOCK, BLOCK):  # a constexpr trip count: the interpreter loops over no argument
        offs = start + i + tl.arange(0, BLOCK)
        mask = offs < numel
        x, t = _elementwise(X, Y, offs, mask, target, KIND, HAS_TARGET)
        if KIND == 0:
            f = (x - t) * (x - t)
        elif KIND == 1:
            f = tl.abs(x - t)
        else:
            e = tl.exp(-tl.abs(x))
            u = 1.0 + e
            log1p = tl.where(u == 1.0, e, tl.log(u) * (e / tl.where(u == 1.0, 1.0, u - 1.0)))
            f = (1.0 - t) * x - tl.minimum(x, 0.0) + log1p
        acc += tl.where(mask, f, 0.0)
    tl.store(PARTS + pid, tl.reduce(acc, 0, _add))
    programs = tl.num_programs(0)
    ticket = tl.atomic_add(TICKETS, 1)  # acq_rel: the partials stored before it are seen after it
    last = ticket == programs - 1
    p = tl.arange(0, BLOCK_P)
    parts = tl.load(PARTS + p, mask=(p < programs) & last, other=0.0)
    tl.store(OUT, tl.reduce(parts, 0, _add) / numel * weight, mask=last)
    tl.store(TICKETS, 0, mask=last)


@kernel
def _mean_loss_bwd_kernel(
    G,  # fp32, []: the loss's incoming gradient
    X,  # input, [numel] in storage order (any dense layout)
    Y,  # target, like X (unused unless HAS_TARGET)
    DX,  # input gradient out, like X
    DY,  # target gradient out, like Y (unused unless NEED_DY)
    numel, target, weight,
    BLOCK: tl.constexpr, KIND: tl.constexpr, HAS_TARGET: tl.constexpr, NEED_DY: tl.constexpr,
):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    scale = tl.load(G).to(tl.float32) * weight / numel
    x, t = _elementwise(X, Y, offs, mask, target, KIND, HAS_TARGET)
    if KIND == 0:
        dx = 2.0 * (x - t) * scale
        dt = -dx
    elif KIND == 1:
        d = x - t
        dx = tl.where(d > 0, scale, tl.where(d < 0, -scale, d * 0.0))  # sign(0) = 0; NaN stays NaN
        dt = -dx
    else:
        # sigmoid(x) - t from e = exp(-|x|) (no overflow): 1 - e / (1 + e) - t for x >= 0, where a saturated
        # sigmoid against the label 1 keeps its small difference -e / (1 + e) instead of rounding it to 0.
        e = tl.exp(-tl.abs(x))
        small = e / (1.0 + e)
        dx = tl.where(x >= 0, (1.0 - t) - small, small - t) * scale
        dt = -x * scale
    tl.store(DX + offs, dx.to(DX.dtype.element_ty), mask=mask)
    if NEED_DY:
        tl.store(DY + offs, dt.to(DY.dtype.element_ty), mask=mask)


# 3. Launchers ------------------------------------------------------------------------------------
def _target_args(x, y, target):
    return (x if y is None else y), float(target)


def _mean_loss_fwd(x, y, kind, target, weight):
    numel = x.numel()
    chunks = max(-(-numel // _BLOCK), 1)
    tiles = _triton_util.next_pow2(-(-chunks // min(chunks, _MAX_PROGRAMS)))
    programs = -(-chunks // tiles)
    parts = _triton_util.empty((programs,), torch.float32, x.device)
    out = _triton_util.empty((), torch.float32, x.device)
    y_arg, target = _target_args(x, y, target)
    with _triton_util.device_guard(x):
        _mean_loss_fwd_kernel[(programs,)](x, y_arg, parts, _triton_util.ticket_counter(x), out, numel, target,
                                           float(weight), BLOCK=_BLOCK, TILES=tiles,
                                           BLOCK_P=_triton_util.next_pow2(programs), KIND=_KIND_CODE[kind],
                                           HAS_TARGET=y is not None)
    return out


def _mean_loss_bwd(x, y, g, kind, target, weight, need_dy):
    """Returns dx (x's layout and dtype) and dy (y's, or empty unless ``need_dy``)."""
    dx = _triton_util.empty_like(x)
    dy = _triton_util.empty_like(y) if need_dy else x.new_empty((0,))
    y_arg, target = _target_args(x, y, target)
    with _triton_util.device_guard(x):
        _mean_loss_bwd_kernel[(max(-(-x.numel() // _BLOCK), 1),)](
            g, x, y_arg, dx, dy if need_dy else dx, x.numel(), target, float(weight), BLOCK=_BLOCK,
            KIND=_KIND_CODE[kind], HAS_TARGET=y is not None, NEED_DY=need_dy)
    return dx, dy


# 4. Autograd (torch.library custom ops, so torch.compile and CUDA graphs see opaque kernels) ------
@torch.library.custom_op("fastgan::mean_loss_fwd", mutates_args=())
def _fwd_op(x: torch.Tensor, y: torch.Tensor | None, kind: str, target: float, weight: float) -> torch.Tensor:
    return _mean_loss_fwd(x, y, kind, target, weight)


@_fwd_op.register_fake
def _(x, y, kind, target, weight):
    return x.new_empty((), dtype=torch.float32)


@torch.library.custom_op("fastgan::mean_loss_bwd", mutates_args=())
def _bwd_op(x: torch.Tensor, y: torch.Tensor | None, g: torch.Tensor, kind: str, target: float, weight: float,
            need_dy: bool) -> tuple[torch.Tensor, torch.Tensor]:
    return _mean_loss_bwd(x, y, g, kind, target, weight, need_dy)


@_bwd_op.register_fake
def _(x, y, g, kind, target, weight, need_dy):
    return torch.empty_like(x), torch.empty_like(y) if need_dy else x.new_empty((0,))


def _setup_context(ctx, inputs, output):
    x, y, kind, target, weight = inputs
    ctx.save_for_backward(x, y)
    ctx.kind, ctx.target, ctx.weight = kind, target, weight


def _backward(ctx, g):
    x, y = ctx.saved_tensors
    need_dy = y is not None and ctx.needs_input_grad[1]
    dx, dy = _bwd_op(x, y, g, ctx.kind, ctx.target, ctx.weight, need_dy)
    return dx, dy if need_dy else None, None, None, None


_fwd_op.register_autograd(_backward, setup_context=_setup_context)
_dispatch.register(_OP, "triton", _triton_util.check)


# 5. Public function ------------------------------------------------------------------------------
def mean_loss(x, target, kind, *, weight=1.0, impl="auto"):
    """A GAN loss as one fp32 scalar: ``weight * mean(f(x, target))`` computed in fp32 from x's own dtype.

    Args:
        x: the network's output (logits for "mse" and "bce_with_logits", an image for "l1"), any shape; fp32,
            bf16 or fp16 on the Triton path, any dense layout (its gradient keeps it: channels_last stays
            channels_last).
        target: a number (the label: 1.0 real, 0.0 fake) or a tensor of x's shape (the L1 losses' target; a
            layout other than x's costs a copy into x's layout on the Triton path).
        kind: "mse" (LSGAN), "l1" or "bce_with_logits" (the "vanilla" GAN loss), as F.mse_loss, F.l1_loss and
            F.binary_cross_entropy_with_logits define them with reduction "mean".
        weight: a constant the loss is multiplied by (a lambda), folded into the same kernels.
        impl: "auto", "ref", "fast" or "triton" (see fastgan.ops._dispatch).
    Returns:
        a 0-dim fp32 tensor on x's device.
    """
    if kind not in _KIND_CODE:
        raise ValueError(f"mean_loss: kind={kind!r}; expected one of {', '.join(map(repr, KINDS))}")
    tensor_target = isinstance(target, torch.Tensor)
    if tensor_target and tuple(target.shape) != tuple(x.shape):
        raise ValueError(f"mean_loss: target has shape {tuple(target.shape)} but x has {tuple(x.shape)}")
    if _dispatch.resolve(_OP, impl, x.device) != "triton":
        return mean_loss_ref(x, target, kind, weight=weight)
    _triton_util.check_dtype(_OP, "x", x)
    if not _triton_util.is_dense(x):
        raise ValueError(f"mean_loss: x with shape {tuple(x.shape)} and strides {x.stride()} does not fill its "
                         "storage (a dense layout is needed); call .contiguous() on it first")
    y = None
    if tensor_target:
        _triton_util.check_dtype(_OP, "target", target)
        if target.device != x.device:
            raise ValueError(f"mean_loss: target is on {target.device} but x is on {x.device}")
        y = _triton_util.same_layout(target, x)
    return _fwd_op(x, y, kind, 0.0 if tensor_target else float(target), float(weight))
