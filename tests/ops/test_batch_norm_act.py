"""batch_norm_act: the Triton path against the float64 reference, outputs, every gradient and the running
statistics, in training (batch statistics) and eval (running statistics) mode.

On CPU the kernels run under TRITON_INTERPRET=1 at small shapes; the CUDA cases use the DCGAN 64x64 shapes
and are skipped without a GPU.
"""

import importlib
import re

import pytest
import torch
import torch.nn.functional as F

from fastgan import ops
from fastgan.ops import batch_norm_act, batch_norm_act_ref

pytest.importorskip("triton")

_ULP = {torch.float32: 2.0**-23, torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}
_MODULE = importlib.import_module("fastgan.ops.batch_norm_act")


def _inputs(shape, dtype, device, channels_last, affine):
    """x (large mean, to test the shift), weight, bias rounded to dtype; fp32 running stats; dy."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = (torch.randn(shape, dtype=torch.float64) * 2 + 3).to(device, dtype).contiguous(memory_format=fmt)
    w = torch.randn(shape[1], dtype=torch.float64).to(device, dtype) if affine else None
    b = torch.randn(shape[1], dtype=torch.float64).to(device, dtype) if affine else None
    running = (torch.randn(shape[1], device=device), torch.rand(shape[1], device=device) + 0.5)
    dy = torch.randn(shape, dtype=torch.float64).to(device, dtype).contiguous(memory_format=fmt)
    return [x, w, b], running, dy


def _run(fn, tensors, dy, cast=None):
    """fn(x, w, b) and the gradients of sum(y * dy) for every tensor given, optionally cast first."""
    leaves = [None if t is None else (t if cast is None else t.to(cast)).detach().requires_grad_(True)
              for t in tensors]
    y = fn(*leaves)
    given = [t for t in leaves if t is not None]
    grads = torch.autograd.grad(y, given, dy.to(y.dtype))
    return y, list(grads)


def _torch_native(training, act, slope, running):
    """PyTorch's own computation entirely in the input's dtype: the yardstick for bf16/fp16 error."""
    def fn(x, w, b):
        rm, rv = (t.to(x.dtype, copy=True) for t in running)
        y = F.batch_norm(x, rm, rv, w, b, training, 0.1, 1e-5)
        return F.relu(y) if act == "relu" else F.leaky_relu(y, slope) if act == "leaky_relu" else y
    return fn


def _check_against_reference(shape, dtype, device, channels_last, affine, act, training, momentum=0.1,
                             track=True):
    slope = 0.2
    tensors, running, dy = _inputs(shape, dtype, device, channels_last, affine)
    fast_stats = [t.clone() for t in running] if track else [None, None]
    ref_stats = [t.double() for t in running] if track else [None, None]
    counts = [torch.tensor(7, device=device), torch.tensor(7)] if track else [None, None]  # num_batches_tracked

    def fast(x, w, b):
        return batch_norm_act(x, *fast_stats, w, b, training, momentum, 1e-5, act=act, negative_slope=slope,
                              num_batches_tracked=counts[0], impl="triton")

    def ref(x, w, b):
        return batch_norm_act_ref(x, *ref_stats, w, b, training, momentum, 1e-5, act=act, negative_slope=slope,
                                  num_batches_tracked=counts[1])

    y, grads = _run(fast, tensors, dy)
    assert ops.last_impl("batch_norm_act") == "triton"
    y_ref, grads_ref = _run(ref, tensors, dy, torch.float64)
    assert y.dtype == dtype and y.shape == tensors[0].shape
    assert y.stride() == tensors[0].stride()  # x's layout, as nn.BatchNorm2d keeps it
    if dtype != torch.float32:
        y_pt, grads_pt = _run(_torch_native(training, act, slope, running), tensors, dy)
    names = [n for n, t in zip(["y", "dx", "dweight", "dbias"], [tensors[0], *tensors]) if t is not None]
    for i, (name, got, want) in enumerate(zip(names, [y, *grads], [y_ref, *grads_ref])):
        assert got.dtype == dtype, name
        err = (got.double() - want).abs().max().item()
        scale = 1 + want.abs().max().item()
        if dtype == torch.float32:
            tol = 1e-5 * scale
        else:
            pt = [y_pt, *grads_pt][i]
            tol = 2 * (pt.double() - want).abs().max().item() + 2 * _ULP[dtype] * scale
        assert err <= tol, f"{name}: max error {err:.3g} > {tol:.3g}"
    if track:  # the running statistics: updated when training (from fp32 sums), untouched in eval
        for name, got, want, before in zip(["running_mean", "running_var"], fast_stats, ref_stats, running):
            torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5, msg=name)
            assert torch.equal(got, before) != training, name
        assert counts[0].item() == counts[1].item() == 7 + training


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_matches_reference_small(triton_cpu, dtype, channels_last, training):
    _check_against_reference((3, 5, 4, 7), dtype, "cpu", channels_last, True, "leaky_relu", training)


@pytest.mark.parametrize("act", ["relu", "none"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_other_activations(triton_cpu, act, training):
    _check_against_reference((3, 5, 4, 7), torch.float32, "cpu", False, True, act, training)


@pytest.mark.parametrize("shape", [
    (1, 4, 9, 11),  # odd sizes, one sample
    (2, 3, 37, 53),  # odd sizes from the issue
    (1, 2, 48, 48),  # 2304 > one 2048 tile: a sample's row split over several programs
    (2, 70, 3, 4),  # channels beyond one channels_last block of 64
    (5, 3, 1, 1),  # one pixel per sample: the statistics run over the batch only
    (2, 300, 2, 2),  # NCHW: a 2x2 plane's tiles hold at most _NCHW_MAX_BLOCK_C channels, the last block partial
])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_matches_reference_odd_shapes(triton_cpu, shape, channels_last, training):
    _check_against_reference(shape, torch.float32, "cpu", channels_last, True, "leaky_relu", training)


@pytest.mark.parametrize("affine,track,momentum", [
    (False, True, 0.1),  # no affine parameters
    (True, False, 0.1),  # batch statistics without running ones (nn.BatchNorm2d(track_running_stats=False))
    (True, True, 0.5),  # another momentum
    (True, True, 1.0),  # momentum 1: the running stats become the batch's
])
def test_variants(triton_cpu, affine, track, momentum):
    _check_against_reference((4, 3, 5, 6), torch.float32, "cpu", False, affine, "relu", True, momentum, track)


@pytest.mark.cuda
@pytest.mark.parametrize("shape", [
    (128, 512, 4, 4), (128, 256, 8, 8), (128, 128, 16, 16), (128, 64, 32, 32),  # DCGAN 64x64 generator
    (128, 128, 16, 16), (128, 256, 8, 8), (128, 512, 4, 4),  # DCGAN 64x64 discriminator
    (1, 64, 32, 32), (3, 37, 13, 17),  # one sample; odd
])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("act,training", [("relu", True), ("leaky_relu", True), ("leaky_relu", False)])
def test_matches_reference_cuda(shape, dtype, channels_last, act, training, poisoned_buffers):
    _check_against_reference(shape, dtype, "cuda", channels_last, True, act, training)


@pytest.mark.parametrize("group", [1, 2, 3])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_reduction_tree(triton_cpu, monkeypatch, group, channels_last, training):
    """Small tiles and groups, so that the partial sums go through several groups of uneven size and a program
    covers tiles of two samples: the last-program sums still match the reference, and every ticket counter is
    back to zero after the forward and the backward."""
    monkeypatch.setattr(_MODULE._triton_util, "tile", lambda c, s, stride_c: (2, 4))
    monkeypatch.setattr(_MODULE, "_GROUP", group)
    monkeypatch.setattr(_MODULE, "_MAX_PROGRAMS", 3 * group + 1)
    plan = _MODULE._plan(torch.empty(3, 5, 4, 7))
    assert plan["groups"] > 1 or group == 1
    assert plan["reduce"][2] > 1  # tiles per program
    _check_against_reference((3, 5, 4, 7), torch.float32, "cpu", channels_last, True, "leaky_relu", training)
    assert not _MODULE._triton_util._TICKETS[torch.device("cpu")].any()


def _op_launches(fn):
    """The Triton launches of fastgan's custom ops, each op's own launches in order, and the number of ATen calls
    that launch a kernel, made while ``fn`` runs (its kernels really run, through the interpreter)."""
    from fastgan.testing import ledger

    calls = ledger._Calls(costs=False)
    with ledger._recording(calls, run_triton=True):
        fn()
    ops_ = [(e[1], [name.removeprefix("triton ") for kind, name, *_ in e[2] if kind == "kernel"],
             sum(k == "aten" for k, *_ in e[2]))
            for e in calls.entries if e[0] == "op"]
    return ops_, sum(e[0] == "aten" for e in calls.entries)


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("track", [True, False])
def test_two_launches_per_direction(monkeypatch, affine, track):
    """Batch statistics: the forward is the statistics pass (running-statistics update included) and the
    normalise pass, the backward its reduction pass and the dx pass; running statistics: one pass each way.
    No other kernel runs: no ATen op inside the ops or around them. (Unpoisoned buffers: a NaN fill would
    count as an ATen kernel.)"""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    x = torch.randn(3, 5, 6, 7).contiguous(memory_format=torch.channels_last).requires_grad_()
    w, b = (torch.randn(5, requires_grad=True), torch.randn(5, requires_grad=True)) if affine else (None, None)
    stats = (torch.zeros(5), torch.ones(5)) if track else (None, None)
    dy = torch.randn_like(x)
    for training in (True, False) if track else (True,):
        for t in (x, w, b):
            if t is not None:
                t.grad = None  # no accumulation into the last run's gradients
        ops_, aten = _op_launches(
            lambda training=training: batch_norm_act(x, *stats, w, b, training, impl="triton").backward(dy))
        forward = [("fastgan.batch_norm_act_stats.default", ["_batch_norm_act_stats_kernel"], 0)] if training else []
        assert ops_ == forward + [
            ("fastgan.batch_norm_act_fwd.default", ["_batch_norm_act_fwd_kernel"], 0),
            ("fastgan.batch_norm_act_bwd.default",
             ["_batch_norm_act_bwd_stats_kernel"] + (["_batch_norm_act_bwd_kernel"] if training else []), 0)]
        assert aten == 0


def test_mixed_layout_gradient(triton_cpu):
    """An NCHW dy for a channels_last x still gives the reference gradient."""
    x = torch.randn(3, 4, 6, 5).contiguous(memory_format=torch.channels_last).requires_grad_(True)
    y = batch_norm_act(x, None, None, training=True, impl="triton")
    dy = torch.randn(3, 4, 6, 5)
    (dx,) = torch.autograd.grad(y, x, dy)
    (dx_ref,) = torch.autograd.grad(batch_norm_act_ref(x.double(), None, None, training=True), x, dy.double())
    torch.testing.assert_close(dx, dx_ref.float(), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_gradient_of_a_concatenation(triton_cpu, channels_last, training):
    """dy a channel slice of a concatenation's gradient (a U-Net's skip), in x's layout: read in place with its
    own strides (no copy), the reference's gradients."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(3, 4, 5, 6).contiguous(memory_format=fmt).requires_grad_(True)
    w, b = torch.randn(4, requires_grad=True), torch.randn(4, requires_grad=True)
    big = torch.randn(3, 9, 5, 6).contiguous(memory_format=fmt)
    dy = big[:, 2:6]
    assert _MODULE._gradient_strides(dy, _MODULE._plan(x)["strides"]) is not None
    running = [torch.zeros(4), torch.ones(4)]
    y = batch_norm_act(x, *[t.clone() for t in running], w, b, training, act="leaky_relu", impl="triton")
    got = torch.autograd.grad(y, [x, w, b], dy)
    y_ref = batch_norm_act_ref(x.double(), *[t.double() for t in running], w.double(), b.double(), training,
                               act="leaky_relu")
    want = torch.autograd.grad(y_ref, [x, w, b], dy.double())
    for name, a, e in zip(["dx", "dweight", "dbias"], got, want):
        torch.testing.assert_close(a.double(), e.double(), atol=1e-5, rtol=1e-5, msg=name)


