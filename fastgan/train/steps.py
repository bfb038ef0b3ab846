"""A training step as data: a Task holds the networks, optimisers and a list of Phases (D, G), and the
eager ``train_step`` runs them. ENGINE (fastgan/train/graphs.py) captures the same phases in CUDA graphs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn

from .. import ops
from ..grid_labels import GridLabels, label_grid
from ..image_files import make_grid, to_unit
from ..models.base import Phase, Sampler
from ..ops._casts import cast_modules_once
from .stops import AMP_SKIPPED, amp_skipped

__all__ = ["Phase", "Task", "run_phase", "set_trainable", "train_step"]


@dataclass
class Task:
    nets: dict[str, nn.Module]
    optimizers: dict[str, torch.optim.Optimizer]
    schedulers: dict[str, torch.optim.lr_scheduler.LRScheduler]  # stepped once per iteration
    scalers: dict[str, torch.amp.GradScaler]  # one per optimiser; disabled unless amp_dtype is fp16
    phases: list[Phase]
    state: dict[str, nn.Module] = field(default_factory=dict)  # e.g. image pools, saved in checkpoints
    sampler: Sampler | None = None  # fixed batch -> (images in [-1, 1], images per grid row)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    amp_dtype: torch.dtype | None = None  # autocast dtype, None = full precision
    fixed_size: int = 64  # images per domain that sample() needs from loader.fixed(n)
    grid_labels: GridLabels | None = None  # names of the sample grid's columns and rows (GanModel.grid_labels)
    # Averages an optimiser's gradients across data-parallel processes between backward and its step
    # (fastgan.train.distributed); None in a single process.
    gradient_sync: Callable[[torch.optim.Optimizer], None] | None = None

    def sample(self, fixed: dict, labelled: bool = False) -> np.ndarray:
        """The sample grid [3, H, W] in [0, 1] for a fixed batch, computed in eval mode without touching any RNG;
        ``labelled``: with the model's grid_labels drawn around it (the grids the trainer writes)."""
        modes = {name: net.training for name, net in self.nets.items()}
        for net in self.nets.values():
            net.eval()
        try:
            with torch.no_grad(), self.autocast():
                images, columns = self.sampler(fixed)
            # sync: the grid is made on the host, as for fastgan.generate (only when a sample is written)
            grid = np.clip(make_grid(to_unit(images.float().cpu().numpy()), columns), 0, 1)
        finally:
            for name, net in self.nets.items():
                net.train(modes[name])
        if labelled and self.grid_labels is not None:
            grid = label_grid(grid, self.grid_labels, tuple(images.shape[-2:]), columns)
        return grid

    def autocast(self):
        """Autocast to ``amp_dtype`` (none without), each weight cast once per region (fastgan/ops/_casts.py)."""
        return ops.autocast(self.device.type, self.amp_dtype)

    def train(self):
        for net in self.nets.values():
            net.train()


def set_trainable(task: Task, phase: Phase | None) -> None:
    """Gradients only for the networks ``phase`` updates (all networks when ``phase`` is None)."""
    trains = set(task.nets) if phase is None else set(phase.trains)
    for name, net in task.nets.items():
        net.requires_grad_(name in trains)


def run_phase(task: Task, phase: Phase, batch: dict, autocast=None) -> dict[str, Tensor]:
    """One update of ``phase`` (gradients already cleared): loss, scaled backward, optimiser step and
    loss-scale update. Returns its losses (with fp16 loss scaling, also ``amp_skipped``: 1 where the
    GradScaler skipped the update). ``autocast`` defaults to the task's; the CUDA-graph step
    passes its own (on the CUDA device type). Under autocast each network's weights are cast once for the
    phase, in one multi-tensor copy (fastgan.ops._casts.cast_modules_once)."""
    optimizer, scaler = task.optimizers[phase.optimizer], task.scalers[phase.optimizer]
    with (autocast or task.autocast)(), cast_modules_once(task.nets.values()):
        losses = phase.loss(batch)
    scaler.scale(losses["total"]).backward()
    if task.gradient_sync is not None:  # before scaler.step unscales: every rank then finds the same inf
        task.gradient_sync(optimizer)
    scaler.step(optimizer)
    if scaler.is_enabled():  # counted with the losses, on the device: the loop reports it at --log-every
        losses = losses | {AMP_SKIPPED: amp_skipped(scaler, optimizer)}
    scaler.update()
    return losses


def train_step(task: Task, batch: dict, accum: dict[str, Tensor]) -> None:
    """Runs every phase ``repeats`` times on ``batch``; adds each detached loss to ``accum[phase/name]``
    on the device (read by the loop at log intervals only, so nothing here waits for the GPU)."""
    for phase in task.phases:
        set_trainable(task, phase)
        for _ in range(phase.repeats):
            task.optimizers[phase.optimizer].zero_grad(set_to_none=True)
            losses = run_phase(task, phase, batch)
            for name, value in losses.items():
                key = f"{phase.name}/{name}"
                value = value.detach()
                if key in accum:
                    accum[key] += value
                else:
                    accum[key] = value.clone()
    set_trainable(task, None)
