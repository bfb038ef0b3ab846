"""From a DataRequest's `data` to a dataset: which files or generator, its shape, and per-domain sources that the
loaders (device-resident, torch DataLoader, DALI) read images from."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from fastgan.data import folders, synthetic
from fastgan.data.idx import is_idx_dir, load_idx
from fastgan.data.request import KINDS, DataRequest
from fastgan.errors import UserError

DEFAULT_FASHION_DIR = "/usr/share/datasets/fashion-mnist"  # Debian package dataset-fashion-mnist
FASHION_CLASSES = (
    "t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle-boot",
)  # fmt: skip
IDX_SIZE = 28  # MNIST family
FOLDER_SIZE = 64  # DCGAN on image folders (Radford et al.)
UNPAIRED_SIZE = 256  # CycleGAN
PAIRED_SIZE = 256  # pix2pix

# What request.data names, before anything is read: origin -> in memory (device-resident by default) or not.
ORIGINS = {
    "fashion-mnist": True,
    "fashion-unpaired": True,
    "synthetic": True,
    "idx-dir": True,
    "image-folder": False,
    "unpaired-folder": False,
    "fashion-edges": True,  # fastgan.data.paired
    "paired-folder": False,
}


@dataclass
class TensorSource:
    """A domain held in memory."""

    images: torch.Tensor  # uint8 [N, C, h, w] on the host
    labels: torch.Tensor | None  # int64 [N], or None for unlabelled domains

    def __len__(self) -> int:
        return self.images.shape[0]

    def load(self, index: int, crop: tuple[int, int] | None) -> torch.Tensor:
        return self.images[index].clone()  # a view would ship the whole set's storage to a worker's consumer


@dataclass
class FolderSource:
    """A domain of image files, decoded per item (torch DataLoader workers)."""

    paths: list[str]
    labels: torch.Tensor | None  # int64 [N] (class subfolders), or None
    image_size: int
    load_size: int  # > 0: resize to load_size square then crop image_size at the plan's offsets (CycleGAN)
    # 0: shorter side to image_size then centre crop (DCGAN)
    half: str = ""  # aligned A|B files (pix2pix's layout): "left" or "right" half of each file, "" = all of it

    def __len__(self) -> int:
        return len(self.paths)

    def load(self, index: int, crop: tuple[int, int] | None) -> torch.Tensor:
        path = self.paths[index]
        try:
            if self.load_size:
                top, left = crop if crop is not None else ((self.load_size - self.image_size) // 2,) * 2
                return folders.load_resized_crop(path, self.load_size, self.image_size, top, left, self.half)
            return folders.load_center_crop(path, self.image_size)
        except (OSError, ValueError) as e:
            raise UserError(f"{path}: not a readable image ({e})") from None


@dataclass
class DataSpec:
    name: str  # shown in logs: fashion-mnist, fashion-unpaired(7,9), synthetic, or the directory
    kind: str  # idx | folder | unpaired | paired | synthetic
    sources: dict[str, TensorSource | FolderSource]  # {"real": ...} or {"A": ..., "B": ...}
    channels: int  # of the batches (grey sources are replicated when this is 3)
    image_size: int  # of the batches (in-memory sources are resized on the device)
    num_classes: int  # 0 if unlabelled
    flip: bool  # random horizontal flip
    crop_range: int  # random crop offsets drawn in [0, crop_range]; 0 = no random crop
    paired: bool = False  # the domains are aligned pairs: one epoch plan (order, flips, crops) serves them all

    @property
    def unpaired(self) -> bool:
        return "A" in self.sources and not self.paired

    @property
    def in_memory(self) -> bool:
        return all(isinstance(s, TensorSource) for s in self.sources.values())

    @property
    def num_images(self) -> int:
        """Images an epoch serves per domain: the larger domain (the smaller one is cycled)."""
        return max(len(s) for s in self.sources.values())


def find_fashion_mnist() -> str:
    """The Fashion-MNIST IDX directory: $FASTGAN_DATA/fashion-mnist, $FASTGAN_DATA, then Debian's."""
    env = os.environ.get("FASTGAN_DATA", "")
    candidates = [os.path.join(env, "fashion-mnist"), env] if env else []
    for root in [*candidates, DEFAULT_FASHION_DIR]:
        if os.path.isdir(root) and is_idx_dir(root):
            return root
    raise UserError(
        f"Fashion-MNIST not found in $FASTGAN_DATA or {DEFAULT_FASHION_DIR}: "
        "apt-get install dataset-fashion-mnist, or pass --data DIR"
    )


