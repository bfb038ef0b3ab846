"""What the trainer tells its user while it runs: a start-up summary, progress with an ETA, warnings as one
line each, and the time taken at the end.

- At start, a few readable lines: the model and its parameter counts, the data (images per folder and what
  was skipped), the schedule, the engine and the run directory. The full resolved config goes to
  config.json only.
- While training: a tqdm bar when stdout is a terminal of a known, non-zero width (it/s, elapsed, ETA to the
  last iteration, the current learning rate and the last logged losses), else one line per log interval with
  the same fields.
  The first report comes after the first iteration, not after the first --log-every.
- Warnings (an image skipped, a fast path missing) as ``fastgan.train: warning: ...``, one line each and
  without Python's source line.

Nothing here reads a device tensor: the loop hands over losses it has already read at a log interval
(fastgan.train.loop); the first-iteration report is the loop's one extra, deliberate read.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

from tqdm import tqdm

from .stops import AMP_SKIPPED

PROG = "fastgan.train"


def format_duration(seconds: float) -> str:
    """12.3 -> '12s', 754 -> '12m34s', 7384 -> '2h03m04s', 200000 -> '2d07h33m'."""
    seconds = max(0, int(round(seconds)))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h{minutes:02d}m"
    if hours:
        return f"{hours}h{minutes:02d}m{secs:02d}s"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def warn_line(message: str, file: TextIO | None = None) -> None:
    print(f"{PROG}: warning: {message}", file=file or sys.stderr, flush=True)


@contextlib.contextmanager
def one_line_warnings() -> Iterator[None]:
    """Shows every warning raised inside as ``fastgan.train: warning: MESSAGE`` on stderr (no category, file
    or source line). Only the format changes: the filters (once per place, ignored) still apply, and code that
    records warnings (warnings.catch_warnings(record=True), pytest.warns) still receives them."""
    def one_line(message, category, filename, lineno, line=None):
        return f"{PROG}: warning: {message}\n"

    saved = warnings.formatwarning
    warnings.formatwarning = one_line
    try:
        yield
    finally:
        warnings.formatwarning = saved


@contextlib.contextmanager
def collected_warnings() -> Iterator[list[str]]:
    """Collects the messages of every warning raised inside (each one, even if repeated), without showing
    them: the loop decides at start whether to list them (a new run) or to sum them up (a resumed run, which
    listed them when it started)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        found: list[str] = []
        try:
            yield found
        finally:
            found += [str(w.message) for w in caught]


def report_data_warnings(messages: list[str], resumed: bool, file: TextIO | None = None) -> None:
    """A new run lists each warning of reading its data; a resumed one says how many there were, in one line."""
    if not messages:
        return
    if not resumed:
        for message in messages:
            warn_line(message, file)
        return
    skipped = sum(message.startswith("skipping ") for message in messages)
    what = f"{skipped} file(s) skipped" if skipped == len(messages) else f"{len(messages)} warning(s)"
    warn_line(f"{what} while reading the data, as when this run started (listed then; --strict stops at them)",
              file)


def _count(n: int) -> str:
    return f"{n:,}"


def _skipped(skipped) -> str:
    """info["skipped"]: {reason: count} (or a count) -> 'k skipped (2 unreadable, 1 .txt)'."""
    if isinstance(skipped, dict):
        total = sum(skipped.values())
        reasons = ", ".join(f"{n} {reason}" for reason, n in skipped.items() if n)
        return f"{_count(total)} skipped" + (f" ({reasons})" if reasons else "")
    return f"{_count(int(skipped))} skipped"


def describe_data(info: dict) -> str:
    """The loader's info as one phrase: 'horse2zebra: 1,067 images in trainA, 1,334 in trainB, 3 skipped
    (2 unreadable, 1 .txt)'. ``info["counts"]`` ({folder: images}) and ``info["skipped"]`` ({reason: files})
    come from folder datasets; others give num_images (per domain) only."""
    name = info.get("name", "?")
    counts = info.get("counts")
    if counts:
        parts = [f"{_count(n)} {'images ' if i == 0 else ''}in {folder}"
                 for i, (folder, n) in enumerate(counts.items())]
    else:
        n = info.get("num_images", 0)
        domains = " per domain" if info.get("kind") in ("unpaired",) else ""
        parts = [f"{_count(n)} images{domains}"]
    skipped = info.get("skipped")
    if skipped:
        parts.append(_skipped(skipped))
    if info.get("num_classes"):
        parts.append(f"{info['num_classes']} classes")
    return f"{name}: " + ", ".join(parts)


def _params(nets: dict) -> str:
    """{'G_A': net, ...} -> 'G_A, G_B 11,378,179 parameters each; D_A, D_B 2,764,737 each' style."""
    groups: dict[int, list[str]] = {}
    for name, net in nets.items():
        groups.setdefault(sum(p.numel() for p in net.parameters()), []).append(name)
    return "; ".join(f"{', '.join(names)} {_count(n)} parameters" + (" each" if len(names) > 1 else "")
                     for n, names in groups.items())


def engine(cfg) -> str:
    """What runs the step: device, step engine, precision, memory format and op implementation."""
    step = "CUDA graphs" if cfg.cuda_graphs else "torch.compile" if cfg.compile else "eager"
    precision = f"autocast {cfg.amp_dtype}" if cfg.amp else "fp32"
    parts = [cfg.device, step, precision]
    if cfg.channels_last:
        parts.append("channels_last")
    parts.append(f"ops {cfg.impl}")
    return ", ".join(parts)


