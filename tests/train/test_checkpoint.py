import hashlib

import pytest
import torch

from fastgan.errors import UserError
from fastgan.train import checkpoint
from fastgan.train.checkpoint import (
    FORMAT_VERSION,
    LATEST,
    DamagedCheckpoint,
    checksum_path,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from fastgan.train.loop import resolve_config, train
from fastgan.train.stops import Diverged
from fastgan.train.tasks import build_task

INFO = {"channels": 1, "num_classes": 10, "num_images": 64, "name": "test"}


@pytest.fixture
def task_and_config(tiny, tmp_path):
    cfg = resolve_config(tiny("dcgan", tmp_path))
    return build_task(cfg, INFO, "cpu"), cfg.to_dict()


def names(path):
    return sorted(p.name for p in path.iterdir())


def test_keeps_only_the_newest_and_points_at_it(tmp_path, task_and_config):
    task, config = task_and_config
    first = save_checkpoint(tmp_path, task, step=1, epoch=0, config=config, info=INFO, keep=1)
    second = save_checkpoint(tmp_path, task, step=2, epoch=0, config=config, info=INFO, keep=1)
    assert not first.exists() and second.exists()
    assert (tmp_path / LATEST).read_text().strip() == second.name
    assert latest_checkpoint(tmp_path) == second
    ckpt = load_checkpoint(tmp_path, "dcgan")
    assert ckpt["step"] == 2 and ckpt["format_version"] == FORMAT_VERSION and ckpt["info"] == INFO
    assert names(tmp_path) == [second.name, checksum_path(second).name, LATEST]


@pytest.mark.parametrize("keep", [2, 3])
def test_keeps_the_newest_k(tmp_path, task_and_config, keep):
    task, config = task_and_config
    paths = [save_checkpoint(tmp_path, task, step=s, epoch=0, config=config, info=INFO, keep=keep)
             for s in range(1, 6)]
    kept = paths[-keep:]
    assert names(tmp_path) == sorted([p.name for p in kept] + [checksum_path(p).name for p in kept] + [LATEST])
    assert latest_checkpoint(tmp_path) == paths[-1]


def test_checksum_beside_each_checkpoint_catches_flipped_bytes(tmp_path, task_and_config):
    task, config = task_and_config
    path = save_checkpoint(tmp_path, task, step=1, epoch=0, config=config, info=INFO)
    digest, name = checksum_path(path).read_text().split()
    assert name == path.name and digest == hashlib.sha256(path.read_bytes()).hexdigest()  # sha256sum -c format
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # a flip inside the tensor data: torch.load alone reads it without complaint
    path.write_bytes(bytes(data))
    torch.load(path, weights_only=True)
    with pytest.raises(DamagedCheckpoint, match=r"checkpoint .*checkpoint-00000001.pt: damaged \(its SHA-256"):
        load_checkpoint(path)
    checksum_path(path).unlink()  # a file without a checksum (older fastgan, copied alone) is read unverified
    assert load_checkpoint(path)["step"] == 1


def test_a_non_finite_state_is_never_saved(tmp_path, task_and_config):
    task, config = task_and_config
    good = save_checkpoint(tmp_path, task, step=1, epoch=0, config=config, info=INFO)
    with torch.no_grad():
        task.nets["D"].net[2].running_var[1] = float("inf")
    with pytest.raises(Diverged, match=r"step 2: non-finite value in nets.D.net.2.running_var; .* last good "
                                       r"checkpoint is .*checkpoint-00000001.pt"):
        save_checkpoint(tmp_path, task, step=2, epoch=0, config=config, info=INFO)
    assert names(tmp_path) == [good.name, checksum_path(good).name, LATEST]


def test_failed_write_leaves_the_previous_checkpoint_intact(tmp_path, task_and_config, monkeypatch):
    task, config = task_and_config
    good = save_checkpoint(tmp_path, task, step=1, epoch=0, config=config, info=INFO)
    before = good.read_bytes()

    def crash(obj, f):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint.torch, "save", crash)
    with pytest.raises(UserError, match=r"cannot write checkpoint .*checkpoint-00000002.pt \(disk full\)"):
        save_checkpoint(tmp_path, task, step=2, epoch=0, config=config, info=INFO)
    assert names(tmp_path) == [good.name, checksum_path(good).name, LATEST]
    assert good.read_bytes() == before
    assert latest_checkpoint(tmp_path) == good


def test_load_rejects_bad_files(tmp_path, task_and_config):
    task, config = task_and_config
    with pytest.raises(UserError, match="no such file"):
        load_checkpoint(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="not a readable fastgan checkpoint"):
        load_checkpoint(tmp_path / "junk.pt")
    torch.save({"weights": torch.zeros(1)}, tmp_path / "foreign.pt")
    with pytest.raises(UserError, match="not a fastgan checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")
    path = save_checkpoint(tmp_path, task, step=1, epoch=0, config=config, info=INFO)
    with pytest.raises(UserError, match="holds a dcgan model, not cyclegan"):
        load_checkpoint(path, "cyclegan")
    newer = torch.load(path, weights_only=True) | {"format_version": FORMAT_VERSION + 1}
    torch.save(newer, tmp_path / "newer.pt")
    with pytest.raises(UserError, match="newer than this fastgan reads"):
        load_checkpoint(tmp_path / "newer.pt")
    with pytest.raises(UserError, match="no checkpoint"):
        load_checkpoint(tmp_path / "empty_run" / LATEST)


def test_fresh_start_never_overwrites_a_run(tiny, tmp_path, idx_dir):
    train(tiny("dcgan", tmp_path, data=str(idx_dir), iters=1))
    path = latest_checkpoint(tmp_path)
    before = path.read_bytes()
    with pytest.raises(UserError, match="already holds checkpoints; pass --resume auto"):
        train(tiny("dcgan", tmp_path, data=str(idx_dir), iters=2))
    with pytest.raises(UserError, match="--ngf 8 differs from 4"):
        train(tiny("dcgan", tmp_path, data=str(idx_dir), iters=2, ngf=8, resume="auto"))
    with pytest.raises(UserError, match="holds a dcgan model, not cgan"):
        train(tiny("cgan", tmp_path / "other", data=str(idx_dir), iters=2, resume=str(path)))
    assert latest_checkpoint(tmp_path) == path and path.read_bytes() == before
