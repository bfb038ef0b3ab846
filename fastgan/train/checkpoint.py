"""Checkpoints: the whole training state in one file, written atomically (temp file, fsync, os.replace),
with its SHA-256 beside it (``checkpoint-XXXXXXXX.pt.sha256``, the format of ``sha256sum``, so
``sha256sum -c`` checks it too). Reading verifies the file against it: torch.load alone reads a file
with flipped bytes without complaint. The newest ``keep`` checkpoints stay; older ones are removed only
after the new one and the ``latest`` pointer are in place, so a damaged newest file leaves an older one
to resume from.

Under torchrun rank 0 writes the checkpoint; what differs between ranks (each rank's RNG state and its own
training state, e.g. CycleGAN's image pools) is gathered to it and saved as ``ranks``, one entry per rank,
with ``world_size``; each rank resumes its own entry. The top-level ``rng`` and ``state`` are rank 0's."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch

from ..errors import UserError
from .distributed import Distributed, ReplicasDiffer, parameter_digest
from .files import atomic_write, fsync_dir
from .steps import Task
from .stops import Diverged, first_nonfinite

FORMAT_VERSION = 1  # bump when the layout changes; older readers refuse newer files
LATEST = "latest"  # pointer file in the run directory: the name of the newest checkpoint
CHECKSUM = ".sha256"  # suffix of the file beside each checkpoint that holds its SHA-256
DAMAGED = ".damaged"  # suffix given to a checkpoint that failed verification when a run resumed past it


class DamagedCheckpoint(UserError):
    """A checkpoint file that cannot be read or does not match its checksum (not: another model, a newer
    format); an older checkpoint of the run may still be good."""


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


def gather_rank_states(task: Task, ddp: Distributed, step: int, last_good: str | None) -> list[dict] | None:
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
    mine = {"rng": rng_state(task.device),
            "state": {k: {name: t.cpu() for name, t in sd.items()} for k, sd in own.items()}}
    return ddp.gather_object(mine)


def load_rank_state(task: Task, ckpt: dict, rank: int) -> None:
    """This rank's RNG state and own training state from a checkpoint (written by one process or by all)."""
    entries = ckpt.get("ranks")
    mine = entries[rank] if entries else {"rng": ckpt["rng"], "state": ckpt["state"]}
    for key, module in task.state.items():
        module.load_state_dict(mine["state"][key])
    set_rng_state(mine["rng"], task.device)


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


def checksum_path(path: Path) -> Path:
    return path.with_name(path.name + CHECKSUM)


class _HashingWriter:
    """A write-only file for torch.save that hashes what it writes, sparing a second read of the file."""

    def __init__(self, f):
        self.f, self.sha256 = f, hashlib.sha256()

    def write(self, data) -> int:
        self.sha256.update(data)
        return self.f.write(data)

    def flush(self) -> None:
        self.f.flush()


def _sha256(path: Path) -> str:
    sha256 = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            sha256.update(chunk)
    return sha256.hexdigest()


def save_checkpoint(out: Path, task: Task, *, step: int, epoch: int, config: dict, info: dict,
                    keep: int = 2, ranks: list[dict] | None = None) -> Path:
    """Writes out/checkpoint-<step>.pt with its checksum and points ``latest`` at it; keeps the newest
    ``keep`` checkpoints. Raises Diverged, writing nothing, when a tensor of the state is NaN or infinite.
    ``ranks``: every rank's entry from gather_rank_states, under torchrun."""
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
    }
    if ranks:  # rank 0's entry is the top level's (torch.save stores those tensors once)
        payload["ranks"] = [{"rng": payload["rng"], "state": payload["state"]}, *ranks[1:]]
    bad = first_nonfinite({group: payload[group] for group in ("nets", "optimizers", "state")})
    if bad is not None:
        last = latest_checkpoint(out) if out.is_dir() else None
        raise Diverged(f"non-finite value in {bad}", step, str(last) if last else None)
    path = out / checkpoint_name(step)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as f:
            writer = _HashingWriter(f)
            torch.save(payload, writer)
            f.flush()
            os.fsync(f.fileno())
        # The checksum goes first: a checkpoint file never stands without the checksum of its content.
        digest = writer.sha256.hexdigest()
        atomic_write(checksum_path(path), lambda t: t.write_text(f"{digest}  {path.name}\n"))
        os.replace(tmp, path)
        fsync_dir(out)
    finally:
        tmp.unlink(missing_ok=True)
    atomic_write(out / LATEST, lambda t: t.write_text(path.name + "\n"))
    older = [p for p in existing_checkpoints(out) if p != path]
    for old in older[:max(0, len(older) - (keep - 1))]:
        old.unlink(missing_ok=True)  # the checkpoint first, so none ever stands without its checksum
        checksum_path(old).unlink(missing_ok=True)
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
    verify_checksum(path)
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch.load fails on foreign or truncated files in many different ways
        raise DamagedCheckpoint(f"checkpoint {path}: not a readable fastgan checkpoint ({type(e).__name__}); "
                                "pass a checkpoint-*.pt written by fastgan.train") from None
    if not isinstance(ckpt, dict) or "format_version" not in ckpt or "model" not in ckpt:
        raise UserError(f"checkpoint {path}: not a fastgan checkpoint (no format_version/model)")
    if ckpt["format_version"] > FORMAT_VERSION:
        raise UserError(f"checkpoint {path}: format version {ckpt['format_version']} is newer than this "
                        f"fastgan reads ({FORMAT_VERSION}); upgrade fastgan")
    if model is not None and ckpt["model"] != model:
        raise UserError(f"checkpoint {path}: holds a {ckpt['model']} model, not {model}")
    return ckpt


def verify_checksum(path: Path) -> None:
    """Raises DamagedCheckpoint when ``path`` differs from the SHA-256 written beside it. A file without
    one (written before fastgan kept checksums, or copied alone) is read unverified."""
    sidecar = checksum_path(path)
    if not sidecar.is_file():
        return
    expected = sidecar.read_text().split()[:1]
    if expected != [_sha256(path)]:
        raise DamagedCheckpoint(f"checkpoint {path}: damaged (its SHA-256 differs from the one in {sidecar.name})")


def resume_candidates(out: Path) -> list[Path]:
    """The run's checkpoints, newest step first: the order in which --resume auto tries them."""
    return sorted(existing_checkpoints(out), reverse=True)


def set_aside(path: Path) -> Path:
    """Renames a damaged checkpoint (and its checksum) to ``*.damaged`` so that no later resume or pruning
    takes it for a good one; the bytes stay for inspection."""
    target = path.with_name(path.name + DAMAGED)
    os.replace(path, target)
    sidecar = checksum_path(path)
    if sidecar.is_file():
        os.replace(sidecar, checksum_path(target))
    return target


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
