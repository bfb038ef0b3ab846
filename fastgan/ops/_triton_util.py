"""Helpers shared by the Triton fast paths: lazy kernels, the capability check, layouts and allocation."""

from __future__ import annotations

import contextlib
import functools
import importlib.util

import torch

from . import _dispatch

try:
    import triton.language as tl

    _add = tl.standard._sum_combine  # tl.reduce's combine function that the interpreter also runs
except ImportError:  # the device functions below are then never called (check() says why)
    tl = _add = None

_FAST_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


_HAS_TRITON = importlib.util.find_spec("triton") is not None


def check(device: torch.device) -> str | None:
    """The dispatch capability check: None where Triton kernels can run on ``device``, else why not."""
    if not _HAS_TRITON:
        return "triton is not installed (pip install triton)"
    if device.type == "cuda":
        return None
    if device.type == "cpu":
        return None if _dispatch.interpret_mode() else "CPU tensors need TRITON_INTERPRET=1 for Triton"
    return f"Triton kernels do not run on {device.type} tensors"


class kernel:
    """``triton.jit`` applied at launch rather than at import.

    Triton chooses between compiling and interpreting when a function is decorated, so a kernel
    decorated at import would ignore a ``TRITON_INTERPRET=1`` set later (by a test, for one). Keeping
    both variants lets the interpreter run CPU tensors while CUDA tensors get compiled kernels.
    """

    def __init__(self, fn):
        self.fn = fn
        functools.update_wrapper(self, fn)

    @functools.cached_property
    def _compiled(self):
        from triton.runtime.jit import JITFunction

        return JITFunction(self.fn)

    @functools.cached_property
    def _interpreted(self):
        from triton.runtime.interpreter import InterpretedFunction

        return InterpretedFunction(self.fn)

    def __getitem__(self, grid):
        return (self._interpreted if _dispatch.interpret_mode() else self._compiled)[grid]

    def run_phases(self, grid, *args, cooperative: bool, **kwargs):
        """Both phases of a kernel whose programs meet at a barrier (group_barrier) between them: one launch of
        PHASE 0, cooperative when ``cooperative`` (CUDA then runs every program at once or refuses the launch, so
        the wait cannot hang). The interpreter runs programs one after another, so there it is two launches,
        PHASE 1 and PHASE 2. (The launch recorders, fastgan.testing's ledger and specialisations, take it as the
        one launch a GPU makes.)"""
        if _dispatch.interpret_mode():
            self[grid](*args, **kwargs, PHASE=1)
            self[grid](*args, **kwargs, PHASE=2)
        else:
            self[grid](*args, **kwargs, **phase_zero_options(cooperative, kwargs.get("num_warps", 4)))


def device_function(fn):
    """``triton.jit`` for a helper that ``kernel``s call, whichever way they run.

    A compiled kernel can call only a JITFunction, while the interpreter runs the caller as Python and
    calls the helper directly; a JITFunction whose call runs the interpreted function serves both.
    """
    if not _HAS_TRITON:
        return fn  # never called: check() says triton is missing before any kernel launches
    return _device_function_type()(fn)


@functools.cache
def _device_function_type():
    from triton.runtime.interpreter import InterpretedFunction
    from triton.runtime.jit import JITFunction

    class DeviceFunction(JITFunction):
        @functools.cached_property
        def _interpreted(self):
            return InterpretedFunction(self.fn)

        def __call__(self, *args, **kwargs):
            if not _dispatch.interpret_mode():
                return super().__call__(*args, **kwargs)  # triton's error for a call outside a kernel
            return self._interpreted(*args, **kwargs)

    return DeviceFunction


# Device functions shared by the normalisation kernels (instance_norm_act, batch_norm_act) -------------
# Only triton.language builtins inside: tl's own @jit helpers are compiled-only when TRITON_INTERPRET=1 is
# set after triton's import, as a test does.
@device_function
def norm_act_channel(
    W,  # weight, [C] (unused unless HAS_AFFINE)
    B,  # bias, [C] (unused unless HAS_AFFINE)
    MEAN,  # fp32, [..., C]: per-channel means (batch_norm_act: [C]; instance_norm_act: [N, C])
    RSTD,  # fp32, like MEAN: 1 / sqrt(var + eps)
    stats, c, c_mask,  # offset of this program's row in MEAN and RSTD (0, or n * C); channels; which exist
    BLOCK_C: tl.constexpr, HAS_AFFINE: tl.constexpr,
):
    """mean, rstd, weight and bias of channels c (weight 1 and bias 0 if not affine), fp32 [BLOCK_C] each."""
    mean = tl.load(MEAN + stats + c, mask=c_mask, other=0.0)
    rstd = tl.load(RSTD + stats + c, mask=c_mask, other=0.0)
    w, b = norm_weight_bias(W, B, c, c_mask, BLOCK_C, HAS_AFFINE)
    return mean, rstd, w, b


