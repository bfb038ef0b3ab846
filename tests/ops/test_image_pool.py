"""fastgan.ops.image_pool: the Triton kernel (interpreted on the CPU, its output poisoned) against the reference
pool step bit for bit over many steps (filling, full, batches larger than the pool), and CycleGAN's ImagePool
on either path: the same outputs, pool and count, and the same random draws."""

import importlib

import pytest
import torch

from fastgan.models.cyclegan import ImagePool
from fastgan.ops import _triton_util, image_pool, image_pool_ref
from fastgan.testing import ledger

module = importlib.import_module("fastgan.ops.image_pool")


def _pools(pool_size, shape, dtype=torch.float32):
    return [(torch.zeros(pool_size, *shape, dtype=dtype), torch.zeros((), dtype=torch.long)) for _ in range(2)]


@pytest.mark.parametrize("fmt", [torch.channels_last, torch.contiguous_format])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_matches_reference_bit_for_bit(triton_cpu, monkeypatch, fmt, dtype):
    monkeypatch.setattr(module, "_BLOCK", 64)  # several programs per image: the count is written by the last one
    torch.manual_seed(0)
    (pool, count), (ref_pool, ref_count) = _pools(4, (3, 5, 7))  # odd sizes, a pool the batches overflow
    for step in range(14):
        batch = (1, 3, 6)[step % 3]  # 6 > the pool: slots filled and then drawn again inside one batch
        images = (torch.randn(batch, 3, 5, 7) * (step + 1)).to(dtype).to(memory_format=fmt)
        draws, slots = torch.rand(batch), torch.randint(4, (batch,))
        out = image_pool(images, pool, count, draws, slots, impl="triton")
        expected = image_pool_ref(images, ref_pool, ref_count, draws, slots)
        assert torch.equal(out, expected), step
        assert out.dtype == images.dtype and out.stride() == images.stride()
        assert torch.equal(pool, ref_pool) and torch.equal(count, ref_count), step
        assert not _triton_util._TICKETS[torch.device("cpu")].any()  # batch_norm_act may have grown it
    assert count == 4 and (pool != 0).all()  # filled, and every slot was written


def test_cyclegan_pool_same_on_both_paths_with_the_same_draws(triton_cpu):
    """ImagePool(impl="triton") and ImagePool(impl="ref"): the same returned images, pool, count and RNG
    stream (torch.rand then torch.randint, the same shapes) over a fill, full-pool swaps and batch sizes 1..3."""
    pools = {impl: ImagePool(5, (3, 8, 8), impl=impl) for impl in ("triton", "ref")}
    outputs = {}
    for impl, pool in pools.items():
        torch.manual_seed(3)
        gen = torch.Generator().manual_seed(9)
        outputs[impl] = [pool(torch.randn(1 + k % 3, 3, 8, 8, generator=gen).bfloat16()
                              .to(memory_format=torch.channels_last)) for k in range(12)]
        outputs[impl].append(torch.rand(3))  # the next draws of the stream
    for a, b in zip(outputs["triton"], outputs["ref"], strict=True):
        assert torch.equal(a, b)
    assert torch.equal(pools["triton"].images, pools["ref"].images)
    assert pools["triton"].count == pools["ref"].count == 5


def test_replayed_launches_match_a_real_run(monkeypatch):
    """The step ledger's replay of image_pool (on fake CUDA tensors) makes the launches a real run makes."""
    pytest.importorskip("triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    pool, count = _pools(3, (3, 5, 7))[0]
    images = torch.randn(2, 3, 5, 7).to(memory_format=torch.channels_last)
    calls = ledger._Calls(costs=False)
    with ledger._recording(calls, run_triton=True):
        image_pool(images, pool, count, torch.rand(2), torch.randint(3, (2,)), impl="triton")
    (_, op, inner, (args, kwargs)), = [e for e in calls.entries if e[0] == "op"]
    assert [e[1] for e in inner] == ["triton _image_pool_kernel"]
    replayed = ledger.op_kernels(op.removesuffix(".default").replace(".", "::", 1), args, kwargs)
    assert [e[1] for e in replayed] == ["triton _image_pool_kernel"]


def test_bad_input_is_one_clear_error(triton_cpu):
    pool, count = _pools(3, (3, 5, 7))[0]
    images = torch.randn(2, 3, 5, 7)
    draws, slots = torch.rand(2), torch.randint(3, (2,))
    with pytest.raises(ValueError, match="image_pool: pool of shape"):
        image_pool(torch.randn(2, 3, 5, 6), pool, count, draws, slots, impl="triton")
    with pytest.raises(ValueError, match="count must be a 0-dim int64"):
        image_pool(images, pool, count.int(), draws, slots, impl="triton")
    with pytest.raises(ValueError, match="draws and slots"):
        image_pool(images, pool, count, draws[:1], slots, impl="triton")
    with pytest.raises(ValueError, match="float64"):
        image_pool(images.double(), pool, count, draws, slots, impl="triton")
    with pytest.raises(ValueError, match="not contiguous"):
        image_pool(images, pool.transpose(2, 3).contiguous().transpose(2, 3), count, draws, slots, impl="triton")


@pytest.mark.cuda
def test_cuda_pool_matches_the_reference_bit_for_bit():
    """On a GPU, where the programs really run concurrently (the last one writes the count): ImagePool on the
    Triton path and on the reference path over fills, swaps and batches larger than the pool."""
    pools = {impl: ImagePool(5, (3, 64, 64), impl=impl).cuda() for impl in ("triton", "ref")}
    outputs = {}
    for impl, pool in pools.items():
        torch.manual_seed(3)
        gen = torch.Generator(device="cuda").manual_seed(9)
        outputs[impl] = [pool(torch.randn(1 + k % 7, 3, 64, 64, device="cuda", generator=gen).bfloat16()
                              .to(memory_format=torch.channels_last)) for k in range(30)]
    for a, b in zip(outputs["triton"], outputs["ref"], strict=True):
        assert torch.equal(a, b)
    assert torch.equal(pools["triton"].images, pools["ref"].images)
    assert torch.equal(pools["triton"].count, pools["ref"].count)
