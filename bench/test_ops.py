"""instance_norm_act, leaky_relu, tanh and mean_loss: reference vs Triton, forward and forward+backward.

Run with `pytest bench --benchmark-only -k ops`. On CUDA: the CycleGAN generator shapes (instance norm),
PatchGAN discriminator shapes (LeakyReLU with the conv bias) and generator output shapes (tanh with the conv
bias, alone and as the whole output layer against torch's conv + nn.Tanh), the GAN losses (a PatchGAN's
logits, CycleGAN's L1 on images), bf16 and fp32, NHWC and NCHW. On
CPU: small shapes, reference only (the Triton interpreter is a correctness tool, not a speed one).

extra_info per case: impl (the implementation that really ran), ms (CUDA-event median), GB/s counted
from the minimal bytes (each input read once, each output written once), ref_ms and speedup over the
reference path timed in the same run, and for instance norm torch_ms / speedup_vs_torch against eager
nn.InstanceNorm2d + activation on the same input (the issue's bar). test_copy_bandwidth measures the
device's copy bandwidth, the yardstick for the GB/s figures (pct_of_copy).
"""

import copy
import functools

import pytest
import torch
import torch.nn.functional as F
from conftest import median_ms as _median_ms
from conftest import synchronize

from fastgan import nn as fnn
from fastgan import ops
from fastgan.ops import (
    instance_norm_act,
    instance_norm_act_ref,
    leaky_relu,
    leaky_relu_ref,
    mean_loss,
    mean_loss_ref,
    tanh,
    tanh_ref,
)

_CUDA = torch.cuda.is_available()

# (N, C, H, W)
IN_SHAPES = [
    (1, 64, 256, 256), (4, 64, 256, 256),  # CycleGAN generator: stem and last up block at 256^2
    (1, 128, 128, 128), (4, 128, 128, 128),  # first down / up block
    (1, 256, 64, 64), (4, 256, 64, 64), (16, 256, 64, 64),  # the nine residual blocks
] if _CUDA else [(2, 8, 32, 32)]
LEAKY_SHAPES = [
    (4, 64, 128, 128), (4, 128, 64, 64), (4, 256, 32, 32), (4, 512, 31, 31),  # PatchGAN on 256^2 inputs
] if _CUDA else [(2, 16, 32, 32)]
TANH_SHAPES = [
    (128, 3, 64, 64),  # DCGAN 64x64 generator output, batch 128
    (1, 3, 256, 256), (4, 3, 256, 256),  # CycleGAN / pix2pix generator output
] if _CUDA else [(2, 3, 32, 32)]
LOSS_CASES = [  # (kind, shape)
    ("mse", (1, 1, 30, 30)), ("bce_with_logits", (1, 1, 30, 30)),  # a 70x70 PatchGAN's logits at 256^2
    ("l1", (1, 3, 256, 256)), ("l1", (4, 3, 256, 256)),  # CycleGAN's cycle and identity losses
] if _CUDA else [("mse", (1, 1, 30, 30)), ("l1", (1, 3, 32, 32))]
IMPLS = ["ref", "triton"] if _CUDA else ["ref"]
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