@device_function
def norm_weight_bias(
    W,  # weight, [C] (unused unless HAS_AFFINE)
    B,  # bias, [C] (unused unless HAS_AFFINE)
    c, c_mask,  # channels of this program and which of them exist
    BLOCK_C: tl.constexpr, HAS_AFFINE: tl.constexpr,
):
    """weight and bias of channels c, fp32 [BLOCK_C] each: 1 and 0 if not affine."""
    w = tl.full([BLOCK_C], 1.0, tl.float32)
    b = tl.full([BLOCK_C], 0.0, tl.float32)
    if HAS_AFFINE:
        w = tl.load(W + c, mask=c_mask, other=0.0).to(tl.float32)
        b = tl.load(B + c, mask=c_mask, other=0.0).to(tl.float32)
    return w, b


@device_function
def norm_act_bwd_tile(
    X,  # input, [N, C, S] with strides (stride_n, stride_c, stride_s)
    DY,  # output gradient, like X
    idx, mask,  # [BLOCK_C, BLOCK_S] offsets of the tile into X and DY, and which of them are in bounds
    mean, rstd, w, b,  # fp32 [BLOCK_C], from norm_act_channel
    negative_slope,
    ACT: tl.constexpr,  # 0 none, 1 relu, 2 leaky_relu
):
    """xhat = (x - mean) * rstd and g = dy * act'(xhat * w + b) of one tile, fp32 (zero where masked off)."""
    dy = tl.load(DY + idx, mask=mask, other=0.0).to(tl.float32)
    return norm_act_bwd_values(X, idx, mask, dy, mean, rstd, w, b, negative_slope, ACT)


@device_function
def norm_act_bwd_values(
    X,  # input, [N, C, S] with strides (stride_n, stride_c, stride_s)
    idx, mask,  # [BLOCK_C, BLOCK_S] offsets of the tile into X, and which of them are in bounds
    dy,  # fp32 [BLOCK_C, BLOCK_S]: the output gradient of the tile (zero where masked off)
    mean, rstd, w, b,  # fp32 [BLOCK_C], from norm_act_channel
    negative_slope,
    ACT: tl.constexpr,  # 0 none, 1 relu, 2 leaky_relu
):
    """norm_act_bwd_tile with the output gradient already loaded (instance_norm_act folds a padded one)."""
    xhat = (tl.load(X + idx, mask=mask, other=0.0).to(tl.float32) - mean[:, None]) * rstd[:, None]
    g = dy
    if ACT != 0:
        z = xhat * w[:, None] + b[:, None]
        if ACT == 1:
            g = tl.where(z > 0, g, 0.0)
        else:
            g = tl.where(z > 0, g, g * negative_slope)
    return xhat, g


@device_function
def norm_act_affine(
    W,  # weight, [C] (unused unless HAS_AFFINE)
    B,  # bias, [C] (unused unless HAS_AFFINE)
    c, c_mask,  # channels of this program and which of them exist
    mean, rstd,  # fp32 [BLOCK_C]
    HAS_AFFINE: tl.constexpr,
):
    """scale and shift with xhat * w + b = x * scale + shift, fp32 [BLOCK_C] each."""
    scale = rstd
    if HAS_AFFINE:
        scale = rstd * tl.load(W + c, mask=c_mask, other=0.0).to(tl.float32)
        shift = tl.load(B + c, mask=c_mask, other=0.0).to(tl.float32) - mean * scale
    else:
        shift = -mean * scale
    return scale, shift


