"""Training-step throughput of each model: ms per step (one iteration: every D and G phase) and images/s,
plus the wall time of one Fashion-MNIST DCGAN epoch.

Run with `pytest bench --benchmark-only -k train_step`. On CUDA the canonical sizes (CycleGAN 256^2 at batch
1 and 4 with both upsampling modes, DCGAN 64^2 at 128, DCGAN/cGAN 28^2 at 64, MLP GAN at 64); on CPU small
sizes (the file runs in under a minute). Each case builds its task and batch outside the timed call, warms
up (cuDNN algorithm choice, Triton compilation, inductor compilation, graph capture), and synchronises the
device inside the timed call. The backends are set as the trainer sets them (fastgan.train.graphs.
configure_backends: cuDNN benchmark mode on CUDA), and on CUDA a case takes as many rounds as fill about two
seconds (20 to 200), so the median of a fast step is one of enough replays.

VARIANTS are the training engine's flag sets, applied as `python -m fastgan.train` applies them
(configure_backends, configure_engine, then make_train_step):
- reference: the plain PyTorch layers (--impl ref), fp32, contiguous, eager.
- compile: the reference plus --compile (torch.compile of every network; CUDA only).
- compile-reduce-overhead: the reference with every network compiled with torch.compile(mode="reduce-overhead"),
  i.e. inductor plus its own CUDA graphs (CUDA only; not a trainer flag, the benchmark compiles the networks and
  marks each step's start with torch.compiler.cudagraph_mark_step_begin).
- fastgan-eager: fused layers (--impl auto), --amp (bf16), channels_last on CUDA, eager; on CPU the fused
  layers resolve to the reference, so there it measures autocast alone.
- fastgan: fastgan-eager plus --cuda-graphs (CUDA only).
The compile variants run on the cases in COMPILED (inductor takes about a minute per CycleGAN case, so only
the issue's canonical sizes). extra_info records the variant, its flags, the implementation the layers really
ran (fastgan.ops dispatch) and, for the other variants, the ratio to the reference median measured in the same
run.
"""

import statistics
import time

import pytest
import torch
from conftest import synchronize

from fastgan import ops
from fastgan.errors import UserError
from fastgan.train.config import TrainConfig
from fastgan.train.graphs import compile_nets, configure_backends, configure_engine, make_train_step, memory_format
from fastgan.train.loop import resolve_config
from fastgan.train.tasks import build_task, data_request

_CUDA = torch.cuda.is_available()

# (model, image_size, batch_size, architecture overrides)
CASES = [
    ("cyclegan", 256, 1, {"upsample": "deconv"}),  # the CycleGAN paper's setting: 9 residual blocks, batch 1
    ("cyclegan", 256, 1, {"upsample": "resize"}),  # resize-conv, the architecture the seed code uses
    ("cyclegan", 256, 4, {"upsample": "deconv"}),
    ("cyclegan", 256, 4, {"upsample": "resize"}),
    ("dcgan", 64, 128, {}),  # Radford et al. on 64^2 image folders
    ("dcgan", 28, 64, {}),  # Fashion-MNIST
    ("cgan", 28, 64, {}),
    ("gan", 28, 64, {}),  # MLP GAN
] if _CUDA else [
    ("cyclegan", 32, 1, {"ngf": 8, "ndf": 8}),
    ("dcgan", 28, 16, {"ngf": 16, "ndf": 16}),
    ("cgan", 28, 16, {"ngf": 16, "ndf": 16}),
    ("gan", 28, 16, {}),
]