def test_deterministic(triton_cpu):
    tensors, running, dy = _inputs((4, 3, 24, 24), torch.float32, "cpu", True, True)

    def grads():
        return _run(lambda x, w, b: batch_norm_act(x, None, None, w, b, True, impl="triton"), tensors, dy)[1]

    for a, b in zip(grads(), grads()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("impl", ["ref", "triton"])
def test_rejects_bad_input(triton_cpu, impl):
    c3 = torch.ones(3)
    with pytest.raises(ValueError, match="Expected more than 1 value per channel when training"):
        batch_norm_act(torch.randn(1, 3, 1, 1), None, None, training=True, impl=impl)
    with pytest.raises(ValueError, match="x must be 4-D"):
        batch_norm_act(torch.randn(2, 3, 4), None, None, training=True, impl=impl)
    with pytest.raises(ValueError, match="weight must have shape"):
        batch_norm_act(torch.randn(2, 3, 4, 4), None, None, torch.ones(4), torch.zeros(4), True, impl=impl)
    with pytest.raises(ValueError, match="both"):
        batch_norm_act(torch.randn(2, 3, 4, 4), None, None, c3, training=True, impl=impl)
    with pytest.raises(ValueError, match="running_mean and running_var must both"):
        batch_norm_act(torch.randn(2, 3, 4, 4), c3, None, training=True, impl=impl)
    with pytest.raises(ValueError, match="running_mean and running_var are None"):
        batch_norm_act(torch.randn(2, 3, 4, 4), None, None, training=False, impl=impl)
    with pytest.raises(ValueError, match="act="):
        batch_norm_act(torch.randn(2, 3, 4, 4), None, None, training=True, act="gelu", impl=impl)


def test_triton_rejects_what_it_cannot_take(triton_cpu):
    with pytest.raises(ValueError, match="x has dtype torch.float64"):
        batch_norm_act(torch.randn(2, 3, 4, 4, dtype=torch.float64), None, None, training=True, impl="triton")
    with pytest.raises(ValueError, match="x with shape .* neither contiguous nor channels_last"):
        batch_norm_act(torch.randn(2, 3, 4, 8)[..., ::2], None, None, training=True, impl="triton")


def test_reference_gradcheck():
    x = torch.randn(3, 2, 3, 4, dtype=torch.float64, requires_grad=True)
    w = torch.randn(2, dtype=torch.float64, requires_grad=True)
    b = torch.randn(2, dtype=torch.float64, requires_grad=True)
    running = (torch.randn(2, dtype=torch.float64), torch.rand(2, dtype=torch.float64) + 0.5)
    for act in ("relu", "leaky_relu", "none"):
        for training in (True, False):
            def fn(x, w, b, act=act, training=training):
                return batch_norm_act_ref(x, *(t.clone() for t in running), w, b, training, act=act)

            assert torch.autograd.gradcheck(fn, (x, w, b), fast_mode=True)


def test_reference_matches_torch_modules():
    x = torch.randn(4, 3, 6, 7, dtype=torch.float64)
    norm = torch.nn.BatchNorm2d(3, momentum=0.3).double()
    torch.nn.init.normal_(norm.weight)
    torch.nn.init.normal_(norm.bias)
    stats = [norm.running_mean.clone(), norm.running_var.clone()]
    got = batch_norm_act_ref(x, *stats, norm.weight, norm.bias, True, 0.3, act="leaky_relu")
    torch.testing.assert_close(got, F.leaky_relu(norm(x), 0.2))
    torch.testing.assert_close(stats, [norm.running_mean, norm.running_var])


class _Block(torch.nn.Module):
    def __init__(self, impl):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.weight = torch.nn.Parameter(torch.randn(4))
        self.bias = torch.nn.Parameter(torch.randn(4))
        self.register_buffer("running_mean", torch.zeros(4))
        self.register_buffer("running_var", torch.ones(4))
        self.impl = impl

    def forward(self, x):
        return batch_norm_act(self.conv(x), self.running_mean, self.running_var, self.weight, self.bias,
                              self.training, 0.1, act="leaky_relu", impl=self.impl)


def _compile_matches_eager(block, x, **compile_kwargs):
    """Outputs, gradients and running-statistics updates of the compiled block equal eager's."""
    eager = [block.running_mean.clone(), block.running_var.clone()]
    compiled = torch.compile(block, fullgraph=True, **compile_kwargs)
    results = []
    for run in (compiled, block):
        block.zero_grad()
        block.running_mean.copy_(eager[0])
        block.running_var.copy_(eager[1])
        y = run(x)
        y.square().sum().backward()
        results.append([y.detach(), *(p.grad.clone() for p in block.parameters()), block.running_mean.clone(),
                        block.running_var.clone()])
    for got, want in zip(*results):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    assert not torch.equal(results[1][-2], eager[0])  # training updated the running mean


@pytest.mark.parametrize("impl", ["ref", "triton"])
def test_compile_cpu(triton_cpu, impl):
    """The custom op's fake implementation, autograd and buffer updates trace (aot_eager: no C++ compiler)."""
    torch._dynamo.reset()
    _compile_matches_eager(_Block(impl), torch.randn(3, 3, 5, 6), backend="aot_eager")


@pytest.mark.cuda
def test_compile_cuda():
    torch._dynamo.reset()
    x = torch.randn(8, 3, 16, 16, device="cuda").contiguous(memory_format=torch.channels_last)
    _compile_matches_eager(_Block("triton").cuda(), x)
    assert ops.last_impl("batch_norm_act") == "triton"


@pytest.mark.cuda
def test_cuda_graph_capture():
    """Training forward and backward replay in a CUDA graph, running statistics included."""
    x = torch.randn(16, 8, 16, 16, device="cuda", requires_grad=True)
    w = torch.randn(8, device="cuda", requires_grad=True)
    b = torch.randn(8, device="cuda", requires_grad=True)
    rm, rv = torch.zeros(8, device="cuda"), torch.ones(8, device="cuda")
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        batch_norm_act(x, rm, rv, w, b, True, impl="triton").sum().backward()  # warm-up compiles the kernels
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y = batch_norm_act(x, rm, rv, w, b, True, impl="triton")
    x.data.copy_(torch.randn_like(x))
    before = [rm.clone(), rv.clone()]
    graph.replay()
    want = [t.clone() for t in before]
    y_ref = batch_norm_act_ref(x.detach(), *want, w.detach(), b.detach(), True)
    torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close([rm, rv], want, atol=1e-5, rtol=1e-5)


@pytest.mark.cuda
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_cuda_last_program_sums(channels_last):
    """On a GPU, where programs really run concurrently: DCGAN's 64-channel 32x32 maps at batch 128 (in NHWC
    1,024 programs per channel block, 32 groups of 32): outputs, gradients, running statistics and the count
    bit-identical over repeated calls, no host sync, every ticket counter back at zero; a CUDA graph of the
    forward and backward replays what an eager call computes on new data, bit for bit."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = (torch.randn(128, 64, 32, 32, device="cuda") * 2 + 3).to(torch.bfloat16).contiguous(memory_format=fmt)
    w = torch.randn(64, device="cuda", requires_grad=True)
    b = torch.randn(64, device="cuda", requires_grad=True)
    dy = torch.randn_like(x)

    def run(x, stats, count):
        x = x.detach().requires_grad_()
        y = batch_norm_act(x, *stats, w, b, True, num_batches_tracked=count, act="leaky_relu", impl="triton")
        return [y, *torch.autograd.grad(y, [x, w, b], dy)]

    def fresh():
        return [torch.zeros(64, device="cuda"), torch.ones(64, device="cuda")], torch.zeros((), device="cuda",
                                                                                              dtype=torch.long)

    stats, count = fresh()
    first = run(x, stats, count) + [*stats, count]
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(20):
            stats, count = fresh()
            again = run(x, stats, count) + [*stats, count]
            assert all(torch.equal(a, b) for a, b in zip(again, first))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert first[-1].item() == 1
    assert not _MODULE._triton_util._TICKETS[x.device].any()

    stats, count = fresh()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        run(x, stats, count)  # warm-up outside capture
    torch.cuda.current_stream().wait_stream(stream)
    static_x = x.clone()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = run(static_x, stats, count)
    for _ in range(3):
        static_x.copy_(torch.randn_like(static_x))
        eager_stats, eager_count = [t.clone() for t in stats], count.clone()
        graph.replay()
        want = run(static_x, eager_stats, eager_count)
        assert all(torch.equal(a, b) for a, b in zip(captured + [*stats, count], want + [*eager_stats, eager_count]))
    assert not _MODULE._triton_util._TICKETS[x.device].any()


@pytest.mark.parametrize("unit_stride", ["stride_c", "stride_s"], ids=["nhwc", "nchw"])
def test_kernels_compile_for_h100(sm90_ptx, unit_stride):
    block = dict(BLOCK_C=64, BLOCK_S=32) if unit_stride == "stride_c" else dict(BLOCK_C=1, BLOCK_S=2048)
    for has_running in (False, True):
        ptx = sm90_ptx(_MODULE._batch_norm_act_stats_kernel,
                       dict(block, BLOCK_G=32, HAS_RUNNING=has_running, HAS_COUNT=has_running), unit_stride)
        # the tickets: integer atomics that order the partial sums' stores before the last program's loads
        assert re.search(r"atom\.global\.(gpu\.acq_rel|acq_rel\.gpu)\.add", ptx) and "ld.global.cg" in ptx
    for write_dx in (False, True):
        sm90_ptx(_MODULE._batch_norm_act_bwd_stats_kernel,
                 dict(block, BLOCK_G=32, HAS_AFFINE=True, ACT=2, WRITE_DX=write_dx), unit_stride)
    sm90_ptx(_MODULE._batch_norm_act_bwd_kernel, dict(block, HAS_AFFINE=True, ACT=1), unit_stride)
    ptx = sm90_ptx(_MODULE._batch_norm_act_fwd_kernel, dict(block, HAS_AFFINE=True, ACT=1), unit_stride)
    # 128-bit loads and stores along the contiguous dim (channels for NHWC), as a copy kernel would issue.
    assert "ld.global.v4" in ptx and "st.global.v4" in ptx
