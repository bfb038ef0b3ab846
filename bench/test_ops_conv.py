"""reflect_pad_conv2d: reference (F.pad + F.conv2d) vs the compiled extension, forward and forward+backward.

Run with `pytest bench --benchmark-only -k ops_conv`. On CUDA: every reflection-padded convolution of the
CycleGAN ResNet generator at 256x256 (the 7x7 3->64 stem, the eighteen 3x3 256->256 residual-block
convolutions at 64x64, the 7x7 64->3 head), N=1 and 4, bf16 channels_last. On CPU: the same layer kinds
at small sizes in fp32, where impl="cuda" runs the extension's C++ CPU kernel.

extra_info per case: impl (what really ran), ms (CUDA-event / perf_counter median), ref_ms (the reference
timed in the same run) and speedup = ref_ms / ms; test_generator_total adds up all of the generator's
reflection-padded convolutions (each shape times its count) for both paths.
"""

import sys

import pytest
import torch
from conftest import median_ms as _median_ms
from conftest import synchronize

from fastgan import ops
from fastgan.ops import reflect_pad_conv2d, reflect_pad_conv2d_ref

_CUDA = torch.cuda.is_available()
_EXT_ERROR = sys.modules["fastgan.ops.reflect_pad_conv2d"]._EXT_ERROR
pytestmark = pytest.mark.skipif(_EXT_ERROR is not None, reason=f"fastgan._C not built: {_EXT_ERROR}")

# name: (C_in, C_out, K, padding, H=W, how many of them the generator has)
LAYERS = {
    "stem_7x7_3to64": (3, 64, 7, 3, 256, 1),
    "resblock_3x3_256": (256, 256, 3, 1, 64, 18),
    "head_7x7_64to3": (64, 3, 7, 3, 256, 1),
} if _CUDA else {
    "stem_7x7_3to64": (3, 16, 7, 3, 48, 1),
    "resblock_3x3_256": (32, 32, 3, 1, 16, 18),
    "head_7x7_64to3": (16, 3, 7, 3, 48, 1),
}
BATCHES = [1, 4] if _CUDA else [1, 2]
DTYPE = torch.bfloat16 if _CUDA else torch.float32
MODES = ["fwd", "fwd+bwd"]


def _make_call(layer, n, mode, impl, device):
    """Builds the inputs once and returns the call to time (the op alone, or the op and its backward)."""
    c_in, c_out, k, padding, size, _ = LAYERS[layer]
    x = torch.randn(n, c_in, size, size, device=device, dtype=DTYPE)
    x = x.contiguous(memory_format=torch.channels_last)
    weight = (torch.randn(c_out, c_in, k, k, device=device) / (c_in * k * k) ** 0.5).to(DTYPE)
    weight = weight.contiguous(memory_format=torch.channels_last)
    bias = torch.zeros(c_out, device=device, dtype=DTYPE)
    if impl == "ref":
        def forward():
            return reflect_pad_conv2d_ref(x, weight, bias, padding)
    else:
        def forward():
            return reflect_pad_conv2d(x, weight, bias, padding, impl=impl)
    if mode == "fwd":
        return forward
    for t in (x, weight, bias):
        t.requires_grad_(True)
    grad_out = torch.randn_like(forward())

    def forward_backward():
        return torch.autograd.grad(forward(), (x, weight, bias), grad_out)

    return forward_backward


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("n", BATCHES)
@pytest.mark.parametrize("layer", list(LAYERS))
@pytest.mark.parametrize("impl", ["ref", "cuda"])
def test_reflect_pad_conv2d(benchmark, record, bench_device, impl, layer, n, mode):
    run = _make_call(layer, n, mode, impl, bench_device)
    ref = _make_call(layer, n, mode, "ref", bench_device)

    def call():
        run()
        synchronize(bench_device)

    benchmark.pedantic(call, rounds=10 if _CUDA else 3, warmup_rounds=2, iterations=1)
    if impl != "ref":
        ran = ops.last_impl("reflect_pad_conv2d")
        assert ran == impl, f"asked for {impl}, {ran} ran"
    ms, ref_ms = _median_ms(run, bench_device), _median_ms(ref, bench_device)
    c_in, c_out, k, padding, size, count = LAYERS[layer]
    record(op="reflect_pad_conv2d", impl=impl, layer=layer, shape=[n, c_in, size, size], c_out=c_out,
           kernel=k, padding=padding, count_in_generator=count, dtype=str(DTYPE), layout="channels_last", mode=mode,
           ms=ms, ref_ms=ref_ms, speedup=ref_ms / ms)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("n", BATCHES)
