"""Datasets and loaders. One entry point, `build_loader(cfg, device, ...)`, returns a loader with
`len(loader)`, `loader.epoch(epoch, start=0)`, `loader.info` and `loader.fixed(n)` whose batches are
dicts of device tensors in [-1, 1] ({"real", "label"} or {"A", "B"})."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from fastgan.data.datasets import ORIGINS, data_origin, resolve_data
from fastgan.data.loaders import DeviceLoader, TorchLoader
from fastgan.errors import UserError

if TYPE_CHECKING:  # data sits below train in the import graph
    from fastgan.train.config import TrainConfig

LOADERS = ("auto", "device", "torch", "dali")


def choose_loader(cfg: TrainConfig, device: torch.device) -> str:
    """The loader `--loader auto` picks: the one place that choice is made."""
    in_memory = ORIGINS[data_origin(cfg)]
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
    cfg: TrainConfig,
    device: torch.device | str,
    split: str = "train",
    memory_format: torch.memory_format = torch.contiguous_format,
    dtype: torch.dtype = torch.float32,
):
    """The loader of cfg.data for `split` ("train" | "test"), serving batches on `device`."""
    device = torch.device(device)
    if cfg.loader not in LOADERS:
        raise UserError(f"--loader {cfg.loader}: expected one of {', '.join(LOADERS)}")
    impl = choose_loader(cfg, device) if cfg.loader == "auto" else cfg.loader
    if impl == "dali":
        try:
            from fastgan.data.dali import build_dali_loader
        except ImportError:
            raise UserError("--loader dali needs NVIDIA DALI: pip install 'fastgan[dali]'") from None
        return build_dali_loader(cfg, device, split, memory_format, dtype)
    spec = resolve_data(cfg, split)
    if impl == "device":
        if not spec.in_memory:
            raise UserError(
                f"--loader device serves in-memory data (IDX, fashion-unpaired, synthetic); {spec.name} is "
                "an image folder: use --loader torch or dali"
            )
        return DeviceLoader(spec, cfg.batch_size, cfg.seed, device, memory_format, dtype)
    if cfg.workers < 0:
        raise UserError(f"--workers {cfg.workers}: must be 0 or more")
    return TorchLoader(spec, cfg.batch_size, cfg.seed, device, memory_format, dtype, cfg.workers)


__all__ = ["build_loader", "choose_loader", "LOADERS"]
