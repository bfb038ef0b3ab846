"""The step ledger (fastgan.testing.ledger, issue 20): its counting on small cases computed by hand (one fused
op, one ResNet block, one optimiser step), each fastgan op's replayed launches against a real run of the op,
and the launch and byte budgets of the recipe workloads' training steps.
"""

import importlib
import json
import re
from pathlib import Path

import pytest
import torch
from torch import nn

from fastgan import ops
from fastgan.testing import ledger, specialisations
from fastgan.train.graphs import make_capturable

ROOT = Path(__file__).resolve().parents[2]


# --- counting, by hand ---------------------------------------------------------------------------------------
def test_one_fused_op_by_hand():
    """leaky_relu with a bias, fp32 NCHW [2, 8, 16, 16]: forward one Triton kernel (x, bias -> y); backward one
    kernel (dy, y -> dx and per-program partial sums of dx) and the sum of those partials into dbias."""
    x = torch.empty(2, 8, 16, 16)
    bias = torch.empty(8)
    forward = ledger.op_kernels("fastgan::leaky_relu_fwd", (x, bias, 0.2), {})
    assert forward == [("kernel", "triton _leaky_relu_fwd_kernel", 2 * (2 * 8 * 256 * 4) + 8 * 4)]
    y = torch.empty_like(x)
    backward = ledger.op_kernels("fastgan::leaky_relu_bwd", (x, y, 0.2, True), {})
    # The launcher's plan: tile (BLOCK_C, BLOCK_S) = (8, 256) for NCHW 16x16; one chunk per row, so one piece.
    split = 1
    pdb = 2 * 8 * split * 4
    assert [e[:2] for e in backward] == [("kernel", "triton _leaky_relu_bwd_kernel"), ("aten", "aten.sum.dim_IntList")]
    assert backward[0][2] == 3 * 2 * 8 * 256 * 4 + pdb  # dy, y read; dx written; the partials written
    (kernel, launches, nbytes, flops, _), = backward[1][2]
    assert (launches, nbytes, flops) == (1, pdb + 8 * 4, 0)


def test_a_kernel_that_touches_part_of_a_tensor_declares_it():
    """image_pool's kernel is handed the whole pool but reads and writes one slot per image: the ledger counts the
    images in and out, the draws, the count and the ticket counter, and two slots per image."""
    images = torch.empty(2, 3, 8, 8, dtype=torch.bfloat16)
    pool = torch.empty(50, 3, 8, 8)
    count, slots = torch.zeros((), dtype=torch.long), torch.zeros(2, dtype=torch.long)
    (kind, name, nbytes), = ledger.op_kernels("fastgan::image_pool", (images, pool, count, torch.empty(2), slots),
                                              {})
    assert (kind, name) == ("kernel", "triton _image_pool_kernel")
    assert nbytes == 2 * images.nbytes + 8 + 2 * 4 + 2 * 8 + 4 + 2 * 2 * pool[0].nbytes


def test_instance_norm_by_hand():
    """instance_norm_act, bf16 channels_last, no affine, ReLU. At [1, 256, 64, 64] (a CycleGAN residual block at
    batch 1) each direction is one launch of both phases (the fused path: 16 channel blocks of 16 x 32 pieces,
    x read once, its second read planned to come from L2), counted with its pieces' sums, the statistics and the
    barrier counters. At [12, 64, 256, 256] the data read again would not fit in half the L2: the split path, a
    launch per phase, the first reading x and writing the pieces' sums."""
    x = torch.empty(1, 256, 64, 64, dtype=torch.bfloat16).contiguous(memory_format=torch.channels_last)
    act = 2 * x.numel()  # bytes of x (and of y, dy, dx)
    parts, stats, counters = 2 * 256 * 32 * 4, 256 * 4, 2 * 16 * 4
    forward = ledger.op_kernels("fastgan::instance_norm_act_fwd", (x, None, None, None, "relu", 0.2, 1e-5, 0), {})
    assert forward == [("kernel", "triton _instance_norm_act_fwd_kernel", 2 * act + parts + 2 * stats + counters)]
    dy, mean = torch.empty_like(x), torch.empty(1, 256)
    backward = ledger.op_kernels("fastgan::instance_norm_act_bwd", (dy, x, None, None, mean, mean, "relu", 0.2, 0),
                                 {})
    assert backward == [("kernel", "triton _instance_norm_act_bwd_kernel", 3 * act + parts + 2 * stats + counters)]

    x = torch.empty(12, 64, 256, 256, dtype=torch.bfloat16).contiguous(memory_format=torch.channels_last)
    act = 2 * x.numel()
    # The split path's plan: 64-channel blocks of [64, 32] tiles, 2048 chunks per row in 32 pieces of 64 tiles.
    parts, stats = 2 * 12 * 64 * 32 * 4, 12 * 64 * 4
    forward = ledger.op_kernels("fastgan::instance_norm_act_fwd", (x, None, None, None, "relu", 0.2, 1e-5, 0), {})
    assert forward == [("kernel", "triton _instance_norm_act_fwd_kernel", act + parts),
                       ("kernel", "triton _instance_norm_act_fwd_kernel", 2 * act + parts + 2 * stats)]


