"""Helpers of the hostile-user tests (issue 22): tiny models on synthetic data, a few iterations per run.

A command runs in a process of its own (``run``) where the behaviour is about processes (signals, the lock,
resource limits, a directory removed under a running trainer), else through its ``main`` in this process
(``cli``: the same parsing, checks and one-line errors, without the second or two a process spends importing
torch, which would take this folder past its CI budget)."""

import hashlib
import io
import os
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

ENV = os.environ | {"OMP_NUM_THREADS": "1"}
# A dcgan small enough that a process spends its time importing torch, not training.
TINY = ["--data", "synthetic", "--ngf", "4", "--ndf", "4", "--z-dim", "8", "--batch-size", "8", "--device", "cpu",
        "--sample-every", "0", "--log-every", "1", "--seed", "3", "--deterministic"]


def train_command(*flags, model="dcgan") -> list[str]:
    return [sys.executable, "-m", "fastgan.train", model, *map(str, flags)]


def run(command, timeout=300, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, env=ENV, timeout=timeout, **kwargs)


def cli(main, *argv) -> subprocess.CompletedProcess:
    """``main(argv)`` of a command (e.g. fastgan.train.__main__.main) in this process, as ``run`` reports a
    process: its exit code and what it printed."""
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        try:
            code = main([str(a) for a in argv])
        except SystemExit as e:
            code = e.code
    return subprocess.CompletedProcess(list(argv), code, out.getvalue(), err.getvalue())


def train(*flags, model="dcgan") -> subprocess.CompletedProcess:
    """``python -m fastgan.train MODEL FLAGS`` in this process (cli)."""
    from fastgan.train.__main__ import main

    return cli(main, model, *flags)


def error_line(proc: subprocess.CompletedProcess, tool="fastgan.train") -> str:
    """The one error line of a process that refused its input (exit 2, no traceback)."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert "Traceback" not in proc.stderr and len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"{tool}: error: "), proc.stderr
    return lines[0]


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` with its bytes (a run left untouched has the same snapshot), but the lock:
    a trainer that reads a run takes its lock first, writing its PID there."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != "lock"}


def write_checksum(path: Path) -> None:
    """The .sha256 fastgan.train writes beside a checkpoint, for a file a test edited on purpose."""
    Path(f"{path}.sha256").write_text(f"{hashlib.sha256(path.read_bytes()).hexdigest()}  {path.name}\n")
