"""loss_sum: a phase's total loss, l0 + l1 + ... + l(n-1) of fp32 scalars, in one launch.

Sections (../STYLE.md): 1. reference  2. Triton kernel  3. launcher  4. autograd  5. public function.

A CycleGAN G phase adds six losses into its total: five one-element add kernels. The kernel adds them in the
same order, one fp32 add at a time, so the total is bit for bit what the chain of adds (and Python's
``sum(losses)``) gives. Backward launches nothing: d total / d l_i = 1, so every loss gets the incoming gradient
itself (as PyTorch's AddBackward hands it to both of its inputs).
"""

from __future__ import annotations

import torch

from . import _dispatch, _triton_util
from ._triton_util import kernel

try:
    import triton.language as tl
except ImportError:  # the reference path still works; _triton_util.check says why Triton cannot run
    tl = None

_OP = "loss_sum"
_PER_LAUNCH = 8  # the kernel's loss pointers; a longer list continues from the running total, 7 more per launch


# 1. Reference ------------------------------------------------------------------------------------
def loss_sum_ref(losses):
    """Plain PyTorch reference: ``((l0 + l1) + l2) + ...``, the value of Python's ``sum(losses)``."""
    total = losses[0]
    for loss in losses[1:]:
        total = total + loss
    return total


# 2. Triton kernel --------------------------------------------------------------------------------
@kernel
def _loss_sum_kernel(
    L0, L1, L2, L3, L4, L5, L6, L7,  # fp32, []: the losses in order (L1.. unused from index N on)
    OUT,  # fp32 out, []: L0 + L1 + ... + L(N-1), added left to right
    N: tl.constexpr,
):
    total = tl.load(L0)
    if N > 1:
        total = total + tl.load(L1)
    if N > 2:
        total = total + tl.load(L2)
    if N > 3:
        total = total + tl.load(L3)
    if N > 4:
        total = total + tl.load(L4)
    if N > 5:
        total = total + tl.load(L5)
    if N > 6:
        total = total + tl.load(L6)
    if N > 7:
        total = total + tl.load(L7)
    tl.store(OUT, total)


# 3. Launcher -------------------------------------------------------------------------------------
def _loss_sum(losses):
    pending = list(losses)
    out = None
    with _triton_util.device_guard(pending[0]):
        while pending:
            take = pending[:_PER_LAUNCH - (out is not None)]
            pending = pending[len(take):]
            given = ([out] if out is not None else []) + take
            out = _triton_util.empty((), torch.float32, given[0].device)
            pointers = given + [given[0]] * (_PER_LAUNCH - len(given))
            _loss_sum_kernel[(1,)](*pointers, out, N=len(given))
    return out


# 4. Autograd (the sum launches as a torch.library custom op; its backward launches nothing) --------
@torch.library.custom_op("fastgan::loss_sum", mutates_args=())
def _op(losses: list[torch.Tensor]) -> torch.Tensor:
    return _loss_sum(losses)


@_op.register_fake
def _(losses):
    return losses[0].new_empty(())


class _LossSumFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, *losses):
        ctx.n = len(losses)
        return _op(list(losses))

    @staticmethod
    def backward(ctx, grad):
        return (grad,) * ctx.n


_dispatch.register(_OP, "triton", _triton_util.check)


# 5. Public function ------------------------------------------------------------------------------
def loss_sum(losses, *, impl="auto"):
    """The total of a phase's losses: ``l0 + l1 + ...`` added left to right in fp32 (Python's ``sum``).

    Args:
        losses: a non-empty sequence of 0-dim fp32 tensors on one device (the Triton path; the reference takes
            any that add).
        impl: "auto", "ref", "fast" or "triton" (see fastgan.ops._dispatch).
    Returns:
        a 0-dim fp32 tensor; its gradient reaches every loss unchanged.
    """
    losses = list(losses)
    if not losses:
        raise ValueError("loss_sum: no losses given")
    if _dispatch.resolve(_OP, impl, losses[0].device) != "triton":
        return loss_sum_ref(losses)
    for i, loss in enumerate(losses):
        if loss.dim() != 0 or loss.dtype != torch.float32 or loss.device != losses[0].device:
            raise ValueError(f"loss_sum: losses[{i}] is {loss.dtype} {tuple(loss.shape)} on {loss.device}; the "
                             f"Triton path adds 0-dim float32 tensors on one device ({losses[0].device})")
    return _LossSumFn.apply(*losses)
