"""``--init-from CHECKPOINT|RUN_DIR``: a new run that starts from another run's network weights (fine-tuning,
branching), as the reference's ``--continue_train --epoch_count N`` on new data does.

Only the weights travel: optimisers, learning-rate schedule, image pools, RNG and step start fresh, and the
data may be anything the model takes. The architecture must match: a checkpoint whose networks were built
with other options (``--ngf``, ``--n-blocks``, ...) or for images of other channels is refused in one line
naming what differs. ``--init-nets G_A,G_B`` takes some networks and leaves the others freshly initialised.

Unlike ``--resume``, which continues one run exactly (and refuses other data), this starts another run: its
config.json records the checkpoint file it started from.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import UserError
from ..models import get_model
from .checkpoint import latest_checkpoint, load_checkpoint

# Options that never shape a network: loss weights, the image pool, what the data is and how it is cropped.
NOT_ARCHITECTURE = ("pool_size", "domains", "load_size", "direction")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def checkpoint_file(given: str) -> Path:
    """--init-from's file: the checkpoint itself, or a run directory's latest one."""
    path = Path(given)
    if path.is_dir():
        found = latest_checkpoint(path)
        if found is None:
            raise UserError(f"--init-from {given}: no checkpoint-*.pt in that directory; pass a checkpoint or a run "
                            "directory written by fastgan.train")
        return found
    if not path.is_file():
        raise UserError(f"--init-from {given}: no such file or directory; pass a checkpoint-*.pt or a run directory")
    return path


def chosen_nets(init_nets: str, available: list[str]) -> list[str]:
    """--init-nets "G_A,G_B" -> ["G_A", "G_B"] ("" = every network), checked against the model's networks."""
    if not init_nets:
        return list(available)
    names = [name.strip() for name in init_nets.split(",") if name.strip()]
    unknown = [name for name in names if name not in available]
    if unknown or not names:
        raise UserError(f"--init-nets {init_nets}: {', '.join(unknown) or 'no network named'}; this model's networks "
                        f"are {','.join(available)}")
    return names


def _mismatch(cfg, saved_config: dict, saved_info: dict, info: dict) -> str:
    """What makes the checkpoint's networks another architecture than this run's, as flags."""
    model = get_model(cfg.model)
    differ = [f"{_flag(name)} {saved_config[name]!r} in the checkpoint, {getattr(cfg, name)!r} here"
              for name in (*model.options, "image_size")
              if not name.startswith("lambda_") and name not in NOT_ARCHITECTURE
              and name in saved_config and saved_config[name] != getattr(cfg, name)]
    for key, what in (("channels", "image channels"), ("num_classes", "classes")):
        if saved_info.get(key) != info.get(key):
            differ.append(f"{what}: {saved_info.get(key)} in the checkpoint's data, {info.get(key)} in this run's")
    return "; ".join(differ) or "the networks' parameters differ in shape"


def init_from_checkpoint(task, cfg, info: dict) -> dict:
    """Loads the networks chosen by cfg.init_nets from cfg.init_from into ``task`` (built for ``cfg`` and the
    loader's ``info``), in place. Returns what config.json records: the checkpoint file, its step and the
    networks taken. A checkpoint of another model or architecture is a UserError naming the difference."""
    path = checkpoint_file(cfg.init_from)
    ckpt = load_checkpoint(path, map_location="cpu")  # verifies the checksum; never changes the source run
    if ckpt["model"] != cfg.model:
        raise UserError(f"--init-from {path}: holds a {ckpt['model']} model, not {cfg.model}; start from a "
                        f"{cfg.model} checkpoint")
    names = chosen_nets(cfg.init_nets, list(task.nets))
    for name in names:
        saved = ckpt["nets"].get(name)
        net = task.nets[name]
        own = net.state_dict()
        fits = saved is not None and set(saved) == set(own) and all(
            tuple(saved[k].shape) == tuple(v.shape) for k, v in own.items())
        if not fits:
            raise UserError(f"--init-from {path}: network {name} is another architecture "
                            f"({_mismatch(cfg, ckpt['config'], ckpt['info'], info)}); use the same options")
        with torch.no_grad():
            net.load_state_dict(saved)
    return {"path": str(path), "step": ckpt["step"], "nets": names}
