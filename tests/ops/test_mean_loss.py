"""fastgan.ops.mean_loss: the Triton kernels (interpreted on the CPU, every buffer poisoned) against the float64
reference, outputs and gradients, for every kind, both layouts, three dtypes, constant and tensor targets."""

import functools
import importlib

import pytest
import torch

from fastgan.ops import _dispatch, _triton_util, mean_loss, mean_loss_ref

module = importlib.import_module("fastgan.ops.mean_loss")

SHAPES = [
    (1, 1, 30, 30),  # a 70x70 PatchGAN's logits at 256x256
    (2, 3, 37, 53),  # odd sizes, batch 2
    (7,),  # minimal: one row, less than a tile
]
KINDS = ("mse", "l1", "bce_with_logits")


def _inputs(shape, dtype, fmt, kind, tensor_target, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = (3 * torch.randn(shape, generator=gen)).to(dtype)
    t = torch.randn(shape, generator=gen) if kind != "bce_with_logits" else torch.rand(shape, generator=gen)
    if kind == "l1":  # ties: sign(0) = 0 in the gradient
        x.view(-1)[::5] = 0.0
        t.view(-1)[::5] = 0.0
    if len(shape) == 4:
        x, t = x.to(memory_format=fmt), t.to(memory_format=fmt)
    return x.requires_grad_(), (t.requires_grad_() if tensor_target else 1.0)


def _loss_and_grads(how, x, target, kind, weight=1.0):
    """The loss and the gradients of x (and of a tensor target): how = "triton", "float64" (the reference in
    float64) or "torch" (the reference as a training step computes it, in fp32)."""
    dtype = torch.float64 if how == "float64" else None
    x = x.detach().to(dtype or x.dtype).requires_grad_()
    tensor = isinstance(target, torch.Tensor)
    if tensor:
        target = target.detach().to(dtype or target.dtype).requires_grad_()
    if how == "triton":
        loss = mean_loss(x, target, kind, weight=weight, impl="triton")
    else:
        loss = mean_loss_ref(x, target, kind, weight=weight, dtype=dtype or torch.float32)
    grads = torch.autograd.grad(loss, [x, target] if tensor else [x])
    return loss, grads


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("kind", KINDS)
def test_matches_float64_reference(triton_cpu, shape, dtype, kind):
    for fmt, tensor_target in ((torch.channels_last, kind == "l1"), (torch.contiguous_format, True)):
        x, target = _inputs(shape, dtype, fmt, kind, tensor_target)
        weight = 10.0 if kind == "l1" else 0.5  # lambda_cycle; CycleGAN's halved D loss

        loss, grads = _loss_and_grads("triton", x, target, kind, weight)
        ref, ref_grads = _loss_and_grads("float64", x, target, kind, weight)
        _, torch_grads = _loss_and_grads("torch", x, target, kind, weight)
        assert loss.dtype == torch.float32 and loss.dim() == 0
        # Computed in fp32 from exact fp32 copies of the inputs, whatever their dtype.
        torch.testing.assert_close(loss.double(), ref, rtol=2e-6, atol=1e-7)
        for g, g_ref, g_torch, given in zip(grads, ref_grads, torch_grads, (x, target)):
            assert g.dtype == given.dtype and g.stride() == given.stride()  # its layout, no copy
            err, torch_err = (g.double() - g_ref).abs().max(), (g_torch.double() - g_ref).abs().max()
            # floor: one ulp of the gradient's dtype (fp32 results that differ in the last bit can round apart)
            assert err <= 2 * torch_err + torch.finfo(g.dtype).eps * g_ref.abs().max(), (err, torch_err)
            assert torch.isfinite(g).all()
        if kind == "l1":
            zero = (x.detach().float() == target.detach()).reshape(-1) if tensor_target else None
            assert zero is None or (grads[0].reshape(-1)[zero] == 0).all()


def test_gradcheck_reference():
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64, requires_grad=True)
    t = torch.randn(2, 3, 4, 5, dtype=torch.float64, requires_grad=True)
    for kind in KINDS:
        assert torch.autograd.gradcheck(functools.partial(mean_loss_ref, kind=kind, weight=3.0, dtype=torch.float64),
                                        (x, t))
        assert torch.autograd.gradcheck(functools.partial(mean_loss_ref, target=0.0, kind=kind, dtype=torch.float64),
                                        (x,))


def test_many_programs_and_tiles(triton_cpu, monkeypatch):
    """Small tiles and few programs, so the forward's partials, the ticket of the last program and the tile loop
    (TILES > 1) all run at a size the interpreter runs fast; the ticket counter is left at 0 for the next call."""
    monkeypatch.setattr(module, "_BLOCK", 16)
    monkeypatch.setattr(module, "_MAX_PROGRAMS", 4)
    for kind in KINDS:
        for numel in (16, 17, 64 * 5 + 3):  # one tile; a tile and one element; 4 programs of 8 tiles
            x, target = _inputs((numel,), torch.float32, None, kind, True, seed=numel)
            loss, grads = _loss_and_grads("triton", x, target, kind, 2.0)
            ref, ref_grads = _loss_and_grads("float64", x, target, kind, 2.0)
            torch.testing.assert_close(loss.double(), ref, rtol=2e-6, atol=1e-7)
            for g, g_ref in zip(grads, ref_grads):
                torch.testing.assert_close(g.double(), g_ref, rtol=1e-5, atol=1e-8)
            assert not _triton_util._TICKETS[torch.device("cpu")].any()  # batch_norm_act may have grown it


