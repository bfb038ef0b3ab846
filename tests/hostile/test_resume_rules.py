"""Where a resumed run goes and what it keeps (issue 22 §§2, 3, 5, 9): --resume names the run it continues, a
different --out branches without touching the source, the run's own settings come from its checkpoint, a torn
log line or the leftovers of a crash do not stop a resume."""

import json
import os

from hostile_helpers import TINY, error_line, snapshot, train


def records(out):
    return [json.loads(line) for line in (out / "losses.jsonl").read_text().splitlines()]


def config(out):
    return json.loads((out / "config.json").read_text())


def test_resume_a_run_directory_continues_there_with_its_own_settings(copy_of, tmp_path, monkeypatch):
    # Relative --resume, no --out, no data or size flag: the run's directory and settings; --iters and
    # --save-every given again override theirs, said in one line.
    run_dir = copy_of("runA")
    monkeypatch.chdir(tmp_path)
    proc = train("--resume", "runA", "--iters", 6, "--save-every", 3, "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    assert "fastgan.train: resumed from step 4 (checkpoint runA/checkpoint-00000004.pt); " in proc.stdout
    assert ("fastgan.train: resumed run: --iters 6 (was 4), --save-every 3 (was 2) from this command line\n"
            in proc.stdout)
    assert sorted(os.listdir(tmp_path)) == ["runA"]  # nothing written into the parent, no lock either
    assert (run_dir / "checkpoint-00000006.pt").is_file()
    saved = config(run_dir)
    assert (saved["save_every"], saved["keep_checkpoints"], saved["ngf"], saved["seed"]) == (3, 5, 4, 3)
    assert [r["step"] for r in records(run_dir)] == [1, 2, 3, 4, 5, 6]


def test_resume_a_checkpoint_file_keeps_the_run_and_the_file(copy_of):
    run_dir = copy_of()
    proc = train(*TINY, "--resume", run_dir / "checkpoint-00000004.pt", "--iters", 6)
    assert proc.returncode == 0, proc.stderr
    saved = config(run_dir)
    assert (saved["save_every"], saved["keep_checkpoints"]) == (2, 5)  # not the defaults 1000 and 2
    assert sorted(p.name for p in run_dir.glob("checkpoint-*.pt")) == [
        "checkpoint-00000002.pt", "checkpoint-00000004.pt", "checkpoint-00000006.pt"]


def test_another_out_branches_and_leaves_the_source_untouched(copy_of, tmp_path):
    source = copy_of("source")
    before = snapshot(source)
    branch = tmp_path / "branch"
    proc = train(*TINY, "--resume", source / "checkpoint-00000002.pt", "--out", branch, "--iters", 5)
    assert proc.returncode == 0, proc.stderr
    assert snapshot(source) == before
    assert (branch / "checkpoint-00000005.pt").is_file()
    # The branch's log: the source's records up to step 2, then its own.
    assert records(branch)[:2] == records(source)[:2]
    assert [r["step"] for r in records(branch)] == [1, 2, 3, 4, 5]


def test_the_same_directory_by_another_name_is_not_another_run(copy_of, tmp_path):
    run_dir = copy_of()
    (tmp_path / "link").symlink_to(run_dir)
    proc = train(*TINY, "--resume", f"{run_dir}/", "--out", tmp_path / "link", "--iters", 5)
    assert proc.returncode == 0, proc.stderr
    assert (run_dir / "checkpoint-00000005.pt").is_file()


def test_a_refused_resume_writes_nothing(copy_of, tmp_path):
    run_dir = copy_of()
    before = snapshot(run_dir)
    # A flag that shapes the networks must match the checkpoint: one line naming both values.
    line = error_line(train(*TINY, "--resume", run_dir, "--ngf", 8, "--iters", 6))
    assert "--ngf 8 differs from 4 in checkpoint" in line
    # Continuing in place from an older checkpoint would abandon the newer one: refused, pointing at a branch.
    line = error_line(train(*TINY, "--resume", run_dir / "checkpoint-00000002.pt", "--iters", 6))
    assert "newer checkpoints (checkpoint-00000004.pt)" in line and "--out NEW_DIR" in line
    assert snapshot(run_dir) == before and sorted(os.listdir(tmp_path)) == ["run"]


def test_a_torn_log_line_and_leftovers_of_a_crash(copy_of):
    run_dir = copy_of()
    log = run_dir / "losses.jsonl"
    lines = log.read_text().splitlines(keepends=True)
    log.write_text("".join(lines[:-1]) + lines[-1][:len(lines[-1]) // 2])  # a crash during the last append
    (run_dir / "checkpoint-00000009.pt.sha256").write_text("0" * 64 + "  checkpoint-00000009.pt\n")
    (run_dir / ".checkpoint-00000006.pt.tmp").write_bytes(b"partial")
    (run_dir / ".config.json.tmp").write_text("{")
    proc = train(*TINY, "--resume", "auto", "--out", run_dir, "--iters", 5)
    assert proc.returncode == 0, proc.stderr
    warnings = proc.stderr.strip().splitlines()
    assert warnings == [
        f"fastgan.train: warning: {log}: line 4 is cut short (a crash or a full disk during a write); dropping it",
        f"fastgan.train: warning: removed 3 leftover file(s) of an interrupted save in {run_dir}: "
        ".checkpoint-00000006.pt.tmp, .config.json.tmp, checkpoint-00000009.pt.sha256",
    ], proc.stderr
    assert [r["step"] for r in records(run_dir)] == [1, 2, 3, 5]
    assert not any(p.name.endswith(".tmp") for p in run_dir.iterdir())


def test_a_damaged_line_inside_the_log_is_one_line_and_nothing_is_rewritten(copy_of):
    run_dir = copy_of()
    log = run_dir / "losses.jsonl"
    lines = log.read_text().splitlines(keepends=True)
    lines[1] = lines[1][:20] + "\n"
    log.write_text("".join(lines))
    before = snapshot(run_dir)
    line = error_line(train(*TINY, "--resume", "auto", "--out", run_dir, "--iters", 6))
    assert line == (f"fastgan.train: error: {log}: line 2 is not a log record; repair or remove the line to "
                    "resume")
    assert snapshot(run_dir) == before


def test_resume_needs_no_flag_of_the_run_again(copy_of):
    # Today's complaint was one flag at a time (--data, then --image-size, ...): the run was made with TINY's.
    run_dir = copy_of()
    proc = train("--resume", "auto", "--out", run_dir, "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    assert f"already complete at step 4 (epoch 0); checkpoint {run_dir}/checkpoint-00000004.pt" in proc.stdout
    assert "fastgan.train: resumed from step 4" in proc.stdout
