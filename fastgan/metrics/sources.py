"""Image sets as torch-fidelity reads them: uint8 RGB images [3, H, W], real ones from fastgan's datasets
and generated ones quantised exactly as fastgan writes PNG files, so a metric computed here equals
torch-fidelity's on the same images written to folders.

Reference sets (the real side) are subsets of a dataset split fixed by (size, seed 0); their torch-fidelity
features and statistics are cached next to the data, keyed by dataset, domain, split, size, number of
images, a fingerprint of the files and the feature extractor.
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import Dataset
from tqdm import tqdm

from ..data.datasets import DataSpec, FolderSource, TensorSource
from ..data.loaders import finish_batch

CACHE_SUBDIR = ".fastgan-cache"  # inside a writable data directory
SYSTEM_ROOTS = (Path("/usr"), Path("/opt"))  # data installed by a package manager, read-only for users


def to_uint8(images: Tensor) -> Tensor:
    """Images [N, 1 or 3, H, W] in [-1, 1] -> uint8 [N, 3, H, W], rounded as fastgan.image_files.to_uint8
    writes PNG files (grey repeated to RGB, as image readers and torch-fidelity's folder loader do)."""
    x = ((images.float() + 1) / 2).clamp(0, 1).mul(255).round().to(torch.uint8)
    return x.expand(-1, 3, -1, -1).contiguous() if x.shape[1] == 1 else x


class TensorImages(Dataset):
    """A set of uint8 images [N, 3, H, W] held in memory (e.g. translated test images)."""

    def __init__(self, images: Tensor):
        self.images = images

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> Tensor:
        return self.images[index]


class DomainImages(Dataset):
    """One domain of a dataset split at the evaluated size: image ``i`` is ``source[indices[i]]``, decoded,
    resized as fastgan's loaders do (no flip, no random crop) and quantised to uint8 RGB."""

    def __init__(self, spec: DataSpec, domain: str, indices: Tensor):
        self.spec = spec
        self.source: TensorSource | FolderSource = spec.sources[domain]
        self.indices = indices
        # A bar appears only when images are really read (torch-fidelity reads none on a cache hit).
        self.show_progress = False
        self.progress = None

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def labels(self) -> Tensor | None:
        return None if self.source.labels is None else self.source.labels[self.indices]

    def __getitem__(self, index: int) -> Tensor:
        image = self.source.load(int(self.indices[index]), None).unsqueeze(0)
        image = to_uint8(finish_batch(image, None, self.spec, torch.contiguous_format, torch.float32))[0]
        if self.show_progress:
            if self.progress is None:
                self.progress = tqdm(total=len(self), desc="reference images", unit="img", leave=False,
                                     dynamic_ncols=True, file=sys.stderr, disable=None)
            self.progress.update(1)
        return image

    def close_progress(self) -> None:
        if self.progress is not None:
            self.progress.close()
        self.show_progress, self.progress = False, None

    def batch(self, start: int, stop: int) -> Tensor:
        """Images [start, stop) as one uint8 tensor [B, 3, S, S] (host)."""
        return torch.stack([self[i] for i in range(start, stop)])


def subset_indices(size: int, n: int) -> Tensor:
    """The first n of a fixed permutation of range(size) (all of it when n >= size), sorted so folder sets
    are read in order. Fixed, not the run's seed: every run and checkpoint shares one cached reference."""
    if n >= size:
        return torch.arange(size)
    return torch.randperm(size, generator=torch.Generator().manual_seed(0))[:n].sort().values


def fingerprint(source: TensorSource | FolderSource) -> str:
    """Changes when the data does: the pixels of an in-memory set, the paths, sizes and times of files."""
    digest = hashlib.blake2b(digest_size=8)
    if isinstance(source, TensorSource):
        digest.update(source.images.contiguous().numpy())
    else:
        for path in source.paths:
            st = os.stat(path)
            digest.update(f"{path}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def cache_name(spec: DataSpec, domain: str, split: str, size: int, n: int) -> str:
    """torch-fidelity's cache entry name of a reference set (it appends the extractor's name)."""
    dataset = re.sub(r"[^A-Za-z0-9_.,()]+", "_", os.path.basename(os.path.normpath(spec.name)) or spec.name)
    domain_part = f"-{domain}" if domain != "real" else ""
    return f"{dataset}{domain_part}-{split}-{size}px-n{n}-{fingerprint(spec.sources[domain])}"


def user_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "fastgan" / "reference"


def _system_dir(path: Path) -> bool:
    """A directory a package manager owns (Debian's /usr/share/datasets): never written, even by root."""
    resolved = path.resolve()
    return any(resolved.is_relative_to(root) for root in SYSTEM_ROOTS)


def cache_dir(data_dir: str | None) -> tuple[Path, str | None]:
    """(directory for reference statistics, a note for the user or None). Next to the data when that
    directory is the user's and writable; otherwise (Debian's read-only /usr/share/datasets, built-in
    synthetic data) the user's cache directory, and the note says so."""
    if data_dir and not _system_dir(Path(data_dir)):
        candidate = Path(data_dir) / CACHE_SUBDIR
        try:
            candidate.mkdir(exist_ok=True)
        except OSError:
            pass
        if candidate.is_dir() and os.access(candidate, os.W_OK | os.X_OK):
            return candidate, None
    fallback = user_cache_dir()
    fallback.mkdir(parents=True, exist_ok=True)
    if not data_dir:
        reason = "the data has no directory"
    elif _system_dir(Path(data_dir)):
        reason = f"{data_dir} belongs to a system package (read-only for users)"
    else:
        reason = f"{data_dir} is not writable"
    return fallback, f"{reason}: reference statistics are cached in {fallback}"


@dataclass
class Reference:
    """The real side of a comparison."""

    images: DomainImages
    name: str  # shown to the user, e.g. "fashion-mnist train (10000 images)"
    cache_root: Path
    cache_name: str
    note: str | None  # where the cache went, when not next to the data

    def __len__(self) -> int:
        return len(self.images)