@device_function
def norm_act_fwd_tile(
    X,  # input, [N, C, S] with strides (stride_n, stride_c, stride_s)
    R,  # residual, like X (unused unless HAS_RESIDUAL)
    Y,  # output, like X
    idx, mask,  # [BLOCK_C, BLOCK_S] offsets of the tile into X, R and Y, and which of them are in bounds
    scale, shift,  # fp32 [BLOCK_C], from norm_act_affine
    negative_slope,
    HAS_RESIDUAL: tl.constexpr, ACT: tl.constexpr,  # ACT: 0 none, 1 relu, 2 leaky_relu
):
    """Stores y = act(x * scale + shift) (+ residual) of one tile in Y's dtype."""
    norm_act_fwd_at(X, R, Y, idx, idx, idx, mask, scale, shift, negative_slope, HAS_RESIDUAL, ACT)


@device_function
def norm_act_fwd_at(
    X, R, Y,  # input, residual (unused unless HAS_RESIDUAL), output
    x_idx, r_idx, y_idx,  # [BLOCK_C, BLOCK_S] offsets of the tile's elements into X, R and Y
    mask,  # [BLOCK_C, BLOCK_S]: which of them are in bounds
    scale, shift,  # fp32 [BLOCK_C], from norm_act_affine
    negative_slope,
    HAS_RESIDUAL: tl.constexpr, ACT: tl.constexpr,  # ACT: 0 none, 1 relu, 2 leaky_relu
):
    """norm_act_fwd_tile with an offset tensor per operand (instance_norm_act's padded output reads x at the
    reflected position of each element it writes)."""
    z = tl.load(X + x_idx, mask=mask, other=0.0).to(tl.float32) * scale[:, None] + shift[:, None]
    if ACT == 1:
        z = tl.maximum(z, 0.0)
    elif ACT == 2:
        z = tl.where(z > 0, z, z * negative_slope)
    if HAS_RESIDUAL:
        z += tl.load(R + r_idx, mask=mask, other=0.0).to(tl.float32)
    tl.store(Y + y_idx, z.to(Y.dtype.element_ty), mask=mask)


# Deterministic cross-program sums without a second launch (batch_norm_act): each program stores its partial
# sums, then takes a ticket from an atomic counter; the last program of a group of GROUP programs sums the
# group's partials, and the last group to finish sums the groups' sums. Each sum runs in a fixed order over
# fixed slots, so the bits do not depend on which program comes last, and the counters are atomics on
# integers only (the values never are). The last taker resets its counter, so the counters are zero between
# launches (no zeroing launch, CUDA graph replays included) and the sequential interpreter works too.
@device_function
def _sum_slots(
    PARTS,  # fp32, [2, C, R]: two sums per channel in R slots
    c, c_mask,  # [BLOCK_C] channels and which of them exist
    C, R, first, count,  # row length R; the slots [first, first + count) are summed
    BLOCK_C: tl.constexpr, BLOCK_G: tl.constexpr,
):
    """The sums of slots [first, first + count) of both halves of PARTS, fp32 [BLOCK_C] each, in a fixed order."""
    acc = tl.full([BLOCK_C, BLOCK_G], 0.0, tl.float32)
    acc_2 = tl.full([BLOCK_C, BLOCK_G], 0.0, tl.float32)
    j = 0
    while j < count:  # not range(): Triton 3.6's interpreter takes no runtime bound there
        slot = j + tl.arange(0, BLOCK_G)
        mask = c_mask[:, None] & (slot < count)[None, :]
        idx = c[:, None] * R + first + slot[None, :]
        # .cg: from L2, where other programs' stores are; never a stale line in this SM's L1
        acc += tl.load(PARTS + idx, mask=mask, other=0.0, cache_modifier=".cg")
        acc_2 += tl.load(PARTS + C * R + idx, mask=mask, other=0.0, cache_modifier=".cg")
        j += BLOCK_G
    return tl.reduce(acc, 1, _add), tl.reduce(acc_2, 1, _add)


@device_function
def _take_ticket(
    TICKET,  # int32 scalar pointer: zero before the first of ``takers`` programs takes a ticket
    takers,
):
    """True in the last of ``takers`` programs to call this on TICKET (which it resets to zero for the next
    launch); its loads after this see every store the others made before their call."""
    tl.debug_barrier()  # this program's stores are all issued before its release below
    ticket = tl.atomic_add(TICKET, 1, sem="acq_rel", scope="gpu")
    last = ticket == takers - 1
    tl.store(TICKET, 0, mask=last)
    return last


