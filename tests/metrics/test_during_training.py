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


def test_the_training_loop_evaluates_every_eval_every(tmp_path, random_classifier):
    from fastgan.train.__main__ import main

    out = tmp_path / "run"
    assert main(["dcgan", "--data", "synthetic", "--device", "cpu", "--batch-size", "8", "--z-dim=8", "--ngf=4",
                 "--ndf=4", "--iters", "4", "--eval-every", "2", "--eval-n", "200", "--log-every", "1",
                 "--eval-feature", f"classifier:{random_classifier}", "--out", str(out)]) == 0
    assert steps(out / "metrics.jsonl") == [2, 4]
    assert (out / "best.pt").is_file() and "Metrics" in (out / "report.html").read_text()
    best = torch.load(out / "best.pt", weights_only=False)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert best["step"] == min(records, key=lambda r: r["fid"])["step"]


def test_a_missing_classifier_fails_at_start(tmp_path, capsys):
    from fastgan.train.__main__ import main

    with pytest.raises(SystemExit) as exit_info:
        main(["dcgan", "--data", "synthetic", "--device", "cpu", "--iters", "2", "--eval-every", "1",
              "--eval-feature", f"classifier:{tmp_path / 'none.pt'}", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1 and "none.pt" in err
    assert not (tmp_path / "run" / "checkpoint-00000001.pt").exists()


def test_too_small_an_eval_n_fails_at_start_naming_it(tmp_path, capsys, random_classifier):
    from fastgan.train.__main__ import main

    with pytest.raises(SystemExit) as exit_info:
        main(["dcgan", "--data", "synthetic", "--device", "cpu", "--iters", "2", "--eval-every", "1", "--eval-n", "3",
              "--eval-feature", f"classifier:{random_classifier}", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1, err
    assert "--eval-n 3: FID" in err and "use --eval-n" in err and "--metrics" not in err
    assert not (tmp_path / "run" / "checkpoint-00000001.pt").exists()
