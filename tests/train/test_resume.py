"""An interrupted and resumed run gives the same losses and weights as an uninterrupted one."""

import json

import pytest
import torch

from fastgan.train.checkpoint import latest_checkpoint, load_checkpoint
from fastgan.train.loop import train


def read_log(out):
    return [json.loads(line) for line in (out / "losses.jsonl").read_text().splitlines()]


def run(tiny, out, model, data, **overrides):
    return train(tiny(model, out, data=str(data), **overrides))


@pytest.mark.parametrize("model, data_fixture, total, stop, device", [
    ("dcgan", "idx_dir", 12, 7, "cpu"),  # 5 batches per epoch: resumes mid-epoch 1, crosses into epoch 2
    ("cyclegan", "unpaired_dir", 5, 2, "cpu"),  # 3 batches per epoch; folder loader (random crops and flips)
    pytest.param("dcgan", "idx_dir", 12, 7, "cuda", marks=pytest.mark.cuda),
    pytest.param("cyclegan", "unpaired_dir", 5, 2, "cuda", marks=pytest.mark.cuda),
])
def test_interrupted_run_resumes_exactly(tiny, tmp_path, request, model, data_fixture, total, stop, device):
    data = request.getfixturevalue(data_fixture)
    # Epochs chosen so that the learning rate decays during the run.
    schedule = dict(epochs=1, epochs_decay=3, save_every=3, sample_every=4, device=device)
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    run(tiny, whole, model, data, iters=total, **schedule)
    first = run(tiny, parts, model, data, iters=stop, **schedule)
    assert first["step"] == stop
    resumed = run(tiny, parts, model, data, iters=total, resume="auto", **schedule)
    assert resumed["step"] == total

    log_whole, log_parts = read_log(whole), read_log(parts)
    assert [r["step"] for r in log_parts] == list(range(1, total + 1))
    assert log_whole == log_parts
    assert log_whole[-1]["lr"] < log_whole[0]["lr"]

    a = load_checkpoint(latest_checkpoint(whole), model)
    b = load_checkpoint(latest_checkpoint(parts), model)
    for group in ("nets", "optimizers", "state"):
        for key in a[group]:
            flat_a, flat_b = _tensors(a[group][key]), _tensors(b[group][key])
            assert flat_a.keys() == flat_b.keys()
            for name in flat_a:
                assert torch.equal(flat_a[name], flat_b[name]), (group, key, name)
    assert all(torch.equal(a["rng"][k], b["rng"][k]) for k in a["rng"])
    assert a["schedulers"] == b["schedulers"]


def _tensors(tree, prefix=""):
    if isinstance(tree, torch.Tensor):
        return {prefix: tree}
    if isinstance(tree, dict):
        items = tree.items()
    elif isinstance(tree, (list, tuple)):
        items = enumerate(tree)
    else:
        return {prefix: torch.tensor(float(tree))} if isinstance(tree, (int, float)) else {}
    out = {}
    for k, v in items:
        out.update(_tensors(v, f"{prefix}/{k}"))
    return out


def test_resume_auto_in_an_empty_directory_starts_fresh(tiny, tmp_path, idx_dir):
    summary = run(tiny, tmp_path / "new", "dcgan", idx_dir, iters=2, resume="auto")
    assert summary["step"] == 2


def test_resume_continues_from_a_given_checkpoint_file(tiny, tmp_path, idx_dir):
    first = run(tiny, tmp_path / "a", "dcgan", idx_dir, iters=2)
    again = train(tiny("dcgan", "", data=str(idx_dir), iters=3, resume=first["checkpoint"]))
    assert again["step"] == 3 and again["out"] == str(tmp_path / "a")
    assert [r["step"] for r in read_log(tmp_path / "a")] == [1, 2, 3]


def test_resume_with_a_longer_schedule_follows_the_new_one(tiny, tmp_path, idx_dir):
    run(tiny, tmp_path, "dcgan", idx_dir, iters=2, epochs=2, lr=1e-3)
    run(tiny, tmp_path, "dcgan", idx_dir, iters=4, epochs=0, epochs_decay=2, lr=1e-3, resume="auto")
    # 5 batches per epoch: the decay now starts at iteration 0 and reaches zero at iteration 10.
    assert [r["lr"] for r in read_log(tmp_path)] == pytest.approx([1e-3, 1e-3, 7e-4, 6e-4])