def _resnet_block():
    return nn.Sequential(nn.ReflectionPad2d(1), nn.Conv2d(8, 8, 3), nn.InstanceNorm2d(8), nn.ReLU(),
                         nn.ReflectionPad2d(1), nn.Conv2d(8, 8, 3), nn.InstanceNorm2d(8))


def test_one_resnet_block_by_hand():
    """x + IN(conv(pad(ReLU(IN(conv(pad(x))))))), PyTorch layers, fp32 NCHW [1, 8, 16, 16], summed; forward and
    backward as a CUDA run executes them (ATen table of the ledger)."""
    block = _resnet_block()

    def prepare():
        def loss():
            x = torch.empty(1, 8, 16, 16, device="cuda", requires_grad=True)
            return (x + block(x)).sum()
        return loss

    rows = ledger.trace_kernels(prepare, {"block": block}, backward=True)
    forward = [r for r in rows if r.stage == "forward"]
    backward = [r for r in rows if r.stage == "backward"]
    # Forward, per half: pad 1, conv 1 + its bias add 1, instance norm (batch norm on [1, N*C, H, W]): statistics,
    # invstd, normalise 3; ReLU 1 in the first half only. Then the residual add and the sum: 2 * 6 + 1 + 2 = 15.
    assert sum(r.launches for r in forward) == 15
    # Backward: the loss's ones 1; per half: norm reduce + elementwise 2, conv dgrad + wgrad + bias grad 3, pad
    # fold 1; ReLU 1; the two gradients of x summed 1: 1 + 2 * 6 + 1 + 1 = 15.
    assert sum(r.launches for r in backward) == 15
    assert [r.kernel for r in backward].count("cudnn conv (dgrad)") == 2
    assert [r.category for r in backward].count("gradient accumulation") == 1
    # The convolution: 2 * (C_out * H * W) * (C_in * 3 * 3) FLOPs; it reads the padded input and the weight and
    # writes the output, fp32.
    conv = next(r for r in forward if r.kernel == "cudnn conv (fprop)")
    assert conv.flops == 2 * (8 * 16 * 16) * (8 * 9)
    assert conv.bytes == (8 * 18 * 18 + 8 * 8 * 9 + 8 * 16 * 16) * 4
    assert sum(r.flops for r in rows) == 6 * conv.flops  # fprop, dgrad, wgrad of two convolutions


def test_one_optimiser_step_by_hand():
    """Capturable fused Adam over tensors of 70000, 10 and 5 elements: the step counts +1 (one multi-tensor
    launch over 3 0-dim tensors) and the update (one launch: 2 + 1 + 1 chunks of 65536 elements, 3 tensors, both
    under one launch's capacity), reading params, grads, both moments, the step counts and the learning rate and
    writing params and moments."""
    numels = (70000, 10, 5)

    def prepare():
        params = [torch.empty(n, device="cuda", requires_grad=True) for n in numels]
        optimizer = torch.optim.Adam(params, lr=1e-3, fused=True)
        make_capturable(optimizer, torch.device("cuda"))
        ledger.warm_state(optimizer)

        def step():
            for p in params:
                p.grad = torch.empty_like(p)
            optimizer.step()
        return step

    rows = ledger.trace_kernels(prepare, stage="optimiser")
    assert [(r.op, r.launches) for r in rows] == [("aten._foreach_add_.Scalar", 1), ("aten._fused_adam_.tensor_lr", 1)]
    assert rows[0].bytes == 2 * 3 * 4
    assert rows[1].bytes == (4 + 3) * sum(numels) * 4 + 3 * 4 + 4
    assert {r.category for r in rows} == {"optimiser"}


