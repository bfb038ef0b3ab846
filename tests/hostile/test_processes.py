"""What happens to a running trainer (issue 22 §§4, 7, 10, 11): its lock file deleted, its run directory
removed, the disk full during a save or at resume, an ssh drop (SIGHUP) or Slurm's warning (SIGUSR1), and
the loss log of a run stopped and resumed."""

import itertools
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import time

import pytest
import torch
from hostile_helpers import ENV, TINY, error_line, run, snapshot, train, train_command

from fastgan.rundir import read_checkpoint
from fastgan.train import loop


def start(out, logs, *flags):
    """A trainer that runs until stopped; its output goes to files (an unread pipe would block it)."""
    logs.mkdir(parents=True, exist_ok=True)
    with open(logs / "stdout", "w") as stdout, open(logs / "stderr", "w") as stderr:
        return subprocess.Popen(train_command(*TINY, "--iters", 100000, "--save-every", 0, "--out", out, *flags),
                                stdout=stdout, stderr=stderr, env=ENV)


def wait_for_records(out, proc, n=2, timeout=300):
    deadline = time.monotonic() + timeout
    log = out / "losses.jsonl"
    while not (log.is_file() and log.read_text().count("\n") >= n):
        assert proc.poll() is None, f"the trainer ended early with {proc.returncode}"
        assert time.monotonic() < deadline, "the trainer made no progress"
        time.sleep(0.05)


def ended(proc, logs) -> subprocess.CompletedProcess:
    code = proc.wait(timeout=120)
    return subprocess.CompletedProcess(proc.args, code, (logs / "stdout").read_text(), (logs / "stderr").read_text())


def test_deleting_the_lock_stops_its_holder_before_its_next_write(tmp_path):
    out = tmp_path / "run"
    proc = start(out, tmp_path / "logs")
    try:
        wait_for_records(out, proc)
        (out / "lock").unlink()  # now a second trainer could take the run: the first one must stop writing
        line = error_line(ended(proc, tmp_path / "logs"))
    finally:
        proc.kill()
    assert line == (f"fastgan.train: error: --out {out}: its lock file was deleted or replaced while this trainer "
                    "held it (another trainer may now own the run); stopped without writing anything more")
    assert not list(out.glob("checkpoint-*")) and not (out / "lock").exists()


def test_the_run_directory_removed_mid_run(tmp_path):
    out = tmp_path / "run"
    proc = start(out, tmp_path / "logs")
    try:
        wait_for_records(out, proc)
        shutil.rmtree(out, ignore_errors=True)
        line = error_line(ended(proc, tmp_path / "logs"))
    finally:
        proc.kill()
    # The lock check before a write sees it (the directory gone, or only its lock file yet: rmtree removes the
    # files first), or the write itself does (when the removal falls between the check and the write).
    assert line in (f"fastgan.train: error: --out {out}: the run directory was removed while training; stopped "
                    "without writing anything more",
                    f"fastgan.train: error: --out {out}: its lock file was deleted or replaced while this trainer "
                    "held it (another trainer may now own the run); stopped without writing anything more",
                    ) or re.match(rf"fastgan.train: error: cannot write {out}/", line), line


def file_size_limit(nbytes):
    """For preexec_fn: writes past ``nbytes`` fail (EFBIG) as writes to a full disk fail (ENOSPC), both an
    OSError from the same write, instead of the default SIGXFSZ killing the process."""
    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, nbytes))
    return limit


def test_disk_full_during_a_save(copy_of):
    run_dir = copy_of()
    # Room for the small files (lock, config, log records), not for a checkpoint (about 80 kB).
    # --save-every 1: the save of step 5 comes before any sample grid or report (written at the end).
    proc = run(train_command(*TINY, "--resume", "auto", "--out", run_dir, "--iters", 6, "--save-every", 1),
               preexec_fn=file_size_limit(30_000))
    line = error_line(proc)
    assert line == (f"fastgan.train: error: cannot write checkpoint {run_dir}/checkpoint-00000005.pt (File too "
                    "large); the previous checkpoint checkpoint-00000004.pt is intact; free space and resume with "
                    "--resume auto")
    names = sorted(p.name for p in run_dir.iterdir())
    assert [n for n in names if "checkpoint" in n] == ["checkpoint-00000002.pt", "checkpoint-00000002.pt.sha256",
                                                       "checkpoint-00000004.pt", "checkpoint-00000004.pt.sha256"]
    assert (run_dir / "latest").read_text() == "checkpoint-00000004.pt\n"
    assert read_checkpoint(run_dir)["step"] == 4  # the resumed-from checkpoint is kept, verified


