"""batch_norm_act: reference vs Triton, training and eval, forward and forward+backward.

Run with `pytest bench --benchmark-only -k ops_bn`. On CUDA: the BatchNorm shapes of the DCGAN 64x64
generator and discriminator at batch 128, bf16 and fp32, NHWC and NCHW. On CPU: one small shape, fp32,
reference only (the Triton interpreter is a correctness tool, not a speed one).

extra_info per case: impl (the implementation that really ran), ms (CUDA-event median), GB/s counted from
the minimal bytes (x read once and y written once forward; x, dy read and dx written backward), ref_ms and
speedup over fastgan's reference path, and torch_ms / speedup_vs_torch against eager nn.BatchNorm2d + ReLU
(fp32 parameters and running statistics, x in the case's dtype, as a model runs it), all timed in the same run.
"""

import pytest
import torch
import torch.nn.functional as F
from conftest import median_ms, synchronize

from fastgan import ops
from fastgan.ops import batch_norm_act, batch_norm_act_ref

_CUDA = torch.cuda.is_available()

# (N, C, H, W)
SHAPES = [
    (128, 512, 4, 4), (128, 256, 8, 8), (128, 128, 16, 16), (128, 64, 32, 32),  # DCGAN 64x64 generator
    (128, 128, 16, 16), (128, 256, 8, 8), (128, 512, 4, 4),  # discriminator (the same shapes, after convs)
] if _CUDA else [(8, 16, 16, 16)]
SHAPES = list(dict.fromkeys(SHAPES))  # the discriminator's shapes repeat the generator's
IMPLS = ["ref", "triton"] if _CUDA else ["ref"]
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32} if _CUDA else {"fp32": torch.float32}


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("layout", ["nhwc", "nchw"])
@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("passes", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("impl", IMPLS)
def test_batch_norm_act(benchmark, record, bench_device, shape, layout, dtype, mode, passes, impl):
    fmt = torch.channels_last if layout == "nhwc" else torch.contiguous_format
    x = torch.randn(shape, device=bench_device, dtype=DTYPES[dtype]).contiguous(memory_format=fmt)
    c = shape[1]
    weight = torch.randn(c, device=bench_device)
    bias = torch.randn(c, device=bench_device)
    running_mean, running_var = torch.zeros(c, device=bench_device), torch.ones(c, device=bench_device)
    training = mode == "train"
    grad = passes == "fwd+bwd"
    for t in (x, weight, bias):
        t.requires_grad_(grad)
    dy = torch.randn_like(x)

    def fused():
        return batch_norm_act(x, running_mean, running_var, weight, bias, training, act="relu", impl=impl)

    def reference():
        return batch_norm_act_ref(x, running_mean, running_var, weight, bias, training, act="relu")

    def torch_eager():
        return F.relu(F.batch_norm(x, running_mean, running_var, weight, bias, training))

    if grad:
        def backward_of(fn):
            return lambda: torch.autograd.grad(fn(), [x, weight, bias], dy)

        run, ref, eager = backward_of(fused), backward_of(reference), backward_of(torch_eager)
        reads_writes = 5  # x, y; then x, dy, dx
    else:
        run, ref, eager = fused, reference, torch_eager
        reads_writes = 2  # x, y

    def call():
        run()
        synchronize(bench_device)

    benchmark.pedantic(call, rounds=10 if _CUDA else 3, warmup_rounds=2, iterations=1)
    ran = ops.last_impl("batch_norm_act")
    assert ran == impl, f"asked for {impl}, {ran} ran"
    ms, ref_ms, torch_ms = (median_ms(f, bench_device) for f in (run, ref, eager))
    nbytes = reads_writes * x.numel() * x.element_size()
    record(op="batch_norm_act", impl=ran, ms=round(ms, 4), gbps=round(nbytes / ms / 1e6, 1),
           ref_ms=round(ref_ms, 4), speedup=round(ref_ms / ms, 3), torch_ms=round(torch_ms, 4),
           speedup_vs_torch=round(torch_ms / ms, 3), minimal_bytes=nbytes, shape=list(shape), layout=layout,
           dtype=dtype, mode=mode, passes=passes, act="relu")
