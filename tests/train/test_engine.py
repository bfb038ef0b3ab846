"""The fast engine: CUDA-graph capture of the phases (fastgan/train/graphs.py), channels_last and the
fused layers vs the reference path.

Tolerances (stated once, used below):
- graphed vs eager, fp32: the graphs replay the eager step's kernels; the only numeric difference is
  the learning rate held as an fp32 tensor instead of a double, so losses agree to 1e-4 relative and
  weights to 1e-5 absolute after a few steps (cuDNN in deterministic mode in both).
- graphed vs eager, autocast: the same, with the low-precision rounding of one extra cast order:
  2e-2 relative on losses, 2e-3 absolute on weights.
- fast vs reference path: different kernels and memory layouts, so rounding differs in the last fp32
  bits and is amplified by Adam; over tens of steps the losses agree to a few 1e-2 absolute.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from fastgan.errors import UserError
from fastgan.nn import Conv2dLeakyReLU, InstanceNormAct, LeakyReLU
from fastgan.ops import last_impl
from fastgan.train.config import TrainConfig
from fastgan.train.graphs import (
    GraphedTrainStep,
    _Snapshot,
    check_cuda_graphs,
    configure_engine,
    make_train_step,
    memory_format,
)
from fastgan.train.loop import resolve_config
from fastgan.train.steps import train_step
from fastgan.train.tasks import build_task

# Tiny versions of each model: (config overrides, channels, classes).
MODELS = {
    "gan": (dict(image_size=28, hidden=32, z_dim=8, batch_size=8), 1, 0),
    "dcgan": (dict(image_size=28, ngf=4, ndf=4, z_dim=8, batch_size=8), 1, 0),
    "cgan": (dict(image_size=28, ngf=4, ndf=4, z_dim=8, batch_size=8), 1, 10),
    "cyclegan": (dict(image_size=32, ngf=4, ndf=4, n_blocks=1, batch_size=2, pool_size=3), 3, 0),
}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # These tiny models spend their CPU time in OpenMP start-up and spinning when two threads share
    # two busy cores (16 s vs 1 s for three CycleGAN steps); one thread is also what CI has to spare.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_task(model: str, device, **overrides):
    """The model's task at a tiny size, with --impl/--channels-last/--compile applied as the loop does."""
    kwargs, channels, classes = MODELS[model]
    cfg = TrainConfig(model=model, data="synthetic", device=str(device), **(kwargs | overrides))
    cfg = resolve_config(cfg)
    info = {"name": "synthetic", "channels": channels, "image_size": cfg.image_size, "num_classes": classes,
            "num_images": 64 * cfg.batch_size, "kind": "synthetic", "impl": "device"}
    torch.manual_seed(cfg.seed)
    task = configure_engine(build_task(cfg, info, torch.device(device)), cfg)
    return task, cfg


def make_batches(model: str, cfg, n: int, device):
    _, channels, classes = MODELS[model]
    gen = torch.Generator().manual_seed(123)
    shape = (cfg.batch_size, channels, cfg.image_size, cfg.image_size)

    def images():
        x = torch.rand(shape, generator=gen) * 2 - 1
        return x.to(device).contiguous(memory_format=memory_format(cfg, torch.device(device)))

    batches = []
    for _ in range(n):
        if model == "cyclegan":
            batches.append({"A": images(), "B": images()})
        else:
            labels = torch.randint(0, max(classes, 1), (cfg.batch_size,), generator=gen).to(device)
            batches.append({"real": images(), "label": labels})
    return batches


def run_steps(task, step, batches, seed=7):
    """Runs ``step(batch, accum)`` over the batches; returns per-iteration losses (floats), the weights,
    and the names of parameters whose gradient is zero up to rounding (see assert_same_run)."""
    torch.manual_seed(seed)
    history = []
    for batch in batches:
        accum = {}
        step(batch, accum)
        history.append({k: v.item() for k, v in accum.items()})
    weights = {f"{name}.{k}": v.detach().clone() for name, net in task.nets.items()
               for k, v in net.state_dict().items()}
    grads = {f"{name}.{k}": p.grad for name, net in task.nets.items() for k, p in net.named_parameters()
             if p.grad is not None}
    scale = max(g.abs().max().item() for g in grads.values())
    zero = {k for k, g in grads.items() if g.abs().max().item() <= 1e-6 * scale}
    return history, weights, zero