# variant -> engine flags (TrainConfig fields)
VARIANTS = {
    "reference": {"impl": "ref", "amp": False, "channels_last": False},
    "compile": {"impl": "ref", "amp": False, "channels_last": False, "compile": True},
    "compile-reduce-overhead": {"impl": "ref", "amp": False, "channels_last": False, "compile_mode": "reduce-overhead"},
    "fastgan-eager": {"impl": "auto", "amp": True},
    "fastgan": {"impl": "auto", "amp": True, "cuda_graphs": True},
}
CUDA_ONLY = {
    "compile": "no GPU: inductor compiles each network for minutes on 2 CPU cores, and the CPU is not its target",
    "compile-reduce-overhead": "no GPU: mode='reduce-overhead' is inductor plus CUDA graphs",
    "fastgan": "no GPU: --cuda-graphs needs a CUDA device",
}
COMPILE_VARIANTS = ("compile", "compile-reduce-overhead")
# case ids the compile variants run on: CycleGAN 256^2 at batch 1 and 4 (the paper's deconv) and DCGAN 64^2 at 128
COMPILED = (["cyclegan-256px-bs1-deconv", "cyclegan-256px-bs4-deconv", "dcgan-64px-bs128"] if _CUDA
            else ["cyclegan-32px-bs1", "dcgan-28px-bs16"])


def case_id(model, image_size, batch_size, overrides):
    upsample = f"-{overrides['upsample']}" if "upsample" in overrides else ""
    return f"{model}-{image_size}px-bs{batch_size}{upsample}"


def make_case(model, image_size, batch_size, overrides, flags, device):
    flags = dict(flags)
    compile_mode = flags.pop("compile_mode", None)  # not a trainer flag: compiled here, after configure_engine
    cfg = resolve_config(TrainConfig(model=model, image_size=image_size, batch_size=batch_size,
                                     device=str(device), **overrides, **flags))
    configure_backends(cfg, device)
    channels = 3 if model == "cyclegan" else 1
    info = {"channels": channels, "num_classes": 10 if model == "cgan" else 0, "num_images": 1000}
    task = configure_engine(build_task(cfg, info, device), cfg)
    if compile_mode is not None:
        compile_nets(task.nets.values(), compile_mode)
    shape = (batch_size, channels, image_size, image_size)
    fmt = memory_format(cfg, device)

    def images():
        return (torch.rand(shape, device=device) * 2 - 1).contiguous(memory_format=fmt)

    if model == "cyclegan":
        batch = {"A": images(), "B": images()}
    else:
        batch = {"real": images(), "label": torch.randint(0, 10, (batch_size,), device=device)}
    step = make_train_step(task, batch, cfg.cuda_graphs)
    if compile_mode == "reduce-overhead":
        return _marking_step_begin(step), batch
    return step, batch


def _marking_step_begin(step):
    """Each training iteration calls G several times and runs backward and the optimisers between the
    calls, which CUDA graph trees cannot tell apart from a new iteration by themselves; marking the start
    lets them reuse their memory pool once per iteration instead of erroring on overwritten outputs."""

    def marked(batch, accum):
        torch.compiler.cudagraph_mark_step_begin()
        step(batch, accum)

    return marked


def cuda_rounds(one_step, seconds: float = 2.0, least: int = 20, most: int = 200) -> int:
    """Rounds of a synchronised step that fill about ``seconds``, from one more timed step."""
    start = time.perf_counter()
    one_step()
    return max(least, min(most, round(seconds / max(time.perf_counter() - start, 1e-6))))


def used_impls():
    return {op: impl for op in ("instance_norm_act", "leaky_relu", "reflect_pad_conv2d")
            if (impl := ops._dispatch.last_impl(op)) is not None}


def timed_steps(step, batch, device, rounds):
    """Median seconds per step over ``rounds`` synchronised steps, after the same warm-up as the benchmark."""
    accum: dict = {}
    for _ in range(4):
        step(batch, accum)
    synchronize(device)
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        step(batch, accum)
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@pytest.fixture(scope="module")
def reference_ms():
    """case id -> the reference's median ms per step in this run: the reference test stores its own figure;
    a variant selected without it (e.g. with -k) has the reference measured here, outside its benchmark."""
    return {}


