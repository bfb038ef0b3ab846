"""`python -m fastgan.train` end to end (--dry-run per model) and every bad input: exit code 2, one line,
no traceback, nothing overwritten."""

import gzip
import json
import os
import struct
import subprocess
import sys

import pytest
import torch

from fastgan.models import get_model
from fastgan.train.__main__ import main
from fastgan.train.checkpoint import FORMAT_VERSION

TINY_OPTIONS = {"z_dim": "8", "hidden": "16", "ngf": "4", "ndf": "4"}


def tiny(model: str) -> list[str]:
    """Flags for a model small enough for a CPU step in milliseconds (only the options it has)."""
    own = [f"--{k.replace('_', '-')}={v}" for k, v in TINY_OPTIONS.items() if k in get_model(model).options]
    return ["--device", "cpu", "--batch-size", "4", *own]


TINY = tiny("dcgan")
ENV = os.environ | {"OMP_NUM_THREADS": "1"}


def command(*args):
    return [sys.executable, "-m", "fastgan.train", *args]


def check_run(out, model, stdout):
    assert (out / "checkpoint-00000001.pt").is_file() and (out / "latest").is_file()
    assert (out / "samples" / "step-00000001.png").is_file()
    assert (out / "config.json").is_file() and (out / "losses.jsonl").read_text().count("\n") == 1
    assert f"fastgan.train: model   {model} (" in stdout and "done: step 1 (epoch 0) in " in stdout
    assert '"model"' not in stdout  # the whole config goes to config.json only


def test_dry_run_cyclegan_as_a_process(tmp_path):
    out = tmp_path / "cyclegan"
    proc = subprocess.run(command("cyclegan", "--data", "synthetic", "--dry-run", "--out", str(out), *tiny("cyclegan"),
                                  "--image-size", "32", "--n-blocks", "1", "--batch-size", "1"),
                          capture_output=True, text=True, env=ENV, timeout=300)
    assert proc.returncode == 0, proc.stderr
    check_run(out, "cyclegan", proc.stdout)


@pytest.mark.parametrize("model", ["gan", "dcgan", "cgan"])
def test_dry_run(capsys, tmp_path, model):
    # The same entry point as `python -m fastgan.train`, in-process to spare three interpreter start-ups.
    assert main([model, "--data", "synthetic", "--dry-run", "--out", str(tmp_path), *tiny(model)]) == 0
    check_run(tmp_path, model, capsys.readouterr().out)
    saved = json.loads((tmp_path / "config.json").read_text())
    # Resolved values only: no placeholders, and no other model's options.
    assert all(value not in (None, "", 0) for key, value in saved.items() if key not in ZERO_OK), saved
    assert saved["data"] == "synthetic" and saved["image_size"] == 28 and saved["gan_loss"] == "vanilla"
    assert "lambda_cycle" not in saved and "pool_size" not in saved


ZERO_OK = {"iters", "seed", "epochs_decay", "resume", "strict", "amp", "channels_last", "cuda_graphs", "compile",
           "deterministic", "tensorboard", "dry_run", "workers", "eval_every", "sync_bn",
           "inception_weights", "init_from", "init_nets"}  # inception weights: looked for only to evaluate


def help_text(capsys, model: str) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main([model, "--help"])
    assert exit_info.value.code == 0
    return " ".join(capsys.readouterr().out.split("options:")[1].split())  # the option list, not the usage


def test_help_shows_each_models_recipe(capsys):
    cyclegan = help_text(capsys, "cyclegan")
    assert "--batch-size BATCH_SIZE images per step (per domain) (default: 1)" in cyclegan
    assert "(default: 100)" in cyclegan.split("--epochs EPOCHS")[1].split("--")[0]
    assert "(default: 100)" in cyclegan.split("--epochs-decay EPOCHS_DECAY")[1].split("--")[0]
    assert "--lambda-cycle" in cyclegan and "--pool-size" in cyclegan and "--z-dim" not in cyclegan
    gan = help_text(capsys, "gan")
    for option in ("--lambda-cycle", "--lambda-identity", "--pool-size", "--n-blocks", "--load-size", "--domains",
                   "--upsample", "--ngf"):
        assert option not in gan
    assert "--hidden" in gan and "(default: 64)" in gan.split("--batch-size BATCH_SIZE")[1].split("--")[0]
    dcgan = help_text(capsys, "dcgan")
    assert "64 at 28x28, 128 at 64x64" in dcgan and "--hidden" not in dcgan


