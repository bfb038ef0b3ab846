"""Issue 22 §§1, 6, 7: where inference commands may write (fastgan/outputs.py), how big a size flag may be
(fastgan/limits.py), and the value rules of every command's flags (fastgan/train/cli.py). Each refusal is one
line, exit code 2, and nothing written. The size cases are bounded by the estimate: FASTGAN_MEMORY_LIMIT makes
the limit the same on every machine, and the sizes asked for would fail to allocate at once, not slowly."""

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fastgan.evaluate import main as evaluate_main
from fastgan.export import main as export_main
from fastgan.generate import generate
from fastgan.generate import main as generate_main
from fastgan.train.__main__ import main as train_main
from fastgan.train.config import TrainConfig
from fastgan.train.loop import train
from fastgan.translate import main as translate_main

TINY = dict(device="cpu", data="synthetic", dry_run=True, z_dim=8, ngf=4, ndf=4, batch_size=4)
TINY_FLAGS = ["--device", "cpu", "--data", "synthetic", "--dry-run", "--z-dim", "8", "--ngf", "4", "--ndf", "4",
              "--batch-size", "4"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny dcgan run directory (checkpoint, checksum, config.json, latest, losses.jsonl) and its checkpoint."""
    root = tmp_path_factory.mktemp("hostile-outputs")
    ckpt = Path(train(TrainConfig(model="dcgan", out=str(root / "run"), **TINY))["checkpoint"])
    return ckpt.parent, ckpt


def snapshot(*roots):
    """Every file below ``roots``: its content hash and modification time."""
    found = {}
    for root in roots:
        for path in sorted(Path(root).rglob("*")):
            if path.is_file() and not path.is_symlink():
                found[str(path)] = (hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns)
            elif path.is_symlink() or path.is_dir():
                found[str(path)] = "link" if path.is_symlink() else "dir"
    return found


def refused(capsys, main, args, prog, *expected):
    """Runs a CLI in-process; asserts one line naming ``expected``, exit code 2."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in args])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"{prog}: error: ") and "Traceback" not in err, err
    for text in expected:
        assert text in err, err
    return err


# --- §1: output paths ---

@pytest.mark.parametrize("name", ["checkpoint", "checkpoint.sha256", "config.json", "latest", "losses.jsonl"])
def test_generate_never_writes_over_a_runs_files(capsys, run, name, tmp_path):
    run_dir, ckpt = run
    target = {"checkpoint": ckpt, "checkpoint.sha256": Path(f"{ckpt}.sha256")}.get(name, run_dir / name)
    assert target.exists()
    before = snapshot(run_dir)
    refused(capsys, generate_main, [ckpt, "--n", "4", "--out", target], "fastgan.generate", "training run's file")
    refused(capsys, generate_main, [ckpt, "--n", "4", "--out", target, "--overwrite"], "fastgan.generate",
            "training run's file")
    # Through a symlink elsewhere too.
    link = tmp_path / "grid.png"
    link.symlink_to(target)
    refused(capsys, generate_main, [ckpt, "--n", "4", "--out", link, "--overwrite"], "fastgan.generate")
    assert snapshot(run_dir) == before


def test_generate_refuses_its_input(capsys, run, tmp_path, monkeypatch):
    run_dir, ckpt = run
    before = snapshot(run_dir)
    # The run directory it reads, as DIR/ and through a symlink: not a folder of images.
    refused(capsys, generate_main, [run_dir, "--out", f"{run_dir}/"], "fastgan.generate", "is the input")
    (tmp_path / "alias").symlink_to(run_dir)
    refused(capsys, generate_main, [run_dir, "--out", tmp_path / "alias"], "fastgan.generate", "is the input")
    monkeypatch.chdir(run_dir)
    refused(capsys, generate_main, [".", "--out", run_dir], "fastgan.generate", "is the input")
    # The checkpoint under another name (a hard link), even with --overwrite.
    os.link(ckpt, tmp_path / "hard.png")
    refused(capsys, generate_main, [ckpt, "--out", tmp_path / "hard.png", "--overwrite"], "fastgan.generate",
            "is the input")
    assert snapshot(run_dir) == before


def test_generate_replaces_only_images_without_overwrite(capsys, run, tmp_path):
    _, ckpt = run
    notes = tmp_path / "notes.png"
    notes.write_text("my notes, not an image")
    refused(capsys, generate_main, [ckpt, "--n", "4", "--out", notes], "fastgan.generate",
            "exists and is not an image", "--overwrite")
    assert notes.read_text() == "my notes, not an image"
    refused(capsys, generate_main, [ckpt, "--n", "4", "--out", tmp_path / "grid.txt"], "fastgan.generate",
            "a grid is written as")
    assert not (tmp_path / "grid.txt").exists()
    # Files of a folder output: an existing 000001.png that is not an image is kept.
    folder = tmp_path / "each"
    folder.mkdir()
    (folder / "000001.png").write_text("kept")
    refused(capsys, generate_main, [ckpt, "--n", "3", "--out", folder], "fastgan.generate", "000001.png")
    assert sorted(p.name for p in folder.iterdir()) == ["000001.png"]
    # --overwrite replaces them; an image is replaced without it (running the command again).
    assert generate_main([str(ckpt), "--n", "4", "--out", str(notes), "--overwrite"]) == 0
    assert Image.open(notes).format == "PNG"
    assert generate_main([str(ckpt), "--n", "2", "--out", str(notes)]) == 0
    assert generate_main([str(ckpt), "--n", "3", "--out", str(folder), "--overwrite"]) == 0
    assert Image.open(folder / "000001.png").format == "PNG"


def test_generate_refuses_paths_it_cannot_write(capsys, run, tmp_path, monkeypatch):
    _, ckpt = run
    monkeypatch.chdir(tmp_path)  # where an empty --out used to write
    (tmp_path / "file").write_text("x")
    before = snapshot(tmp_path)
    prog = "fastgan.generate"
    refused(capsys, generate_main, [ckpt, "--out", ""], prog, "--out ''")
    refused(capsys, generate_main, [ckpt, "--out", "/dev/null"], prog, "/dev/null", "inside /dev")
    refused(capsys, generate_main, [ckpt, "--out", "/dev/null.png"], prog, "/dev/null.png", "inside /dev")
    refused(capsys, generate_main, [ckpt, "--out", "/proc/x.png"], prog, "/proc/x.png")
    refused(capsys, generate_main, [ckpt, "--out", "/proc/x"], prog, "/proc/x")
    refused(capsys, generate_main, [ckpt, "--out", tmp_path / "file" / "x.png"], prog, "is a file, not a directory")
    refused(capsys, generate_main, [ckpt, "--out", tmp_path / "file"], prog, "not a directory")
    assert snapshot(tmp_path) == before


def test_export_evaluate_and_classifier_outputs(capsys, run, tmp_path, monkeypatch):
    run_dir, ckpt = run
    monkeypatch.chdir(tmp_path)
    model = tmp_path / "model.onnx"
    model.write_text("not a model")
    metrics = tmp_path / "metrics.json"
    metrics.write_text('{"mine": 1}')
    os.link(ckpt, tmp_path / "hard.onnx")  # the checkpoint under another name
    before = snapshot(tmp_path, run_dir)
    refused(capsys, export_main, [ckpt, "--out", model], "fastgan.export", "is not an ONNX model", "--overwrite")
    refused(capsys, export_main, [ckpt, "--out", ""], "fastgan.export", "--out ''")
    refused(capsys, export_main, [ckpt, "--out", tmp_path / "hard.onnx", "--overwrite"], "fastgan.export",
            "is the input")
    # evaluate refuses before it loads anything (its feature weights are not even needed to get here).
    refused(capsys, evaluate_main, [ckpt, "--out", metrics], "fastgan.evaluate", "is not a metrics file")
    refused(capsys, evaluate_main, [ckpt, "--out", run_dir / "config.json"], "fastgan.evaluate", "training run's file")
    refused(capsys, evaluate_main, [ckpt, "--out", ""], "fastgan.evaluate", "--out ''")
    refused(capsys, evaluate_main, [ckpt, "--out", tmp_path / "hard.onnx"], "fastgan.evaluate", "is the input")
    classifier = ["train-classifier", "--data", "synthetic", "--epochs", "1", "--device", "cpu"]
    refused(capsys, evaluate_main, [*classifier, "--out", ckpt], "fastgan.evaluate", "training run's file")
    refused(capsys, evaluate_main, [*classifier, "--out", metrics], "fastgan.evaluate", "is not a classifier file")
    refused(capsys, evaluate_main, [*classifier, "--out", ""], "fastgan.evaluate", "--out ''")
    assert snapshot(tmp_path, run_dir) == before


# --- §7: flag values, one rule for every command ---

COMMANDS = {  # command -> (main, its one-line prefix, arguments that reach the flag check)
    "train": (train_main, "fastgan.train", ["dcgan", *TINY_FLAGS]),
    "generate": (generate_main, "fastgan.generate", ["CKPT"]),
    "translate": (translate_main, "fastgan.translate", ["CKPT", "IN"]),
    "evaluate": (evaluate_main, "fastgan.evaluate", ["CKPT"]),
    "train-classifier": (evaluate_main, "fastgan.evaluate train-classifier",
                         ["train-classifier", "--data", "synthetic", "--epochs", "1", "--device", "cpu"]),
}


@pytest.mark.parametrize("command", list(COMMANDS))
@pytest.mark.parametrize("value", ["-1", "99999999999999999999", "4294967296"])
def test_seed_range_is_the_same_everywhere(capsys, run, tmp_path, command, value):
    main, prog, args = COMMANDS[command]
    args = [str(run[1]) if a == "CKPT" else str(tmp_path) if a == "IN" else a for a in args]
    out = tmp_path / ("out.pt" if command == "train-classifier" else "out")
    refused(capsys, main, [*args, "--out", out, "--seed", value], prog, "--seed", "0 to 4294967295")
    assert not out.exists()


@pytest.mark.parametrize("command, flag", [
    ("train", "--lr"), ("train", "--beta1"), ("train-classifier", "--lr"),
])
@pytest.mark.parametrize("value", ["inf", "-inf", "nan", "1e999"])
def test_float_flags_are_finite(capsys, tmp_path, command, flag, value):
    main, prog, args = COMMANDS[command]
    out = tmp_path / "out"
    refused(capsys, main, [*args, "--out", out, f"{flag}={value}"], prog, flag, "finite")
    assert not out.exists()


def test_cyclegan_loss_weights_are_finite(capsys, tmp_path):
    args = ["cyclegan", "--device", "cpu", "--data", "synthetic", "--dry-run", "--image-size", "32",
            "--n-blocks", "1", "--ngf", "4", "--ndf", "4", "--out", tmp_path / "out"]
    refused(capsys, train_main, [*args, "--lambda-cycle", "inf"], "fastgan.train", "--lambda-cycle", "finite")
    refused(capsys, train_main, [*args, "--lambda-identity", "nan"], "fastgan.train", "--lambda-identity")
    assert not (tmp_path / "out").exists()


def test_library_config_is_checked_like_flags(tmp_path):
    from fastgan.errors import UserError

    with pytest.raises(UserError, match=r"--lr inf: must be a finite number"):
        train(TrainConfig(model="dcgan", out=str(tmp_path / "a"), lr=float("inf"), **TINY))
    with pytest.raises(UserError, match=r"--seed -1: use 0 to 4294967295"):
        train(TrainConfig(model="dcgan", out=str(tmp_path / "b"), seed=-1, **TINY))
    assert not list(tmp_path.iterdir())


# --- §6: sizes bounded by an estimate, before anything is allocated ---

@pytest.mark.parametrize("args, flag", [
    (["dcgan", "--z-dim", "100000000"], "--z-dim 100000000"),
    (["gan", "--hidden", "100000000"], "--hidden 100000000"),
    (["cyclegan", "--image-size", "1000000", "--load-size", "1000000", "--n-blocks", "1"], "--image-size 1000000"),
    (["cyclegan", "--ngf", "1000000", "--n-blocks", "1"], "--ngf 1000000"),
    (["dcgan", "--batch-size", "100000000000"], "--batch-size 100000000000"),
    (["dcgan", "--z-dim", "100000000000000000000000"], "more than 8 EiB"),  # past int64: no tensor describes it
])
def test_training_sizes_beyond_the_machine(capsys, tmp_path, args, flag):
    out = tmp_path / "run"
    err = refused(capsys, train_main, [*args, "--device", "cpu", "--data", "synthetic", "--dry-run", "--out", out],
                  "fastgan.train", flag, "training step needs", "more than the")
    assert "available" in err or "cgroup" in err or "FASTGAN_MEMORY_LIMIT" in err
    assert not out.exists()


def test_training_limit_follows_the_memory_available(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("FASTGAN_MEMORY_LIMIT", "100K")  # the tiny step's estimate is about 650 KiB
    out = tmp_path / "run"
    refused(capsys, train_main, ["dcgan", *TINY_FLAGS, "--out", out], "fastgan.train",
            "--batch-size 4: a dcgan training step needs about", "more than the 100.0 KiB of FASTGAN_MEMORY_LIMIT")
    assert not out.exists()
    monkeypatch.setenv("FASTGAN_MEMORY_LIMIT", "1G")
    assert train_main(["dcgan", *TINY_FLAGS, "--out", str(out)]) == 0


def test_training_estimate_is_near_what_a_step_takes():
    """cyclegan at its recipe (256x256, batch 1, ngf 64, 9 blocks): a dry run on the CPU peaked at 3.8 GB resident
    (/usr/bin/time -v, torch's libraries included); the estimate may exceed it, not by an order of magnitude."""
    from fastgan.limits import train_step_bytes
    from fastgan.models import get_model
    from fastgan.train.loop import resolve_config

    cfg = resolve_config(TrainConfig(model="cyclegan", device="cpu", data="synthetic"))
    assert 3.8e9 <= train_step_bytes(cfg, get_model("cyclegan")) <= 12e9


def test_inference_peak_and_smallest_side_on_meta(monkeypatch):
    """What translate's --size checks use: a generator's inference peak per pixel (each activation freed once
    read, unlike a step's sum) and the smallest side it takes, both from shapes alone."""
    import torch

    from fastgan.errors import UserError
    from fastgan.limits import (
        bytes_per_pixel,
        check_image_size,
        forward_bytes,
        inference_bytes,
        runs_on_meta,
        smallest_side,
    )
    from fastgan.models.cyclegan import ResnetGenerator

    G = ResnetGenerator(3, 3, 4, 1, "deconv")
    small, large = inference_bytes(G, (1, 3, 64, 64)), inference_bytes(G, (1, 3, 128, 128))
    # Per pixel at any size, within the reflection-padded activations' borders (relatively smaller on a larger
    # side, so the figure from a small side bounds a larger one).
    assert 0.95 * 4 * small < large <= 4 * small
    assert all(p.device.type == "cpu" for p in G.parameters())  # the network itself was not touched
    assert bytes_per_pixel(G, 3, 4) == pytest.approx(small / 64**2, rel=0.01)
    monkeypatch.setenv("FASTGAN_MEMORY_LIMIT", "1G")
    with pytest.raises(UserError, match=r"^--size 100000: needs about .* GiB \(to translate one 100000x100000 "
                                        r"image\), more than the 1.0 GiB of FASTGAN_MEMORY_LIMIT"):
        check_image_size("--size 100000", 100000, 100000, bytes_per_pixel(G, 3, 4))
    check_image_size("--size 256", 256, 256, bytes_per_pixel(G, 3, 4))
    # 4 px: the bottleneck's InstanceNorm gets one spatial element; 8 px is the smallest side it takes.
    assert smallest_side(runs_on_meta(G, 3), 4) == 8
    from fastgan.nn import set_impl

    set_impl(G, "ref")  # no fast path on meta tensors (and no fallback warning)
    with torch.device("meta"):
        x = torch.empty(1, 3, 64, 64)
        with torch.no_grad():
            total = forward_bytes(lambda: G.to("meta")(x))
    assert 0 < small < total / 4


def test_generate_grid_beyond_memory_and_files_beyond_disk(capsys, run, tmp_path, monkeypatch):
    _, ckpt = run
    before = snapshot(tmp_path)
    # 10^12 images: the noise alone would be 32 TB, refused by the estimate before any is drawn.
    refused(capsys, generate_main, [ckpt, "--n", 10**12, "--out", tmp_path / "grid.png"], "fastgan.generate",
            "--n 1000000000000", "grid of 1000000000000 28x28 images", "more than the")
    refused(capsys, generate_main, [ckpt, "--n", 10**12, "--out", tmp_path / "each"], "fastgan.generate",
            "--n 1000000000000", "on disk", "free in")
    refused(capsys, generate_main, [ckpt, "--n", 2, "--columns", 10**12, "--out", tmp_path / "wide.png"],
            "fastgan.generate", "--columns 1000000000000")
    monkeypatch.setenv("FASTGAN_MEMORY_LIMIT", "16M")
    refused(capsys, generate_main, [ckpt, "--n", 20000, "--out", tmp_path / "grid.png"], "fastgan.generate",
            "--n 20000", "more than the 16.0 MiB of FASTGAN_MEMORY_LIMIT", "--out DIR")
    assert snapshot(tmp_path) == before


def test_export_size_bounds(capsys, tmp_path, monkeypatch):
    """export --size: not below the generator's smallest side (found on the meta device), not beyond memory."""
    ckpt = train(TrainConfig(model="cyclegan", out=str(tmp_path / "run"), image_size=32, n_blocks=1,
                             **(TINY | dict(batch_size=1))))["checkpoint"]
    monkeypatch.setenv("FASTGAN_MEMORY_LIMIT", "1G")
    out = tmp_path / "g.onnx"
    refused(capsys, export_main, [ckpt, "--size", 4, "--out", out], "fastgan.export",
            "--size 4: the cyclegan generator takes sides of at least 8")
    refused(capsys, export_main, [ckpt, "--size", 100000, "--out", out], "fastgan.export",
            "--size 100000: needs about", "to export one 100000x100000 image", "1.0 GiB of FASTGAN_MEMORY_LIMIT")
    refused(capsys, export_main, [ckpt, "--size", 10**12, "--out", out], "fastgan.export", "more than 8 EiB")
    assert not list(tmp_path.glob("g*"))


def test_evaluation_sizes_beyond_memory():
    """evaluate --n and the trainer's --eval-n: every generated image's features are held at once."""
    from fastgan.errors import UserError
    from fastgan.metrics.evaluation import check_sizes
    from fastgan.metrics.spaces import FeatureSpace

    space = FeatureSpace(kind="classifier", extractor="x", weights="w", dim=128, suffix="-X")
    with pytest.raises(UserError, match=r"^--n 1000000000000: needs about .*iB \(the 128-d features of "
                                        r"1000000000000 generated images\), more than the"):
        check_sizes(space, ("fid", "kid"), 10**12, None)
    with pytest.raises(UserError, match=r"^--eval-n 1000000000000: needs"):
        check_sizes(space, ("fid",), 10**12, None, flag="--eval-n")
    check_sizes(space, ("fid", "kid", "is"), 10000, None)


def test_generate_streams_to_disk_in_blocks(run, tmp_path, monkeypatch):
    import fastgan.generate as generate_module

    _, ckpt = run
    calls, save_image = [], generate_module.save_image
    monkeypatch.setattr(generate_module, "CHUNK_IMAGES", 7)
    monkeypatch.setattr(generate_module, "save_image", lambda image, path: calls.append(Path(path).name)
                        or save_image(image, path))
    monkeypatch.setenv("FASTGAN_MEMORY_LIMIT", "1M")  # a folder holds one block at a time: no grid to fit
    assert generate_main([str(ckpt), "--n", "30", "--out", str(tmp_path / "each"), "--seed", "5"]) == 0
    assert calls == [f"{i:06d}.png" for i in range(30)]
    whole = generate(ckpt, n=30, seed=5)  # one stream of noise: the blocks give the same images
    pixels = np.stack([np.asarray(Image.open(tmp_path / "each" / name)) for name in calls])
    expected = np.clip((whole[:, 0] + 1) / 2 * 255, 0, 255).round().astype(np.uint8)
    assert np.array_equal(pixels[..., 0], expected)


# --- both guards without torch (generate/translate --backend onnxruntime) ---

def test_guards_import_without_torch():
    import fastgan

    # The fastgan under test, not whichever an editable install's finder would map its submodules to.
    code = f"""
import sys
sys.path.insert(0, {str(Path(fastgan.__file__).parent.parent)!r})
sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in repr(f).lower()]
class NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "triton"):
            raise ImportError(name)
sys.meta_path.insert(0, NoTorch())
import fastgan.outputs, fastgan.limits, fastgan.train.cli
fastgan.limits.available_memory("cpu")
sys.exit(3 if "torch" in sys.modules else 0)
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
