"""How a run ends before its last iteration, and says so: a signal (preemption, Ctrl-C) or divergence.

Exit codes of ``python -m fastgan.train`` (also in docs/reliability.md):
    0    done (or already complete when resumed)
    2    bad input: one line naming the flag or file (fastgan.errors.EXIT_USAGE); under --strict also an image
         that stopped decoding mid-run, after saving a checkpoint of the steps before its batch (DataStopped)
    3    diverged: a non-finite loss or weight; nothing non-finite was saved
    129  stopped by SIGHUP (the terminal or ssh connection closed) after saving a checkpoint of the current step
    130  stopped by SIGINT (Ctrl-C) after saving a checkpoint of the current step
    138  stopped by SIGUSR1 (Slurm's --signal=USR1@SECONDS warning before the time limit) after saving one
    143  stopped by SIGTERM (Slurm, Kubernetes, torchrun) after saving a checkpoint of the current step
Each is what a shell reports for a process killed by that signal (128 + the signal number), so wrappers
that already treat them as "interrupted" keep doing so; the checkpoint makes the run resumable. Other
signals keep their default action (SIGKILL cannot be caught: the previous checkpoint stays valid).
"""

from __future__ import annotations

import math
import os
import signal
import threading

import torch
from torch import Tensor

EXIT_DIVERGED = 3
# The signals that save and stop, with their exit codes (128 + the signal number).
EXIT_SIGNAL = {signal.SIGINT: 130, signal.SIGTERM: 143, signal.SIGHUP: 129, signal.SIGUSR1: 138}
AMP_SKIPPED = "amp_skipped"  # loss-dict key: 1 where fp16 loss scaling skipped the update (a count, not a loss)


class TrainingStopped(Exception):
    """The run ended early; ``str(e)`` is the one line to print and ``exit_code`` the process's status."""

    exit_code = 1

    def __init__(self, message: str, step: int, checkpoint: str | None):
        super().__init__(message)
        self.step, self.checkpoint = step, checkpoint


class Interrupted(TrainingStopped):
    """A stop signal (EXIT_SIGNAL): the current iteration was finished and checkpointed."""

    def __init__(self, signum: int, step: int, checkpoint: str | None):
        name = signal.Signals(signum).name
        where = f"checkpoint {checkpoint}" if checkpoint else "no checkpoint (no iteration ran)"
        super().__init__(f"stopped by {name} after step {step}; {where}; to continue, run the same command "
                         "with --resume auto", step, checkpoint)
        self.signum = signum
        self.exit_code = EXIT_SIGNAL[signum]


class Diverged(TrainingStopped):
    """A non-finite loss or weight; no checkpoint holding it was written."""

    exit_code = EXIT_DIVERGED

    def __init__(self, what: str, step: int, checkpoint: str | None):
        last = f"the last good checkpoint is {checkpoint}" if checkpoint else "no checkpoint was written"
        super().__init__(f"diverged at step {step}: {what}; stopped without saving it, {last} "
                         "(try a lower --lr, or --amp-dtype bf16 instead of fp16)", step, checkpoint)


class DataStopped(TrainingStopped):
    """--strict: an image that decoded at start no longer does; the steps before its batch were checkpointed."""

    exit_code = 2  # bad input, as an unreadable image at start under --strict

    def __init__(self, what: str, step: int, checkpoint: str | None):
        where = f"checkpoint {checkpoint}" if checkpoint else "no checkpoint (no iteration ran)"
        super().__init__(f"{what}; stopped after step {step} (--strict), {where}; replace or remove the file and "
                         "run the same command with --resume auto, or drop --strict to skip it", step, checkpoint)