assert set(COMPILED) <= {case_id(*case) for case in CASES}, "COMPILED names a case that CASES lacks"
PARAMS = [pytest.param(*case, variant, id=f"{case_id(*case)}-{variant}") for case in CASES for variant in VARIANTS
          if variant not in COMPILE_VARIANTS or case_id(*case) in COMPILED]


@pytest.mark.parametrize("model, image_size, batch_size, overrides, variant", PARAMS)
def test_train_step(benchmark, record, bench_device, reference_ms, variant, model, image_size, batch_size,
                    overrides):
    if bench_device.type != "cuda" and variant in CUDA_ONLY:
        pytest.skip(CUDA_ONLY[variant])
    flags = VARIANTS[variant]
    ops._dispatch.clear_last()  # so used_impls() names only what this case's layers resolved to
    step, batch = make_case(model, image_size, batch_size, overrides, flags, bench_device)
    accum: dict = {}

    def one_step():
        step(batch, accum)
        synchronize(bench_device)

    for _ in range(3):
        one_step()
    rounds = cuda_rounds(one_step) if bench_device.type == "cuda" else 3
    benchmark.pedantic(one_step, rounds=rounds, iterations=1, warmup_rounds=1)
    ms = statistics.median(benchmark.stats.stats.data) * 1e3
    case = case_id(model, image_size, batch_size, overrides)
    fields = {"variant": variant, "flags": flags, "impl": used_impls(), "model": model,
              "image_size": image_size, "batch_size": batch_size, **overrides, "ms_per_step": ms,
              "images_per_s": batch_size * 1e3 / ms, "cpu_threads": torch.get_num_threads()}
    if variant == "reference":
        reference_ms[case] = ms
    else:
        if case not in reference_ms:
            ref_step, ref_batch = make_case(model, image_size, batch_size, overrides, VARIANTS["reference"],
                                            bench_device)
            reference_ms[case] = timed_steps(ref_step, ref_batch, bench_device, rounds) * 1e3
        fields["reference_ms_per_step"] = reference_ms[case]
        fields["speedup_vs_reference"] = reference_ms[case] / ms
    record(**fields)


@pytest.mark.skipif(not _CUDA, reason="no GPU: the epoch figure is the --amp --cuda-graphs run on CUDA")
def test_fashion_mnist_epoch(benchmark, record, bench_device):
    """One full Fashion-MNIST DCGAN epoch (60k images, bs64) as `python -m fastgan.train --amp --cuda-graphs`
    runs it: device-resident loader, graphed step, LR schedulers; no sampling or checkpoints."""
    from fastgan.data import build_loader

    ops._dispatch.clear_last()
    cfg = resolve_config(TrainConfig(model="dcgan", data="fashion-mnist", batch_size=64, loader="device",
                                     device=str(bench_device), amp=True, cuda_graphs=True))
    try:
        loader = build_loader(data_request(cfg), bench_device, memory_format=memory_format(cfg, bench_device))
    except UserError as err:
        pytest.skip(f"Fashion-MNIST not available: {err}")
    task = configure_engine(build_task(cfg, dict(loader.info), bench_device, len(loader)), cfg)
    step = make_train_step(task, next(iter(loader.epoch(0))), cfg.cuda_graphs)  # captured for its shapes
    accum: dict = {}
    epochs = iter(range(10**6))

    def one_epoch():
        for batch in loader.epoch(next(epochs)):
            step(batch, accum)
            for scheduler in task.schedulers.values():
                scheduler.step()
        synchronize(bench_device)

    benchmark.pedantic(one_epoch, rounds=3, iterations=1, warmup_rounds=1)
    seconds = statistics.median(benchmark.stats.stats.data)
    images = len(loader) * cfg.batch_size
    record(variant="fastgan", flags={"amp": True, "cuda_graphs": True, "loader": "device"}, impl=used_impls(),
           loader=loader.info["impl"], model="dcgan", image_size=cfg.image_size, batch_size=cfg.batch_size,
           iterations=len(loader), seconds_per_epoch=seconds, images_per_s=images / seconds)