def test_convolution_layout_copy():
    """An NCHW input meeting channels_last weights is copied to channels_last before cuDNN, forward and backward,
    as a GPU run does; an input already in the weights' layout is not. (The loss is a square's sum: a sum's own
    gradient is an expanded tensor, which cuDNN would get as a copy too.)"""
    conv = nn.Conv2d(4, 8, 3).to(memory_format=torch.channels_last)

    def prepare(fmt):
        def prepared():
            x = torch.empty(2, 4, 9, 9, device="cuda", memory_format=fmt, requires_grad=True)
            return lambda: conv(x).square().sum()
        return prepared

    def copies(fmt):
        rows = ledger.trace_kernels(prepare(fmt), {"conv": conv}, backward=True)
        return [r.stage for r in rows if r.kernel == "layout copy before cudnn"]

    assert copies(torch.channels_last) == []
    assert copies(torch.contiguous_format) == ["forward", "backward"]


@pytest.mark.parametrize("cuda", ["12.4", "13.0"])
def test_multi_tensor_apply_launches(monkeypatch, cuda):
    """ATen's chunking rule (MultiTensorApply.cuh), whose limits depend on torch's CUDA version."""
    monkeypatch.setattr(torch.version, "cuda", cuda)
    max_tensors, max_blocks = (36, 320) if cuda == "12.4" else (252, 2240)
    assert ledger.mta_launches([1] * max_tensors, 4) == 1
    assert ledger.mta_launches([1] * (max_tensors + 1), 4) == 2
    assert ledger.mta_launches([65536 * max_blocks], 4) == 1
    assert ledger.mta_launches([65536 * max_blocks + 1], 4) == 2  # the last chunk starts a second launch
    assert ledger.mta_launches([0, 0], 1) == 0


def test_roofline_takes_the_largest_of_compute_memory_and_launch():
    gpu = ledger.GPUS["h100-sxm"]

    def seconds(launches, nbytes, flops, dtype):
        return ledger.Kernel("op", "k", "other", "", "forward", "", launches, nbytes, flops, dtype).seconds(gpu)

    assert seconds(1, 4, 0, "") == gpu.launch_s  # a tiny kernel: the launch floor
    assert seconds(3, 12, 0, "") == 3 * gpu.launch_s
    assert seconds(1, 3.35e9, 0, "") == pytest.approx(1e-3)  # 3.35 GB at 3.35 TB/s
    assert seconds(1, 1000, 989.4e9, "bf16") == pytest.approx(1e-3)  # 989.4 GFLOP at 989.4 TFLOP/s
    assert seconds(1, 1000, 989.4e9, "tf32") == pytest.approx(2e-3)


def test_foreach_slow_route_is_one_kernel_per_tensor():
    """_foreach_copy_ between dtypes takes the multi-tensor route while each pair has one size and strides (fp32
    weights into bf16 copies); a channels_last weight copied into a contiguous one sends every tensor down the
    slow route, one copy kernel each."""
    def prepare(dst_format):
        def prepared():
            src = [torch.empty(8, 4, 3, 3, device="cuda", memory_format=torch.channels_last) for _ in range(5)]
            dst = [torch.empty(8, 4, 3, 3, device="cuda", dtype=torch.bfloat16, memory_format=dst_format)
                   for _ in range(5)]
            return lambda: torch._foreach_copy_(dst, src)
        return prepared

    fast, = ledger.trace_kernels(prepare(torch.channels_last))
    slow, = ledger.trace_kernels(prepare(torch.contiguous_format))
    assert (fast.launches, slow.launches) == (1, 5)


# --- each fastgan op: replayed launches == a real run ---------------------------------------------------------
def _public_cases():
    """Every option case of every public Triton op (specialisations.PUBLIC_CASES), in one layout each, the layouts
    alternating (the launchers plan both the same way; a layout copy would show in either)."""
    layouts = ("nhwc", "nchw")
    for op, (cases, _) in specialisations.PUBLIC_CASES.items():
        for i, (name, case) in enumerate(cases()):
            yield pytest.param(case, layouts[i % 2], id=f"{op} {name} {layouts[i % 2]}")


