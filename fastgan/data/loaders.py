"""The loaders behind build_loader: device-resident (in-memory sets) and torch DataLoader (folders).

Both follow one epoch plan, a pure function of (seed, epoch): per domain the image order and the random
flips and crop offsets of every position in the epoch. A step consumes a global batch of G = B * W
consecutive plan positions (B = batch_size per process, W = world_size processes of a torchrun job), and
rank r serves its block [i*G + r*B, i*G + (r+1)*B) of step i. So W ranks of batch B see exactly the images,
flips and crops one process of batch W*B sees (rank r's batch is rows r*B .. (r+1)*B of that batch), one
epoch covers the dataset once across the ranks, and `len(loader)` = num_images // G (drop_last) is the same
on every rank. The plan is sliced, not split into per-rank blocks of the epoch, for that equivalence: a
data-parallel run is the single-process run of the global batch. `epoch(e, start=k)` is exactly the tail
of `epoch(e)` on every rank, so a resumed run sees the batches an uninterrupted one would. `fixed(n)`
(sample grids, evaluation) is not sharded: every rank gets the same n images. The host only delivers uint8
images; conversion, normalisation to [-1, 1], resizing of in-memory sets, flips, dtype and memory format
happen on the device in `finish_batch`."""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from fastgan.data.datasets import DataSpec, UnreadableImage, check_batch
from fastgan.errors import UserError

FIXED_EPOCH = -1  # the plan stream of loader.fixed(n), apart from every training epoch
_MASK64 = (1 << 64) - 1


def _stream_seed(seed: int, epoch: int, stream: int) -> int:
    """Independent generator seeds per (seed, epoch, domain) via splitmix64 finalisation."""
    x = (
        seed * 0x9E3779B97F4A7C15 + (epoch + 2) * 0xBF58476D1CE4E5B9 + (stream + 1) * 0x94D049BB133111EB
    ) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return (x ^ (x >> 31)) >> 1  # torch.Generator.manual_seed takes 63 bits without surprises


@dataclass
class DomainPlan:
    order: torch.Tensor  # int64 [L]: image index at each epoch position
    flip: torch.Tensor | None  # bool [L], or None without flips
    crop: torch.Tensor | None  # int64 [L, 2] (top, left), or None without random crops


def epoch_plan(spec: DataSpec, seed: int, epoch: int) -> dict[str, DomainPlan]:
    """Per domain: a fresh permutation (repeated to the larger domain's length), flips and crop offsets,
    each domain from its own generator so A and B are drawn independently; aligned pairs (spec.paired) share
    the first domain's plan, so A and B get the same images, flips and crops. On the host (a few ms)."""
    length = spec.num_images
    plans = {}
    for stream, (key, source) in enumerate(spec.sources.items()):
        if spec.paired and plans:
            plans[key] = next(iter(plans.values()))
            continue
        g = torch.Generator().manual_seed(_stream_seed(seed, epoch, stream))
        n = len(source)
        order = torch.cat([torch.randperm(n, generator=g) for _ in range(math.ceil(length / n))])[:length]
        flip = torch.rand(length, generator=g) < 0.5 if spec.flip else None
        crop = torch.randint(0, spec.crop_range + 1, (length, 2), generator=g) if spec.crop_range else None
        plans[key] = DomainPlan(order, flip, crop)
    return plans