@device_function
def group_barrier(
    COUNTERS,  # int32, [2]: zero before the first of ``count`` programs calls this (see ticket_counter())
    count,
):
    """Waits until all ``count`` programs calling this on COUNTERS have arrived; each one's loads after it see
    every store the others made before it. The last to leave resets both counters to zero for the next launch.

    Only in kernels launched through kernel.run_phases: cooperatively (every program running at once, or the
    launch fails), as programs spin here for the others, at most COOPERATIVE_PROGRAMS_PER_SM per SM; and in the
    interpreter, which runs programs one after another, as two launches, the halves before and after it."""
    tl.debug_barrier()  # this program's stores are all issued before its release below
    tl.atomic_add(COUNTERS, 1, sem="release", scope="gpu")
    arrived = tl.atomic_add(COUNTERS, 0, sem="acquire", scope="gpu")
    while arrived < count:
        arrived = tl.atomic_add(COUNTERS, 0, sem="acquire", scope="gpu")
    # Everyone has arrived, so no program reads the arrival counter again in this launch: the last to leave
    # may zero both.
    left = tl.atomic_add(COUNTERS + 1, 1, sem="relaxed", scope="gpu")
    last = left == count - 1
    tl.store(COUNTERS, 0, mask=last)
    tl.store(COUNTERS + 1, 0, mask=last)
    tl.debug_barrier()


@device_function
def sum_over_programs(
    PARTS,  # fp32, [2, C, P + GROUPS]: each program's two partial sums in slot pid, then each group's sums
    TICKETS,  # int32, [channel blocks, GROUPS + 1], zero between launches (see ticket_counter())
    pid, pid_c, c, c_mask,  # this program's slot, its channel block, the block's channels and which exist
    C, P, GROUP, GROUPS,  # P programs per channel block, in GROUPS groups of GROUP (the last may be shorter)
    BLOCK_C: tl.constexpr, BLOCK_G: tl.constexpr,
):
    """Called by each of the P programs of a channel block once it has stored its partial sums in PARTS; returns
    (last, sum, sum_2): last is True in one program per channel block, the last to finish, which gets the sums
    over all P slots of both halves (fp32 [BLOCK_C]; zero in the other programs)."""
    R = P + GROUPS
    group = pid // GROUP
    first = group * GROUP
    tickets = TICKETS + pid_c * (GROUPS + 1)
    total = tl.full([BLOCK_C], 0.0, tl.float32)
    total_2 = tl.full([BLOCK_C], 0.0, tl.float32)
    last = _take_ticket(tickets + group, tl.minimum(GROUP, P - first))
    if last:  # the last program of its group: the group's sums, then a ticket among the groups
        part, part_2 = _sum_slots(PARTS, c, c_mask, C, R, first, tl.minimum(GROUP, P - first), BLOCK_C, BLOCK_G)
        tl.store(PARTS + c * R + P + group, part, mask=c_mask)
        tl.store(PARTS + C * R + c * R + P + group, part_2, mask=c_mask)
        last = _take_ticket(tickets + GROUPS, GROUPS)
        if last:
            total, total_2 = _sum_slots(PARTS, c, c_mask, C, R, P, GROUPS, BLOCK_C, BLOCK_G)
    return last, total, total_2


# Bodies of the per-channel bias + activation kernels (leaky_relu, tanh), whose backward works from the saved
# output y; ACT: 1 leaky_relu, 2 tanh.
@device_function
def bias_act_fwd(
    X,  # input, [N, C, S] with strides (stride_n, stride_c, stride_s)
    B,  # bias, [C] (unused unless HAS_BIAS)
    Y,  # output, like X
    C, S, stride_n, stride_c, stride_s, negative_slope,
    BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr, HAS_BIAS: tl.constexpr, ACT: tl.constexpr,
):
    """y = act(x + bias[c]) for the [BLOCK_C, BLOCK_S] tile of program (s block, channel block, sample)."""
    pid_s, pid_c, n = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    s = pid_s.to(tl.int64) * BLOCK_S + tl.arange(0, BLOCK_S)
    mask = (c < C)[:, None] & (s < S)[None, :]
    idx = n.to(tl.int64) * stride_n + c[:, None].to(tl.int64) * stride_c + s[None, :] * stride_s
    z = tl.load(X + idx, mask=mask, other=0.0).to(tl.float32)
    if HAS_BIAS:
        z += tl.load(B + c, mask=c < C, other=0.0).to(tl.float32)[:, None]
    if ACT == 1:
        y = tl.where(z > 0, z, z * negative_slope)
    else:
        # tanh = sign(z) (1 - e) / (1 + e), e = exp(-2|z|): no overflow for any z. Near 0, where 1 - e
        # cancels, the series |z| - |z|^3/3 + 2|z|^5/15 (the next term is below 1e-7 relative at 0.03).
        a = tl.abs(z)
        e = tl.exp(-2.0 * a)
        t = tl.where(a < 0.03, a * (1.0 - a * a * (1.0 / 3.0 - a * a * (2.0 / 15.0))), (1.0 - e) / (1.0 + e))
        y = tl.where(z < 0, -t, t)
    tl.store(Y + idx, y.to(Y.dtype.element_ty), mask=mask)


