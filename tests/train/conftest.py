import gzip
import struct

import numpy as np
import pytest
from PIL import Image

from fastgan.train.config import TrainConfig


def write_idx(root, images: np.ndarray, labels: np.ndarray, split="train", compress=False):
    """Writes MNIST-format files: images uint8 [N, H, W], labels uint8 [N]."""
    n, h, w = images.shape
    opener = gzip.open if compress else open
    suffix = ".gz" if compress else ""
    with opener(root / f"{split}-images-idx3-ubyte{suffix}", "wb") as f:
        f.write(struct.pack(">IIII", 2051, n, h, w) + images.astype(np.uint8).tobytes())
    with opener(root / f"{split}-labels-idx1-ubyte{suffix}", "wb") as f:
        f.write(struct.pack(">II", 2049, n) + labels.astype(np.uint8).tobytes())


@pytest.fixture(scope="session")
def idx_dir(tmp_path_factory):
    """40 labelled 28x28 images (5 batches of 8 per epoch): small enough to cross epoch boundaries."""
    root = tmp_path_factory.mktemp("idx")
    rng = np.random.default_rng(0)
    labels = np.arange(40) % 10
    images = rng.integers(0, 256, (40, 28, 28)).astype(np.uint8) // (1 + labels[:, None, None])
    write_idx(root, images, labels)
    return root


@pytest.fixture(scope="session")
def unpaired_dir(tmp_path_factory):
    """trainA/trainB with 6 and 4 RGB 40x40 PNGs (A bright, B dark) for cyclegan at 32^2."""
    root = tmp_path_factory.mktemp("unpaired")
    rng = np.random.default_rng(1)
    for domain, count, scale in (("A", 6, 1.0), ("B", 4, 0.4)):
        folder = root / f"train{domain}"
        folder.mkdir()
        for i in range(count):
            pixels = (rng.integers(0, 256, (40, 40, 3)) * scale).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"{domain.lower()}{i}.png")
    return root


def tiny_config(model: str, out, **overrides) -> TrainConfig:
    """A model small enough for a CPU test step in milliseconds."""
    base = dict(model=model, device="cpu", out=str(out), batch_size=8, z_dim=8, hidden=16, ngf=4, ndf=4,
                n_blocks=1, sample_every=0, save_every=0, log_every=1, seed=3, deterministic=True)
    if model == "cyclegan":
        base.update(batch_size=2, image_size=32, load_size=36, workers=0, pool_size=3)
    base.update(overrides)
    return TrainConfig(**base)


@pytest.fixture
def tiny():
    return tiny_config
