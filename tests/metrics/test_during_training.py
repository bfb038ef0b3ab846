"""evaluate_during_training, what the training loop calls every --eval-every iterations."""

import json

import pytest
import torch

pytest.importorskip("torch_fidelity", reason="needs the fastgan[metrics] extra (torch-fidelity)")

from fastgan.metrics import evaluate_during_training  # noqa: E402
from fastgan.testing.tasks import cpu_standin  # noqa: E402


def steps(path):
    return [json.loads(line)["step"] for line in path.read_text().splitlines()]


def test_records_are_appended_and_training_state_is_untouched(tmp_path, random_classifier):
    setup = cpu_standin("dcgan")
    task = setup.task
    feature = f"classifier:{random_classifier}"
    rng = torch.get_rng_state()
    weights = {k: v.clone() for k, v in task.nets["G"].state_dict().items()}
    first = evaluate_during_training(task, setup.cfg, 10, tmp_path, feature=feature, n=200)
    assert torch.equal(torch.get_rng_state(), rng)  # the next training step draws the same noise
    assert all(net.training for net in task.nets.values())  # back in training mode
    for k, v in task.nets["G"].state_dict().items():  # eval mode: BatchNorm statistics unchanged
        torch.testing.assert_close(v, weights[k], rtol=0, atol=0, msg=k)
    assert first["step"] == 10 and first["best"] and first["fid"] > 0 and isinstance(first["kid"], float)

    second = evaluate_during_training(task, setup.cfg, 20, tmp_path, feature=feature, n=200)
    assert second["fid"] == first["fid"] and not second["best"]  # the same generator: not strictly better
    log = tmp_path / "metrics.jsonl"
    assert steps(log) == [10, 20]
    assert "best" not in json.loads(log.read_text().splitlines()[0])

    # A run resumed from step 15 drops the records it will write again.
    evaluate_during_training(task, setup.cfg, 15, tmp_path, feature=feature, n=200)
    assert steps(log) == [10, 15]

    log.write_text(json.dumps({"step": 5, "fid": first["fid"] + 1}) + "\n")
    assert evaluate_during_training(task, setup.cfg, 30, tmp_path, feature=feature, n=200)["best"]


def test_translators_log_each_direction_and_their_mean(tmp_path, random_classifier):
    setup = cpu_standin("cyclegan")
    record = evaluate_during_training(setup.task, setup.cfg, 1, tmp_path, feature=f"classifier:{random_classifier}",
                                      n=200, metrics=("fid",))
    assert record["fid"] == pytest.approx((record["fid/AtoB"] + record["fid/BtoA"]) / 2)
    assert set(json.loads((tmp_path / "metrics.jsonl").read_text())) == {"step", "fid", "fid/AtoB", "fid/BtoA"}
