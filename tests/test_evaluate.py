"""python -m fastgan.evaluate end to end on checkpoints of tiny --dry-run trainings: the table, metrics.json,
both CycleGAN directions, train-classifier, and bad input as one line with exit code 2."""

import hashlib
import json

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("torch_fidelity", reason="needs the fastgan[metrics] extra (torch-fidelity)")

from fastgan.evaluate import main  # noqa: E402
from fastgan.metrics.classifier import DomainClassifier, load_classifier, save_classifier  # noqa: E402
from fastgan.metrics.spaces import ENV_INCEPTION  # noqa: E402
from fastgan.rundir import checksum_path  # noqa: E402
from fastgan.train.config import TrainConfig  # noqa: E402
from fastgan.train.loop import train  # noqa: E402

PROG = "fastgan.evaluate"
TINY = dict(device="cpu", data="synthetic", dry_run=True, z_dim=8, ngf=4, ndf=4, batch_size=4)


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    monkeypatch.delenv(ENV_INCEPTION, raising=False)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))


def image_folder(root, count: int):
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / f"{i:03d}.png")
    return root


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    found = {}
    for name, model, extra in (
        ("dcgan", "dcgan", {}),
        ("cgan", "cgan", {}),
        ("cyclegan", "cyclegan", dict(image_size=32, n_blocks=1, batch_size=1)),
        ("folder", "dcgan", dict(data=str(image_folder(root / "few", 12)), image_size=32, workers=0)),
    ):
        train(TrainConfig(model=model, out=str(root / name), **(TINY | extra)))
        found[name] = root / name
    return found


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    path = tmp_path_factory.mktemp("classifier") / "random.pt"
    with torch.random.fork_rng():
        torch.manual_seed(1)
        net = DomainClassifier(10).eval()
    save_classifier(net, path, classes=[f"c{k}" for k in range(10)], data="synthetic", test_accuracy=0.1,
                    train_seconds=0.0, epochs=0)
    return path


def run_main(capsys, args):
    assert main([*map(str, args), "--device", "cpu"]) == 0
    return capsys.readouterr().out


def one_line_error(capsys, args):
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in args])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"{PROG}: error: ") and "Traceback" not in err
    return err


def test_dcgan_table_and_metrics_json(capsys, runs, classifier):
    out = run_main(capsys, [runs["dcgan"], "--feature", f"classifier:{classifier}", "--n", "300",
                            "--metrics", "fid,kid,is,prc"])
    for label in ("FID-SYNTHETIC", "KID-SYNTHETIC", "IS-SYNTHETIC", "precision", "recall", "class TV",
                  "class histogram: c0"):
        assert label in out, out
    record = json.loads((runs["dcgan"] / "metrics.json").read_text())
    result = record["results"]["samples"]
    assert record["model"] == "dcgan" and record["checkpoint"].endswith(".pt")
    assert result["n"] == 300 and "synthetic train (300 images)" == result["reference"]
    assert all(isinstance(result[k], float) for k in ("fid", "kid", "kid_std", "is", "precision", "recall"))
    assert result["fid"] > 0 and abs(sum(result["class_histogram"]) - 1) < 1e-3


def test_cgan_reports_conditioning_accuracy(capsys, runs, classifier, tmp_path):
    out = run_main(capsys, [runs["cgan"], "--feature", f"classifier:{classifier}", "--n", "200",
                            "--metrics", "kid", "--out", tmp_path / "m.json"])
    result = json.loads((tmp_path / "m.json").read_text())["results"]["samples"]
    assert 0 <= result["conditioning_accuracy"] <= 1 and "conditioning acc." in out


def test_cyclegan_is_evaluated_in_both_directions_on_the_test_split(capsys, runs, classifier):
    out = run_main(capsys, [runs["cyclegan"], "--feature", f"classifier:{classifier}", "--n", "200"])
    results = json.loads((runs["cyclegan"] / "metrics.json").read_text())["results"]
    assert set(results) == {"AtoB", "BtoA"}
    assert results["AtoB"]["reference"].startswith("synthetic B test") and results["AtoB"]["source"].startswith(
        "synthetic A test")
    assert results["BtoA"]["reference"].startswith("synthetic A test")
    assert all(r["n"] == 200 and r["fid"] > 0 for r in results.values())
    assert "AtoB" in out and "BtoA" in out


def test_train_classifier_cli(capsys, tmp_path):
    out = run_main(capsys, ["train-classifier", "--data", "synthetic", "--out", tmp_path / "c.pt", "--epochs", "1"])
    assert "test accuracy" in out
    assert load_classifier(tmp_path / "c.pt").test_accuracy > 0.9


def test_n_below_the_feature_dimension_is_refused_with_the_reason(capsys, runs, classifier):
    err = one_line_error(capsys, [runs["dcgan"], "--feature", f"classifier:{classifier}", "--n", "50"])
    assert "--n 50" in err and "128" in err and "covariance is singular" in err


def test_a_checkpoint_without_a_generator(capsys, runs, classifier, tmp_path):
    ckpt = torch.load(sorted(runs["dcgan"].glob("checkpoint-*.pt"))[-1], weights_only=True)
    del ckpt["nets"]["G"]
    path = tmp_path / "checkpoint-00000001.pt"
    torch.save(ckpt, path)
    # With its checksum, as fastgan.train writes one: without, reading it also warns that it is unverified.
    checksum_path(path).write_text(f"{hashlib.sha256(path.read_bytes()).hexdigest()}  {path.name}\n")
    err = one_line_error(capsys, [path, "--feature", f"classifier:{classifier}", "--n", "300"])
    assert "no generator" in err and str(path) in err


def test_an_image_folder_with_too_few_images(capsys, runs, classifier):
    err = one_line_error(capsys, [runs["folder"], "--feature", f"classifier:{classifier}", "--n", "300"])
    assert "few" in err and "too few images for FID" in err and "12 images" in err


@pytest.mark.parametrize("args, expected", [
    (["--metrics", "fid,psnr"], "--metrics fid,psnr"),
    (["--feature", "inception"], ENV_INCEPTION),
    (["--feature", "classifier:/no/such/file.pt"], "no such file"),
    (["--n", "0"], "--n 0"),
])
def test_bad_flags(capsys, runs, args, expected):
    assert expected in one_line_error(capsys, [runs["dcgan"], *args])


def test_corrupt_inception_weights(capsys, runs, tmp_path):
    weights = tmp_path / "pt_inception-2015-12-05-6726825d.pth"
    weights.write_bytes(b"truncated")
    err = one_line_error(capsys, [runs["dcgan"], "--inception-weights", weights])
    assert str(weights) in err and "not a readable torch file" in err


@pytest.mark.parametrize("data, expected", [("few", "not an image folder"), ("/no/such/dir", "no such directory")])
def test_train_classifier_bad_data(capsys, runs, tmp_path, data, expected):
    data = str(runs["folder"].parent / "few") if data == "few" else data
    err = one_line_error(capsys, ["train-classifier", "--data", data, "--out", tmp_path / "c.pt"])
    assert expected in err
