"""Checkpoints: what the whole training state is, and how a task is saved into and restored from one. The
file side (atomic writes, the SHA-256 beside each file, reading and its checks, pruning) belongs to the run
directory's owner, fastgan.rundir; the names its callers use most are re-exported here.

Under torchrun rank 0 writes the checkpoint; what differs between ranks (each rank's RNG state and its own
training state, e.g. CycleGAN's image pools) is gathered to it and saved as ``ranks``, one entry per rank,
with ``world_size``; each rank resumes its own entry. The top-level ``rng`` and ``state`` are rank 0's."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..errors import UserError
from ..rundir import (
    FORMAT_VERSION,
    LATEST,
    DamagedCheckpoint,
    RunDir,
    checksum_path,
    existing_checkpoints,
    latest_checkpoint,
    read_checkpoint,
)
from .distributed import Distributed, ReplicasDiffer, parameter_digest
from .steps import Task
from .stops import Diverged, first_nonfinite

__all__ = ["FORMAT_VERSION", "LATEST", "DamagedCheckpoint", "checksum_path", "existing_checkpoints",
           "gather_rank_states", "latest_checkpoint", "load_checkpoint", "load_for_inference", "load_rank_state",
           "load_task_state", "rng_state", "save_checkpoint", "set_rng_state", "task_state"]


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


def gather_rank_states(task: Task, ddp: Distributed, step: int, last_good: str | None,
                       log: dict | None = None) -> list[dict] | None:
    """Under torchrun, at every checkpoint and on every rank: checks that the replicas still agree (no rank's
    state holds a NaN or Inf, every rank's parameters equal rank 0's, by SHA-256), raising the same
    Diverged or ReplicasDiffer on every rank otherwise, then gathers each rank's RNG state and own training
    state to rank 0 (the list for save_checkpoint's ``ranks``; None on the other ranks and without torchrun)."""
    if not ddp.enabled:
        return None
    own = {k: v.state_dict() for k, v in task.state.items()}
    checked = {"nets": {k: v.state_dict() for k, v in task.nets.items()},
               "optimizers": {k: v.state_dict() for k, v in task.optimizers.items()}, "state": own}
    reports = ddp.all_gather_object((first_nonfinite(checked), parameter_digest(task.nets)))
    for rank, (bad, _) in enumerate(reports):
        if bad is not None:
            raise Diverged(f"non-finite value in {bad} on rank {rank}", step, last_good)
    differ = [rank for rank, (_, digest) in enumerate(reports) if digest != reports[0][1]]
    if differ:
        raise ReplicasDiffer(differ, step, last_good)
    # sync: once per checkpoint; CPU copies, so rank 0 receives no tensor on another rank's GPU.
    log = log or {"sums": {}, "iterations": 0}
    mine = {"rng": rng_state(task.device),
            "state": {k: {name: t.cpu() for name, t in sd.items()} for k, sd in own.items()},
            "log": {"sums": {k: t.cpu() for k, t in log["sums"].items()}, "iterations": log["iterations"]}}
    return ddp.gather_object(mine)


def load_rank_state(task: Task, ckpt: dict, rank: int, path: Path | None = None) -> dict:
    """This rank's RNG state and own training state from a checkpoint (written by one process or by all);
    returns its loss sums since the last log record (``{"sums": {}, "iterations": 0}`` from older files)."""
    entries = ckpt.get("ranks")
    mine = entries[rank] if entries else {"rng": ckpt["rng"], "state": ckpt["state"], "log": ckpt.get("log")}
    for key, module in task.state.items():
        _load(module, mine["state"].get(key), f"state {key!r}", path)
    set_rng_state(mine["rng"], task.device)
    log = mine.get("log") or {"sums": {}, "iterations": 0}
    return {"sums": {k: t.to(task.device) for k, t in log["sums"].items()}, "iterations": log["iterations"]}


def _load(obj, saved, what: str, path: Path | None) -> None:
    """obj.load_state_dict(saved), with a checkpoint that does not fit (edited, or of another model or data)
    reported in one line naming the part and the first difference."""
    where = f"checkpoint {path}" if path else "checkpoint"
    if saved is None:
        raise UserError(f"{where}: has no {what}; it was written by another model or edited")
    try:
        obj.load_state_dict(saved)
    except (RuntimeError, ValueError, KeyError, TypeError, AttributeError) as e:
        detail = " ".join(str(e).split())
        detail = detail.removeprefix("Error(s) in loading state_dict for ")
        if len(detail) > 200:
            detail = detail[:200] + "..."
        raise UserError(f"{where}: its {what} does not fit this model ({detail}); it was edited or written for "
                        "other settings") from None


def load_task_state(task: Task, ckpt: dict, path: Path | None = None) -> None:
    for group in ("nets", "optimizers", "schedulers", "scalers", "state"):
        for key, obj in getattr(task, group).items():
            saved = ckpt[group].get(key) if isinstance(ckpt[group], dict) else None
            what = f"{group[:-1]} {key!r}"
            if group == "scalers" and saved == {}:
                continue  # a disabled scaler saves an empty dict
            if group == "schedulers" and saved is not None:
                try:
                    _load_scheduler(obj, saved)
                except (KeyError, TypeError, ValueError) as e:
                    raise UserError(f"checkpoint {path}: its {what} does not fit ({type(e).__name__}: {e}); it was "
                                    "edited") from None
            else:
                _load(obj, saved, what, path)


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


def save_checkpoint(out: Path | RunDir, task: Task, *, step: int, epoch: int, config: dict, info: dict,
                    keep: int = 2, ranks: list[dict] | None = None, log: dict | None = None) -> Path:
    """Writes checkpoint-<step>.pt in the run directory ``out`` with its checksum and points ``latest`` at it;
    keeps the newest ``keep`` checkpoints (fastgan.rundir.RunDir.save_checkpoint). Raises Diverged, writing
    nothing, when a tensor of the state is NaN or infinite. ``ranks``: every rank's entry from
    gather_rank_states, under torchrun. ``log``: the loss sums since the last log record (``sums``, device
    tensors) and how many iterations they cover (``iterations``), so a resumed run writes the record an
    uninterrupted one would."""
    run = out if isinstance(out, RunDir) else RunDir(out)
    payload = {
        "format_version": FORMAT_VERSION,
        "model": config["model"],
        "step": step,
        "epoch": epoch,
        "config": config,
        "info": info,
        "rng": rng_state(task.device),
        **task_state(task),
        "world_size": len(ranks) if ranks else 1,
        "log": log or {"sums": {}, "iterations": 0},
    }
    if ranks:  # rank 0's entry is the top level's (torch.save stores those tensors once)
        payload["ranks"] = [{"rng": payload["rng"], "state": payload["state"], "log": payload["log"]}, *ranks[1:]]
    bad = first_nonfinite({group: payload[group] for group in ("nets", "optimizers", "state", "log")})
    if bad is not None:
        raise Diverged(f"non-finite value in {bad}", step, run.last_good_checkpoint())
    return run.save_checkpoint(payload, step, keep)


def load_checkpoint(path: str | os.PathLike, model: str | None = None, map_location="cpu") -> dict:
    """Reads and validates a checkpoint (a file, a run directory or its ``latest`` pointer); ``model``
    (if given) must match. Bad files raise UserError (fastgan.rundir.read_checkpoint)."""
    return read_checkpoint(path, model, map_location)


def load_for_inference(path: str | os.PathLike, inference: str, names, device: torch.device):
    """(checkpoint, model definition, networks) for ``python -m fastgan.<inference>``: refuses a model that
    offers another kind of inference, naming the tool that serves it. ``names(model)`` picks the networks
    to load, in eval mode on ``device``."""
    from ..models import REGISTRY, get_model
    from .tasks import nets_from_checkpoint

    ckpt = load_checkpoint(path, map_location=device)
    if ckpt["model"] not in REGISTRY:
        raise UserError(f"checkpoint {path}: holds a model this fastgan does not know ({ckpt['model']!r}; it knows "
                        f"{', '.join(REGISTRY)}); upgrade fastgan or use another checkpoint")
    model = get_model(ckpt["model"])
    if model.inference != inference:
        served = [m.name for m in REGISTRY.values() if m.inference == inference]
        raise UserError(f"checkpoint {path}: holds a {model.name} model, not {' or '.join(served)}; "
                        f"use python -m fastgan.{model.inference}")
    return ckpt, model, nets_from_checkpoint(ckpt, names(model), device, path)