def _real_run(case, layout):
    """The public op's forward and backward on CPU tensors through the Triton interpreter, with its custom ops'
    calls and launches recorded (each kernel really runs)."""
    fmt = torch.channels_last if layout == "nhwc" else torch.contiguous_format
    x = torch.randn(2, 3, 5, 7).to(memory_format=fmt).requires_grad_()
    calls = ledger._Calls(costs=False)
    with ledger._recording(calls, run_triton=True):
        y = case(x)
        y.backward(torch.randn_like(y))
    return [e for e in calls.entries if e[0] == "op"]


def _names(entries):
    return [(e[0], e[1]) for e in entries]


def _launches(entries):
    """Each launch in order: the kernel's name, or "aten" for an ATen call (a fake-tensor replay sees some
    composite ops decomposed, e.g. square as pow: one kernel either way)."""
    return [name if kind == "kernel" else kind for kind, name in _names(entries)]


@pytest.mark.parametrize("case, layout", list(_public_cases()))
def test_triton_op_launches_match_a_real_run(monkeypatch, case, layout):
    pytest.importorskip("triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    ran = _real_run(case, layout)
    # forward and backward (batch_norm_act's forward also has its statistics pass, batch_norm_act_stats)
    assert {e[1].split(".")[1].rsplit("_", 1)[1] for e in ran} - {"stats"} == {"fwd", "bwd"}
    for _, op, inner, (args, kwargs) in ran:
        real = _launches(inner)
        assert any(name != "aten" for name in real), op
        replayed = _launches(ledger.op_kernels(op.removesuffix(".default").replace(".", "::", 1), args, kwargs))
        assert replayed == real, op


def _reflect_cases():
    # (shape, layout, padding, stride, bias): the CycleGAN 3x3 and 7x7 layers, a strided one, no padding.
    yield (1, 4, 9, 11), torch.contiguous_format, 1, 1, True
    yield (2, 3, 8, 8), torch.contiguous_format, 3, 1, False
    yield (1, 4, 9, 11), torch.contiguous_format, 1, 2, True
    yield (1, 4, 6, 6), torch.contiguous_format, 0, 1, True


@pytest.mark.parametrize("shape, fmt, padding, stride, bias", list(_reflect_cases()))
def test_extension_launches_match_the_cpp_launcher(shape, fmt, padding, stride, bias):
    """reflect_pad_conv2d's declared replay makes the ATen calls its C++ launcher makes (seen on the C++ CPU
    path, whose pad and fold are loops, not kernels) and launches its own kernels where the launcher does."""
    module = importlib.import_module("fastgan.ops.reflect_pad_conv2d")
    if module.extension_check(torch.device("cpu")) is not None:
        pytest.skip("fastgan._C is not built")
    x = torch.randn(shape).to(memory_format=fmt).requires_grad_()
    weight = torch.randn(5, shape[1], 3, 3, requires_grad=True)
    b = torch.randn(5, requires_grad=True) if bias else None
    calls = ledger._Calls(costs=False)
    with ledger._recording(calls, run_triton=False):
        y = ops.reflect_pad_conv2d(x, weight, b, padding, stride, impl="cuda")
        y.backward(torch.randn_like(y))
    ran = [e for e in calls.entries if e[0] == "op"]
    assert [e[1] for e in ran] == ["fastgan.reflect_pad_conv2d.default", "fastgan.reflect_pad_conv2d_backward.default"]
    for _, op, inner, (args, kwargs) in ran:
        replayed = ledger.op_kernels(op.removesuffix(".default").replace(".", "::", 1), args, kwargs)
        assert [e for e in _names(replayed) if e[0] == "aten"] == _names(inner), op
        kernels = [name for kind, name in _names(replayed) if kind == "kernel"]
        if op.endswith("_backward.default"):
            assert kernels == (["reflect_pad_kernel", "reflect_fold_kernel"] if padding else []), op
        else:
            assert kernels == (["reflect_pad_kernel"] if padding else []), op


def test_extension_kernels_are_launched_once_by_their_launchers():
    """Each host function of reflect_pad_conv2d_cuda.cu launches exactly the one kernel the replay names."""
    source = (ROOT / "csrc/reflect_pad_conv2d/reflect_pad_conv2d_cuda.cu").read_text()
    for host, kernel in (("reflect_pad_cuda", "reflect_pad_kernel"), ("reflect_fold_cuda", "reflect_fold_kernel")):
        body = source.split(f"void {host}(", 1)[1].split("\n}\n", 1)[0]
        assert re.findall(r"(\w+)\s*<[^<>]*>\s*<<<", body) == [kernel], host
    assert source.count("<<<") == 2, "a new kernel launch: declare it in reflect_pad_conv2d's EXTENSION_LAUNCHES"


def test_every_op_is_replayable():
    """Every fastgan custom op either has a Python implementation (its launchers) or a declared replay."""
    from torch._library.custom_ops import OPDEFS

    python_ops = {name for name in OPDEFS if name.startswith("fastgan::")}
    registered = {f"fastgan::{name}" for name in dir(torch.ops.fastgan) if not name.startswith("_")
                  and isinstance(getattr(torch.ops.fastgan, name), torch._ops.OpOverloadPacket)}
    assert registered <= python_ops | set(ledger.extension_launches())


# --- the workloads' budgets --------------------------------------------------------------------------------
def _ledger(model, overrides):
    from fastgan.ops import _dispatch

    missing = {op: reason for op, fast in _dispatch._FAST.items()
               if (reason := fast.check(torch.device("cuda"))) is not None}
    if missing:  # e.g. fastgan._C built without its CUDA kernels: the budgets are for the fast path
        pytest.skip(f"this build has no fast path on CUDA for {missing}")
    return ledger.ledger_for(model, overrides, impls=("auto",))["impls"]["auto"]["total"]


def test_cyclegan_step_launch_budget():
    """Issue 20: the CycleGAN 256x256 bs1 --amp step launches at most 1,000 kernels."""
    model, overrides = ledger.WORKLOADS["CycleGAN 256² bs1"]
    assert _ledger(model, overrides)["launches"] <= 1000


def test_cyclegan_step_byte_budget():
    """Issue 20: the CycleGAN 256x256 bs1 --amp step moves at most half the non-convolution bytes of the step
    before the diet."""
    model, overrides = ledger.WORKLOADS["CycleGAN 256² bs1"]
    total = _ledger(model, overrides)
    assert total["non_convolution_bytes"] <= 0.5 * ledger.BASELINE["CycleGAN 256² bs1"]["non_convolution_bytes"]


@pytest.mark.parametrize("workload", list(ledger.GUARDS))
def test_step_does_not_grow(workload):
    """Regression guards: these steps launch no more kernels and move no more bytes than GUARDS records."""
    model, overrides = ledger.WORKLOADS[workload]
    total = _ledger(model, overrides)
    guard = ledger.GUARDS[workload]
    assert total["launches"] <= guard["launches"]
    assert total["non_convolution_bytes"] <= guard["non_convolution_bytes"]


# --- the command ----------------------------------------------------------------------------------------------
def test_command_prints_the_table_and_writes_json(tmp_path, capsys):
    out = tmp_path / "ledger.json"
    assert ledger.main(["dcgan", "--batch-size", "8", "--json", str(out), "--top", "3"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("the 3 largest") == 2
    assert "reference (--impl ref)" in printed and "fastgan (--impl auto)" in printed
    assert "modelled, not measured" in printed
    data = json.loads(out.read_text())
    assert set(data["impls"]) == {"ref", "auto"}
    auto = data["impls"]["auto"]
    assert auto["total"]["launches"] == sum(k["launches"] for k in auto["kernels"]) > 0
    # Between the graph replays: the batch into the static inputs (one copy per input), the LR schedule.
    outside = [k for k in auto["kernels"] if k["stage"] in ("inputs", "schedule")]
    assert {k["stage"] for k in outside} == {"inputs", "schedule"}
    assert auto["total"]["graph_launches"] == auto["total"]["launches"] - sum(k["launches"] for k in outside)
    assert data["constants"]["bandwidth"] == ledger.GPUS["h100-sxm"].bandwidth


def test_command_prints_the_aten_table(capsys):
    assert ledger.main(["--aten-table"]) == 0
    printed = capsys.readouterr().out
    assert "aten.convolution_backward: cuDNN's backward data" in printed and "source: FLOP/s" in printed


def test_command_bad_input_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        ledger.main(["dcgan", "--batch-size", "8", "--json", str(tmp_path / "missing" / "x.json")])
    assert e.value.code == 2
    assert capsys.readouterr().err.strip().count("\n") == 0
    capsys.readouterr()
    for argv in (["nosuchmodel"], ["dcgan", "--batch-size", "0x"], []):
        with pytest.raises(SystemExit) as e:
            ledger.main(argv)
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith("fastgan.testing.ledger: error:") and err.count("\n") == 1, err
