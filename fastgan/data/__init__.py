"""Datasets and loaders. One entry point, `build_loader(request, device, ...)`, returns a loader with
`len(loader)`, `loader.epoch(epoch, start=0)`, `loader.info` and `loader.fixed(n)` whose batches are
dicts of device tensors in [-1, 1] ({"real", "label"} or {"A", "B"})."""

from __future__ import annotations

import torch

from fastgan.data.datasets import ORIGINS, data_origin, resolve_data
from fastgan.data.loaders import DeviceLoader, TorchLoader
from fastgan.data.request import KINDS, DataRequest
from fastgan.errors import UserError

LOADERS = ("auto", "device", "torch", "dali")


def choose_loader(req: DataRequest, device: torch.device) -> str:
    """The loader `--loader auto` picks: the one place that choice is made."""
    in_memory = ORIGINS[data_origin(req)]
    if not in_memory and device.type == "cuda":
        # Folders: DALI decodes on the GPU where PIL in DataLoader workers starves the step (issue 5).
        try:
            import nvidia.dali  # noqa: F401
        except ImportError:
            return "torch"
        return "dali"
    # In memory: the device-resident loader (a gather on the device; DALI adds a host round trip).
    return "device" if in_memory else "torch"


def build_loader(
    req: DataRequest,
    device: torch.device | str,
    split: str = "train",
    memory_format: torch.memory_format = torch.contiguous_format,
    dtype: torch.dtype = torch.float32,
):
    """The loader of req.data for `split` ("train" | "test"), serving batches on `device`.

    Data-parallel training: with req.world_size W > 1 the loader serves rank req.rank's share of every step.
    Step i takes the global batch of epoch positions [i*B*W, (i+1)*B*W) (B = req.batch_size, per process)
    and rank r serves [i*B*W + r*B, i*B*W + (r+1)*B), so W ranks see exactly the batches one process of
    batch W*B sees, split by rows; len(loader) = num_images // (B*W) on every rank, one epoch covers the data
    once across the ranks, and `epoch(e, start=k)` is the tail of `epoch(e)` on every rank (exact resume).
    `fixed(n)` is the same on every rank. loader.info carries "world_size" and "global_batch" (B*W). A
    global batch larger than the data is a UserError naming --batch-size and the number of processes; a
    rank outside [0, world_size) a ValueError.
    """
    device = torch.device(device)
    if req.loader not in LOADERS:
        raise UserError(f"--loader {req.loader}: expected one of {', '.join(LOADERS)}")
    impl = choose_loader(req, device) if req.loader == "auto" else req.loader
    if impl == "dali":
        try:
            from fastgan.data.dali import build_dali_loader
        except ImportError:
            raise UserError("--loader dali needs NVIDIA DALI: pip install 'fastgan[dali]'") from None
        return build_dali_loader(req, device, split, memory_format, dtype)
    spec = resolve_data(req, split)
    if impl == "device":
        if not spec.in_memory:
            raise UserError(
                f"--loader device serves in-memory data (IDX, fashion-unpaired, fashion-edges, synthetic); {spec.name} "
                "is an image folder: use --loader torch or dali"
            )
        return DeviceLoader(spec, req.batch_size, req.seed, device, memory_format, dtype, req.rank, req.world_size)
    if req.workers < 0:
        raise UserError(f"--workers {req.workers}: must be 0 or more")
    return TorchLoader(
        spec, req.batch_size, req.seed, device, memory_format, dtype, req.workers, req.rank, req.world_size,
        req.strict,
    )


__all__ = ["DataRequest", "KINDS", "LOADERS", "build_loader", "choose_loader"]
