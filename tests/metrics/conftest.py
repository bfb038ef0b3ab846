"""Shared fixtures of the metric tests: a private reference cache, classifier files, an IDX copy of the
synthetic set."""

from __future__ import annotations

import os
import struct

import numpy as np
import pytest
import torch

from fastgan.data import DataRequest
from fastgan.data.datasets import resolve_data
from fastgan.metrics.classifier import DomainClassifier, save_classifier, train_classifier


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    """Reference statistics of sets without a writable directory go to a per-test user cache."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))


def synthetic_split(split: str):
    """The built-in labelled synthetic set (2048 grey 28x28 blobs whose position encodes one of 10 classes)."""
    source = resolve_data(DataRequest(kind="labelled", data="synthetic", batch_size=1), split).sources["real"]
    return source.images, source.labels


@pytest.fixture(name="synthetic_split")
def _synthetic_split_fixture():
    return synthetic_split


def write_idx(path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    with open(path, "wb") as f:
        f.write(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())


@pytest.fixture
def idx_dir(tmp_path):
    """The synthetic set written as an MNIST-family IDX directory (a user's writable data directory)."""
    root = tmp_path / "blobs"
    root.mkdir()
    for prefix, split in (("train", "train"), ("t10k", "test")):
        images, labels = synthetic_split(split)
        write_idx(root / f"{prefix}-images-idx3-ubyte", images[:, 0].numpy())
        write_idx(root / f"{prefix}-labels-idx1-ubyte", labels.numpy())
    return str(root)


@pytest.fixture(scope="session")
def random_classifier(tmp_path_factory):
    """A classifier file with seeded random weights: a fixed, if uninformed, feature space."""
    path = tmp_path_factory.mktemp("classifiers") / "random.pt"
    with torch.random.fork_rng():
        torch.manual_seed(1)
        net = DomainClassifier(10).eval()
    save_classifier(net, path, classes=[str(k) for k in range(10)], data="synthetic", test_accuracy=0.1,
                    train_seconds=0.0, epochs=0)
    return str(path)


@pytest.fixture(scope="session")
def synthetic_classifier(tmp_path_factory):
    """A classifier trained for one epoch on the synthetic blobs (a few seconds)."""
    images, labels = synthetic_split("train")
    net = train_classifier(images, labels, 10, epochs=1, batch_size=64, seed=0)
    test_images, test_labels = synthetic_split("test")
    from fastgan.metrics.classifier import accuracy
    acc = accuracy(net, test_images, test_labels)
    path = tmp_path_factory.mktemp("classifiers") / "synthetic.pt"
    save_classifier(net, path, classes=[str(k) for k in range(10)], data="synthetic", test_accuracy=acc,
                    train_seconds=0.0, epochs=1)
    return str(path)


def needs_fashion_mnist():
    return pytest.mark.skipif(not os.path.isfile("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")
                              and not os.path.isfile("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte")
                              and not os.environ.get("FASTGAN_DATA"),
                              reason="needs Fashion-MNIST (apt-get install dataset-fashion-mnist or $FASTGAN_DATA)")