def test_recipe_applies_to_the_library_config():
    from fastgan.train.config import TrainConfig
    from fastgan.train.loop import resolve_config

    cyclegan = resolve_config(TrainConfig(model="cyclegan", device="cpu"))
    assert (cyclegan.batch_size, cyclegan.epochs, cyclegan.epochs_decay, cyclegan.image_size, cyclegan.load_size,
            cyclegan.n_blocks, cyclegan.gan_loss, cyclegan.pool_size) == (1, 100, 100, 256, 286, 9, "lsgan", 50)
    dcgan = resolve_config(TrainConfig(model="dcgan", device="cpu", data="synthetic"))
    assert (dcgan.batch_size, dcgan.image_size, dcgan.lr, dcgan.beta1) == (64, 28, 2e-4, 0.5)


def test_cyclegan_dry_run_at_64_is_quick(tmp_path):
    # The published recipe (batch 1) keeps a CPU smoke run of the real 6-block generator short.
    proc = subprocess.run(command("cyclegan", "--dry-run", "--device", "cpu", "--image-size", "64", "--data",
                                  "synthetic", "--out", str(tmp_path / "run")),
                          capture_output=True, text=True, env=ENV, timeout=120)
    assert proc.returncode == 0, proc.stderr
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["batch_size"] == 1 and config["n_blocks"] == 6 and "batch 1," in proc.stdout


def run_main(capsys, *args):
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fastgan.train: error: "), err
    assert "Traceback" not in err
    return lines[0]


def write_idx(root, n=10, magic=2051, truncate=0):
    root.mkdir(exist_ok=True)
    images = struct.pack(">IIII", magic, n, 28, 28) + bytes(n * 28 * 28)
    (root / "train-images-idx3-ubyte").write_bytes(images[:len(images) - truncate])
    (root / "train-labels-idx1-ubyte").write_bytes(struct.pack(">II", 2049, n) + bytes(n))
    return root


