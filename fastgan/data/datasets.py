"""From a DataRequest's `data` to a dataset: which files or generator, its shape, and per-domain sources that the
loaders (device-resident, torch DataLoader, DALI) read images from."""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field

import torch
from PIL import Image

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


class UnreadableImage(UserError):
    """An image that decoded at start no longer does (deleted, replaced, truncated while training)."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: not a readable image ({reason})")
        self.path, self.reason = path, reason


@dataclass
class FolderSource:
    """A domain of image files, decoded per item (torch DataLoader workers)."""

    paths: list[str]
    labels: torch.Tensor | None  # int64 [N] (class subfolders), or None
    image_size: int
    load_size: int  # > 0: --preprocess (CycleGAN, pix2pix; fastgan.data.folders), at the plan's crop offsets
    # 0: shorter side to image_size then centre crop (DCGAN)
    half: str = ""  # aligned A|B files (pix2pix's layout): "left" or "right" half of each file, "" = all of it
    preprocess: str = "resize_and_crop"  # with load_size > 0: a fastgan.data.folders.PREPROCESS mode
    channels: int = 3  # decoded as RGB (3) or grey (1)
    # path -> why DALI would not decode it as Pillow does (16-bit, CMYK, palette with transparency, ...)
    not_for_dali: dict[str, str] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.paths)

    def load(self, index: int, crop: tuple[int, int] | None) -> torch.Tensor:
        """uint8 [channels, image_size, image_size]; UnreadableImage if the file no longer decodes."""
        path = self.paths[index]
        try:
            if self.load_size:
                return folders.load_preprocessed(path, self.preprocess, self.load_size, self.image_size, crop,
                                                 self.half, self.channels)
            return folders.load_center_crop(path, self.image_size, self.channels)
        except (OSError, ValueError, Image.DecompressionBombError) as e:
            raise UnreadableImage(path, str(e) or type(e).__name__) from None


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
    # Image folders: images kept per folder ({"trainA": N, "trainB": M}; the folder's name relative to --data,
    # or its own name for --data itself) and files passed over per reason (NOT_AN_IMAGE, UNREADABLE), both
    # in loader.info as "counts" and "skipped".
    counts: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)
    preprocess: str = "resize_and_crop"  # folders of A/B data: how images become image_size squares
    classes: tuple[str, ...] = ()  # labelled folders: the class (subfolder) names, label k = classes[k]

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
    if load_size < image_size and req.preprocess not in ("crop", "none"):  # the two that do not read it
        raise UserError(f"--load-size {load_size} is smaller than --image-size {image_size}")
    return load_size


def _crop_range(req: DataRequest, load_size: int, image_size: int) -> int:
    """DataSpec.crop_range of A/B folders: pixels for resize_and_crop, CROP_STEPS where each image has its own
    range (folders.load_preprocessed scales the plan's offsets), 0 for the modes that do not crop."""
    if req.preprocess == "resize_and_crop":
        return load_size - image_size
    return folders.CROP_STEPS if req.preprocess in ("crop", "scale_width_and_crop") else 0


def _check_preprocess(req: DataRequest) -> None:
    if req.preprocess not in folders.PREPROCESS:
        raise UserError(f"--preprocess {req.preprocess}: choose from {', '.join(folders.PREPROCESS)}")


def _check_channels(req: DataRequest) -> None:
    if req.channels not in (0, 1, 3):
        raise UserError(f"--channels {req.channels}: use 1 (grey) or 3 (RGB)")


def _in_memory(req: DataRequest, name: str) -> None:
    """In-memory sets are resized on the device: only the default --preprocess applies to them."""
    _check_channels(req)
    if req.preprocess != "resize_and_crop":
        raise UserError(f"--preprocess {req.preprocess}: applies to image folders; {name} is held in memory and "
                        "resized on the device (drop the flag, or pass --data DIR)")


class FolderScan:
    """Lists and checks the image folders of one dataset, counting what it passes over (DataSpec.counts,
    .skipped) and noting the folders whose every image is grey."""

    def __init__(self, req: DataRequest, draft_size: int):
        self.req, self.draft_size = req, draft_size
        self.counts: dict[str, int] = {}
        self.skipped = {folders.NOT_AN_IMAGE: 0, folders.UNREADABLE: 0}
        self.facts: dict[str, folders.ImageFacts] = {}
        self.grey: list[str] = []

    def name(self, root: str) -> str:
        """trainA for --data/trainA; the folder's own name for --data itself."""
        name = os.path.relpath(root, self.req.data)
        return os.path.basename(os.path.abspath(root)) if name == "." else name

    def files(self, root: str) -> list[str]:
        """The readable images below root (UserError when there are none)."""
        listing = folders.scan_images(root)
        self.skipped[folders.NOT_AN_IMAGE] += len(listing.others)
        if not listing.paths:
            raise UserError(f"{root}: no images ({', '.join(folders.IMAGE_EXTENSIONS)}) found below it"
                            + (f"; {len(listing.others)} other file(s), e.g. {listing.others[0]}"
                               if listing.others else ""))
        facts = self.check(listing.paths)
        if not facts:
            raise UserError(f"{root}: no readable images")
        self.count(root, facts)
        return list(facts)

    def check(self, paths: list[str]) -> dict[str, folders.ImageFacts]:
        req = self.req
        facts = folders.inspect_images(paths, req.strict, req.workers, self.draft_size)
        self.skipped[folders.UNREADABLE] += len(paths) - len(facts)
        self.facts.update(facts)
        return facts

    def count(self, root: str, facts: dict[str, folders.ImageFacts]) -> None:
        self.counts[self.name(root)] = len(facts)
        if all(f.grey for f in facts.values()):
            self.grey.append(self.name(root))

    def check_geometry(self, paths: list[str], load_size: int, image_size: int, half: str = "") -> None:
        for path in paths:
            facts = self.facts[path]
            width = facts.width // 2 if half else facts.width
            folders.check_geometry(path, width, facts.height, self.req.preprocess, load_size, image_size)

    def channels(self, default: int = 3) -> int:
        """req.channels, or ``default``; says so when a folder holds only grey images and RGB is chosen."""
        channels = self.req.channels or default
        if channels == 3 and self.grey and self.req.kind in ("unpaired", "paired"):  # the models with --channels
            every = " and ".join(f"{name}/" for name in self.grey)
            warnings.warn(f"every image in {every} is grey: training on RGB copies of it; pass --channels 1 to "
                          "train on one channel" + ("" if len(self.grey) == len(self.counts) else
                                                    " (then every folder is read as grey)"), stacklevel=3)
        return channels

    def source(self, paths: list[str], labels, image_size: int, load_size: int, channels: int,
               half: str = "") -> FolderSource:
        not_for_dali = {}
        for path in paths:
            reason = folders.dali_reason(self.facts[path])
            if reason:
                not_for_dali[path] = reason
        return FolderSource(paths, labels, image_size, load_size, half, self.req.preprocess if load_size else "",
                            channels, not_for_dali)

    def spec(self, name: str, kind: str, sources: dict, channels: int, image_size: int, num_classes: int,
             flip: bool, crop_range: int, paired: bool = False) -> DataSpec:
        return DataSpec(name, kind, sources, channels, image_size, num_classes, flip, crop_range, paired,
                        self.counts, {k: v for k, v in self.skipped.items() if v},
                        self.req.preprocess if kind in ("unpaired", "paired") else "")


def _unpaired_folder(req: DataRequest, split: str) -> DataSpec:
    _check_preprocess(req)
    _check_channels(req)
    image_size = _image_size(req, UNPAIRED_SIZE)
    load_size = _load_size(req, image_size)
    scan = FolderScan(req, load_size if req.preprocess == "resize_and_crop" else 0)
    paths = {}
    for domain in ("A", "B"):
        root = os.path.join(req.data, split + domain)
        if not os.path.isdir(root):
            raise UserError(
                f"{root}: no such directory; an unpaired folder for {req.who} needs "
                f"{split}A/ and {split}B/ (testA/, testB/ for evaluation)"
            )
        paths[domain] = scan.files(root)
        scan.check_geometry(paths[domain], load_size, image_size)
    channels = scan.channels()
    sources = {domain: scan.source(p, None, image_size, load_size, channels) for domain, p in paths.items()}
    return scan.spec(req.data, "unpaired", sources, channels, image_size, 0, req.flip,
                     _crop_range(req, load_size, image_size))


def _image_folder(req: DataRequest) -> DataSpec:
    _check_channels(req)
    image_size = _image_size(req, FOLDER_SIZE)
    scan = FolderScan(req, image_size)
    paths = scan.files(req.data)
    labels, num_classes = folders.class_labels(req.data, paths)
    channels = scan.channels()
    source = scan.source(paths, labels, image_size, 0, channels)
    spec = scan.spec(req.data, "folder", {"real": source}, channels, image_size, num_classes, False, 0)
    spec.classes = tuple(folders.class_names(req.data, paths))
    return spec


def _idx(req: DataRequest, root: str, name: str, split: str) -> DataSpec:
    _check_channels(req)
    images, labels = load_idx(root, split)
    num_classes = int(labels.max()) + 1
    source = TensorSource(images, labels)
    return DataSpec(name, "idx", {"real": source}, req.channels or 1, _image_size(req, IDX_SIZE), num_classes,
                    False, 0)


def _fashion_unpaired(req: DataRequest, split: str) -> DataSpec:
    a, b = _fashion_domains(req)
    images, labels = load_idx(find_fashion_mnist(), split)
    sources = {d: TensorSource(images[labels == k].contiguous(), None) for d, k in (("A", a), ("B", b))}
    name = f"fashion-unpaired({FASHION_CLASSES[a]},{FASHION_CLASSES[b]})"
    _in_memory(req, name)
    return DataSpec(name, "unpaired", sources, req.channels or 3, _image_size(req, UNPAIRED_SIZE), 0, req.flip, 0)


def _synthetic(req: DataRequest, split: str) -> DataSpec:
    _in_memory(req, "synthetic")
    generator = torch.Generator().manual_seed(req.seed * 2 + (split != "train"))
    # Sized by the global batch, so N processes of batch B get the set that one process of batch N*B gets.
    global_batch = req.batch_size * max(req.world_size, 1)
    if req.kind == "paired":
        size = _image_size(req, PAIRED_SIZE)
        n = synthetic.synthetic_size(3, size, global_batch)
        a, b = synthetic.synthetic_pairs(n, size, generator)
        sources = {"A": TensorSource(a, None), "B": TensorSource(b, None)}
        return DataSpec("synthetic", "synthetic", sources, req.channels or 3, size, 0, req.flip, 0, paired=True)
    if req.kind == "unpaired":
        size = _image_size(req, UNPAIRED_SIZE)
        n = synthetic.synthetic_size(3, size, global_batch)
        sources = {d: TensorSource(synthetic.synthetic_domain(n, size, d, generator), None) for d in "AB"}
        return DataSpec("synthetic", "synthetic", sources, req.channels or 3, size, 0, req.flip, 0)
    size = _image_size(req, IDX_SIZE)
    n = synthetic.synthetic_size(1, size, global_batch)
    images, labels = synthetic.synthetic_labelled(n, size, generator)
    source = TensorSource(images, labels)
    return DataSpec("synthetic", "synthetic", {"real": source}, req.channels or 1, size, synthetic.NUM_CLASSES,
                    False, 0)


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
