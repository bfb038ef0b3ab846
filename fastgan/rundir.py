"""The run directory: the one owner of what a training run's folder holds and who may write it.

Torch-free at import, so the inference commands (generate/translate/export, also without torch) ask it
which paths belong to a run and must never be written over.

Run directory (--out, default runs/<model>):
    config.json                the resolved config of the latest start or resume
    losses.jsonl               one record per log interval
    metrics.jsonl              evaluation records (--eval-every)
    samples/step-XXXXXXXX.png  sample grids from fixed noise
    checkpoint-XXXXXXXX.pt     the full training state
    checkpoint-XXXXXXXX.pt.sha256  its checksum, verified whenever the checkpoint is read
    latest                     the newest checkpoint's file name
    lock                       held by the training process while it runs; holds its PID
    report.html                config, loss curves, sample grids and checkpoints
    tensorboard/               scalars, with --tensorboard
"""

from __future__ import annotations

import fnmatch
import os
from pathlib import Path

CONFIG = "config.json"
LOSSES = "losses.jsonl"
METRICS = "metrics.jsonl"
LATEST = "latest"  # pointer file: the name of the newest checkpoint
LOCK = "lock"
REPORT = "report.html"
SAMPLES = "samples"
CHECKPOINT_GLOB = "checkpoint-*.pt"
CHECKSUM = ".sha256"  # suffix of the file beside each checkpoint that holds its SHA-256

# Files a run owns that no other command may replace or remove (patterns match the file's name).
RUN_FILE_PATTERNS = ("*.pt", "*.pt.sha256", "*.pt.damaged", CONFIG, LATEST, LOCK, LOSSES, METRICS)


def is_run_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` names a file that a training run owns (a checkpoint, its checksum, the config, the
    logs, the lock or the latest pointer), judged by its name alone."""
    name = Path(path).name
    return any(fnmatch.fnmatchcase(name, p) for p in RUN_FILE_PATTERNS)