@pytest.mark.parametrize("args, message", [
    (["dcgan", "--bogus"], "unrecognized arguments: --bogus"),
    (["nomodel"], "invalid choice: 'nomodel'"),
    (["dcgan", "--batch-size", "many"], "--batch-size: invalid int value"),
    (["dcgan", "--gan-loss", "wgan"], "--gan-loss: invalid choice"),
    (["dcgan", "--amp-dtype", "fp8"], "--amp-dtype: invalid choice"),
    (["dcgan", "--batch-size", "0"], "--batch-size 0: must be at least 1"),
    (["dcgan", "--epochs", "0"], "nothing to train"),
    (["dcgan", "--lr", "-1"], "--lr -1.0: must be positive"),
    # Negative non-finite and exponent forms are values, not options (argparse's own matcher takes neither).
    (["dcgan", "--lr", "-inf"], "argument --lr: -inf: must be a finite number"),
    (["dcgan", "--lr", "-NaN"], "argument --lr: -NaN: must be a finite number"),
    (["dcgan", "--beta1", "-1e-3"], "--beta1 -0.001: must be in [0, 1)"),
    (["dcgan", "--device", "tpu"], "--device 'tpu'"),
    (["cyclegan", "--load-size", "100", "--image-size", "128"], "--load-size 100"),
])
def test_bad_flags(capsys, tmp_path, args, message):
    assert message in run_main(capsys, *args, "--out", str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error without a GPU")
def test_cuda_without_gpu(capsys, tmp_path):
    assert "no CUDA GPU is visible" in run_main(capsys, "dcgan", "--device", "cuda", "--out", str(tmp_path))


def test_tensorboard_missing(capsys, tmp_path):
    try:
        import tensorboard  # noqa: F401
        pytest.skip("tensorboard is installed")
    except ImportError:
        pass
    assert "tensorboard package is not installed" in run_main(capsys, "dcgan", "--tensorboard",
                                                              "--out", str(tmp_path))


def test_bad_data(capsys, tmp_path):
    out = str(tmp_path / "run")
    assert "no such directory" in run_main(capsys, "dcgan", "--data", str(tmp_path / "nowhere"), "--out", out)
    (tmp_path / "empty").mkdir()
    assert "empty" in run_main(capsys, "dcgan", "--data", str(tmp_path / "empty"), "--out", out)
    bad_magic = write_idx(tmp_path / "magic", magic=1234)
    assert "magic" in run_main(capsys, "dcgan", "--data", str(bad_magic), "--out", out).lower()
    truncated = write_idx(tmp_path / "truncated", truncate=100)
    assert "truncated" in run_main(capsys, "dcgan", "--data", str(truncated), "--out", out)
    small = write_idx(tmp_path / "small", n=10)
    assert "--batch-size 64" in run_main(capsys, "dcgan", "--data", str(small), "--out", out)
    assert "cyclegan needs two domains" in run_main(capsys, "cyclegan", "--data", "fashion-mnist", "--out", out)
    assert not (tmp_path / "run").exists()


def test_checkpoints_are_never_overwritten(capsys, tmp_path):
    out = tmp_path / "run"
    assert main(["dcgan", "--data", "synthetic", "--dry-run", "--out", str(out), *TINY]) == 0
    capsys.readouterr()
    ckpt = out / "checkpoint-00000001.pt"
    before = ckpt.read_bytes()
    args = ["--data", "synthetic", "--out", str(out), *TINY]
    assert "already holds checkpoints" in run_main(capsys, "dcgan", "--dry-run", *args)
    assert "holds a dcgan model, not cgan" in run_main(capsys, "cgan", "--dry-run", "--resume", "auto", *args)
    newer = torch.load(ckpt, weights_only=True) | {"format_version": FORMAT_VERSION + 1}
    torch.save(newer, out / "newer.pt")
    assert "newer than this fastgan reads" in run_main(capsys, "dcgan", "--resume", str(out / "newer.pt"), *args)
    assert "no such file" in run_main(capsys, "dcgan", "--resume", str(out / "gone.pt"), *args)
    other = tmp_path / "other"
    assert main(["dcgan", "--data", "synthetic", "--dry-run", "--out", str(other), *TINY]) == 0
    other_before = (other / ckpt.name).read_bytes()
    capsys.readouterr()
    assert "already holds checkpoints of another run" in run_main(
        capsys, "dcgan", "--resume", str(ckpt), "--data", "synthetic", "--out", str(other), *TINY)
    assert (other / ckpt.name).read_bytes() == other_before
    assert ckpt.read_bytes() == before and sorted(p.name for p in out.glob("checkpoint-*.pt")) == [ckpt.name]


def test_process_exit_code_and_single_line(tmp_path):
    gz = tmp_path / "data"
    gz.mkdir()
    with gzip.open(gz / "train-images-idx3-ubyte.gz", "wb") as f:
        f.write(b"\x00\x00\x08\x03garbage")
    proc = subprocess.run(command("dcgan", "--data", str(gz), "--out", str(tmp_path / "run")),
                          capture_output=True, text=True, env=ENV, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("fastgan.train: error: ")
    assert "Traceback" not in proc.stderr


def test_resume_keeps_each_models_own_options(capsys, tmp_path):
    # The model's options shape its networks or data, so a resumed run must keep them; loss weights may change.
    args = ["--data", "synthetic", "--device", "cpu", "--image-size", "32", "--ngf", "4", "--ndf", "4",
            "--out", str(tmp_path)]
    assert main(["pix2pix", "--dry-run", "--direction", "BtoA", *args]) == 0
    capsys.readouterr()
    assert "--direction 'AtoB' differs from 'BtoA'" in run_main(capsys, "pix2pix", "--resume", "auto",
                                                                "--direction", "AtoB", *args)
    assert "--norm 'instance' differs" in run_main(capsys, "pix2pix", "--resume", "auto", "--direction", "BtoA",
                                                   "--norm", "instance", *args)
    assert main(["pix2pix", "--resume", "auto", "--direction", "BtoA", "--lambda-l1", "50", "--iters", "2",
                 *args]) == 0


def test_model_choices_are_flags_choices(capsys):
    assert "--norm: invalid choice: 'group'" in run_main(capsys, "pix2pix", "--norm", "group")
    assert "--upsample: invalid choice: 'pixelshuffle'" in run_main(capsys, "cyclegan", "--upsample", "pixelshuffle")
