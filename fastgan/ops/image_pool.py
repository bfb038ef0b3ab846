"""image_pool: one step of CycleGAN's image pool (Shrivastava et al. 2017) for a batch, in one launch.

Sections (../STYLE.md): 1. reference  2. Triton kernels  3. launchers  4. autograd (none: the pool is not
differentiated; a torch.library custom op that mutates the pool)  5. public function.

Per incoming image i, in batch order, with the pool's fill ``count`` and the caller's random draws:
  filling = count < pool_size;  index = count if filling else slots[i];  stored = pool[index]
  out[i] = stored if (not filling and draws[i] < 0.5) else image[i]
  pool[index] = image[i] if (filling or draws[i] < 0.5) else stored;  count += filling
so an image stored for image i may be returned for a later image of the same batch. The reference is this
loop in ATen ops (a dozen tiny kernels per image); the kernel runs it with every program owning a slice of
the image elements for the whole batch (the loop's dependencies are per element, so programs need nothing
from each other), reads the count on the device (no host sync) and has the last program to finish (a ticket,
_triton_util.ticket_counter) write the new count, after every program has read the old one. The pool keeps
its own dtype (fp32 copies of bf16 images are exact, and so is the cast back) and layout: the kernel indexes
an NCHW pool and NHWC images (or any pair of contiguous/channels_last layouts) elementwise, without a copy.
"""

from __future__ import annotations

import torch

from . import _dispatch, _triton_util
from ._triton_util import kernel

try:
    import triton.language as tl
except ImportError:  # the reference path still works; _triton_util.check says why Triton cannot run
    tl = None

_OP = "image_pool"
_BLOCK = 1024  # elements of one image per program: 8 per thread at 4 warps


# 1. Reference ------------------------------------------------------------------------------------
@torch.no_grad()
def image_pool_ref(images, pool, count, draws, slots):
    """Plain PyTorch reference, in place on ``pool`` and ``count``; returns the images D is to see (a new
    tensor of ``images``' dtype and layout). Every choice is a device tensor applied with where/index_copy_:
    no host sync."""
    pool_size = pool.shape[0]
    swap = draws < 0.5
    out = torch.empty_like(images)
    for i in range(images.shape[0]):  # sequential: an image stored here may be drawn by a later one in the batch
        new = images[i : i + 1].to(pool.dtype)
        filling = count < pool_size
        index = torch.where(filling, count, slots[i]).view(1)
        stored = pool.index_select(0, index)
        take_stored = ~filling & swap[i]
        out[i : i + 1] = torch.where(take_stored, stored, new)
        pool.index_copy_(0, index, torch.where(filling | swap[i], new, stored))
        count += filling
    return out


