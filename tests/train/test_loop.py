import json

import pytest
import torch

from fastgan.errors import UserError
from fastgan.train.checkpoint import load_checkpoint
from fastgan.train.loop import resolve_config, train


def read_log(out):
    return [json.loads(line) for line in (out / "losses.jsonl").read_text().splitlines()]


def test_outputs_layout_and_cadence(tiny, tmp_path, idx_dir):
    summary = train(tiny("dcgan", tmp_path, data=str(idx_dir), iters=7, sample_every=3, save_every=4, log_every=2))
    assert summary["step"] == 7 and summary["epoch"] == 1
    assert sorted(p.name for p in (tmp_path / "samples").iterdir()) == [
        "step-00000003.png", "step-00000006.png", "step-00000007.png"]
    # The newest --keep-checkpoints (default 2).
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*.pt")) == ["checkpoint-00000004.pt",
                                                                        "checkpoint-00000007.pt"]
    assert (tmp_path / "latest").read_text().strip() == "checkpoint-00000007.pt"
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["image_size"] == 28 and config["gan_loss"] == "vanilla" and config["iters"] == 7
    assert [r["step"] for r in read_log(tmp_path)] == [2, 4, 6, 7]
    ckpt = load_checkpoint(tmp_path / "checkpoint-00000007.pt", "dcgan")
    assert ckpt["step"] == 7 and ckpt["epoch"] == 1 and ckpt["config"] == config
    assert set(ckpt["nets"]) == {"G", "D"} and set(ckpt["optimizers"]) == {"D", "G"}


def test_logged_losses_are_means_over_the_interval(tiny, tmp_path, idx_dir):
    train(tiny("dcgan", tmp_path / "a", data=str(idx_dir), iters=4, log_every=1))
    train(tiny("dcgan", tmp_path / "b", data=str(idx_dir), iters=4, log_every=2))
    every, pairs = read_log(tmp_path / "a"), read_log(tmp_path / "b")
    for i, record in enumerate(pairs):
        for key in ("D/total", "G/total"):
            assert record[key] == pytest.approx((every[2 * i][key] + every[2 * i + 1][key]) / 2, rel=1e-6)


def test_d_steps_per_iteration_in_the_loop(tiny, tmp_path, idx_dir):
    train(tiny("dcgan", tmp_path, data=str(idx_dir), iters=3, d_steps=2, g_steps=3))
    ckpt = load_checkpoint(tmp_path, "dcgan")
    assert int(next(iter(ckpt["optimizers"]["D"]["state"].values()))["step"]) == 6
    assert int(next(iter(ckpt["optimizers"]["G"]["state"].values()))["step"]) == 9


def test_fp16_amp_uses_one_grad_scaler_per_optimiser(tiny, tmp_path, idx_dir):
    train(tiny("dcgan", tmp_path, data=str(idx_dir), iters=3, amp=True, amp_dtype="fp16"))
    ckpt = load_checkpoint(tmp_path, "dcgan")
    assert set(ckpt["scalers"]) == {"D", "G"} and all("scale" in s for s in ckpt["scalers"].values())
    assert all(torch.isfinite(torch.tensor(v)) for r in read_log(tmp_path) for k, v in r.items() if "/" in k)


def test_model_defaults_are_resolved(tiny, tmp_path):
    # None: left to the model (its recipe, then what depends on the data).
    cfg = resolve_config(tiny("cyclegan", tmp_path, image_size=None, load_size=None, n_blocks=None, gan_loss=None))
    assert (cfg.image_size, cfg.load_size, cfg.n_blocks, cfg.gan_loss) == (256, 286, 9, "lsgan")
    cfg = resolve_config(tiny("cyclegan", tmp_path, image_size=128, load_size=None, n_blocks=None))
    assert (cfg.load_size, cfg.n_blocks) == (143, 6)
    assert resolve_config(tiny("dcgan", "", image_size=None)).out == "runs/dcgan"
    with pytest.raises(UserError, match="--image-size 0: must be at least 1"):
        resolve_config(tiny("dcgan", tmp_path, image_size=0))