@device_function
def bias_act_bwd(
    DY,  # output gradient, [N, C, S] with strides (stride_n, stride_c, stride_s)
    Y,  # saved output, like DY
    DX,  # input gradient out, like DY
    PDB,  # fp32 out, [N, C, SPLIT]: per piece, sum of dx (unused unless HAS_BIAS)
    C, S, stride_n, stride_c, stride_s, SPLIT, negative_slope,
    BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr, TILES: tl.constexpr, HAS_BIAS: tl.constexpr,
    ACT: tl.constexpr,
):
    """dx = dy * act'(z) from y (leaky_relu: 1 or negative_slope by y's sign; tanh: 1 - y^2), and the
    per-piece sums of dx for dbias.

    Program (p, cb, n) covers spatial positions p * TILES * BLOCK_S + [0, TILES * BLOCK_S); the trip count
    is the constexpr TILES, since Triton 3.6's interpreter cannot loop over a range bounded by a program id
    or an argument.
    """
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
        if ACT == 1:
            dx = tl.where(y > 0, dy, dy * negative_slope)
        else:
            dx = dy * (1.0 - y * y)
        tl.store(DX + idx, dx.to(DX.dtype.element_ty), mask=mask)
        if HAS_BIAS:
            acc += dx
    if HAS_BIAS:
        tl.store(PDB + (n * C + c) * SPLIT + pid_split, tl.reduce(acc, 1, _add), mask=c_mask)


