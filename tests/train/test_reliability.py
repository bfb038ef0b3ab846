"""Nothing is lost when a run is preempted, started twice, damaged on disk or diverges; sizes a model cannot
take are one line at start. Real processes where the behaviour is about processes (signals, the lock)."""

import functools
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fastgan.errors import UserError
from fastgan.generate import generate
from fastgan.rundir import RunLock
from fastgan.train import checkpoint, loop
from fastgan.train.__main__ import main
from fastgan.train.checkpoint import existing_checkpoints, latest_checkpoint, load_checkpoint
from fastgan.train.loop import train
from fastgan.train.stops import Diverged, Interrupted, first_nonfinite

ENV = os.environ | {"OMP_NUM_THREADS": "1"}
# tests/train/conftest.py's tiny dcgan as flags, so that a run started as a process resumes in-process.
TINY_FLAGS = ["--device", "cpu", "--batch-size", "8", "--z-dim", "8", "--ngf", "4", "--ndf", "4", "--seed", "3",
              "--deterministic", "--log-every", "1", "--sample-every", "0"]


def command(out, *flags, data="synthetic"):
    return [sys.executable, "-m", "fastgan.train", "dcgan", "--data", str(data), "--out", str(out), *TINY_FLAGS,
            *flags]


def start(out, logs: Path, *flags, **popen):
    """A training process whose stdout/stderr go to files (an unread pipe would block it once full)."""
    logs.mkdir(parents=True, exist_ok=True)
    with open(logs / "stdout", "w") as stdout, open(logs / "stderr", "w") as stderr:
        return subprocess.Popen(command(out, *flags, **popen.pop("command", {})), stdout=stdout, stderr=stderr,
                                env=ENV, **popen)


def logged_steps(out) -> int:
    log = out / "losses.jsonl"
    return log.read_text().count("\n") if log.is_file() else 0


def wait_until(ready, proc, timeout=300):
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, f"the training process ended early with {proc.returncode}"
        assert time.monotonic() < deadline, "the training process made no progress"
        time.sleep(0.05)


def read_log(out):
    return [json.loads(line) for line in (out / "losses.jsonl").read_text().splitlines()]


def assert_same_training_state(a_dir, b_dir):
    a, b = (load_checkpoint(latest_checkpoint(d), "dcgan") for d in (a_dir, b_dir))
    assert a["step"] == b["step"]
    for group in ("nets", "optimizers"):
        flat_a, flat_b = dict(_tensors(a[group])), dict(_tensors(b[group]))
        assert flat_a.keys() == flat_b.keys()
        for name in flat_a:
            assert torch.equal(flat_a[name], flat_b[name]), (group, name)
    assert torch.equal(a["rng"]["torch"], b["rng"]["torch"])


def _tensors(tree, prefix=""):
    if isinstance(tree, torch.Tensor):
        yield prefix, tree
    elif isinstance(tree, dict):
        for key, value in tree.items():
            yield from _tensors(value, f"{prefix}/{key}")


