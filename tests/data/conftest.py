"""Tiny generated datasets (IDX files and image folders) written into tmp_path."""

from __future__ import annotations

import gzip
import os
import struct
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from fastgan.data import DataRequest

FASHION_DIR = "/usr/share/datasets/fashion-mnist"


def write_idx(path, array: np.ndarray, dtype_code: int = 0x08) -> str:
    """An IDX file of `array` (gzip when the name ends in .gz)."""
    header = bytes([0, 0, dtype_code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    path = str(path)
    with (gzip.open if path.endswith(".gz") else open)(path, "wb") as f:
        f.write(data)
    return path


def make_idx_dir(
    root, n: int = 20, height: int = 28, width: int = 28, gz: bool = False, seed: int = 0
) -> str:
    """train (n images) and t10k (n // 2) sets; labels cycle through 0..9."""
    rng = np.random.default_rng(seed)
    os.makedirs(root, exist_ok=True)
    ext = ".gz" if gz else ""
    for prefix, count in (("train", n), ("t10k", n // 2)):
        write_idx(
            os.path.join(root, f"{prefix}-images-idx3-ubyte{ext}"),
            rng.integers(0, 256, (count, height, width)),
        )
        write_idx(os.path.join(root, f"{prefix}-labels-idx1-ubyte{ext}"), np.arange(count) % 10)
    return str(root)


def save_image(path, width: int, height: int, mode: str = "RGB", seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    channels = {"L": 1, "RGB": 3, "RGBA": 4}[mode]
    pixels = rng.integers(0, 256, (height, width, channels), dtype=np.uint8)
    img = Image.fromarray(pixels[..., 0] if channels == 1 else pixels, mode)
    os.makedirs(os.path.dirname(str(path)), exist_ok=True)
    img.save(str(path))
    return str(path)


def make_unpaired_dir(root, n_a: int = 5, n_b: int = 3) -> str:
    """trainA (n_a) / trainB (n_b) / testA / testB with mixed sizes, modes and extension cases."""
    kinds = [("RGB", "png"), ("L", "png"), ("RGBA", "PNG"), ("RGB", "jpg"), ("RGB", "JPEG")]
    for domain, count in (("trainA", n_a), ("trainB", n_b), ("testA", 2), ("testB", 2)):
        for i in range(count):
            mode, ext = kinds[i % len(kinds)]
            save_image(os.path.join(root, domain, f"{i:03d}.{ext}"), 20 + 3 * i, 17 + 2 * i, mode, seed=i)
    return str(root)


@pytest.fixture
def datagen():
    """The writers above, for tests (conftest modules are not importable)."""
    return SimpleNamespace(
        write_idx=write_idx,
        make_idx_dir=make_idx_dir,
        save_image=save_image,
        make_unpaired_dir=make_unpaired_dir,
        fashion_dir=FASHION_DIR,
    )


@pytest.fixture
def idx_dir(tmp_path):
    return make_idx_dir(tmp_path / "idx")


@pytest.fixture
def unpaired_dir(tmp_path):
    return make_unpaired_dir(tmp_path / "unpaired")


@pytest.fixture
def cfg():
    """A small CPU request as dcgan makes it: no worker processes, small batches."""
    return DataRequest(kind="images", model="dcgan", batch_size=4, workers=0, seed=0)
