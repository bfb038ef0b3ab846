"""IDX files of the MNIST family (MNIST, Fashion-MNIST, KMNIST, EMNIST): `train-images-idx3-ubyte[.gz]`,
`train-labels-idx1-ubyte[.gz]` and the `t10k-` (or `test-`) pair, read whole into uint8 tensors.

Format (LeCun): a 4-byte magic number 0x00 0x00 <type> <ndim>, then ndim big-endian uint32 sizes,
then the data in row-major order. Only type 0x08 (unsigned byte) is used by the MNIST family."""

from __future__ import annotations

import functools
import gzip
import math
import os
import re
import struct

import numpy as np
import torch

from fastgan.errors import UserError

UBYTE = 0x08
IMAGES_NDIM = 3  # [N, H, W]
LABELS_NDIM = 1  # [N]

# "train-images-idx3-ubyte", "t10k-images-idx3-ubyte.gz", "emnist-letters-test-images-idx3-ubyte.gz" and
# the "train-images.idx3-ubyte" spelling of some mirrors.
_IMAGES_RE = re.compile(r"^(?P<prefix>.*?)(?P<split>train|t10k|test)-images[-.]idx3-ubyte(?P<gz>\.gz)?$")
_SPLITS = {"train": ("train",), "test": ("t10k", "test")}


def read_idx(path: str, ndim: int | None = None) -> np.ndarray:
    """Read one uint8 IDX file (plain or gzip) into an array of its declared shape.

    Args:
        path: the file.
        ndim: the number of dimensions the caller expects (3 for images, 1 for labels), or None.
    """
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:  # gzip.BadGzipFile is an OSError; a cut-off .gz raises EOFError
        raise UserError(f"{path}: cannot read the IDX file ({e}); reinstall or re-download it") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise UserError(
            f"{path}: not an IDX file (magic number 0x{data[:4].hex()} does not start with 0x0000); "
            "expected an MNIST-family *-idx3-ubyte / *-idx1-ubyte file"
        )
    dtype_code, file_ndim = data[2], data[3]
    if dtype_code != UBYTE:
        raise UserError(
            f"{path}: IDX data type 0x{dtype_code:02x} is not unsigned bytes (0x08), the only type read"
        )
    if ndim is not None and file_ndim != ndim:
        kind = "images [N, H, W]" if ndim == IMAGES_NDIM else "labels [N]"
        raise UserError(f"{path}: IDX file has {file_ndim} dimensions, expected {ndim} ({kind})")
    header = 4 + 4 * file_ndim
    if len(data) < header:
        raise UserError(f"{path}: truncated IDX header ({len(data)} bytes); reinstall or re-download it")
    dims = struct.unpack(f">{file_ndim}I", data[4:header])
    expected = math.prod(dims)
    got = len(data) - header
    if got < expected:
        raise UserError(
            f"{path}: truncated: {got} data bytes for shape {list(dims)}, expected {expected}; "
            "reinstall or re-download it"
        )
    if got > expected:
        raise UserError(
            f"{path}: {got - expected} bytes after the data of shape {list(dims)}; not a valid IDX file"
        )
    return np.frombuffer(data, dtype=np.uint8, count=expected, offset=header).reshape(dims)


def is_idx_dir(root: str) -> bool:
    """Whether `root` holds any IDX images file."""
    return any(_IMAGES_RE.match(name) for name in os.listdir(root))


def find_idx_files(root: str, split: str = "train") -> tuple[str, str]:
    """The (images, labels) files of `split` in `root`; plain files are preferred to .gz copies."""
    if split not in _SPLITS:
        raise UserError(f"split {split!r}: expected 'train' or 'test'")
    stems: dict[str, list[str]] = {}
    for name in sorted(os.listdir(root)):
        m = _IMAGES_RE.match(name)
        if m and m["split"] in _SPLITS[split]:
            stems.setdefault(name.removesuffix(".gz"), []).append(name)
    if not stems:
        raise UserError(
            f"{root}: no {split} IDX images (expected {_SPLITS[split][0]}-images-idx3-ubyte or .gz)"
        )
    if len(stems) > 1:
        raise UserError(
            f"{root}: several {split} IDX sets ({', '.join(sorted(stems))}); "
            "point --data at a directory with one"
        )
    stem, names = next(iter(stems.items()))
    images = os.path.join(root, min(names, key=len))
    label_stem = stem.replace("-images", "-labels").replace("idx3-ubyte", "idx1-ubyte")
    for candidate in (label_stem, label_stem + ".gz"):
        labels = os.path.join(root, candidate)
        if os.path.isfile(labels):
            return images, labels
    raise UserError(f"{root}: {os.path.basename(images)} has no labels file {label_stem}[.gz] beside it")


def load_idx(root: str, split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """Images uint8 [N, 1, H, W] and labels int64 [N] of one split of an IDX directory.

    The tensors are shared between calls on unchanged files (treat them as read-only): a process that
    builds several loaders (train and test split, tests, the CLI) decompresses Fashion-MNIST once."""
    images_path, labels_path = find_idx_files(root, split)
    stamps = tuple((os.stat(p).st_mtime_ns, os.stat(p).st_size) for p in (images_path, labels_path))
    return _load_idx_files(images_path, labels_path, stamps)


@functools.lru_cache(maxsize=4)
def _load_idx_files(images_path: str, labels_path: str, stamps: tuple) -> tuple[torch.Tensor, torch.Tensor]:
    images = read_idx(images_path, IMAGES_NDIM)
    labels = read_idx(labels_path, LABELS_NDIM)
    if labels.shape[0] != images.shape[0]:
        raise UserError(
            f"{labels_path}: {labels.shape[0]} labels for {images.shape[0]} images in "
            f"{os.path.basename(images_path)}; the files do not belong together"
        )
    if images.shape[0] == 0:
        raise UserError(f"{images_path}: holds no images")
    return torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64))
