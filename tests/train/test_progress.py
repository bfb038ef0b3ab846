"""fastgan.train.progress: the start-up summary, progress on a terminal (tqdm) and in a log (a line per report),
warnings as one line each, durations."""

import fcntl
import io
import os
import re
import select
import struct
import termios
import warnings

import pytest
import torch

from fastgan.train.config import TrainConfig
from fastgan.train.progress import (
    Progress,
    collected_warnings,
    describe_data,
    format_duration,
    one_line_warnings,
    report_data_warnings,
    summary_lines,
)


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


class Terminal(io.StringIO):
    def isatty(self):
        return True


LOSSES = {"D/total": 0.51234, "D/real": 0.2, "G/total": 1.5, "G/cycle_A": 0.25}


@pytest.mark.parametrize("seconds, text", [(0.4, "0s"), (12.3, "12s"), (754, "12m34s"), (7384, "2h03m04s"),
                                           (200000, "2d07h33m")])
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


def test_lines_when_not_a_terminal_report_from_the_first_iteration_with_an_eta():
    clock, out = FakeClock(), io.StringIO()
    progress = Progress(total=100, initial=0, stream=out, clock=clock)
    assert not progress.tty
    clock.now += 30  # the first iteration pays for warm-up
    progress.update()
    progress.report(1, 2e-4, LOSSES)
    first = out.getvalue().splitlines()
    assert len(first) == 1
    assert first[0].startswith("step   1/100 (1%) | 0.0333 it/s | elapsed 30s | ETA 49m30s | lr 0.0002 | ")
    assert "D/total=0.512 G/total=1.5 G/cycle_A=0.25" in first[0] and "D/real" not in first[0]
    for _ in range(49):  # later iterations at 2 it/s: the rate leaves the warm-up out
        clock.now += 0.5
        progress.update()
    progress.report(50, 1e-4, LOSSES)
    line = out.getvalue().splitlines()[1]
    assert line.startswith("step  50/100 (50%) | 2 it/s | elapsed 54s | ETA 25s | lr 0.0001")
    progress.close()


def test_a_resumed_run_counts_from_its_step():
    clock, out = FakeClock(), io.StringIO()
    progress = Progress(total=10, initial=8, stream=out, clock=clock)
    clock.now += 2
    progress.update()
    progress.report(9, 1e-3, {})
    assert out.getvalue().startswith("step  9/10 (90%) | 0.5 it/s | elapsed 2s | ETA 2s | lr 0.001\n")


def test_bar_on_a_terminal_with_rate_eta_lr_and_losses():
    out = Terminal()
    progress = Progress(total=20, initial=0, stream=out)
    assert progress.tty
    progress.update()
    progress.report(1, 2e-4, LOSSES)
    progress.update()
    progress.close()
    text = out.getvalue()
    assert "\r" in text  # redrawn in place
    last = text.rstrip("\n").split("\r")[-1]
    assert re.search(r"2/20 \[\d\d:\d\d<\d\d:\d\d, +[\d.]+(it/s|s/it), lr=0\.0002, D/total=0\.512, G/total=1\.5, "
                     r"G/cycle_A=0\.25\]", last), last