def launch_bias_act_fwd(op: str, fwd_kernel, x: torch.Tensor, bias: torch.Tensor | None, *scalars) -> torch.Tensor:
    """Runs ``fwd_kernel`` (a bias_act_fwd kernel taking ``scalars`` after the strides) over x; returns y."""
    n, c, s, strides = bias_view(op, x, bias is not None)
    block_c, block_s = tile(c, s, strides[1], elems=4096)
    y = empty_like(x)
    grid = (-(-s // block_s), -(-c // block_c), n)
    with device_guard(x):
        fwd_kernel[grid](x, x if bias is None else bias, y, c, s, *strides, *scalars, BLOCK_C=block_c,
                         BLOCK_S=block_s, HAS_BIAS=bias is not None)
    return y


def launch_bias_act_bwd(op: str, bwd_kernel, dy: torch.Tensor, y: torch.Tensor, has_bias: bool, max_split: int,
                        *scalars) -> tuple[torch.Tensor, torch.Tensor]:
    """Runs ``bwd_kernel`` (a bias_act_bwd kernel taking ``scalars`` after SPLIT); returns dx (y's layout and
    dtype) and fp32 dbias [C] (empty without a bias)."""
    n, c, s, strides = bias_view(op, y, has_bias)
    dy = same_layout(dy, y)
    # Half the forward's tile: with a bias the backward also keeps an fp32 partial-sum tile, and 4096 fp32
    # elements per program spilled registers in NCHW (ptxas -v, Triton 3.8; tests/gpu_ready).
    block_c, block_s = tile(c, s, strides[1])
    c_blocks = -(-c // block_c)
    if has_bias:
        n_split, tiles = split(n, c_blocks, s, block_s, max_split)
    else:  # nothing to reduce: one tile per program
        n_split, tiles = -(-s // block_s), 1
    dx = empty_like(y)
    pdb = empty((n, c, n_split) if has_bias else (0,), torch.float32, y.device)
    with device_guard(y):
        bwd_kernel[(n_split, c_blocks, n)](dy, y, dx, pdb, c, s, *strides, n_split, *scalars, BLOCK_C=block_c,
                                           BLOCK_S=block_s, TILES=tiles, HAS_BIAS=has_bias)
    # A fixed-order sum over samples and pieces: deterministic, unlike atomics.
    return dx, pdb.sum(dim=(0, 2)) if has_bias else pdb


_TICKETS: dict[torch.device, torch.Tensor] = {}  # per device: the counters lent to every launch
_RETIRED: list[torch.Tensor] = []  # counters replaced by a larger set, kept: a captured CUDA graph may use them


def ticket_counter(x: torch.Tensor, count: int = 1) -> torch.Tensor:
    """At least ``count`` int32 counters on x's device for kernels whose last program to finish does a final step
    (it takes a ticket with an atomic add and the one holding the last resets the counter to 0; see
    sum_over_programs): zeroed once, at the device's first call (warm-up, before a CUDA graph captures a step),
    and left at 0 by every launch, so no launch zeroes them. Kernels that use them must not run concurrently on
    two streams of one device. A call wanting more counters than the device has gets a new, larger zeroed set
    (the old one is kept alive for graphs captured with it). A fake tensor (the step ledger's replay of a
    captured step) gets an unzeroed stand-in: the zeroing belongs to the warm-up, not to the step."""
    from torch._subclasses.fake_tensor import FakeTensor
    from torch.utils._python_dispatch import _disable_current_modes

    if isinstance(x, FakeTensor) or x.device.type == "meta":
        return torch.empty(count, dtype=torch.int32, device=x.device)
    tickets = _TICKETS.get(x.device)
    if tickets is None or tickets.numel() < count:
        if tickets is not None:
            _RETIRED.append(tickets)
        with _disable_current_modes():  # not part of the call that happens to come first (nor of its trace)
            tickets = _TICKETS[x.device] = torch.zeros(count, dtype=torch.int32, device=x.device)
    return tickets


# What the launchers plan for where no GPU can be asked (the step ledger's fake CUDA tensors, the interpreter's
# CPU tensors): an H100 SXM5, the GPU of the ledger's model (132 SMs; L2 50 MiB, as its L2_cache_size reports).
MODEL_SMS = 132
MODEL_L2_BYTES = 50 * 2**20
# The most programs per SM that a cooperative launch (kernel.run_phases) may plan for. Its kernels are compiled
# with at most SM_REGISTERS / (programs * threads) registers per thread (128 at 4 warps), so that many fit on
# every SM of sm_80 and sm_90 (64K 32-bit registers each); fastgan.testing.specialisations checks that no such
# kernel spills under that cap, and that its shared memory fits too.
COOPERATIVE_PROGRAMS_PER_SM = 4
SM_REGISTERS = 65536


def phase_zero_options(cooperative: bool, num_warps: int = 4) -> dict:
    """The launch options of a kernel's PHASE 0 (kernel.run_phases)."""
    options = dict(PHASE=0, launch_cooperative_grid=cooperative)
    if cooperative:
        options["maxnreg"] = SM_REGISTERS // (COOPERATIVE_PROGRAMS_PER_SM * 32 * num_warps)
    return options


def device_limits(x: torch.Tensor) -> tuple[int, int]:
    """(streaming multiprocessors, L2 cache bytes) of x's GPU; the H100 SXM5's for fake, meta and CPU tensors."""
    from torch._subclasses.fake_tensor import FakeTensor

    if x.device.type != "cuda" or isinstance(x, FakeTensor):
        return MODEL_SMS, MODEL_L2_BYTES
    return _cuda_limits(x.device.index if x.device.index is not None else torch.cuda.current_device())


@functools.cache
def _cuda_limits(index: int) -> tuple[int, int]:
    props = torch.cuda.get_device_properties(index)
    return props.multi_processor_count, props.L2_cache_size


def device_guard(x: torch.Tensor):
    """Makes x's GPU current so Triton launches on that device's current stream."""
    return torch.cuda.device(x.device) if x.device.type == "cuda" else contextlib.nullcontext()


def check_dtype(op: str, name: str, t: torch.Tensor) -> None:
    if t.dtype not in _FAST_DTYPES:
        raise ValueError(f"{op}: {name} has dtype {t.dtype}; the Triton path takes float32, bfloat16 or "
                         "float16 (use impl='ref' for other dtypes)")


def channels_view(op: str, name: str, x: torch.Tensor) -> tuple[int, int, int, int, int, int]:
    """(N, C, S, stride_n, stride_c, stride_s) of ``x`` seen as [N, C, S] with S the flattened dims 2..

    Takes a contiguous tensor (stride_s = 1) or a channels-last one (stride_c = 1, stride_s = C);
    anything else raises, naming ``name``.
    """
    n, c = x.shape[0], x.shape[1] if x.dim() > 1 else 1
    s = x.numel() // max(n * c, 1)
    if x.is_contiguous():
        return n, c, s, c * s, s, 1
    if x.dim() in (4, 5):
        fmt = torch.channels_last if x.dim() == 4 else torch.channels_last_3d
        if x.is_contiguous(memory_format=fmt):
            return n, c, s, c * s, 1, c
    raise ValueError(f"{op}: {name} with shape {tuple(x.shape)} and strides {x.stride()} is neither "
                     "contiguous nor channels_last; call .contiguous() on it first")


def bias_view(op: str, x: torch.Tensor, has_bias: bool) -> tuple[int, int, int, tuple[int, int, int]]:
    """(N, C, S, strides) of ``x`` for the per-channel bias + activation kernels (leaky_relu, tanh): [N, C, S]
    with a bias; without one any dense layout, seen as flat storage [1, 1, numel]."""
    if not has_bias and is_dense(x):
        return 1, 1, x.numel(), (0, 0, 1)
    n, c, s, *strides = channels_view(op, "x", x)
    return n, c, s, tuple(strides)


def is_dense(x: torch.Tensor) -> bool:
    """True when x's elements fill its storage span exactly, in some order of its dims."""
    expected = 1
    for stride, size in sorted((st, sz) for st, sz in zip(x.stride(), x.shape) if sz > 1):
        if stride != expected:
            return False
        expected *= size
    return True


def same_layout(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``t`` (its dtype kept) with ``like``'s strides: a copy only when they differ."""
    if t.stride() == like.stride():
        return t
    return torch.empty_like(like, dtype=t.dtype).copy_(t)


def empty_like(x: torch.Tensor, dtype=None) -> torch.Tensor:
    """Allocation for kernel outputs (tests replace it with a NaN-filled one)."""
    return torch.empty_like(x, dtype=dtype)


def empty(shape, dtype, device) -> torch.Tensor:
    """Allocation for kernel scratch and statistics (tests replace it with a NaN-filled one)."""
    return torch.empty(shape, dtype=dtype, device=device)


def empty_shaped_like(x: torch.Tensor, shape) -> torch.Tensor:
    """Allocation for a kernel output of another shape than x, in x's dtype and memory layout (NCHW or
    channels_last; tests replace it with a NaN-filled one)."""
    fmt = torch.channels_last if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) \
        and not x.is_contiguous() else torch.contiguous_format
    return torch.empty(shape, dtype=x.dtype, device=x.device, memory_format=fmt)


def next_pow2(n: int) -> int:
    return 1 << max(int(n) - 1, 0).bit_length()


def tile(c: int, s: int, stride_c: int, elems: int = 2048) -> tuple[int, int]:
    """(BLOCK_C, BLOCK_S) for a [C, S] plane: coalesced along whichever of C or S is contiguous."""
    if stride_c == 1 and c > 1:  # channels_last: a warp reads consecutive channels of one pixel
        block_c = min(next_pow2(c), 64)
        return block_c, min(max(elems // block_c, 1), next_pow2(s))
    block_s = min(next_pow2(s), elems)
    return min(max(elems // block_s, 1), next_pow2(c)), block_s


def split(n: int, c_blocks: int, s: int, block_s: int, max_split: int, target_programs: int = 1024):
    """Cuts each (sample, channel block) row of ``s`` elements into ``split`` pieces of ``tiles`` tiles of
    ``block_s``, enough pieces to fill the GPU when N * C is small. Returns (split, tiles).

    ``tiles`` is the kernels' loop trip count, a constexpr: Triton 3.6's interpreter cannot take a
    tensor (program id or argument) as a ``range`` bound. Rounding it to a power of two keeps the
    number of compiled variants small, at the cost of at most half the pieces.
    """
    chunks = -(-s // block_s)
    want = max(1, min(-(-target_programs // max(n * c_blocks, 1)), chunks, max_split))
    tiles = next_pow2(-(-chunks // want))
    return -(-chunks // tiles), tiles