def flip_bytes(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def inject(monkeypatch, at: int, action):
    """Runs ``action(task)`` right after training iteration ``at``."""
    make = loop.make_train_step

    def make_with_action(task, batch, cuda_graphs):
        step_fn, count = make(task, batch, cuda_graphs), itertools.count(1)

        def step(batch, accum):
            step_fn(batch, accum)
            if next(count) == at:
                action(task)

        return step

    monkeypatch.setattr(loop, "make_train_step", make_with_action)


@pytest.fixture
def signals_fail_the_test():
    """Signals a test sends to itself fail the test, instead of ending pytest, unless the trainer's own
    handlers take them."""
    def fail(signum, frame):
        raise AssertionError(f"{signal.Signals(signum).name} reached the test instead of the trainer")

    previous = {signum: signal.signal(signum, fail) for signum in (signal.SIGINT, signal.SIGTERM)}
    yield fail
    for signum, handler in previous.items():
        signal.signal(signum, handler)


# --- 1. SIGTERM / SIGINT ---

def test_sigterm_saves_the_current_step_and_the_run_resumes_exactly(tiny, tmp_path):
    out = tmp_path / "run"
    proc = start(out, tmp_path / "logs", "--iters", "100000", "--save-every", "0")
    wait_until(lambda: logged_steps(out) >= 3, proc)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 143
    err = (tmp_path / "logs" / "stderr").read_text()
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    stopped = re.fullmatch(r"fastgan\.train: stopped by SIGTERM after step (\d+); checkpoint (\S+); to continue, "
                           r"run the same command with --resume auto\n", err)
    assert stopped, err
    step = int(stopped[1])
    assert step >= 3 and Path(stopped[2]) == out / f"checkpoint-{step:08d}.pt"
    assert load_checkpoint(stopped[2], "dcgan")["step"] == step  # verified against its checksum
    assert [r["step"] for r in read_log(out)] == list(range(1, step + 1))

    total = step + 3
    resumed = train(tiny("dcgan", out, data="synthetic", iters=total, resume="auto"))
    train(tiny("dcgan", tmp_path / "whole", data="synthetic", iters=total))
    assert resumed["step"] == total
    assert read_log(out) == read_log(tmp_path / "whole")
    assert_same_training_state(out, tmp_path / "whole")


def test_sigterm_to_the_whole_process_group_with_loader_workers(tmp_path):
    # Schedulers signal every process of the job: the DataLoader workers die with the trainer's SIGTERM,
    # and torch's SIGCHLD handler would report that as an error in the middle of the final save.
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(16):
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    out = tmp_path / "run"
    proc = start(out, tmp_path / "logs", "--iters", "100000", "--save-every", "0", "--image-size", "32",
                 "--loader", "torch", "--workers", "2", command={"data": folder}, start_new_session=True)
    wait_until(lambda: logged_steps(out) >= 2, proc)
    os.killpg(proc.pid, signal.SIGTERM)
    assert proc.wait(timeout=120) == 143
    err = (tmp_path / "logs" / "stderr").read_text()
    assert "Traceback" not in err and "stopped by SIGTERM after step" in err, err
    step = load_checkpoint(out, "dcgan")["step"]
    assert step >= 2 and f"checkpoint-{step:08d}.pt" in err


def test_a_second_signal_during_the_save_cannot_cut_it(tiny, tmp_path, monkeypatch, capfd, signals_fail_the_test):
    inject(monkeypatch, 3, lambda task: os.kill(os.getpid(), signal.SIGINT))
    save = checkpoint.torch.save

    def save_under_fire(obj, f):
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGINT)
        save(obj, f)

    monkeypatch.setattr(checkpoint.torch, "save", save_under_fire)
    with pytest.raises(Interrupted) as stopped:
        train(tiny("dcgan", tmp_path, data="synthetic", iters=100))
    # The first signal decides: Ctrl-C's 130 (SIGTERM would be 143).
    assert stopped.value.exit_code == 130 and stopped.value.step == 3
    assert str(stopped.value).startswith(f"stopped by SIGINT after step 3; checkpoint {tmp_path}/checkpoint-00000003")
    assert load_checkpoint(tmp_path, "dcgan")["step"] == 3
    assert capfd.readouterr().err.count("received again; finishing the checkpoint first") == 2
    assert signal.getsignal(signal.SIGINT) is signals_fail_the_test  # the handlers are put back


def test_ctrl_c_exit_code_through_the_cli(tmp_path, monkeypatch, capsys, signals_fail_the_test):
    inject(monkeypatch, 2, lambda task: os.kill(os.getpid(), signal.SIGINT))
    assert main(["dcgan", "--data", "synthetic", "--out", str(tmp_path), *TINY_FLAGS, "--iters", "50"]) == 130
    err = capsys.readouterr().err
    assert err == (f"fastgan.train: stopped by SIGINT after step 2; checkpoint {tmp_path}/checkpoint-00000002.pt; "
                   "to continue, run the same command with --resume auto\n")


# --- 2. the run lock ---