def assert_same_run(a, b, loss_rtol, loss_atol, weight_atol, lr=2e-4):
    """Same losses at every iteration and same final weights. A parameter whose exact gradient is zero
    (a conv bias right before an instance norm) gets Adam steps of +-lr from the sign of rounding noise,
    so its tolerance is 2 * lr per iteration."""
    (hist_a, w_a, zero), (hist_b, w_b, _) = a, b
    assert len(hist_a) == len(hist_b) and hist_a[0].keys() == hist_b[0].keys()
    for i, (x, y) in enumerate(zip(hist_a, hist_b)):
        for k in x:
            assert y[k] == pytest.approx(x[k], rel=loss_rtol, abs=loss_atol), f"iteration {i}: {k}"
    assert w_a.keys() == w_b.keys()
    assert not any(w_a[k].dim() > 1 for k in zero), "a weight matrix without gradient: nothing trained"
    for k in w_a:
        atol = 2 * lr * len(hist_a) + weight_atol if k in zero else weight_atol
        torch.testing.assert_close(w_b[k].float(), w_a[k].float(), rtol=0, atol=atol, msg=k)


def eager(task):
    return lambda batch, accum: train_step(task, batch, accum)


# CPU ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("model", list(MODELS))
def test_snapshot_undoes_warm_up(model):
    """The state put back after warm-up is complete: warm-up + restore + N steps == N steps, exactly
    (parameters, BatchNorm statistics, fresh Adam moments and step counts, image pools, the RNG)."""
    task, cfg = make_task(model, "cpu")
    twin, _ = make_task(model, "cpu")  # the same seed: the same initial weights
    batches = make_batches(model, cfg, 3, "cpu")
    snapshot = _Snapshot(task)
    torch.manual_seed(99)
    for batch in batches:  # the warm-up: real updates that must leave no trace
        train_step(task, batch, {})
    snapshot.restore()
    reference = run_steps(twin, eager(twin), batches)
    restored = run_steps(task, eager(task), batches)
    assert_same_run(reference, restored, 0, 0, 0)


def test_cuda_graphs_refuse_cpu():
    task, cfg = make_task("dcgan", "cpu")
    batch = make_batches("dcgan", cfg, 1, "cpu")[0]
    with pytest.raises(UserError, match="--cuda-graphs needs a CUDA device"):
        GraphedTrainStep(task, batch)
    with pytest.raises(UserError, match="--cuda-graphs needs a CUDA device"):
        make_train_step(task, batch, cuda_graphs=True)
    with pytest.raises(UserError, match="--cuda-graphs needs a CUDA device"):
        check_cuda_graphs(TrainConfig(cuda_graphs=True), torch.device("cpu"))
    with pytest.raises(UserError, match="--compile"):
        check_cuda_graphs(TrainConfig(cuda_graphs=True, compile=True), torch.device("cuda"))
    check_cuda_graphs(TrainConfig(cuda_graphs=False), torch.device("cpu"))