@functools.lru_cache(None)
def _copy_gbps(device_type: str) -> float:
    """Device-to-device copy bandwidth in GB/s (bytes read + bytes written)."""
    device = torch.device(device_type)
    src = torch.empty(2**28 if device_type == "cuda" else 2**22, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    ms = _median_ms(lambda: dst.copy_(src), device)
    return 2 * src.numel() / ms / 1e6


def _timed_case(benchmark, record, device, op, impl, run, baseline, nbytes, **fields):
    """Benchmarks run() (synchronised inside), then records ms, GB/s and the speed-up over baseline()."""
    def call():
        run()
        synchronize(device)

    benchmark.pedantic(call, rounds=10 if device.type == "cuda" else 3, warmup_rounds=2, iterations=1)
    ran = ops.last_impl(op)
    assert ran == impl, f"asked for {impl}, {ran} ran"
    ms = _median_ms(run, device)
    ref_ms = _median_ms(baseline["ref"], device)
    gbps = nbytes / ms / 1e6
    extra = {}
    if "torch" in baseline:
        torch_ms = _median_ms(baseline["torch"], device)
        extra = dict(torch_ms=round(torch_ms, 4), speedup_vs_torch=round(torch_ms / ms, 3))
    record(op=op, impl=ran, ms=round(ms, 4), gbps=round(gbps, 1),
           pct_of_copy=round(100 * gbps / _copy_gbps(device.type), 1), ref_ms=round(ref_ms, 4),
           speedup=round(ref_ms / ms, 3), minimal_bytes=nbytes, **extra, **fields)


def _grad_fn(y_fn, inputs, dy):
    return lambda: torch.autograd.grad(y_fn(), inputs, dy)


@pytest.mark.parametrize("shape", IN_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("layout", ["nhwc", "nchw"])
@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("passes", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("impl", IMPLS)
def test_instance_norm_act(benchmark, record, bench_device, shape, layout, dtype, passes, impl):
    fmt = torch.channels_last if layout == "nhwc" else torch.contiguous_format
    x = torch.randn(shape, device=bench_device, dtype=DTYPES[dtype]).contiguous(memory_format=fmt)
    x.requires_grad_(passes == "fwd+bwd")
    dy = torch.randn_like(x)

    def fused():
        return instance_norm_act(x, act="relu", impl=impl)

    def reference():
        return instance_norm_act_ref(x, act="relu")

    def torch_eager():  # nn.InstanceNorm2d + nn.ReLU in the input's dtype, as a model would run
        return F.relu(F.instance_norm(x))

    if passes == "fwd":
        run, baseline = fused, {"ref": reference, "torch": torch_eager}
        reads_writes = 2  # x, y
    else:
        run = _grad_fn(fused, [x], dy)
        baseline = {"ref": _grad_fn(reference, [x], dy), "torch": _grad_fn(torch_eager, [x], dy)}
        reads_writes = 5  # x, y; then x, dy, dx
    _timed_case(benchmark, record, bench_device, "instance_norm_act", impl, run, baseline,
                reads_writes * x.numel() * x.element_size(), shape=list(shape), layout=layout, dtype=dtype,
                passes=passes, act="relu")


# (N, C, H, W, pad): the CycleGAN generator's norms at batch 1 and 3 (G_A's batch in the G phase), bf16 NHWC
FUSED_SHAPES = [(1, 256, 64, 64, 1), (3, 256, 64, 64, 1), (1, 128, 128, 128, 0), (3, 128, 128, 128, 0),
                (1, 64, 256, 256, 3), (3, 64, 256, 256, 0)]


@pytest.mark.skipif(not _CUDA, reason="times the Triton kernels' two paths: needs a CUDA GPU")
@pytest.mark.parametrize("case", FUSED_SHAPES, ids=lambda s: "x".join(map(str, s[:4])) + f"-pad{s[4]}")
@pytest.mark.parametrize("passes", ["fwd", "fwd+bwd"])
def test_instance_norm_act_fused_vs_split(benchmark, record, bench_device, monkeypatch, case, passes):
    """instance_norm_act's fused path (each direction's two phases in one cooperative launch, the second reading
    from L2) against its split path (a launch per phase), bf16 channels_last, timed in the same run: whether the
    planner's choice (instance_norm_act._plan) is the faster one on this GPU. extra_info: path (what the planner
    chose here), ms (fused, or split where the plan is split), split_ms, speedup_vs_split."""
    import importlib

    module = importlib.import_module("fastgan.ops.instance_norm_act")
    *shape, pad = case
    x = torch.randn(shape, device=bench_device, dtype=torch.bfloat16).contiguous(memory_format=torch.channels_last)
    x.requires_grad_(passes == "fwd+bwd")
    dy = torch.randn_like(instance_norm_act(x, pad=pad, impl="triton"))
    path = module._plan(x, rows_ok=pad == 0)["path"]

    monkeypatch.setattr(module, "_FUSED", True)  # restored after the test; set per run below

    def on(fused):
        def run():
            module._FUSED = fused
            if passes == "fwd":
                return instance_norm_act(x, pad=pad, impl="triton")
            return torch.autograd.grad(instance_norm_act(x, pad=pad, impl="triton"), x, dy)
        return run

    def call():
        on(True)()
        synchronize(bench_device)

    benchmark.pedantic(call, rounds=10, warmup_rounds=2, iterations=1)
    ms, split_ms = _median_ms(on(True), bench_device), _median_ms(on(False), bench_device)
    record(op="instance_norm_act", impl=ops.last_impl("instance_norm_act"), path=path, ms=round(ms, 4),
           split_ms=round(split_ms, 4), speedup_vs_split=round(split_ms / ms, 3), shape=list(shape), pad=pad,
           layout="nhwc", dtype="bf16", passes=passes)


@pytest.mark.parametrize("shape", LEAKY_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("layout", ["nhwc", "nchw"])
@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("passes", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("impl", IMPLS)
def test_leaky_relu(benchmark, record, bench_device, shape, layout, dtype, passes, impl):
    fmt = torch.channels_last if layout == "nhwc" else torch.contiguous_format
    x = torch.randn(shape, device=bench_device, dtype=DTYPES[dtype]).contiguous(memory_format=fmt)
    bias = torch.randn(shape[1], device=bench_device, dtype=DTYPES[dtype])
    grad = passes == "fwd+bwd"
    x.requires_grad_(grad)
    bias.requires_grad_(grad)
    dy = torch.randn_like(x)

    def fused():
        return leaky_relu(x, 0.2, bias=bias, impl=impl)

    def reference():
        return leaky_relu_ref(x, 0.2, bias=bias)

    if passes == "fwd":
        run, baseline, reads_writes = fused, {"ref": reference}, 2  # x, y
    else:
        run = _grad_fn(fused, [x, bias], dy)
        baseline = {"ref": _grad_fn(reference, [x, bias], dy)}
        reads_writes = 5  # x, y; then y, dy, dx
    _timed_case(benchmark, record, bench_device, "leaky_relu", impl, run, baseline,
                reads_writes * x.numel() * x.element_size(), shape=list(shape), layout=layout, dtype=dtype,
                passes=passes, bias=True)


@pytest.mark.parametrize("shape", TANH_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("layout", ["nhwc", "nchw"])
@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("passes", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("impl", IMPLS)
def test_tanh(benchmark, record, bench_device, shape, layout, dtype, passes, impl):
    fmt = torch.channels_last if layout == "nhwc" else torch.contiguous_format
    x = torch.randn(shape, device=bench_device, dtype=DTYPES[dtype]).contiguous(memory_format=fmt)
    bias = torch.randn(shape[1], device=bench_device, dtype=DTYPES[dtype])
    grad = passes == "fwd+bwd"
    x.requires_grad_(grad)
    bias.requires_grad_(grad)
    dy = torch.randn_like(x)

    def fused():
        return tanh(x, bias=bias, impl=impl)

    def reference():
        return tanh_ref(x, bias=bias)

    if passes == "fwd":
        run, baseline, reads_writes = fused, {"ref": reference}, 2  # x, y
    else:
        run = _grad_fn(fused, [x, bias], dy)
        baseline = {"ref": _grad_fn(reference, [x, bias], dy)}
        reads_writes = 5  # x, y; then y, dy, dx
    _timed_case(benchmark, record, bench_device, "tanh", impl, run, baseline,
                reads_writes * x.numel() * x.element_size(), shape=list(shape), layout=layout, dtype=dtype,
                passes=passes, bias=True)


@pytest.mark.parametrize("shape", TANH_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("impl", IMPLS)
def test_generator_output_layer(benchmark, record, bench_device, shape, dtype, impl):
    """The whole output layer, forward + backward, NHWC: ConvTranspose2dTanh (the transposed conv without its
    bias, then bias + tanh in one pass) against the same layer with impl="ref" and against torch's
    nn.ConvTranspose2d (bias inside) + torch.tanh, the layers it replaces. The conv dominates; what the
    fusion can save is one pass over the output forward (the bias add) and one backward (dbias)."""
    n, c, h, w = shape
    fmt = torch.channels_last
    layer = fnn.ConvTranspose2dTanh(64, c, 4, 2, 1, impl=impl).to(bench_device, DTYPES[dtype], memory_format=fmt)
    plain = torch.nn.ConvTranspose2d(64, c, 4, 2, 1).to(bench_device, DTYPES[dtype], memory_format=fmt)
    plain.load_state_dict(layer.state_dict())
    x = torch.randn(n, 64, h // 2, w // 2, device=bench_device, dtype=DTYPES[dtype]).contiguous(memory_format=fmt)
    x.requires_grad_(True)
    dy = torch.randn(shape, device=bench_device, dtype=DTYPES[dtype]).contiguous(memory_format=fmt)
    ref_layer = fnn.set_impl(copy.deepcopy(layer), "ref")
    inputs = [x, *layer.parameters()]
    run = _grad_fn(lambda: layer(x), inputs, dy)
    baseline = {"ref": _grad_fn(lambda: ref_layer(x), [x, *ref_layer.parameters()], dy),
                "torch": _grad_fn(lambda: torch.tanh(plain(x)), [x, *plain.parameters()], dy)}
    _timed_case(benchmark, record, bench_device, "tanh", impl, run, baseline,
                5 * dy.numel() * dy.element_size(), shape=list(shape), layout="nhwc", dtype=dtype,
                passes="fwd+bwd", layer="ConvTranspose2dTanh(64, 3, 4, 2, 1)")


def test_ops_copy_bandwidth(benchmark, record, bench_device):
    """The yardstick for pct_of_copy: a plain device-to-device copy."""
    n = 2**28 if bench_device.type == "cuda" else 2**22
    src = torch.empty(n, dtype=torch.uint8, device=bench_device)
    dst = torch.empty_like(src)

    def call():
        dst.copy_(src)
        synchronize(bench_device)

    benchmark.pedantic(call, rounds=10, warmup_rounds=2, iterations=1)
    record(op="copy", impl="torch", bytes=2 * n, gbps=round(_copy_gbps(bench_device.type), 1))


@pytest.mark.parametrize("kind, shape", LOSS_CASES, ids=lambda c: c if isinstance(c, str) else "x".join(map(str, c)))
@pytest.mark.parametrize("passes", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("impl", IMPLS)
def test_mean_loss(benchmark, record, bench_device, kind, shape, passes, impl):
    """A loss as the models compute it under --amp: bf16 NHWC network output, an fp32 target image (L1) or a
    label, fp32 result, lambda folded in (L1); against the reference's cast, target, loss and multiply."""
    x = torch.randn(shape, device=bench_device, dtype=torch.bfloat16).contiguous(memory_format=torch.channels_last)
    x.requires_grad_(passes == "fwd+bwd")
    target = torch.randn(shape, device=bench_device).contiguous(memory_format=torch.channels_last) \
        if kind == "l1" else 1.0
    weight = 10.0 if kind == "l1" else 1.0
    one = torch.ones((), device=bench_device)

    def fused():
        return mean_loss(x, target, kind, weight=weight, impl=impl)

    def reference():
        return mean_loss_ref(x, target, kind, weight=weight)

    target_bytes = target.numel() * target.element_size() if kind == "l1" else 0
    if passes == "fwd":
        run, baseline, nbytes = fused, {"ref": reference}, x.numel() * x.element_size() + target_bytes
    else:
        run, baseline = _grad_fn(fused, [x], one), {"ref": _grad_fn(reference, [x], one)}
        nbytes = 3 * x.numel() * x.element_size() + 2 * target_bytes  # x (+ target); then x (+ target), dx
    _timed_case(benchmark, record, bench_device, "mean_loss", impl, run, baseline, nbytes, shape=list(shape),
                layout="nhwc", dtype="bf16", passes=passes, kind=kind)