def test_a_second_trainer_in_the_same_run_directory_is_refused(tiny, tmp_path):
    out = tmp_path / "run"
    train(tiny("dcgan", out, data="synthetic", iters=2))
    first = start(out, tmp_path / "first", "--iters", "100000", "--save-every", "0", "--resume", "auto")
    wait_until(lambda: logged_steps(out) >= 3, first)
    try:
        second = subprocess.run(command(out, "--iters", "5", "--resume", "auto"), capture_output=True, text=True,
                                env=ENV, timeout=300)
        assert second.returncode == 2
        assert second.stderr == (f"fastgan.train: error: --out {out}: another training process (PID {first.pid}) "
                                 "is using this run directory; wait for it to end or choose another --out\n")
        assert generate(out, n=2).shape == (2, 1, 28, 28)  # readers take no lock
        with pytest.raises(UserError, match=f"PID {first.pid}"):
            train(tiny("dcgan", out, data="synthetic", iters=5, resume="auto"))
    finally:
        first.kill()
        first.wait(timeout=60)
    with RunLock(out):  # the kernel dropped the lock with the killed process: nothing stale to clean up
        pass
    assert train(tiny("dcgan", out, data="synthetic", iters=4, resume="auto"))["step"] == 4


def test_lock_is_exclusive_and_released(tmp_path):
    with RunLock(tmp_path) as held:
        assert held.held and (tmp_path / "lock").read_text() == f"{os.getpid()}\n"
        with pytest.raises(UserError, match=f"--out {tmp_path}: another training process \\(PID {os.getpid()}\\)"):
            RunLock(tmp_path).acquire()
    with RunLock(tmp_path):
        pass


def test_a_refused_start_creates_no_run_directory(capsys, tmp_path):
    with pytest.raises(SystemExit):
        main(["dcgan", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "run"), *TINY_FLAGS])
    assert not (tmp_path / "run").exists()


# --- 3. checkpoint history ---

def test_a_damaged_newest_checkpoint_falls_back_to_the_previous_one(tiny, tmp_path, capsys):
    run, whole = tmp_path / "run", tmp_path / "whole"
    train(tiny("dcgan", run, data="synthetic", iters=6, save_every=2))
    older, newest = existing_checkpoints(run)
    assert (older.name, newest.name) == ("checkpoint-00000004.pt", "checkpoint-00000006.pt")
    flip_bytes(newest)
    capsys.readouterr()
    assert train(tiny("dcgan", run, data="synthetic", iters=8, save_every=2, resume="auto"))["step"] == 8
    err = capsys.readouterr().err
    assert f"fastgan.train: warning: checkpoint {newest}: damaged" in err
    assert f"resuming from {older} instead (the damaged file is kept as checkpoint-00000006.pt.damaged)" in err
    assert (run / "checkpoint-00000006.pt.damaged").is_file()
    train(tiny("dcgan", whole, data="synthetic", iters=8, save_every=2))
    assert read_log(run) == read_log(whole)
    assert_same_training_state(run, whole)


def test_no_valid_checkpoint_left_is_one_line(tiny, tmp_path):
    train(tiny("dcgan", tmp_path, data="synthetic", iters=4, save_every=2))
    for path in existing_checkpoints(tmp_path):
        flip_bytes(path)
    with pytest.raises(UserError, match="checkpoint-00000004.pt: damaged .* no older checkpoint of the run is valid"):
        train(tiny("dcgan", tmp_path, data="synthetic", iters=6, resume="auto"))


def test_keep_checkpoints_flag(tiny, tmp_path):
    train(tiny("dcgan", tmp_path, data="synthetic", iters=5, save_every=1, keep_checkpoints=3))
    assert [p.name for p in existing_checkpoints(tmp_path)] == [f"checkpoint-0000000{s}.pt" for s in (3, 4, 5)]
    with pytest.raises(UserError, match="--keep-checkpoints 0: must be at least 1"):
        train(tiny("dcgan", tmp_path / "zero", data="synthetic", iters=1, keep_checkpoints=0))


# --- 4. divergence ---

def assert_every_checkpoint_finite(out):
    paths = existing_checkpoints(out)
    assert paths
    for path in paths:
        ckpt = load_checkpoint(path)
        assert first_nonfinite({g: ckpt[g] for g in ("nets", "optimizers", "state")}) is None, path


