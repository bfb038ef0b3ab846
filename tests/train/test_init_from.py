"""--init-from: a new run from another run's network weights, fresh optimisers and schedule, any data; another
architecture is refused in one line naming the option."""

import json

import pytest
import torch

from fastgan.errors import UserError
from fastgan.train.__main__ import main
from fastgan.train.checkpoint import load_checkpoint
from fastgan.train.config import TrainConfig
from fastgan.train.init_from import init_from_checkpoint
from fastgan.train.loop import resolve_config, train
from fastgan.train.tasks import build_task


def cyclegan(tiny, out, **overrides):
    return tiny("cyclegan", out, data="synthetic", **overrides)


@pytest.fixture(scope="module")
def source_run(tmp_path_factory):
    """A tiny cyclegan run of 2 iterations on synthetic images (the `tiny` settings of conftest.py)."""
    out = tmp_path_factory.mktemp("source") / "run"
    train(TrainConfig(model="cyclegan", device="cpu", out=str(out), data="synthetic", batch_size=2, image_size=32,
                      load_size=36, ngf=4, ndf=4, n_blocks=1, pool_size=3, workers=0, sample_every=0, save_every=0,
                      seed=3, iters=2))
    return out


def test_weights_come_from_the_source_and_the_rest_starts_fresh(tiny, tmp_path, unpaired_dir, source_run):
    saved = load_checkpoint(source_run, "cyclegan")
    # Other data (folders instead of synthetic images) and another seed: only the architecture must match.
    cfg = resolve_config(tiny("cyclegan", tmp_path / "new", data=str(unpaired_dir), seed=11,
                              init_from=str(source_run)))
    assert cfg.init_from == str(source_run / "checkpoint-00000002.pt") and cfg.init_nets == "G_A,G_B,D_A,D_B"
    task = build_task(cfg, {"channels": 3, "num_classes": 0, "num_images": 6}, torch.device("cpu"))
    taken = init_from_checkpoint(task, cfg, {"channels": 3, "num_classes": 0})
    assert taken == {"path": cfg.init_from, "step": 2, "nets": ["G_A", "G_B", "D_A", "D_B"]}
    for name, net in task.nets.items():
        for key, value in net.state_dict().items():
            assert torch.equal(value, saved["nets"][name][key]), (name, key)
    assert all(not opt.state for opt in task.optimizers.values())  # fresh Adam moments
    assert all(s.last_epoch == 0 for s in task.schedulers.values())  # the schedule from its start


def test_a_run_started_so_trains_from_step_0_on_other_data(tiny, tmp_path, unpaired_dir, source_run):
    out = tmp_path / "tuned"
    summary = train(tiny("cyclegan", out, data=str(unpaired_dir), iters=1, init_from=str(source_run),
                         init_nets="G_A,G_B"))
    assert summary["step"] == 1
    config = json.loads((out / "config.json").read_text())
    assert config["init_from"] == str(source_run / "checkpoint-00000002.pt") and config["init_nets"] == "G_A,G_B"
    ckpt = load_checkpoint(out, "cyclegan")
    steps = [int(s["step"]) for s in ckpt["optimizers"]["G"]["state"].values()]
    assert steps and set(steps) == {1}  # one Adam step since the fresh start, not the source's 2 + 1
    assert ckpt["schedulers"]["G"]["last_epoch"] == 1
    assert sorted(p.name for p in source_run.glob("checkpoint-*.pt")) == ["checkpoint-00000002.pt"]  # untouched


def test_some_networks_only(tiny, tmp_path, source_run):
    saved = load_checkpoint(source_run, "cyclegan")
    cfg = resolve_config(cyclegan(tiny, tmp_path / "g", init_from=str(source_run), init_nets="G_A, G_B"))
    task = build_task(cfg, {"channels": 3, "num_classes": 0, "num_images": 8}, torch.device("cpu"))
    init_from_checkpoint(task, cfg, {"channels": 3, "num_classes": 0})
    for name in ("G_A", "G_B"):
        assert all(torch.equal(v, saved["nets"][name][k]) for k, v in task.nets[name].state_dict().items())
    for name in ("D_A", "D_B"):  # freshly initialised
        assert not all(torch.equal(v, saved["nets"][name][k]) for k, v in task.nets[name].state_dict().items())


def one_line(capsys, argv) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    return err


TINY_CYCLEGAN = ["cyclegan", "--data", "synthetic", "--device", "cpu", "--batch-size", "2", "--image-size", "32",
                 "--load-size", "36", "--ngf", "4", "--ndf", "4", "--n-blocks", "1", "--iters", "1"]


def test_another_architecture_is_one_line_naming_the_option(capsys, tmp_path, source_run):
    out = tmp_path / "wide"
    err = one_line(capsys, [*TINY_CYCLEGAN, "--ngf", "8", "--init-from", str(source_run), "--out", str(out)])
    assert "--ngf 4 in the checkpoint, 8 here" in err and "network G_A is another architecture" in err
    assert not out.exists()  # refused before the run directory was made
    err = one_line(capsys, [*TINY_CYCLEGAN, "--n-blocks", "2", "--init-from", str(source_run), "--out", str(out)])
    assert "--n-blocks 1 in the checkpoint, 2 here" in err


@pytest.mark.parametrize("extra, expected", [
    (["--init-nets", "G_A,G_C"], "--init-nets G_A,G_C: G_C; this model's networks are G_A,G_B,D_A,D_B"),
    (["--resume", "x.pt"], "choose one"),
])
def test_bad_combinations(capsys, tmp_path, source_run, extra, expected):
    err = one_line(capsys, [*TINY_CYCLEGAN, "--init-from", str(source_run), "--out", str(tmp_path / "o"), *extra])
    assert expected in err


def test_nothing_to_start_from(capsys, tmp_path):
    err = one_line(capsys, [*TINY_CYCLEGAN, "--init-from", str(tmp_path), "--out", str(tmp_path / "o")])
    assert f"--init-from {tmp_path}: no checkpoint-*.pt in that directory" in err
    err = one_line(capsys, [*TINY_CYCLEGAN, "--init-nets", "G_A", "--out", str(tmp_path / "o")])
    assert "--init-nets G_A: names networks to take from --init-from" in err


def test_another_model_is_refused(tiny, tmp_path, source_run):
    with pytest.raises(UserError, match="holds a cyclegan model, not pix2pix"):
        train(tiny("pix2pix", tmp_path / "p", data="synthetic", image_size=32, unet_depth=5, iters=1,
                   init_from=str(source_run)))
