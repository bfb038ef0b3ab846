"""From a resolved config and the loader's info to a Task: the model's networks (fastgan.models
registry), Adam optimisers, the learning-rate schedule, loss scalers and the model's phases. Losses are
computed in fp32 even under autocast.

Learning rate: constant for cfg.epochs, then linear decay to zero over cfg.epochs_decay. The schedulers
are stepped once per iteration, so a run resumed mid-epoch continues on exactly the same curve.
"""

from __future__ import annotations

import dataclasses

import torch

from ..data import DataRequest
from ..data.datasets import data_origin
from ..errors import UserError
from ..models import get_model, init_weights
from .config import TrainConfig
from .steps import Task


def data_request(cfg: TrainConfig, split: str = "train", rank: int = 0, world_size: int = 1,
                 model=None) -> DataRequest:
    """What the config's model asks the data layer for (fields the model does not use keep their defaults);
    under torchrun, for this rank's block of each global batch (``rank`` of ``world_size``). ``model``:
    cfg.model's definition, when the caller has it (else looked up)."""
    model = model or get_model(cfg.model)
    fields = ("data", "image_size", "load_size", "batch_size", "seed", "domains", "loader", "workers", "strict",
              "preprocess", "flip", "channels")
    given = {name: getattr(cfg, name) for name in fields if getattr(cfg, name) is not None}
    return DataRequest(kind=model.data_kind, model=cfg.model, rank=rank, world_size=world_size, **given)


def with_recipe(cfg: TrainConfig, model=None) -> TrainConfig:
    """A copy of ``cfg`` with what it leaves to the model filled in: the recipe's defaults, then the ones
    that depend on the data (Model.resolve). Values already set are kept; nothing is validated here
    (fastgan.train.loop.resolve_config validates the user's config before this)."""
    cfg = dataclasses.replace(cfg)
    model = model or get_model(cfg.model)
    for name, value in model.defaults().items():
        if getattr(cfg, name) is None:
            setattr(cfg, name, value)
    request = data_request(cfg, model=model)
    model.resolve(cfg, data_origin(request))
    cfg.data = cfg.data or request.default_data
    return cfg


class LinearDecay:
    """LambdaLR factor per iteration: 1 for ``constant`` iterations, then linear to 0 over ``decay``.
    A class, not a closure, so LambdaLR.state_dict() records it."""

    def __init__(self, constant: int, decay: int):
        self.constant, self.decay = constant, decay

    def __call__(self, iteration: int) -> float:
        if self.decay <= 0 or iteration < self.constant:
            return 1.0
        return max(0.0, 1.0 - (iteration - self.constant) / self.decay)


def build_nets(cfg: TrainConfig, info: dict) -> dict[str, torch.nn.Module]:
    """The model's networks (uninitialised), from the resolved config and the data's channels/classes."""
    return get_model(cfg.model).build_nets(cfg, info)


def _adam(params, cfg: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    fused = device.type == "cuda"
    return torch.optim.Adam(params, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=fused or None)


def amp_dtype(cfg: TrainConfig) -> torch.dtype | None:
    if not cfg.amp:
        return None
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[cfg.amp_dtype]


def build_task(cfg: TrainConfig, info: dict, device: torch.device,
               batches_per_epoch: int | None = None, model=None) -> Task:
    """The model's Task from a config (what it leaves unset comes from the model's recipe) and loader.info.

    ``batches_per_epoch`` (len(loader)) places the learning-rate decay; without it the decay is placed
    from info["num_images"] // cfg.batch_size. ``model``: cfg.model's definition, when the caller has it."""
    model = model or get_model(cfg.model)
    cfg = with_recipe(cfg, model)
    device = torch.device(device)
    nets = model.build_nets(cfg, info)
    for net in nets.values():
        init_weights(net)
        net.to(device).train()
    state = {name: module.to(device) for name, module in model.build_state(cfg, info).items()}
    if batches_per_epoch is None:
        batches_per_epoch = max(1, info.get("num_images", 0) // cfg.batch_size)
    optimizers = {key: _adam([p for name in names for p in nets[name].parameters()], cfg, device)
                  for key, names in model.optimizers.items()}
    schedule = LinearDecay(cfg.epochs * batches_per_epoch, cfg.epochs_decay * batches_per_epoch)
    schedulers = {key: torch.optim.lr_scheduler.LambdaLR(opt, schedule) for key, opt in optimizers.items()}
    dtype = amp_dtype(cfg)
    scalers = {key: torch.amp.GradScaler(device.type, enabled=dtype == torch.float16) for key in optimizers}
    task = Task(nets, optimizers, schedulers, scalers, model.phases(cfg, nets, state, info), state,
                device=device, amp_dtype=dtype)
    task.sampler = model.sampler(cfg, nets, info, device)
    task.fixed_size = model.fixed_size
    task.grid_labels = model.grid_labels(cfg, info)
    return task


def nets_from_checkpoint(ckpt: dict, names: list[str], device: torch.device, path=None) -> dict[str, torch.nn.Module]:
    """The named networks of a loaded checkpoint, with its weights, in eval mode on ``device``; a checkpoint
    whose networks do not fit its config (edited) is one UserError naming the network."""
    from .checkpoint import _load

    where = f"checkpoint {path}" if path else "checkpoint"
    try:
        cfg = TrainConfig(**{k: v for k, v in ckpt["config"].items() if k in TrainConfig.__dataclass_fields__})
        nets = build_nets(with_recipe(cfg), ckpt["info"])
    except (TypeError, ValueError, KeyError, AttributeError) as e:
        raise UserError(f"{where}: its config or data info does not build a {ckpt['model']} model "
                        f"({type(e).__name__}: {e}); it was edited") from None
    out = {}
    for name in names:
        saved = ckpt["nets"].get(name) if isinstance(ckpt["nets"], dict) else None
        _load(nets[name], saved, f"network {name!r}", path)
        out[name] = nets[name].to(device).eval()
    return out
