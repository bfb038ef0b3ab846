"""Checkpoints: the whole training state in one file, written atomically (temp file + os.replace), the
previous one removed only after the new one and the ``latest`` pointer are in place."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..errors import UserError
from .files import atomic_write
from .steps import Task

FORMAT_VERSION = 1  # bump when the layout changes; older readers refuse newer files
LATEST = "latest"  # pointer file in the run directory: the name of the newest checkpoint


def checkpoint_name(step: int) -> str:
    return f"checkpoint-{step:08d}.pt"


def existing_checkpoints(out: Path) -> list[Path]:
    return sorted(out.glob("checkpoint-*.pt"))


def rng_state(device: torch.device) -> dict:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def task_state(task: Task) -> dict:
    return {
        "nets": {k: v.state_dict() for k, v in task.nets.items()},
        "optimizers": {k: v.state_dict() for k, v in task.optimizers.items()},
        "schedulers": {k: v.state_dict() for k, v in task.schedulers.items()},
        "scalers": {k: v.state_dict() for k, v in task.scalers.items()},
        "state": {k: v.state_dict() for k, v in task.state.items()},
    }


def load_task_state(task: Task, ckpt: dict) -> None:
    for group in ("nets", "optimizers", "schedulers", "scalers", "state"):
        for key, obj in getattr(task, group).items():
            saved = ckpt[group].get(key)
            if saved is None:
                raise UserError(f"checkpoint has no {group[:-1]} {key!r}; it was written by another model")
            if group == "scalers" and not saved:
                continue  # a disabled scaler saves an empty dict
            if group == "schedulers":
                _load_scheduler(obj, saved)
            else:
                obj.load_state_dict(saved)


def _load_scheduler(scheduler, saved: dict) -> None:
    """Restores the position (iteration) but keeps this run's schedule, so a run resumed with more
    --epochs or --epochs-decay follows the new curve (with the same flags: exactly the old one)."""
    scheduler.load_state_dict(dict(saved, lr_lambdas=[None] * len(saved["lr_lambdas"])))
    for group, base_lr, factor in zip(scheduler.optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
        lr = base_lr * factor(scheduler.last_epoch)
        if isinstance(group["lr"], torch.Tensor):
            group["lr"].fill_(lr)  # a tensor lr (captured in CUDA graphs) must keep its storage
        else:
            group["lr"] = lr
    scheduler._last_lr = [float(group["lr"]) for group in scheduler.optimizer.param_groups]


def save_checkpoint(out: Path, task: Task, *, step: int, epoch: int, config: dict, info: dict) -> Path:
    """Writes out/checkpoint-<step>.pt and the ``latest`` pointer; removes older checkpoints."""
    payload = {
        "format_version": FORMAT_VERSION,
        "model": config["model"],
        "step": step,
        "epoch": epoch,
        "config": config,
        "info": info,
        "rng": rng_state(task.device),
        **task_state(task),
    }
    path = out / checkpoint_name(step)
    atomic_write(path, lambda tmp: torch.save(payload, tmp))
    atomic_write(out / LATEST, lambda tmp: tmp.write_text(path.name + "\n"))
    for old in existing_checkpoints(out):
        if old != path:
            old.unlink(missing_ok=True)
    return path


def latest_checkpoint(out: Path) -> Path | None:
    """The checkpoint named by out/latest (else the newest checkpoint file), or None."""
    pointer = out / LATEST
    if pointer.is_file():
        path = out / pointer.read_text().strip()
        if path.is_file():
            return path
    found = existing_checkpoints(out)
    return found[-1] if found else None


def load_checkpoint(path: str | os.PathLike, model: str | None = None, map_location="cpu") -> dict:
    """Reads and validates a checkpoint (a file, a run directory or its ``latest`` pointer); ``model``
    (if given) must match. Bad files raise UserError."""
    path = Path(path)
    if path.is_dir() or path.name == LATEST:
        run_dir = path if path.is_dir() else path.parent
        found = latest_checkpoint(run_dir)
        if found is None:
            raise UserError(f"{path}: no checkpoint-*.pt in {run_dir}; pass one written by fastgan.train")
        path = found
    if not path.is_file():
        raise UserError(f"checkpoint {path}: no such file; pass a checkpoint-*.pt written by fastgan.train")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch.load fails on foreign or truncated files in many different ways
        raise UserError(f"checkpoint {path}: not a readable fastgan checkpoint ({type(e).__name__}); "
                        "pass a checkpoint-*.pt written by fastgan.train") from None
    if not isinstance(ckpt, dict) or "format_version" not in ckpt or "model" not in ckpt:
        raise UserError(f"checkpoint {path}: not a fastgan checkpoint (no format_version/model)")
    if ckpt["format_version"] > FORMAT_VERSION:
        raise UserError(f"checkpoint {path}: format version {ckpt['format_version']} is newer than this "
                        f"fastgan reads ({FORMAT_VERSION}); upgrade fastgan")
    if model is not None and ckpt["model"] != model:
        raise UserError(f"checkpoint {path}: holds a {ckpt['model']} model, not {model}")
    return ckpt


def load_for_inference(path: str | os.PathLike, inference: str, names, device: torch.device):
    """(checkpoint, model definition, networks) for ``python -m fastgan.<inference>``: refuses a model that
    offers another kind of inference, naming the tool that serves it. ``names(model)`` picks the networks
    to load, in eval mode on ``device``."""
    from ..models import REGISTRY, get_model
    from .tasks import nets_from_checkpoint

    ckpt = load_checkpoint(path, map_location=device)
    model = get_model(ckpt["model"])
    if model.inference != inference:
        served = [m.name for m in REGISTRY.values() if m.inference == inference]
        raise UserError(f"checkpoint {path}: holds a {model.name} model, not {' or '.join(served)}; "
                        f"use python -m fastgan.{model.inference}")
    return ckpt, model, nets_from_checkpoint(ckpt, names(model), device)