class StopSignals:
    """``with StopSignals() as stop:`` turns the stop signals (EXIT_SIGNAL) into ``stop.signum``, which the loop checks
    after each iteration, instead of ending the process at once. Later signals are only acknowledged, so
    they cannot cut the checkpoint that is being written; SIGKILL still ends the process (the previous
    checkpoint then stays valid: every write is a rename).

    Once a stop is requested, child processes that die (DataLoader workers receive the same SIGTERM
    from a scheduler) are no longer reported by torch's SIGCHLD handler: the loop fetches no further
    batch. Outside the main thread (where Python cannot install handlers) this does nothing."""

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:
            # os.write, not print: the interrupted code may be inside a print to the same stream.
            os.write(2, f"fastgan.train: {signal.Signals(signum).name} received again; finishing the "
                        f"checkpoint first (kill -9 stops at once, losing this iteration)\n".encode())
            return
        self.signum = signum
        if hasattr(signal, "SIGCHLD"):
            self._previous.setdefault(signal.SIGCHLD, signal.getsignal(signal.SIGCHLD))
            # A Python no-op, not SIG_IGN: ignoring SIGCHLD would reap the workers behind torch's back.
            signal.signal(signal.SIGCHLD, _ignore)

    def install(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for signum in EXIT_SIGNAL:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def restore(self) -> None:
        """Puts the previous handlers back."""
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def ignore_until_exit(self) -> None:
        """For a process that stopped on a signal and now exits: the stop signals are ignored at the OS level
        (SIG_IGN), not by a Python handler, which Python's finalisation resets to the default while the process
        may still be tearing down. Under torchrun the first rank to exit with 128 + signal makes torchrun
        SIGTERM the others, which must exit with their own code, not die of that signal."""
        if threading.current_thread() is threading.main_thread():
            for signum in EXIT_SIGNAL:
                signal.signal(signum, signal.SIG_IGN)
        self._previous.clear()

    def __enter__(self) -> StopSignals:
        return self.install()

    def __exit__(self, *exc) -> None:
        self.restore()


def _ignore(signum, frame) -> None:
    pass


def check_losses(losses: dict[str, float], first_step: int, step: int, checkpoint: str | None) -> None:
    """Raises Diverged when a logged mean loss (of steps first_step..step) is NaN or infinite."""
    bad = [key for key, value in losses.items() if not math.isfinite(value)]
    if bad:
        steps = f"step {step}" if first_step == step else f"steps {first_step}-{step}"
        what = ", ".join(f"{key} = {losses[key]}" for key in bad)
        raise Diverged(f"{what} (mean over {steps})", step, checkpoint)


def first_nonfinite(tree, prefix: str = "") -> str | None:
    """The path of the first floating tensor holding a NaN or Inf in a nested dict/list, else None.

    One device-to-host read for the whole tree (the save that follows reads every tensor anyway)."""
    tensors = dict(_floating(tree, prefix))
    if not tensors:
        return None
    finite = torch.stack([t.isfinite().all().to(next(iter(tensors.values())).device)
                          for t in tensors.values()])
    # sync: once per checkpoint, before anything is written.
    if bool(finite.all()):
        return None
    return next(name for name, ok in zip(tensors, finite.tolist()) if not ok)


def _floating(tree, prefix: str):
    if isinstance(tree, Tensor):
        if tree.is_floating_point() or tree.is_complex():
            yield prefix, tree
    elif isinstance(tree, dict):
        for key, value in tree.items():
            yield from _floating(value, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(tree, (list, tuple)):
        for i, value in enumerate(tree):
            yield from _floating(value, f"{prefix}.{i}" if prefix else str(i))


def amp_skipped(scaler: torch.amp.GradScaler, optimizer: torch.optim.Optimizer) -> Tensor:
    """1.0 (a device tensor, no host sync) when ``scaler.step(optimizer)`` just skipped the update because
    the scaled gradients overflowed, else 0.0. Call between scaler.step and scaler.update.

    GradScaler keeps these flags only in its per-optimiser state (torch 2.11 to 2.14: ``found_inf_per_device``);
    it has no public accessor that does not synchronise."""
    found = scaler._per_optimizer_states[id(optimizer)]["found_inf_per_device"]
    flags = [flag.float() for flag in found.values()]
    if not flags:
        raise RuntimeError("amp_skipped: the GradScaler has not stepped this optimiser; call it after scaler.step")
    return torch.stack([f.to(flags[0].device) for f in flags]).sum().clamp_(max=1.0)
