"""The Data API of fastgan.data: build_loader, loader.info, batch layout, loader choice."""

import dataclasses
import os
import sys

import pytest
import torch

from fastgan.data import build_loader
from fastgan.errors import UserError
from fastgan.models import get_model

FASHION_DIR = "/usr/share/datasets/fashion-mnist"
INFO_KEYS = {"name", "channels", "image_size", "num_classes", "num_images", "kind", "impl", "world_size",
             "global_batch", "counts", "skipped", "classes"}


def _cfg(cfg, model=None, **changes):
    """The request with ``changes``; ``model`` asks as that registered model does (its data kind)."""
    if model is not None:
        changes.update(kind=get_model(model).data_kind, model=model)
    return dataclasses.replace(cfg, **changes)


@pytest.fixture
def tiny_fashion(tmp_path, monkeypatch, datagen):
    """$FASTGAN_DATA pointing at a 40-image IDX set standing in for Fashion-MNIST."""
    root = datagen.make_idx_dir(tmp_path / "fashion-mnist", n=40)
    monkeypatch.setenv("FASTGAN_DATA", root)
    return root


def _case(name, cfg, idx_dir, unpaired_dir):
    """(config, expected info subset, batch shapes) of each kind of data."""
    cases = {
        "gan-idx": (
            _cfg(cfg, model="gan", data=idx_dir),
            {
                "kind": "idx",
                "impl": "device",
                "channels": 1,
                "image_size": 28,
                "num_classes": 10,
                "num_images": 20,
            },
            {"real": (4, 1, 28, 28), "label": (4,)},
        ),
        "dcgan-idx-resized": (
            _cfg(cfg, data=idx_dir, image_size=37),
            {"kind": "idx", "impl": "device", "image_size": 37},
            {"real": (4, 1, 37, 37), "label": (4,)},
        ),
        "cgan-synthetic": (
            _cfg(cfg, model="cgan", data="synthetic"),
            {"kind": "synthetic", "impl": "device", "channels": 1, "num_classes": 10, "num_images": 2048},
            {"real": (4, 1, 28, 28), "label": (4,)},
        ),
        "dcgan-folder": (  # trainA, trainB, testA, testB: class subfolders
            _cfg(cfg, data=unpaired_dir, image_size=16),
            {"kind": "folder", "impl": "torch", "channels": 3, "num_classes": 4, "num_images": 12},
            {"real": (4, 3, 16, 16), "label": (4,)},
        ),
        "cyclegan-folder": (
            _cfg(cfg, model="cyclegan", data=unpaired_dir, image_size=16),
            {"kind": "unpaired", "impl": "torch", "channels": 3, "num_classes": 0, "num_images": 5},
            {"A": (4, 3, 16, 16), "B": (4, 3, 16, 16)},
        ),
        "cyclegan-synthetic": (
            _cfg(cfg, model="cyclegan", data="synthetic", image_size=16),
            {"kind": "synthetic", "impl": "device", "channels": 3, "image_size": 16},
            {"A": (4, 3, 16, 16), "B": (4, 3, 16, 16)},
        ),
        "cyclegan-fashion-unpaired": (
            _cfg(cfg, model="cyclegan", image_size=32),
            {"kind": "unpaired", "impl": "device", "channels": 3, "num_images": 4},
            {"A": (4, 3, 32, 32), "B": (4, 3, 32, 32)},
        ),
    }
    return cases[name]


