"""Training-step throughput of each model: ms per step (one iteration: every D and G phase) and images/s.

Run with `pytest bench --benchmark-only -k train_step`. On CUDA the canonical sizes (CycleGAN 256^2 at batch
1 and 4, DCGAN 64^2 at 128, DCGAN/cGAN 28^2 at 64, MLP GAN at 64); on CPU small sizes (the file runs in
under a minute). Each case builds its task and batch outside the timed call, warms up (cuDNN algorithm
choice, allocator), and synchronises the device inside the timed call.

VARIANTS is the axis later work extends (e.g. torch.compile, CUDA graphs, fastgan's fused layers): a
variant is a name and a function that prepares (task, step) for a case; extra_info records the variant,
the implementation the layers really ran (fastgan.ops dispatch) and, for variants other than the
reference, the ratio to the reference median measured in the same run.
"""

import statistics

import pytest
import torch
from conftest import synchronize

from fastgan import ops
from fastgan.nn import set_impl
from fastgan.train.config import TrainConfig
from fastgan.train.loop import resolve_config
from fastgan.train.steps import train_step
from fastgan.train.tasks import build_task

_CUDA = torch.cuda.is_available()

# (model, image_size, batch_size, architecture overrides)
CASES = [
    ("cyclegan", 256, 1, {}),  # the CycleGAN paper's setting: 9 residual blocks, batch 1
    ("cyclegan", 256, 4, {}),
    ("dcgan", 64, 128, {}),  # Radford et al. on 64^2 image folders
    ("dcgan", 28, 64, {}),  # Fashion-MNIST
    ("cgan", 28, 64, {}),
    ("gan", 28, 64, {}),  # MLP GAN
] if _CUDA else [
    ("cyclegan", 64, 1, {"ngf": 16, "ndf": 16}),
    ("dcgan", 28, 16, {"ngf": 16, "ndf": 16}),
    ("cgan", 28, 16, {"ngf": 16, "ndf": 16}),
    ("gan", 28, 16, {}),
]


def reference(task):
    """Eager train_step with every fastgan layer forced onto its plain PyTorch reference path."""
    for net in task.nets.values():
        set_impl(net, "ref")
    return lambda batch, accum: train_step(task, batch, accum)


VARIANTS = {"reference": reference}
_reference_ms: dict[tuple, float] = {}  # case -> reference median, for the ratio of the other variants


def make_case(model, image_size, batch_size, overrides, device):
    cfg = resolve_config(TrainConfig(model=model, image_size=image_size, batch_size=batch_size,
                                     device=str(device), **overrides))
    channels = 3 if model == "cyclegan" else 1
    info = {"channels": channels, "num_classes": 10 if model == "cgan" else 0, "num_images": 1000}
    task = build_task(cfg, info, device)
    shape = (batch_size, channels, image_size, image_size)
    if model == "cyclegan":
        batch = {"A": torch.rand(shape, device=device) * 2 - 1, "B": torch.rand(shape, device=device) * 2 - 1}
    else:
        batch = {"real": torch.rand(shape, device=device) * 2 - 1,
                 "label": torch.randint(0, 10, (batch_size,), device=device)}
    return task, batch


def used_impls():
    return {op: impl for op in ("instance_norm_act", "leaky_relu", "reflect_pad_conv2d")
            if (impl := ops._dispatch.last_impl(op)) is not None}


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("model, image_size, batch_size, overrides", CASES,
                         ids=[f"{m}-{s}px-bs{b}" for m, s, b, _ in CASES])
def test_train_step(benchmark, record, bench_device, variant, model, image_size, batch_size, overrides):
    task, batch = make_case(model, image_size, batch_size, overrides, bench_device)
    step = VARIANTS[variant](task)
    accum: dict = {}

    def one_step():
        step(batch, accum)
        synchronize(bench_device)

    for _ in range(3):
        one_step()
    rounds = 20 if bench_device.type == "cuda" else 3
    benchmark.pedantic(one_step, rounds=rounds, iterations=1, warmup_rounds=1)
    ms = statistics.median(benchmark.stats.stats.data) * 1e3
    case = (model, image_size, batch_size)
    fields = {"variant": variant, "impl": used_impls(), "model": model, "image_size": image_size,
              "batch_size": batch_size, "ms_per_step": ms, "images_per_s": batch_size * 1e3 / ms,
              "amp": False}
    if variant == "reference":
        _reference_ms[case] = ms
    elif case in _reference_ms:
        fields["speedup_vs_reference"] = _reference_ms[case] / ms
    record(**fields)