def test_weight_is_folded_and_repeatable(triton_cpu):
    x = torch.randn(1, 1, 30, 30)
    once = mean_loss(x, 1.0, "mse", impl="triton")
    assert torch.equal(mean_loss(x, 1.0, "mse", impl="triton"), once)  # deterministic: a fixed summation order
    torch.testing.assert_close(mean_loss(x, 1.0, "mse", weight=10.0, impl="triton"), once * 10.0, rtol=1e-6, atol=0)
    assert mean_loss(x, 1.0, "mse", weight=0.0, impl="triton") == 0


def test_bce_extreme_logits(triton_cpu):
    """log1p(exp(-|x|)) where exp(-|x|) is below fp32's epsilon next to 1, and saturated sigmoids."""
    x = torch.tensor([-100.0, -30.0, -17.0, -1e-3, 0.0, 1e-3, 17.0, 30.0, 100.0], requires_grad=True)
    for target in (0.0, 1.0):
        loss, (g,) = _loss_and_grads("triton", x, target, "bce_with_logits")
        ref, (g_ref,) = _loss_and_grads("float64", x, target, "bce_with_logits")
        torch.testing.assert_close(loss.double(), ref, rtol=2e-6, atol=0)
        torch.testing.assert_close(g.double(), g_ref, rtol=1e-6, atol=1e-12)


def test_target_in_another_layout(triton_cpu):
    x = torch.randn(2, 3, 5, 7).to(memory_format=torch.channels_last).requires_grad_()
    t = torch.randn(2, 3, 5, 7, requires_grad=True)  # NCHW: copied into x's layout
    loss, (gx, gt) = _loss_and_grads("triton", x, t, "l1")
    ref, (rx, rt) = _loss_and_grads("float64", x, t, "l1")
    torch.testing.assert_close(loss.double(), ref, rtol=2e-6, atol=0)
    torch.testing.assert_close(gx.double(), rx)
    torch.testing.assert_close(gt.double(), rt)
    assert gx.is_contiguous(memory_format=torch.channels_last)


def test_cpu_auto_is_the_reference_and_bad_input_raises(triton_cpu):
    x = torch.randn(2, 3)
    mean_loss(x, 1.0, "mse")
    assert _dispatch.last_impl("mean_loss") == "ref"
    assert torch.equal(mean_loss(x, 1.0, "mse"), torch.nn.functional.mse_loss(x, torch.ones_like(x)))
    with pytest.raises(ValueError, match="kind='hinge'"):
        mean_loss(x, 1.0, "hinge")
    with pytest.raises(ValueError, match=r"target has shape \(3,\)"):
        mean_loss(x, torch.zeros(3), "l1", impl="triton")
    with pytest.raises(ValueError, match="float64"):
        mean_loss(x.double(), 1.0, "mse", impl="triton")
    with pytest.raises(ValueError, match="dense"):
        mean_loss(torch.randn(4, 6)[:, ::2], 1.0, "mse", impl="triton")


@pytest.mark.cuda
@pytest.mark.parametrize("kind", KINDS)
def test_cuda_last_program_sum_is_deterministic_syncless_and_replays_in_a_graph(kind):
    """On a GPU, where programs really run concurrently: 384 programs (a batch of 4 CycleGAN images) whose last
    one to finish sums the partials, the same value every call, close to float64; no host sync forward or
    backward; and a CUDA graph replay computes what an eager call does on new data."""
    shape = (4, 3, 256, 256)
    x = torch.randn(shape, device="cuda", dtype=torch.bfloat16).contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    target = torch.randn_like(x, dtype=torch.float32) if kind == "l1" else 1.0
    first = mean_loss(x, target, kind, weight=10.0, impl="triton")
    for _ in range(50):
        assert torch.equal(mean_loss(x, target, kind, weight=10.0, impl="triton"), first)
    ref, _ = _loss_and_grads("float64", x, target, kind, 10.0)
    torch.testing.assert_close(first.double(), ref, rtol=2e-5, atol=1e-6)
    torch.cuda.set_sync_debug_mode("error")
    try:
        mean_loss(x, target, kind, weight=10.0, impl="triton").backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        mean_loss(x, target, kind, impl="triton")  # warm-up outside capture
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = mean_loss(x, target, kind, impl="triton")
    for _ in range(3):
        with torch.no_grad():
            x.copy_(torch.randn_like(x))
        graph.replay()
        assert torch.equal(captured, mean_loss(x, target, kind, impl="triton"))
