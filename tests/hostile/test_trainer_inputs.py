"""Bad input to the trainer is one line naming it, exit 2, nothing written (issue 22 §7, §8): --out that cannot
be a run directory, a cgan run resumed on other classes, hand-edited checkpoints (in resume and in generate),
a checkpoint without its checksum."""

import numpy as np
import pytest
import torch
from hostile_helpers import TINY, cli, error_line, snapshot, train, write_checksum
from PIL import Image

from fastgan.generate import main as generate_main
from fastgan.train import loop


@pytest.mark.parametrize("case", ["a file", "under a file", "/proc", "/dev/null", "empty"])
def test_out_that_cannot_be_a_run_directory(tmp_path, case):
    (tmp_path / "file").write_text("mine")
    out, expected = {
        "a file": (tmp_path / "file", "is a file, not a directory"),
        "under a file": (tmp_path / "file" / "run", f"is under {tmp_path / 'file'}, which is a file"),
        "/proc": ("/proc/x", "inside /proc, which holds no user files"),
        "/dev/null": ("/dev/null", "inside /dev, which holds no user files"),
        "empty": ("", "--out '': give a directory"),
    }[case]
    line = error_line(train(*TINY, "--iters", 1, "--out", out))
    assert expected in line and (f"--out {out}" in line or not out)
    assert (tmp_path / "file").read_text() == "mine" and sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def class_folders(root, names):
    rng = np.random.default_rng(0)
    for name in names:
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(8):
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / name / f"{i}.png")
    return root


def test_cgan_resumed_on_other_classes(tmp_path):
    data, out = class_folders(tmp_path / "data", ["cat", "dog"]), tmp_path / "run"
    flags = ["--data", data, "--ngf", 4, "--ndf", 4, "--z-dim", 8, "--batch-size", 8, "--device", "cpu",
             "--sample-every", 0, "--image-size", 32, "--loader", "torch", "--workers", 0]
    assert train(*flags, "--iters", 1, "--out", out, model="cgan").returncode == 0
    before = snapshot(out)
    (data / "dog").rename(data / "wolf")  # renamed: the same count, other names
    line = error_line(train("--resume", "auto", "--out", out, "--iters", 2, "--loader", "torch", "--workers", 0,
                            model="cgan"))
    assert line.endswith(f"--data {data}: its classes are [cat, wolf], the checkpoint {out}/checkpoint-00000001.pt "
                         "was trained on [cat, dog]; resume with the same class folders, or start a new run")
    class_folders(data, ["emu"])  # added
    line = error_line(train("--resume", "auto", "--out", out, "--iters", 2, "--workers", 0, model="cgan"))
    assert "its classes are [cat, emu, wolf]" in line and "trained on [cat, dog]" in line
    assert snapshot(out) == before


def edit(ckpt, how):
    if how == "missing top-level key":
        del ckpt["optimizers"]
    elif how == "missing net tensor":
        del ckpt["nets"]["G"][next(iter(ckpt["nets"]["G"]))]
    elif how == "changed shape":
        key = next(k for k, v in ckpt["nets"]["G"].items() if v.dim() == 4)
        ckpt["nets"]["G"][key] = ckpt["nets"]["G"][key][:, :1].clone()
    elif how == "wrong model name":
        ckpt["model"] = "gan"


@pytest.mark.parametrize("how, resume_says, generate_says", [
    ("missing top-level key", "has no 'optimizers' (edited or not written by fastgan.train)", None),
    ("missing net tensor", "its net 'G' does not fit this model (Generator: Missing key(s)",
     "its network 'G' does not fit this model (Generator: Missing key(s)"),
    ("changed shape", "its net 'G' does not fit this model (Generator: size mismatch",
     "its network 'G' does not fit this model (Generator: size mismatch"),
    ("wrong model name", "says model 'gan' but was trained as 'dcgan' (edited)",
     "says model 'gan' but was trained as 'dcgan' (edited)"),
])
def test_hand_edited_checkpoint(copy_of, how, resume_says, generate_says):
    run_dir = copy_of()
    path = run_dir / "checkpoint-00000004.pt"
    ckpt = torch.load(path, weights_only=True)
    edit(ckpt, how)
    torch.save(ckpt, path)
    write_checksum(path)  # edited with care: the checksum matches, only the content is wrong
    (run_dir / "checkpoint-00000002.pt").unlink()  # nothing to fall back to
    before = snapshot(run_dir)
    line = error_line(train(*TINY, "--resume", path, "--iters", 6))
    assert f"checkpoint {path}" in line and resume_says in line, line
    assert snapshot(run_dir) == before
    generated = cli(generate_main, path, "--n", 2, "--out", run_dir.parent / "grid.png")
    if generate_says is None:  # inference needs no optimiser state
        assert generated.returncode == 0, generated.stderr
    else:
        line = error_line(generated, tool="fastgan.generate")
        assert f"checkpoint {path}" in line and generate_says in line, line


def test_a_checkpoint_without_its_checksum(copy_of, monkeypatch):
    run_dir = copy_of()
    good = run_dir / "checkpoint-00000004.pt"
    (run_dir / "checkpoint-00000004.pt.sha256").unlink()
    # A later checkpoint holding NaN, without a checksum either: never the resume point nor the "last good".
    nan = torch.load(good, weights_only=True)
    nan["step"] = 6
    next(iter(nan["nets"]["G"].values())).fill_(float("nan"))
    torch.save(nan, run_dir / "checkpoint-00000006.pt")
    make = loop.make_train_step

    def diverging(task, batch, cuda_graphs):  # the resumed run's weights turn NaN in its first iteration
        step = make(task, batch, cuda_graphs)

        def poisoned(batch, accum):
            step(batch, accum)
            with torch.no_grad():
                next(task.nets["G"].parameters()).fill_(float("nan"))

        return poisoned

    monkeypatch.setattr(loop, "make_train_step", diverging)
    proc = train(*TINY, "--resume", "auto", "--out", run_dir, "--iters", 6)
    assert proc.returncode == 3, proc.stderr
    warnings = [line for line in proc.stderr.splitlines() if "warning" in line]
    assert warnings == [
        f"fastgan.train: warning: checkpoint {good}: no checkpoint-00000004.pt.sha256 beside it, so its bytes cannot "
        "be verified; its values were checked for NaN/Inf instead",
        f"fastgan.train: warning: checkpoint {run_dir}/checkpoint-00000006.pt: holds a non-finite value in nets.G."
        f"{next(iter(nan['nets']['G']))} (and no checkpoint-00000006.pt.sha256); not a usable checkpoint; resuming "
        f"from {good} instead (the damaged file is kept as checkpoint-00000006.pt.damaged)",
    ], proc.stderr
    assert f"the last good checkpoint is {good} " in proc.stderr.splitlines()[-1], proc.stderr
    line = error_line(cli(generate_main, run_dir / "checkpoint-00000006.pt.damaged", "--n", 2, "--out",
                          run_dir.parent / "grid.png"), tool="fastgan.generate")
    assert "holds a non-finite value" in line