def test_generator_total(benchmark, record, bench_device, n, mode):
    """All of the generator's reflection-padded convolutions (the issue's bar: >= 1.3x on fwd+bwd)."""
    runs = [(layer, _make_call(layer, n, mode, "cuda", bench_device)) for layer in LAYERS]
    refs = [(layer, _make_call(layer, n, mode, "ref", bench_device)) for layer in LAYERS]

    def generator_convs():
        for layer, run in runs:
            for _ in range(LAYERS[layer][5]):
                run()

    def call():
        generator_convs()
        synchronize(bench_device)

    benchmark.pedantic(call, rounds=5 if _CUDA else 2, warmup_rounds=1, iterations=1)
    assert ops.last_impl("reflect_pad_conv2d") == "cuda"
    per_layer = {}
    for (layer, run), (_, ref) in zip(runs, refs):
        ms, ref_ms = _median_ms(run, bench_device), _median_ms(ref, bench_device)
        per_layer[layer] = {"ms": ms, "ref_ms": ref_ms, "speedup": ref_ms / ms, "count": LAYERS[layer][5]}
    total = sum(v["ms"] * v["count"] for v in per_layer.values())
    total_ref = sum(v["ref_ms"] * v["count"] for v in per_layer.values())
    record(op="reflect_pad_conv2d", impl="cuda", n=n, mode=mode, dtype=str(DTYPE), layout="channels_last",
           total_ms=total, total_ref_ms=total_ref, speedup=total_ref / total,
           min_layer_speedup=min(v["speedup"] for v in per_layer.values()), layers=per_layer)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("n", BATCHES)
@pytest.mark.parametrize("wiring", ["pad_in_norm", "pad_in_conv"])
def test_resnet_block_pad_wiring(benchmark, record, bench_device, wiring, n, mode):
    """One CycleGAN residual block between two others (its input padded by the norm before it, as the generator
    builds it; or every pad written by its convolution, as before), on the fast path and on the reference path
    timed in the same run: what writing the reflection pads in the norms saves per block."""
    from fastgan.models.cyclegan import ResnetBlock
    from fastgan.nn import set_impl

    c_in, _, _, _, size, _ = LAYERS["resblock_3x3_256"]
    fused = wiring == "pad_in_norm"
    block = ResnetBlock(c_in, input_padded=fused, pad_output=1 if fused else 0).to(bench_device, DTYPE)
    block = block.to(memory_format=torch.channels_last)
    side = size + 2 if fused else size
    x = torch.randn(n, c_in, side, side, device=bench_device, dtype=DTYPE).contiguous(memory_format=torch.channels_last)
    x.requires_grad_(mode == "fwd+bwd")
    dy = torch.randn_like(block(x))

    def make(impl):
        def run():
            set_impl(block, impl)
            y = block(x)
            return y if mode == "fwd" else torch.autograd.grad(y, [x, *block.parameters()], dy, allow_unused=True)
        return run

    impl = "auto" if _CUDA else "ref"
    run, ref = make(impl), make("ref")

    def call():
        run()
        synchronize(bench_device)

    benchmark.pedantic(call, rounds=10 if _CUDA else 3, warmup_rounds=2, iterations=1)
    ran = ", ".join(f"{op}={ops.last_impl(op)}" for op in ("instance_norm_act", "reflect_pad_conv2d"))
    ms, ref_ms = _median_ms(run, bench_device), _median_ms(ref, bench_device)
    record(op="resnet_block", wiring=wiring, impl=ran, n=n, mode=mode, shape=[n, c_in, size, size],
           dtype=str(DTYPE), layout="channels_last", ms=ms, ref_ms=ref_ms, speedup=ref_ms / ms)