@pytest.mark.skipif(not hasattr(os, "openpty"), reason="needs a pseudo-terminal")
@pytest.mark.parametrize("columns", [0, 80])
def test_a_terminal_of_zero_columns_gets_lines_not_an_empty_bar(columns):
    """`script -qc ... log` gives a pseudo-terminal 0 columns wide, where tqdm's bar prints nothing."""
    main, side = os.openpty()
    fcntl.ioctl(side, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    with os.fdopen(side, "w") as terminal:
        progress = Progress(total=4, stream=terminal, clock=FakeClock())
        assert progress.tty and (progress.bar is None) == (columns == 0)
        progress.update()
        progress.report(1, 2e-4, LOSSES)
        progress.close()
        text = b""
        while select.select([main], [], [], 0.5)[0]:
            text += os.read(main, 4096)
            if b"\n" in text and columns == 0 or b"lr=" in text and columns:
                break
    os.close(main)
    if columns == 0:
        assert text.decode().startswith("step 1/4 (25%) | ") and "D/total=0.512" in text.decode()
    else:
        assert b"lr=0.0002" in text and b"step" not in text


def test_other_ranks_print_nothing():
    out = Terminal()
    progress = Progress(total=5, stream=out, enabled=False)
    progress.update()
    progress.report(1, 0.1, LOSSES)
    progress.close()
    assert out.getvalue() == ""


def test_data_summary_names_each_folder_and_what_was_skipped():
    info = {"name": "/data/horse2zebra", "kind": "unpaired", "num_images": 1334,
            "counts": {"trainA": 1067, "trainB": 1334}, "skipped": {"unreadable": 2, "not an image (.txt)": 1}}
    assert describe_data(info) == ("/data/horse2zebra: 1,067 images in trainA, 1,334 in trainB, 3 skipped "
                                   "(2 unreadable, 1 not an image (.txt))")
    assert describe_data({"name": "fashion-mnist", "kind": "idx", "num_images": 60000, "num_classes": 10}) == \
        "fashion-mnist: 60,000 images, 10 classes"
    assert describe_data({"name": "x", "kind": "unpaired", "num_images": 6, "skipped": 0}) == "x: 6 images per domain"


def test_summary_lines():
    cfg = TrainConfig(model="cyclegan", device="cpu", out="runs/h2z", image_size=64, batch_size=1, lr=2e-4,
                      epochs=100, epochs_decay=100, iters=500, amp=True, amp_dtype="bf16")
    nets = {"G_A": torch.nn.Linear(3, 4), "G_B": torch.nn.Linear(3, 4), "D_A": torch.nn.Linear(2, 1)}
    info = {"name": "/data/h2z", "kind": "unpaired", "num_images": 7, "counts": {"trainA": 5, "trainB": 7}}
    lines = summary_lines(cfg, info, nets, batches_per_epoch=7, total=500, step=10, resumed_from="runs/h2z/c.pt")
    assert lines == [
        "fastgan.train: model   cyclegan (G_A, G_B 16 parameters each; D_A 3 parameters)",
        "fastgan.train: data    /data/h2z: 5 images in trainA, 7 in trainB",
        "fastgan.train: train   64x64, batch 1, lr 0.0002, 200 epoch(s) (100 + 100 with the learning rate "
        "decaying to 0) of 7 iterations, stopping at iteration 500 (--iters)",
        "fastgan.train: engine  cpu, eager, autocast bf16, ops auto",
        "fastgan.train: out     runs/h2z (full config in runs/h2z/config.json)",
        "fastgan.train: resumed from step 10 (checkpoint runs/h2z/c.pt); training to iteration 500",
    ]


def test_warnings_are_one_line_each():
    # Python shows a warning through warnings.formatwarning (documented), which one_line_warnings replaces; pytest
    # records the warnings of its tests instead of showing them, so the format is checked here directly.
    saved = warnings.formatwarning
    with one_line_warnings():
        line = warnings.formatwarning("fastgan: instance_norm_act falls back to the reference path: no GPU",
                                      UserWarning, "/x/_dispatch.py", 98, "warnings.warn(...)")
        with pytest.warns(UserWarning, match="still recorded"):
            warnings.warn("still recorded", stacklevel=1)
    assert line == "fastgan.train: warning: fastgan: instance_norm_act falls back to the reference path: no GPU\n"
    assert warnings.formatwarning is saved  # restored on leaving


def test_data_warnings_are_listed_once_then_summed_up_on_resume(capsys):
    with collected_warnings() as found:
        for name in ("a b.jpg", "c.jpg"):
            warnings.warn(f"skipping /d/{name}: not a readable image (cannot identify image file)", stacklevel=1)
    assert len(found) == 2
    report_data_warnings(found, resumed=False)
    assert capsys.readouterr().err.splitlines() == [
        "fastgan.train: warning: skipping /d/a b.jpg: not a readable image (cannot identify image file)",
        "fastgan.train: warning: skipping /d/c.jpg: not a readable image (cannot identify image file)"]
    report_data_warnings(found, resumed=True)
    assert capsys.readouterr().err.splitlines() == [
        "fastgan.train: warning: 2 file(s) skipped while reading the data, as when this run started (listed then; "
        "--strict stops at them)"]


# --- in the trainer -----------------------------------------------------------------------------------------

def test_the_trainer_reports_after_its_first_iteration_with_an_eta(tiny, tmp_path, idx_dir, capsys):
    from fastgan.train.loop import train

    summary = train(tiny("dcgan", tmp_path, data=str(idx_dir), iters=3, log_every=50))
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert lines[0].startswith("fastgan.train: model   dcgan (G ") and "parameters" in lines[0]
    assert lines[1] == f"fastgan.train: data    {idx_dir}: 40 images, 10 classes"
    assert lines[2].startswith("fastgan.train: train   28x28, batch 8, lr 0.0002, 25 epoch(s) of 5 iterations, "
                               "stopping at iteration 3 (--iters)")
    assert lines[3] == "fastgan.train: engine  cpu, eager, fp32, ops auto"
    assert "{" not in out  # the config is in config.json, not on stdout
    # The first report after step 1 although --log-every is 50; then the end of the run.
    assert re.fullmatch(r"step 1/3 \(33%\) \| [\d.e+]+ it/s \| elapsed \d+s \| ETA \d+s \| lr 0\.0002 \| "
                        r"D/total=[\d.]+ G/total=[\d.]+", lines[5]), lines[5]
    assert lines[6].startswith("step 3/3 (100%)") and len(lines) == 7
    assert summary["seconds"] > 0 and err == ""


def test_the_trainer_draws_a_bar_on_a_terminal(tiny, tmp_path, idx_dir, monkeypatch):
    from fastgan.train.loop import train

    terminal = Terminal()
    monkeypatch.setattr("sys.stdout", terminal)
    train(tiny("dcgan", tmp_path, data=str(idx_dir), iters=4, log_every=2))
    text = terminal.getvalue()
    assert "fastgan.train: model   dcgan" in text and "\r" in text
    assert re.search(r"4/4 \[\d\d:\d\d<00:00, +[\d.]+(it/s|s/it), lr=0\.0002, D/total=[\d.]+, G/total=[\d.]+\]",
                     text), text
    assert "step 1/4" not in text  # no log lines on a terminal


def test_skipped_images_warn_once_per_file_then_once_on_resume(tiny, tmp_path, unpaired_dir, capsys):
    import shutil

    from fastgan.train.loop import train

    data = tmp_path / "data"
    shutil.copytree(unpaired_dir, data)
    (data / "trainA" / "broken one.png").write_bytes(b"not a png")
    (data / "trainB" / "empty.jpg").write_bytes(b"")
    train(tiny("cyclegan", tmp_path / "run", data=str(data), iters=1))
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and all(line.startswith("fastgan.train: warning: skipping ") for line in err), err
    assert "broken one.png" in err[0] and "empty.jpg" in err[1]
    train(tiny("cyclegan", tmp_path / "run", data=str(data), iters=2, resume="auto"))
    out, err = capsys.readouterr()
    assert err.splitlines() == ["fastgan.train: warning: 2 file(s) skipped while reading the data, as when this run "
                                "started (listed then; --strict stops at them)"]
    assert "fastgan.train: resumed from step 1 (checkpoint " in out and "training to iteration 2" in out


def test_a_run_of_one_iteration_reports_it_once(tiny, tmp_path, idx_dir, capsys):
    from fastgan.train.loop import train

    train(tiny("dcgan", tmp_path, data=str(idx_dir), dry_run=True, log_every=50))
    reports = [line for line in capsys.readouterr().out.splitlines() if line.startswith("step ")]
    assert len(reports) == 1 and reports[0].startswith("step 1/1 (100%)")