def test_cli_cuda_graphs_on_cpu_exits_2(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "fastgan.train", "dcgan", "--data", "synthetic",
                           "--device", "cpu", "--cuda-graphs", "--dry-run", "--out", str(tmp_path / "run")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "--cuda-graphs needs a CUDA device" in lines[0], proc.stderr
    assert not (tmp_path / "run").exists()


def test_cli_engine_flags_run_on_cpu(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "fastgan.train", "dcgan", "--data", "synthetic", "--device", "cpu",
                           "--channels-last", "--impl", "ref", "--ngf", "4", "--ndf", "4", "--dry-run",
                           "--out", str(tmp_path / "run")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "run" / "latest").is_file()


# The fast configuration (fused layers at impl=auto, channels_last) against the reference one (impl=ref,
# contiguous). On the CPU impl=auto resolves every op to its reference, so this checks the engine's
# plumbing (memory formats through every layer, loss and optimiser on channels_last parameters); on
# CUDA (below) it checks the kernels too.
FAST = dict(impl="auto", channels_last=True)
REF = dict(impl="ref", channels_last=False)


@pytest.mark.parametrize("model", list(MODELS))
def test_fast_path_equals_reference_few_steps(model):
    fast_task, cfg = make_task(model, "cpu", **FAST)
    ref_task, ref_cfg = make_task(model, "cpu", **REF)
    if model != "gan":
        weights = [p for net in fast_task.nets.values() for p in net.parameters() if p.dim() == 4]
        assert all(p.is_contiguous(memory_format=torch.channels_last) for p in weights)
    fast = run_steps(fast_task, eager(fast_task), make_batches(model, cfg, 3, "cpu"))
    ref = run_steps(ref_task, eager(ref_task), make_batches(model, ref_cfg, 3, "cpu"))
    assert_same_run(ref, fast, loss_rtol=1e-4, loss_atol=1e-6, weight_atol=1e-5)


@pytest.mark.parametrize("model,steps", [("dcgan", 2), ("cyclegan", 1)])  # the interpreter is slow
def test_triton_kernels_interpreted_equal_reference_few_steps(model, steps, monkeypatch):
    """The Triton kernels themselves (run by Triton's interpreter on the CPU) inside real training steps."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    fast_task, cfg = make_task(model, "cpu", **REF)
    triton_layers = [m for net in fast_task.nets.values() for m in net.modules()
                     if isinstance(m, (InstanceNormAct, LeakyReLU, Conv2dLeakyReLU))]
    assert triton_layers
    for m in triton_layers:
        m.impl = "triton"  # explicit: fails instead of falling back if the kernel cannot run
    ref_task, _ = make_task(model, "cpu", **REF)
    batches = make_batches(model, cfg, steps, "cpu")
    fast = run_steps(fast_task, eager(fast_task), batches)
    ops = ["leaky_relu"] if model == "dcgan" else ["leaky_relu", "instance_norm_act"]
    assert all(last_impl(op) == "triton" for op in ops)
    ref = run_steps(ref_task, eager(ref_task), batches)
    assert_same_run(ref, fast, loss_rtol=1e-4, loss_atol=1e-6, weight_atol=1e-5)


def _mean_losses(history, last):
    return {k: sum(h[k] for h in history[-last:]) / last for k in history[0]}


@pytest.mark.parametrize("model,steps", [("dcgan", 50), ("cyclegan", 20)])
def test_fast_path_converges_like_reference_cpu(model, steps):
    """The smaller CPU variant of the convergence test: same data, both paths, same loss level."""
    runs = []
    for options in (REF, FAST):
        task, cfg = make_task(model, "cpu", **options)
        runs.append(run_steps(task, eager(task), make_batches(model, cfg, steps, "cpu"))[0])
    ref, fast = (_mean_losses(h, steps // 5) for h in runs)
    first = _mean_losses(runs[0][:3], 3)
    assert any(abs(ref[k] - first[k]) > 0.05 for k in ref), "the reference run did not train"
    for k in ref:
        assert fast[k] == pytest.approx(ref[k], abs=0.05), k


# CUDA (not run without a GPU) ------------------------------------------------------------------------

@pytest.fixture
def deterministic_cudnn():
    # The same convolution algorithms in both runs, so the comparison sees only the engine's differences.
    saved = torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = False, True
    yield
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = saved


AMP = {"fp32": dict(amp=False), "bf16": dict(amp=True, amp_dtype="bf16"),
       "fp16": dict(amp=True, amp_dtype="fp16")}
TOLERANCE = {"fp32": dict(loss_rtol=1e-4, loss_atol=1e-6, weight_atol=1e-5),
             "bf16": dict(loss_rtol=2e-2, loss_atol=1e-4, weight_atol=2e-3),
             "fp16": dict(loss_rtol=2e-2, loss_atol=1e-4, weight_atol=2e-3)}


@pytest.mark.cuda
@pytest.mark.parametrize("precision", list(AMP))
@pytest.mark.parametrize("model", list(MODELS))
def test_cuda_graphs_equal_eager(model, precision, deterministic_cudnn):
    eager_task, cfg = make_task(model, "cuda", **AMP[precision])
    graph_task, _ = make_task(model, "cuda", **AMP[precision])
    batches = make_batches(model, cfg, 6, "cuda")
    reference = run_steps(eager_task, eager(eager_task), batches)
    step = make_train_step(graph_task, batches[0], cuda_graphs=True)
    assert isinstance(step, GraphedTrainStep)
    graphed = run_steps(graph_task, step, batches)
    assert_same_run(reference, graphed, **TOLERANCE[precision])
    if precision == "fp16":
        for key, scaler in eager_task.scalers.items():
            assert graph_task.scalers[key].get_scale() == scaler.get_scale(), key


@pytest.mark.cuda
@pytest.mark.parametrize("model", ["dcgan", "cyclegan"])
@pytest.mark.parametrize("cuda_graphs", [False, True])
def test_no_host_sync_in_a_step(model, cuda_graphs):
    task, cfg = make_task(model, "cuda", amp=True, amp_dtype="fp16")
    batches = make_batches(model, cfg, 4, "cuda")
    step = make_train_step(task, batches[0], cuda_graphs)
    accum = {}
    step(batches[0], accum)  # lazy optimiser and scaler state is created here
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for batch in batches[1:]:
            step(batch, accum)
            for scheduler in task.schedulers.values():
                scheduler.step()
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert all(torch.isfinite(v).item() for v in accum.values())


@pytest.mark.cuda
@pytest.mark.slow
@pytest.mark.parametrize("model", ["dcgan", "cyclegan"])
def test_fast_path_converges_like_reference_cuda(model):
    """A few hundred steps: fastgan's fast engine (fused layers, channels_last, bf16, CUDA graphs) and
    the reference eager fp32 path reach the same losses (means over the last 50 steps, 0.1 absolute)."""
    steps = 300
    runs = []
    for options, graphs in ((REF, False), (FAST | AMP["bf16"], True)):
        task, cfg = make_task(model, "cuda", **options)
        batches = make_batches(model, cfg, steps, "cuda")
        runs.append(run_steps(task, make_train_step(task, batches[0], graphs), batches)[0])
    ref, fast = (_mean_losses(h, 50) for h in runs)
    for k in ref:
        assert fast[k] == pytest.approx(ref[k], abs=0.1), k
