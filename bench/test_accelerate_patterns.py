"""accelerate()'s fusion for a pattern of other people's GANs: InstanceNorm2d(track_running_stats=True) +
ReLU (the older pix2pix/CycleGAN norm) -> InstanceNormTrackedAct, against the torch modules it replaces,
forward + backward, train and eval mode.

Run with `pytest bench --benchmark-only -k accelerate_patterns`. On CUDA the ResNet generator's stem and
residual maps at 256x256, batch 1, on the Triton path; on CPU one small shape on the reference path (the
Triton interpreter is a correctness tool, not a speed one).

extra_info per case: impl (the implementation that really ran), ms (CUDA-event median), torch_ms and
speedup_vs_torch against the original nn modules, ref_ms and speedup against the fused layer's reference
path, all timed in the same run; launches_fused / launches_torch and mb_fused / mb_torch: the kernels and
bytes each side issues per forward + backward on a GPU, from the step ledger (fastgan.testing.ledger).
"""

import copy

import pytest
import torch
from conftest import median_ms, synchronize
from torch import nn

import fastgan
from fastgan import nn as fnn
from fastgan import ops

_CUDA = torch.cuda.is_available()

PATTERNS = {
    "instance_tracked_relu": (lambda c: nn.Sequential(nn.InstanceNorm2d(c, track_running_stats=True),
                                                      nn.ReLU(inplace=True)),
                              [(1, 64, 256, 256), (1, 256, 64, 64)] if _CUDA else [(2, 8, 16, 16)]),
}
CASES = [(name, shape) for name, (_, shapes) in PATTERNS.items() for shape in shapes]
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32} if _CUDA else {"fp32": torch.float32}
IMPL = "triton" if _CUDA else "ref"


def _ledger(module, shape, train):
    """(kernels, MB) of one forward + backward of ``module`` on a GPU, the loss's own kernels excluded."""
    from fastgan.testing.ledger import trace_kernels

    module = fnn.set_impl(copy.deepcopy(module).float().train(train), "auto")  # the GPU's path, whatever ran here

    def prepare():
        x = torch.empty(shape, device="cuda", requires_grad=True).clone()  # not a leaf: in-place acts work
        return lambda: module(x).sum()

    rows = [r for r in trace_kernels(prepare, {"m": module}, backward=True)
            if r.layer.startswith("m") or (r.stage == "backward" and r.layer != "SumBackward0")]
    return sum(r.launches for r in rows), round(sum(r.bytes for r in rows) / 1e6, 1)


@pytest.mark.parametrize("name, shape", CASES, ids=[f"{n}-{'x'.join(map(str, s))}" for n, s in CASES])
@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_accelerate_patterns(benchmark, record, bench_device, name, shape, dtype, mode):
    torch.manual_seed(0)
    original = PATTERNS[name][0](shape[1]).to(bench_device).train(mode == "train")
    fused = fastgan.accelerate(copy.deepcopy(original), impl=IMPL)
    layer = fused[0]
    assert isinstance(layer, fnn.InstanceNormTrackedAct), type(layer)
    ref = fnn.set_impl(copy.deepcopy(fused), "ref")
    x = torch.randn(shape, device=bench_device, dtype=DTYPES[dtype])
    dy = torch.randn_like(x)

    def fwd_bwd(module):
        def run():
            xi = x.detach().requires_grad_(True)
            with torch.autocast(bench_device.type, DTYPES[dtype], enabled=DTYPES[dtype] != torch.float32):
                y = module(xi)
            return torch.autograd.grad(y, [xi, *[p for p in module.parameters() if p.requires_grad]], dy)
        return run

    run, torch_eager, reference = fwd_bwd(fused), fwd_bwd(original), fwd_bwd(ref)

    def call():
        run()
        synchronize(bench_device)

    benchmark.pedantic(call, rounds=10 if _CUDA else 3, warmup_rounds=2, iterations=1)
    op = "batch_norm_act" if mode == "eval" else "instance_norm_act"  # eval: the running statistics
    ran = ops.last_impl(op)
    assert ran == IMPL, f"asked for {IMPL}, {ran} ran"
    ms, torch_ms, ref_ms = (median_ms(f, bench_device) for f in (run, torch_eager, reference))
    (launches_fused, mb_fused), (launches_torch, mb_torch) = (_ledger(m, shape, mode == "train")
                                                              for m in (fused, original))
    record(pattern=name, layer=type(layer).__name__, impl=ran, ms=round(ms, 4), torch_ms=round(torch_ms, 4),
           speedup_vs_torch=round(torch_ms / ms, 3), ref_ms=round(ref_ms, 4), speedup=round(ref_ms / ms, 3),
           launches_fused=launches_fused, launches_torch=launches_torch, mb_fused=mb_fused, mb_torch=mb_torch,
           shape=list(shape), dtype=dtype, mode=mode, passes="fwd+bwd")