def data_origin(req: DataRequest) -> str:
    """What req.data names (a key of ORIGINS), checking only names and directories, not their files."""
    if req.kind not in KINDS:
        raise ValueError(f"DataRequest.kind {req.kind!r}: expected one of {', '.join(KINDS)}")
    unpaired, paired = req.kind == "unpaired", req.kind == "paired"
    takes = "aligned A/B pairs" if paired else "two domains" if unpaired else "one domain of images"
    data = req.default_data
    if data == "synthetic":
        return data
    if data == "fashion-unpaired":
        if not unpaired:
            raise UserError(f"--data fashion-unpaired is a two-domain set for unpaired translation (cyclegan); "
                            f"{req.who} takes {takes}")
        return data
    if data == "fashion-edges":
        if not paired:
            raise UserError(f"--data fashion-edges is a set of aligned pairs (edge map, Fashion-MNIST image) for "
                            f"paired translation; {req.who} takes {takes}")
        return data
    if data == "fashion-mnist":
        if unpaired:
            raise UserError(
                f"--data fashion-mnist: {req.who} needs two domains; "
                "use fashion-unpaired, synthetic or a trainA/ trainB/ folder"
            )
        if paired:
            raise UserError(
                f"--data fashion-mnist: {req.who} needs aligned A/B pairs; use fashion-edges, synthetic, a "
                "train/ folder of side-by-side A|B images or trainA/ trainB/ folders of same-named images"
            )
        return data
    if not os.path.isdir(data):
        raise UserError(
            f"--data {data}: no such directory "
            "(expected fashion-mnist, fashion-unpaired, synthetic or a directory)"
        )
    if unpaired:
        return "unpaired-folder"
    if paired:
        return "paired-folder"
    return "idx-dir" if is_idx_dir(data) else "image-folder"


def _image_size(req: DataRequest, default: int) -> int:
    if req.image_size < 0:
        raise UserError(f"--image-size {req.image_size}: must be positive")
    return req.image_size or default


def _fashion_domains(req: DataRequest) -> tuple[int, int]:
    try:
        a, b = (int(k) for k in req.domains.split(","))
    except ValueError:
        a = b = -1
    if not (0 <= a < 10 and 0 <= b < 10 and a != b):
        raise UserError(
            f"--domains {req.domains}: expected two different Fashion-MNIST classes 0-9 as A,B (e.g. 7,9)"
        )
    return a, b


def _load_size(req: DataRequest, image_size: int) -> int:
    """Folders of A/B data: the square the images are resized to before the random crop (CycleGAN, pix2pix)."""
    load_size = req.load_size or image_size * 286 // 256
    if load_size < image_size:
        raise UserError(f"--load-size {load_size} is smaller than --image-size {image_size}")
    return load_size


def _unpaired_folder(req: DataRequest, split: str) -> DataSpec:
    image_size = _image_size(req, UNPAIRED_SIZE)
    load_size = _load_size(req, image_size)
    sources = {}
    for domain in ("A", "B"):
        root = os.path.join(req.data, split + domain)
        if not os.path.isdir(root):
            raise UserError(
                f"{root}: no such directory; an unpaired folder for {req.who} needs "
                f"{split}A/ and {split}B/ (testA/, testB/ for evaluation)"
            )
        paths = folders.check_images(folders.list_images(root), req.strict, req.workers, load_size)
        if not paths:
            raise UserError(f"{root}: no readable images in domain {domain}")
        sources[domain] = FolderSource(paths, None, image_size, load_size)
    return DataSpec(req.data, "unpaired", sources, 3, image_size, 0, True, load_size - image_size)


def _image_folder(req: DataRequest) -> DataSpec:
    image_size = _image_size(req, FOLDER_SIZE)
    paths = folders.check_images(folders.list_images(req.data), req.strict, req.workers, image_size)
    if not paths:
        raise UserError(f"{req.data}: no readable images")
    labels, num_classes = folders.class_labels(req.data, paths)
    source = FolderSource(paths, labels, image_size, 0)
    return DataSpec(req.data, "folder", {"real": source}, 3, image_size, num_classes, False, 0)


def _idx(req: DataRequest, root: str, name: str, split: str) -> DataSpec:
    images, labels = load_idx(root, split)
    num_classes = int(labels.max()) + 1
    source = TensorSource(images, labels)
    return DataSpec(name, "idx", {"real": source}, 1, _image_size(req, IDX_SIZE), num_classes, False, 0)


