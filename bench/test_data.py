"""Loader throughput: DALI vs the torch DataLoader (0 and N workers) vs the device-resident loader.

Unpaired folder: 256^2 JPEGs generated once per session, CycleGAN's transform (resize to 286, random 256
crop, flip, normalise), pairs/s. Fashion-MNIST (skipped if absent): DCGAN batches at 28^2, images/s.
Each round starts an epoch and takes its first batch outside the timed call (pipeline build, worker start),
then times the next `steps` batches, synchronising the device at the end. The ratio is to the torch
DataLoader with N workers measured earlier in the same run (the issue's reference)."""

import itertools
import os

import numpy as np
import pytest
import torch
from conftest import synchronize
from PIL import Image

from fastgan.data import build_loader
from fastgan.data.datasets import find_fashion_mnist
from fastgan.errors import UserError
from fastgan.train.config import TrainConfig
from fastgan.train.tasks import data_request

WORKERS = min(8, len(os.sched_getaffinity(0)))
REFERENCE = f"torch-{WORKERS}"  # measured first, so that every later loader gets its ratio
LOADERS = (REFERENCE, "torch-0", "device", "dali")
_rates: dict[tuple, float] = {}  # (dataset, batch, loader) -> items/s, for ratios within one run


def _gpu() -> bool:
    return torch.cuda.is_available()


@pytest.fixture(scope="session")
def jpeg_folder(tmp_path_factory):
    """trainA/trainB of 256^2 JPEGs: smooth colour fields with texture, as photographs compress."""
    per_domain = 256 if _gpu() else 32
    root = tmp_path_factory.mktemp("unpaired-jpeg")
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:256, 0:256].astype(np.float32) / 256
    for domain in ("trainA", "trainB"):
        os.makedirs(root / domain)
        for i in range(per_domain):
            phase = rng.uniform(0, 2 * np.pi, 3)
            freq = rng.uniform(1, 6, 3)
            channels = [np.sin(freq[c] * (x + y * (c + 1)) * np.pi + phase[c]) for c in range(3)]
            image = 127.5 + 100 * np.stack(channels, -1) + rng.normal(0, 12, (256, 256, 3))
            image = Image.fromarray(np.clip(image, 0, 255).astype(np.uint8))
            image.save(root / domain / f"{i}.jpg", quality=90)
    return str(root)


def _loader(cfg: TrainConfig, name: str, device: torch.device):
    if name == "dali":
        pytest.importorskip("nvidia.dali", reason="NVIDIA DALI is not installed")
    impl, _, workers = name.partition("-")
    cfg.loader, cfg.workers = impl, int(workers or 0)
    return build_loader(data_request(cfg), device)


def _measure(benchmark, record, loader, dataset: str, name: str, batch: int, steps: int, device, unit: str):
    def start():
        batches = loader.epoch(0)
        next(batches)  # pipeline build / worker start and the first batch, outside the timed call
        synchronize(device)
        return (batches,), {}

    def take(batches):
        for _ in itertools.islice(batches, steps):
            pass
        synchronize(device)

    benchmark.pedantic(take, setup=start, rounds=3 if _gpu() else 2, iterations=1)
    rate = steps * batch / benchmark.stats.stats.median
    _rates[dataset, batch, name] = rate
    reference = _rates.get((dataset, batch, REFERENCE))
    record(
        impl=loader.info["impl"], loader=name, dataset=dataset, batch_size=batch, steps=steps,
        **{unit: round(rate, 1)}, reference=REFERENCE,
        ratio_to_reference=None if reference is None else round(rate / reference, 2),
    )  # fmt: skip


@pytest.mark.parametrize("batch", [1, 8])
@pytest.mark.parametrize("name", [n for n in LOADERS if n != "device"])  # a folder is not held in memory
def test_unpaired_jpeg_folder(benchmark, record, bench_device, jpeg_folder, name, batch):
    cfg = TrainConfig(model="cyclegan", data=jpeg_folder, batch_size=batch, image_size=256, load_size=286)
    loader = _loader(cfg, name, bench_device)
    assert loader.info["impl"] == name.partition("-")[0]  # the loader asked for is the one measured
    steps = (len(loader) - 1) if _gpu() else max(2, 6 // batch)
    _measure(benchmark, record, loader, "unpaired-jpeg-256", name, batch, steps, bench_device, "pairs_per_s")


@pytest.mark.parametrize("batch", [1, 8])
@pytest.mark.parametrize("name", LOADERS)
def test_fashion_mnist(benchmark, record, bench_device, name, batch):
    try:
        find_fashion_mnist()
    except UserError as e:
        pytest.skip(str(e))
    cfg = TrainConfig(model="dcgan", data="fashion-mnist", batch_size=batch)
    loader = _loader(cfg, name, bench_device)
    assert loader.info["impl"] == name.partition("-")[0]
    steps = (512 if _gpu() else 64) // batch
    _measure(benchmark, record, loader, "fashion-mnist-28", name, batch, steps, bench_device, "images_per_s")