def test_resume_on_a_full_disk(copy_of):
    run_dir = copy_of()
    before = snapshot(run_dir)
    # Room for torch's start-up probes and the lock's PID, not for the first file the resumed run rewrites.
    line = error_line(run(train_command(*TINY, "--resume", "auto", "--out", run_dir, "--iters", 6),
                          preexec_fn=file_size_limit(300)))
    assert line == (f"fastgan.train: error: cannot write {run_dir}/config.json (File too large); the files already "
                    f"in {run_dir} are unchanged")
    assert snapshot(run_dir) == before


def test_an_unwritable_log_at_resume(copy_of):
    run_dir = copy_of()
    (run_dir / "losses.jsonl").unlink()
    (run_dir / "losses.jsonl").mkdir()  # unwritable for root too, unlike a chmod
    line = error_line(train(*TINY, "--resume", "auto", "--out", run_dir, "--iters", 6))
    assert line.startswith(f"fastgan.train: error: cannot write {run_dir}/losses.jsonl (Is a directory)")


@pytest.mark.parametrize("signum, code", [(signal.SIGHUP, 129), (signal.SIGUSR1, 138)])
def test_sighup_and_sigusr1_save_and_stop(tmp_path, signum, code):
    out = tmp_path / "run"
    proc = start(out, tmp_path / "logs")
    try:
        wait_for_records(out, proc)
        proc.send_signal(signum)
        result = ended(proc, tmp_path / "logs")
    finally:
        proc.kill()
    assert result.returncode == code, result.stderr
    stopped = re.fullmatch(rf"fastgan\.train: stopped by {signum.name} after step (\d+); checkpoint (\S+); to "
                           r"continue, run the same command with --resume auto\n", result.stderr)
    assert stopped, result.stderr
    assert read_checkpoint(stopped[2])["step"] == int(stopped[1]) >= 2


def records(out):
    return [json.loads(line) for line in (out / "losses.jsonl").read_text().splitlines()]


@pytest.fixture
def sigusr1_fails_the_test():
    """A SIGUSR1 the trainer's handler does not take fails the test instead of ending pytest."""
    def fail(signum, frame):
        raise AssertionError("SIGUSR1 reached the test instead of the trainer")

    previous = signal.signal(signal.SIGUSR1, fail)
    yield
    signal.signal(signal.SIGUSR1, previous)


def test_the_log_of_a_stopped_and_resumed_run_is_the_uninterrupted_one(tmp_path, monkeypatch, sigusr1_fails_the_test):
    flags = [*TINY, "--log-every", 4, "--save-every", 0]
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    assert train(*flags, "--iters", 11, "--out", whole).returncode == 0
    make = loop.make_train_step

    def stopped_after_5(task, batch, cuda_graphs):  # Slurm's warning after iteration 5, mid-interval
        step, count = make(task, batch, cuda_graphs), itertools.count(1)

        def step_then_signal(batch, accum):
            step(batch, accum)
            if next(count) == 5:
                os.kill(os.getpid(), signal.SIGUSR1)

        return step_then_signal

    monkeypatch.setattr(loop, "make_train_step", stopped_after_5)
    assert train(*flags, "--iters", 11, "--out", parts).returncode == 138
    monkeypatch.setattr(loop, "make_train_step", make)
    assert [r["step"] for r in records(parts)] == [4]  # no record for the interval the stop cut
    assert train("--resume", "auto", "--out", parts).returncode == 0
    assert records(parts) == records(whole)  # steps 4, 8 and the last, 11: means over the same iterations
    a, b = (read_checkpoint(out)["nets"]["G"] for out in (whole, parts))
    assert all(torch.equal(a[k], b[k]) for k in a)