CASES = [
    "gan-idx",
    "dcgan-idx-resized",
    "cgan-synthetic",
    "dcgan-folder",
    "cyclegan-folder",
    "cyclegan-synthetic",
    "cyclegan-fashion-unpaired",
]


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize(
    "memory_format,dtype", [(torch.contiguous_format, torch.float32), (torch.channels_last, torch.bfloat16)]
)
def test_batches_and_info(cfg, idx_dir, unpaired_dir, tiny_fashion, name, memory_format, dtype):
    config, info, shapes = _case(name, cfg, idx_dir, unpaired_dir)
    loader = build_loader(config, torch.device("cpu"), "train", memory_format, dtype)
    assert set(loader.info) == INFO_KEYS and {k: loader.info[k] for k in info} == info
    assert len(loader) == loader.info["num_images"] // config.batch_size
    batch = next(loader.epoch(0))
    fixed = loader.fixed(3)
    assert {k: tuple(v.shape) for k, v in batch.items()} == shapes
    assert {k: v.shape[1:] for k, v in fixed.items()} == {k: v.shape[1:] for k, v in batch.items()}
    for key, value in [*batch.items(), *fixed.items()]:
        if key == "label":
            assert (
                value.dtype == torch.int64
                and value.min() >= 0
                and value.max() < max(1, info.get("num_classes", 10))
            )
        else:
            assert value.dtype == dtype and value.is_contiguous(memory_format=memory_format)
            assert value.min() >= -1 and value.max() <= 1 and value.float().std() > 0


def test_auto_loader_choice(cfg, idx_dir, unpaired_dir):
    assert build_loader(_cfg(cfg, data=idx_dir), "cpu").info["impl"] == "device"
    assert build_loader(_cfg(cfg, data=unpaired_dir, image_size=8), "cpu").info["impl"] == "torch"
    assert build_loader(_cfg(cfg, data=idx_dir, loader="torch"), "cpu").info["impl"] == "torch"


def test_split_test(cfg, idx_dir):
    assert build_loader(_cfg(cfg, data=idx_dir), "cpu", "test").info["num_images"] == 10


def test_fashion_unpaired_grey_replicated_and_flipped(cfg, tiny_fashion):
    loader = build_loader(_cfg(cfg, model="cyclegan", image_size=32, batch_size=4), "cpu")
    a = next(loader.epoch(0))["A"]
    assert torch.equal(a[:, 0], a[:, 1]) and torch.equal(a[:, 1], a[:, 2])
    assert loader.info["name"] == "fashion-unpaired(sneaker,ankle-boot)"


def test_device_loader_refuses_folders(cfg, unpaired_dir):
    with pytest.raises(UserError, match="--loader device"):
        build_loader(_cfg(cfg, data=unpaired_dir, loader="device"), "cpu")


def test_unknown_loader(cfg):
    with pytest.raises(UserError, match="--loader fast: expected one of auto, device, torch, dali"):
        build_loader(_cfg(cfg, loader="fast"), "cpu")


def test_negative_workers(cfg, unpaired_dir):
    with pytest.raises(UserError, match="--workers -1"):
        build_loader(_cfg(cfg, data=unpaired_dir, workers=-1), "cpu")


def test_dali_missing(cfg, idx_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "fastgan.data.dali", None)  # as if DALI were not installed
    with pytest.raises(UserError) as e:
        build_loader(_cfg(cfg, data=idx_dir, loader="dali"), "cpu")
    assert str(e.value) == "--loader dali needs NVIDIA DALI: pip install 'fastgan[dali]'"


@pytest.mark.skipif(not os.path.isdir(FASHION_DIR), reason="dataset-fashion-mnist not installed")
def test_real_fashion_mnist_defaults(cfg, monkeypatch):
    monkeypatch.delenv("FASTGAN_DATA", raising=False)
    loader = build_loader(_cfg(cfg, batch_size=64), "cpu")
    assert loader.info == {
        "name": "fashion-mnist",
        "channels": 1,
        "image_size": 28,
        "num_classes": 10,
        "num_images": 60000,
        "kind": "idx",
        "impl": "device",
        "world_size": 1,
        "global_batch": 64,
        "counts": {},
        "skipped": {},
        "classes": [],
    }
    assert len(loader) == 937
    batch = next(loader.epoch(0, start=936))
    assert batch["real"].shape == (64, 1, 28, 28) and batch["real"].min() == -1 and batch["real"].max() == 1
    unpaired = build_loader(_cfg(cfg, model="cyclegan", image_size=64), "cpu")
    assert unpaired.info["num_images"] == 6000 and unpaired.info["image_size"] == 64
    assert next(unpaired.epoch(0))["B"].shape == (4, 3, 64, 64)