def summary_lines(cfg, info: dict, nets: dict, batches_per_epoch: int, total: int, step: int = 0,
                  resumed_from: str | Path | None = None, world_size: int = 1) -> list[str]:
    """The start-up summary, one line per topic (each prefixed ``fastgan.train: ``)."""
    epochs = cfg.epochs + cfg.epochs_decay
    schedule = f"{epochs} epoch(s)"
    if cfg.epochs_decay:
        schedule += f" ({cfg.epochs} + {cfg.epochs_decay} with the learning rate decaying to 0)"
    schedule += f" of {_count(batches_per_epoch)} iterations"
    if total < epochs * batches_per_epoch:
        schedule += f", stopping at iteration {_count(total)}" + (" (--dry-run)" if cfg.dry_run else " (--iters)")
    batch = f"batch {cfg.batch_size}" + (f" x {world_size} processes" if world_size > 1 else "")
    lines = [
        f"model   {cfg.model} ({_params(nets)})",
        f"data    {describe_data(info)}",
        f"train   {cfg.image_size}x{cfg.image_size}, {batch}, lr {cfg.lr:g}, {schedule}",
        f"engine  {engine(cfg)}",
        f"out     {cfg.out} (full config in {Path(cfg.out) / 'config.json'})",
    ]
    if resumed_from is not None:
        # The wording issue 22 §5 asks for (scripts grep it), then where this run goes.
        lines.append(f"resumed from step {step} (checkpoint {resumed_from}); training to iteration {_count(total)}")
    return [f"{PROG}: {line}" for line in lines]


def short_losses(losses: dict[str, float]) -> dict[str, str]:
    """The losses worth a glance on one line: each phase's total, cycle losses, fp16 overflows if any."""
    return {k: f"{v:.3g}" for k, v in losses.items()
            if k.endswith("total") or "cycle" in k or (k.endswith(AMP_SKIPPED) and v)}


def terminal_columns(stream: TextIO) -> int | None:
    """The width of the terminal ``stream`` writes to; 0 where it cannot be read or is 0 (``script``'s
    pseudo-terminal, some CI runners: a bar there prints nothing, so progress goes line by line); None for a
    stream without a file descriptor (nothing to measure: tqdm draws without a width limit)."""
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is an OSError and a ValueError
        return None
    try:
        return os.get_terminal_size(fd).columns
    except (OSError, ValueError):
        return 0


class Progress:
    """Progress of one training process: a tqdm bar on a terminal (of a known width: terminal_columns), else one
    line per report.

    ``update()`` after every iteration (host-side counting only); ``report(step, lr, losses)`` when the loop
    has read the losses (each log interval, and once after the first iteration); ``close()`` at the end.
    ``enabled=False`` (torchrun's other ranks) prints nothing."""

    def __init__(self, total: int, initial: int = 0, *, stream: TextIO | None = None, tty: bool | None = None,
                 enabled: bool = True, clock=time.perf_counter):
        self.total, self.initial, self.step = total, initial, initial
        self.stream = stream or sys.stdout
        self.enabled = enabled
        self.tty = bool(enabled and (self.stream.isatty() if tty is None else tty))
        self.clock = clock
        self.start = clock()
        self.first: tuple[int, float] | None = None  # (step, time) after this process's first iteration
        self.bar = None
        if self.tty and terminal_columns(self.stream) != 0:
            self.bar = tqdm(total=total, initial=initial, unit="it", dynamic_ncols=True, file=self.stream,
                            smoothing=0.1)

    @property
    def elapsed(self) -> float:
        return self.clock() - self.start

    def rate(self) -> float:
        """Iterations per second: since the first iteration once there are more (the first one pays for
        warm-up: compilation, cuDNN's algorithm search, graph capture), else over the first."""
        now = self.clock()
        if self.first is not None and self.step > self.first[0] and now > self.first[1]:
            return (self.step - self.first[0]) / (now - self.first[1])
        done = self.step - self.initial
        return done / (now - self.start) if done and now > self.start else 0.0

    def eta(self) -> float | None:
        rate = self.rate()
        return (self.total - self.step) / rate if rate > 0 else None

    def update(self, n: int = 1) -> None:
        self.step += n
        if self.first is None:
            self.first = (self.step, self.clock())
        if self.bar is not None:
            self.bar.update(n)

    def report(self, step: int, lr: float, losses: dict[str, float]) -> None:
        if not self.enabled:
            return
        shown = short_losses(losses)
        if self.bar is not None:
            self.bar.set_postfix({"lr": f"{lr:.3g}"} | shown, refresh=True)
            return
        eta = self.eta()
        width = len(str(self.total))
        fields = [f"step {step:>{width}}/{self.total} ({100 * step / max(1, self.total):.0f}%)",
                  f"{self.rate():.3g} it/s", f"elapsed {format_duration(self.elapsed)}",
                  f"ETA {format_duration(eta) if eta is not None else '?'}", f"lr {lr:.3g}"]
        if shown:
            fields.append(" ".join(f"{k}={v}" for k, v in shown.items()))
        print(" | ".join(fields), file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