def test_absurd_learning_rate_stops_with_exit_3_and_saves_nothing_non_finite(tmp_path, capsys):
    # fp16 autocast at --lr 1e4: the activations overflow at step 2, then NaN spreads into BatchNorm's statistics.
    code = main(["dcgan", "--data", "synthetic", "--out", str(tmp_path), *TINY_FLAGS, "--iters", "20", "--lr", "1e4",
                 "--amp", "--amp-dtype", "fp16", "--save-every", "1"])
    err = capsys.readouterr().err
    assert code == 3, err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert re.fullmatch(r"fastgan\.train: diverged at step 2: G/total = nan \(mean over step 2\); stopped without "
                        rf"saving it, the last good checkpoint is {tmp_path}/checkpoint-00000001\.pt \(try a lower "
                        r"--lr, or --amp-dtype bf16 instead of fp16\)\n", err), err
    assert_every_checkpoint_finite(tmp_path)
    assert latest_checkpoint(tmp_path).name == "checkpoint-00000001.pt"


def test_injected_nan_in_the_weights_stops_at_the_next_loss_read(tiny, tmp_path, monkeypatch):
    inject(monkeypatch, 3, lambda task: next(task.nets["G"].parameters()).data.fill_(float("nan")))
    with pytest.raises(Diverged) as stopped:
        train(tiny("dcgan", tmp_path, data="synthetic", iters=10, save_every=2, log_every=1))
    assert stopped.value.exit_code == 3 and stopped.value.step == 4
    assert str(stopped.value).startswith("diverged at step 4: D/fake = nan")
    assert str(stopped.value).endswith(f"the last good checkpoint is {tmp_path}/checkpoint-00000002.pt "
                                       "(try a lower --lr, or --amp-dtype bf16 instead of fp16)")
    assert [p.name for p in existing_checkpoints(tmp_path)] == ["checkpoint-00000002.pt"]
    assert_every_checkpoint_finite(tmp_path)


def test_non_finite_statistics_are_caught_when_saving(tiny, tmp_path, monkeypatch):
    # Between loss reads (--log-every 100) only the check before each save can see it.
    inject(monkeypatch, 3, lambda task: task.nets["D"].net[2].running_mean.fill_(float("inf")))
    with pytest.raises(Diverged, match=r"diverged at step 4: non-finite value in nets\.D\.net\.2\.running_mean; "
                                        rf"stopped without saving it, the last good checkpoint is {tmp_path}/"
                                        r"checkpoint-00000002\.pt") as stopped:
        train(tiny("dcgan", tmp_path, data="synthetic", iters=10, save_every=2, log_every=100))
    assert stopped.value.exit_code == 3
    assert [p.name for p in existing_checkpoints(tmp_path)] == ["checkpoint-00000002.pt"]


def test_fp16_overflow_steps_are_counted_in_the_log(tiny, tmp_path, monkeypatch):
    # A loss scale of 2^100 makes every scaled gradient overflow in fp16: the GradScaler skips each update.
    monkeypatch.setattr(torch.amp, "GradScaler", functools.partial(torch.amp.GradScaler, init_scale=2.0**100))
    summary = train(tiny("dcgan", tmp_path, data="synthetic", iters=4, log_every=2, amp=True, amp_dtype="fp16"))
    log = read_log(tmp_path)
    assert [(r["step"], r["D/amp_skipped"], r["G/amp_skipped"]) for r in log] == [(2, 2, 2), (4, 2, 2)]
    assert summary["losses"]["G/amp_skipped"] == 2


# --- 5. sizes ---