# 2. Triton kernel --------------------------------------------------------------------------------
@kernel
def _image_pool_kernel(
    IMAGES,  # incoming images, [BATCH, C, S] with strides (stride_n, stride_c, stride_s)
    OUT,  # out, like IMAGES (the same strides)
    POOL,  # stored images, [pool_size, C * S] contiguous
    COUNT,  # int64, []: slots filled; the last program writes min(count + BATCH, pool_size)
    DRAWS,  # fp32, [BATCH]: uniform draws in [0, 1); below 0.5 swaps with a stored image once the pool is full
    SLOTS,  # int64, [BATCH]: uniform draws of a slot in [0, pool_size)
    TICKETS,  # int32, [1]: programs finished; 0 between launches (the last program resets it)
    S, pool_size, stride_n, stride_c, stride_s, numel,
    BATCH: tl.constexpr, BLOCK: tl.constexpr,
):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)  # element c * S + s of one image
    mask = offs < numel
    image_offs = (offs // S) * stride_c + (offs % S) * stride_s
    count = tl.load(COUNT)
    for i in range(BATCH):  # a constexpr trip count: the interpreter loops over no argument
        filling = count < pool_size
        swap = tl.load(DRAWS + i) < 0.5
        index = tl.where(filling, count, tl.load(SLOTS + i))
        new = tl.load(IMAGES + i * stride_n + image_offs, mask=mask, other=0.0).to(POOL.dtype.element_ty)
        stored = tl.load(POOL + index * numel + offs, mask=mask, other=0.0)
        out = tl.where((count >= pool_size) & swap, stored, new)
        tl.store(OUT + i * stride_n + image_offs, out.to(OUT.dtype.element_ty), mask=mask)
        tl.store(POOL + index * numel + offs, new, mask=mask & (filling | swap))
        tl.debug_barrier()  # the next image may read the slot just written, through another thread's loads
        count += filling.to(tl.int64)
    ticket = tl.atomic_add(TICKETS, 1)  # acq_rel: every program's read of the count comes before it
    last = ticket == tl.num_programs(0) - 1
    tl.store(COUNT, count, mask=last)
    tl.store(TICKETS, 0, mask=last)


def _touched(images, out, pool, count, draws, slots, tickets, *_, **__):
    """What one launch reads and writes, for fastgan.testing.ledger's byte count: the images in and out, and per
    image one stored image read and one written (a slot each), not the whole pool that POOL points to."""
    return (images, out, count, draws, slots, tickets, *[pool[0] for _ in range(2 * images.shape[0])])


_image_pool_kernel.ledger_tensors = _touched


# 3. Launcher -------------------------------------------------------------------------------------
def _image_pool(images, pool, count, draws, slots):
    batch, _, s, *strides = _triton_util.channels_view(_OP, "images", images)
    numel = pool[0].numel()
    out = _triton_util.empty_like(images)
    if batch == 0:
        return out
    with _triton_util.device_guard(images):
        _image_pool_kernel[(max(-(-numel // _BLOCK), 1),)](
            images, out, pool, count, draws, slots, _triton_util.ticket_counter(images), s, pool.shape[0],
            *strides, numel, BATCH=batch, BLOCK=_BLOCK)
    return out


# 4. The custom op (so torch.compile and CUDA graphs see one opaque kernel that writes pool and count) --
@torch.library.custom_op("fastgan::image_pool", mutates_args=("pool", "count"))
def _op(images: torch.Tensor, pool: torch.Tensor, count: torch.Tensor, draws: torch.Tensor,
        slots: torch.Tensor) -> torch.Tensor:
    return _image_pool(images, pool, count, draws, slots)


@_op.register_fake
def _(images, pool, count, draws, slots):
    return torch.empty_like(images)


_dispatch.register(_OP, "triton", _triton_util.check)


# 5. Public function ------------------------------------------------------------------------------
def image_pool(images, pool, count, draws, slots, *, impl="auto"):
    """One image-pool step for a batch: returns the images to show D and updates ``pool`` and ``count`` in place.

    Args:
        images: [N, C, ...] incoming images (fp32, bf16 or fp16 on the Triton path; contiguous or channels_last).
        pool: [pool_size, C, ...] stored images, contiguous (fp32, bf16 or fp16 on the Triton path).
        count: 0-dim int64 tensor, the slots filled so far (the pool fills slots 0, 1, ... in order).
        draws: [N] uniform draws in [0, 1) (``torch.rand(N)``): below 0.5, a full pool swaps.
        slots: [N] int64 slot draws in [0, pool_size) (``torch.randint(pool_size, (N,))``).
        impl: "auto", "ref", "fast" or "triton" (see fastgan.ops._dispatch).
    Returns:
        [N, C, ...] in ``images``' dtype and layout, no autograd history.
    """
    n = images.shape[0]
    if tuple(pool.shape[1:]) != tuple(images.shape[1:]) or pool.shape[0] < 1:
        raise ValueError(f"image_pool: pool of shape {tuple(pool.shape)} for images of shape {tuple(images.shape)}")
    if count.dim() != 0 or count.dtype != torch.int64:
        raise ValueError(f"image_pool: count must be a 0-dim int64 tensor, got {count.dtype} {tuple(count.shape)}")
    if tuple(draws.shape) != (n,) or tuple(slots.shape) != (n,) or slots.dtype != torch.int64:
        raise ValueError(f"image_pool: draws and slots must have shape ({n},) (slots int64), got "
                         f"{tuple(draws.shape)} and {tuple(slots.shape)} {slots.dtype}")
    if _dispatch.resolve(_OP, impl, images.device) != "triton":
        return image_pool_ref(images, pool, count, draws, slots)
    _triton_util.check_dtype(_OP, "images", images)
    _triton_util.check_dtype(_OP, "pool", pool)
    if draws.dtype != torch.float32:
        raise ValueError(f"image_pool: draws has dtype {draws.dtype}; the Triton path takes float32 (torch.rand)")
    if not pool.is_contiguous():
        raise ValueError(f"image_pool: pool with strides {pool.stride()} is not contiguous")
    devices = {t.device for t in (pool, count, draws, slots)}
    if devices != {images.device}:
        raise ValueError(f"image_pool: images are on {images.device} but pool, count, draws and slots on "
                         f"{', '.join(sorted(map(str, devices)))}")
    with torch.no_grad():
        return _op(images.detach(), pool, count, draws, slots)