def finish_batch(
    images: torch.Tensor,  # uint8 [B, C, h, w] on the device
    flip: torch.Tensor | None,  # bool [B] on the device
    spec: DataSpec,
    memory_format: torch.memory_format,
    dtype: torch.dtype,
) -> torch.Tensor:
    """uint8 -> [-1, 1] in dtype/memory_format: resize to spec.image_size (bilinear), flip, replicate grey."""
    x = images.to(torch.float32)
    size = spec.image_size
    if x.shape[-2:] != (size, size):
        x = F.interpolate(
            x, size=(size, size), mode="bilinear", align_corners=False, antialias=x.shape[-1] > size
        )
    x = x / 127.5 - 1  # 0 -> -1, 255 -> 1 exactly
    if flip is not None:
        x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
    if x.shape[1] == 3 and spec.channels == 1:  # an RGB set read as grey: ITU-R 601-2 luma, as Pillow's "L"
        x = (x * x.new_tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
    elif x.shape[1] != spec.channels:
        x = x.expand(-1, spec.channels, -1, -1)
    return x.to(dtype).contiguous(memory_format=memory_format)


class _Loader:
    impl = ""

    def __init__(
        self, spec: DataSpec, batch_size: int, seed: int, device: torch.device, memory_format, dtype,
        rank: int = 0, world_size: int = 1,
    ):  # fmt: skip
        check_batch(batch_size, spec, rank, world_size)
        self.spec = spec
        self.batch_size = batch_size  # per rank
        self.rank = rank
        self.world_size = world_size
        self.global_batch = batch_size * world_size  # epoch positions one step takes across the ranks
        self.seed = seed
        self.device = device
        self.memory_format = memory_format
        self.dtype = dtype

    def __len__(self) -> int:
        return self.spec.num_images // self.global_batch  # drop_last; the same on every rank

    @property
    def info(self) -> dict:
        spec = self.spec
        return {
            "name": spec.name,
            "channels": spec.channels,
            "image_size": spec.image_size,
            "num_classes": spec.num_classes,
            "classes": list(spec.classes),  # names, where the data has them (class folders)
            "num_images": spec.num_images,
            "kind": spec.kind,
            "impl": self.impl,
            # The same on every rank (rank itself is left out, so info can be logged or saved by rank 0 alone).
            "world_size": self.world_size,
            "global_batch": self.global_batch,
            # Image folders: images kept per folder ({"trainA": N, "trainB": M}) and files passed over per
            # reason ({"non-image": k, "unreadable": j}); empty for in-memory sets.
            "counts": dict(spec.counts),
            "skipped": dict(spec.skipped),
        }

    def _check_start(self, start: int) -> None:
        if not 0 <= start <= len(self):
            raise ValueError(f"start {start}: expected a batch index in [0, {len(self)}]")

    def _positions(self, start: int) -> torch.Tensor:
        """int64 [(len - start) * batch_size]: the epoch positions of this rank's batches start, ..., len - 1,
        batch after batch (batch i is rows [(i - start) * B, (i - start + 1) * B))."""
        steps = torch.arange(start, len(self)).view(-1, 1)
        return (steps * self.global_batch + self.rank * self.batch_size + torch.arange(self.batch_size)).view(-1)

    def _fixed_plan(self, n: int) -> dict[str, torch.Tensor]:
        """First n positions of a plan kept apart from training epochs, cycled if n exceeds a domain."""
        plans = epoch_plan(self.spec, self.seed, FIXED_EPOCH)
        return {key: plan.order[torch.arange(n) % len(plan.order)] for key, plan in plans.items()}

    def _finish(self, images: torch.Tensor, flip: torch.Tensor | None) -> torch.Tensor:
        return finish_batch(images, flip, self.spec, self.memory_format, self.dtype)


class DeviceLoader(_Loader):
    """The whole uint8 set on the device; per step only device work (gather, normalise, resize, flip)."""

    impl = "device"

    def __init__(self, spec, batch_size, seed, device, memory_format, dtype, rank=0, world_size=1):
        super().__init__(spec, batch_size, seed, device, memory_format, dtype, rank, world_size)
        self.images = {k: s.images.to(device) for k, s in spec.sources.items()}
        self.labels = {k: s.labels.to(device) for k, s in spec.sources.items() if s.labels is not None}

    def _batch(self, indices: dict[str, torch.Tensor], flips: dict[str, torch.Tensor | None]) -> dict:
        batch = {k: self._finish(self.images[k].index_select(0, idx), flips[k]) for k, idx in indices.items()}
        for k, labels in self.labels.items():
            batch["label"] = labels.index_select(0, indices[k])
        return batch

    def epoch(self, epoch: int, start: int = 0) -> Iterator[dict[str, torch.Tensor]]:
        self._check_start(start)
        plans = epoch_plan(self.spec, self.seed, epoch)
        # Once per epoch: this rank's part of the plan moves to the device, so a step slices it with no host work.
        positions = self._positions(start)
        order = {k: p.order[positions].to(self.device) for k, p in plans.items()}
        flip = {k: None if p.flip is None else p.flip[positions].to(self.device) for k, p in plans.items()}
        b = self.batch_size
        for i in range(len(self) - start):
            sl = slice(i * b, (i + 1) * b)
            yield self._batch(
                {k: o[sl] for k, o in order.items()}, {k: f if f is None else f[sl] for k, f in flip.items()}
            )

    def fixed(self, n: int) -> dict[str, torch.Tensor]:
        indices = {k: idx.to(self.device) for k, idx in self._fixed_plan(n).items()}
        return self._batch(indices, dict.fromkeys(indices))


SKIPPED = "skipped"  # key of a _PlanDataset item: the (path, reason) of images that no longer decode
ALL_UNREADABLE = ""  # load_or_next's mark of a domain without a readable image


def load_or_next(source, index: int, crop) -> tuple[torch.Tensor, list[tuple[str, str]]]:
    """source.load(index, crop), or, when that image no longer decodes (deleted or replaced since the start-up
    check), the next one of the domain that does: (image, [(path, reason) of each image passed over]). The
    choice depends on the index alone, so the number of loader workers cannot change a batch. With no readable
    image left: a black image and, last in the list, (ALL_UNREADABLE, the first path), which the loader raises
    as a UserError in the main process (raised in a DataLoader worker it would arrive as a multi-line
    "Caught UserError in DataLoader worker process N")."""
    skipped = []
    for k in range(len(source)):
        try:
            return source.load((index + k) % len(source), crop), skipped
        except UnreadableImage as e:
            skipped.append((e.path, e.reason))
    black = torch.zeros(source.channels, source.image_size, source.image_size, dtype=torch.uint8)
    return black, [*skipped, (ALL_UNREADABLE, skipped[0][0])]


class _PlanDataset(torch.utils.data.Dataset):
    """Item = one epoch position: each domain's image at that position, decoded and cropped on the host."""

    def __init__(self, spec: DataSpec, plans: dict[str, DomainPlan]):
        self.spec = spec
        self.plans = plans

    def __len__(self) -> int:
        return self.spec.num_images

    def __getitem__(self, position: int) -> dict:
        item: dict = {SKIPPED: []}
        for key, source in self.spec.sources.items():
            plan = self.plans[key]
            index = int(plan.order[position])
            crop = None if plan.crop is None else tuple(plan.crop[position].tolist())
            item[key], skipped = load_or_next(source, index, crop)
            item[SKIPPED] += skipped
            if source.labels is not None:
                item["label"] = source.labels[index]
        return item


def _collate(items: list[dict]) -> dict:
    """default_collate of the images and labels; the skipped images of every item in one list."""
    skipped = [entry for item in items for entry in item.pop(SKIPPED)]
    batch = torch.utils.data.default_collate(items)
    batch[SKIPPED] = skipped
    return batch


class TorchLoader(_Loader):
    """torch DataLoader over the epoch plan: `workers` processes decode, pinned batches are copied with
    non_blocking, the device finishes them. Workers draw no random numbers, so their number and
    scheduling cannot change a batch."""

    impl = "torch"

    def __init__(self, spec, batch_size, seed, device, memory_format, dtype, workers: int, rank=0, world_size=1,
                 strict: bool = False):
        super().__init__(spec, batch_size, seed, device, memory_format, dtype, rank, world_size)
        self.workers = workers
        self.strict = strict  # an image that stops decoding mid-run raises UnreadableImage instead of a warning
        self.warned: set[str] = set()  # each skipped image is named once per loader, not once per epoch

    def _report(self, skipped: list[tuple[str, str]]) -> None:
        """An image that decoded at start and no longer does: one warning naming it (its positions take the
        next readable image of its folder), or UnreadableImage under --strict."""
        for path, reason in skipped:
            if path == ALL_UNREADABLE:
                raise UserError(f"{reason}: no image of its folder is readable any more")
            if self.strict:
                raise UnreadableImage(path, reason)
            if path not in self.warned:
                self.warned.add(path)
                warnings.warn(f"skipping {path}: not a readable image any more ({reason}); the next image of its "
                              "folder takes its place", stacklevel=3)

    def _to_device(self, batch: dict[str, torch.Tensor], flips: dict[str, torch.Tensor | None]) -> dict:
        out = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
        for k in flips:
            out[k] = self._finish(out[k], flips[k])
        return out

    def epoch(self, epoch: int, start: int = 0) -> Iterator[dict[str, torch.Tensor]]:
        self._check_start(start)
        plans = epoch_plan(self.spec, self.seed, epoch)
        positions = self._positions(start)
        flip = {k: None if p.flip is None else p.flip[positions].to(self.device) for k, p in plans.items()}
        b = self.batch_size
        batches = positions.view(-1, b).tolist()
        if not batches:
            return
        data = torch.utils.data.DataLoader(
            _PlanDataset(self.spec, plans),
            batch_sampler=batches,
            num_workers=self.workers,
            pin_memory=self.device.type == "cuda",
            # Its own generator: a DataLoader otherwise draws its workers' base seed from the global RNG at
            # every new iterator, which would shift the training RNG and break exact resume.
            generator=torch.Generator().manual_seed(_stream_seed(self.seed, epoch, -1)),
            collate_fn=_collate,
        )
        for i, batch in enumerate(data):
            self._report(batch.pop(SKIPPED))
            sl = slice(i * b, (i + 1) * b)
            yield self._to_device(batch, {k: f if f is None else f[sl] for k, f in flip.items()})

    def fixed(self, n: int) -> dict[str, torch.Tensor]:
        batch = {}
        for key, indices in self._fixed_plan(n).items():
            source = self.spec.sources[key]
            loaded = [load_or_next(source, int(i), None) for i in indices]
            self._report([entry for _, skipped in loaded for entry in skipped])
            batch[key] = torch.stack([image for image, _ in loaded])
            if source.labels is not None:
                batch["label"] = source.labels[indices]
        return self._to_device(batch, dict.fromkeys(self.spec.sources))