@pytest.mark.parametrize("model, size, message", [
    ("cyclegan", 7, "--image-size 7: cyclegan takes multiples of 4 from 24 up"),  # the case
    ("cyclegan", 20, "--image-size 20: cyclegan takes multiples of 4 from 24 up"),  # PatchGAN: 1x1 InstanceNorm
    ("cyclegan", 30, "--image-size 30: cyclegan takes multiples of 4 from 24 up"),  # G would return 32
    ("dcgan", 48, "--image-size 48: dcgan takes 28 (the MNIST-family layout) or 32, 64, 128, 256"),
    ("cgan", 512, "--image-size 512: cgan takes 28 (the MNIST-family layout) or 32, 64, 128, 256"),
])
def test_a_size_the_model_cannot_take_is_one_line_at_start(capsys, tmp_path, model, size, message):
    with pytest.raises(SystemExit) as exit_info:
        main([model, "--data", "synthetic", "--image-size", str(size), "--device", "cpu", "--dry-run",
              "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1, err
    assert err.startswith(f"fastgan.train: error: {message}")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("model, size", [
    ("cyclegan", 24),  # the smallest CycleGAN side
    ("dcgan", 32),  # DCGAN's folder sizes: one stage per doubling
    ("dcgan", 128),
    ("cgan", 32),
])
def test_every_size_a_model_names_trains(tiny, tmp_path, model, size):
    load = {"load_size": size + 4} if model == "cyclegan" else {}
    summary = train(tiny(model, tmp_path, data="synthetic", image_size=size, iters=1, **load))
    assert summary["step"] == 1


def test_dcgan_on_an_image_folder_at_32(tiny, tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(8):
        Image.new("RGB", (40, 48), (30 * i, 0, 255 - 30 * i)).save(folder / f"{i}.png")
    summary = train(tiny("dcgan", tmp_path / "run", data=str(folder), image_size=32, iters=2, workers=0))
    assert summary["step"] == 2 and load_checkpoint(tmp_path / "run")["nets"]["G"]["net.9.weight"].shape[1] == 3


# --- 6. a resumed run with nothing left to do ---

def test_a_complete_run_resumed_says_so(capsys, tmp_path):
    args = ["dcgan", "--data", "synthetic", "--out", str(tmp_path), *TINY_FLAGS, "--iters", "2"]
    assert main(args) == 0
    capsys.readouterr()
    assert main([*args, "--resume", "auto"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == (
        f"fastgan.train: already complete at step 2 (epoch 0); checkpoint {tmp_path}/checkpoint-00000002.pt; "
        "raise --iters or --epochs to train further")


# --- an image that stops decoding mid-run (issue 22 §12) ---

@pytest.mark.parametrize("strict", [False, True])
def test_an_image_replaced_mid_run_with_workers(tiny, tmp_path, monkeypatch, strict):
    """Training with --workers 2: an image that decoded at start is replaced by text. Without --strict its
    positions take the next image of the folder with one warning (not DataLoader's multi-line "Caught ... in
    DataLoader worker process 0"); with --strict the run stops before that batch with a checkpoint, exit 2."""
    from fastgan.data import build_loader
    from fastgan.data.loaders import TorchLoader, epoch_plan
    from fastgan.train.stops import DataStopped
    from fastgan.train.tasks import data_request

    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(8):
        Image.new("RGB", (40, 48), (30 * i, 0, 255 - 30 * i)).save(folder / f"{i}.png")
    cfg = tiny("dcgan", tmp_path / "run", data=str(folder), image_size=32, batch_size=2, iters=4, workers=2,
               loader="torch", strict=strict)
    spec = build_loader(data_request(loop.resolve_config(cfg)), "cpu").spec
    victim = spec.sources["real"].paths[int(epoch_plan(spec, cfg.seed, 0)["real"].order[5])]  # step 3's batch
    fixed = TorchLoader.fixed

    def fixed_then_replace(self, n):  # the last read of the start-up (the sample grid's images)
        batch = fixed(self, n)
        Path(victim).write_text("replaced by text since the start-up check")
        return batch

    monkeypatch.setattr(TorchLoader, "fixed", fixed_then_replace)
    if strict:
        with pytest.raises(DataStopped) as e:
            train(cfg)
        assert e.value.exit_code == 2 and victim in str(e.value) and "--strict" in str(e.value)
        assert "\n" not in str(e.value) and e.value.step == 2
        assert load_checkpoint(tmp_path / "run")["step"] == 2
        return
    with pytest.warns(UserWarning) as record:
        assert train(cfg)["step"] == 4
    named = [str(w.message) for w in record if victim in str(w.message)]
    assert len(named) == 1 and "\n" not in named[0]