def _fashion_unpaired(req: DataRequest, split: str) -> DataSpec:
    a, b = _fashion_domains(req)
    images, labels = load_idx(find_fashion_mnist(), split)
    sources = {d: TensorSource(images[labels == k].contiguous(), None) for d, k in (("A", a), ("B", b))}
    name = f"fashion-unpaired({FASHION_CLASSES[a]},{FASHION_CLASSES[b]})"
    return DataSpec(name, "unpaired", sources, 3, _image_size(req, UNPAIRED_SIZE), 0, True, 0)


def _synthetic(req: DataRequest, split: str) -> DataSpec:
    generator = torch.Generator().manual_seed(req.seed * 2 + (split != "train"))
    # Sized by the global batch, so N processes of batch B get the set that one process of batch N*B gets.
    global_batch = req.batch_size * max(req.world_size, 1)
    if req.kind == "paired":
        size = _image_size(req, PAIRED_SIZE)
        n = synthetic.synthetic_size(3, size, global_batch)
        a, b = synthetic.synthetic_pairs(n, size, generator)
        sources = {"A": TensorSource(a, None), "B": TensorSource(b, None)}
        return DataSpec("synthetic", "synthetic", sources, 3, size, 0, True, 0, paired=True)
    if req.kind == "unpaired":
        size = _image_size(req, UNPAIRED_SIZE)
        n = synthetic.synthetic_size(3, size, global_batch)
        sources = {d: TensorSource(synthetic.synthetic_domain(n, size, d, generator), None) for d in "AB"}
        return DataSpec("synthetic", "synthetic", sources, 3, size, 0, True, 0)
    size = _image_size(req, IDX_SIZE)
    n = synthetic.synthetic_size(1, size, global_batch)
    images, labels = synthetic.synthetic_labelled(n, size, generator)
    source = TensorSource(images, labels)
    return DataSpec("synthetic", "synthetic", {"real": source}, 1, size, synthetic.NUM_CLASSES, False, 0)


def resolve_data(req: DataRequest, split: str = "train") -> DataSpec:
    """Read (IDX, synthetic) or list and check (folders) the dataset req.data names, for `split`."""
    if split not in ("train", "test"):
        raise ValueError(f"split {split!r}: expected 'train' or 'test'")
    origin = data_origin(req)
    if origin == "synthetic":
        spec = _synthetic(req, split)
    elif origin == "fashion-mnist":
        spec = _idx(req, find_fashion_mnist(), "fashion-mnist", split)
    elif origin == "idx-dir":
        spec = _idx(req, req.data, req.data, split)
    elif origin == "fashion-unpaired":
        spec = _fashion_unpaired(req, split)
    elif origin == "unpaired-folder":
        spec = _unpaired_folder(req, split)
    elif origin in ("fashion-edges", "paired-folder"):
        from fastgan.data import paired  # it builds on the sources above

        spec = paired.fashion_edges(req, split) if origin == "fashion-edges" else paired.paired_folder(req, split)
    else:
        spec = _image_folder(req)
    if req.kind == "labelled" and spec.num_classes == 0:
        raise UserError(
            f"--data {spec.name}: {req.who} needs class labels; use an IDX directory, synthetic, "
            "or an image folder with one subfolder per class"
        )
    check_batch(req.batch_size, spec, req.rank, req.world_size)
    return spec


def check_batch(batch_size: int, spec: DataSpec, rank: int = 0, world_size: int = 1) -> None:
    """A step takes batch_size * world_size epoch positions (the global batch; rank r serves the r-th block
    of batch_size), so the global batch must fit one epoch of the data."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank}, world_size {world_size}: expected world_size >= 1 and 0 <= rank < world_size")
    n = spec.num_images
    if batch_size < 1 or (world_size == 1 and batch_size > n):
        raise UserError(f"--batch-size {batch_size} does not fit the dataset ({n} images in {spec.name}); "
                        f"use 1 to {n}")
    if batch_size * world_size > n:
        fix = f"--batch-size up to {n // world_size} or fewer processes" if n >= world_size else \
            f"at most {n} processes"
        raise UserError(f"--batch-size {batch_size} on {world_size} processes: a step takes a global batch of "
                        f"{batch_size * world_size} images but {spec.name} has {n}; use {fix}")
