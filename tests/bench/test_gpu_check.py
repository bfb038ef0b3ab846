"""bench/gpu-check without a GPU: the plan, CLI misuse, the outcome log of a pytest step (failures by test id, the
test that hung), the hard time limit, the code digest, and --collect naming the sha."""

import importlib.util
import json
import os
import re
import subprocess
import sys
import time
from importlib.machinery import SourceFileLoader
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "gpu-check"


def _load():
    name = "fastgan_bench_gpu_check"
    if name not in sys.modules:
        loader = SourceFileLoader(name, str(SCRIPT))
        spec = importlib.util.spec_from_loader(name, loader)
        sys.modules[name] = importlib.util.module_from_spec(spec)
        loader.exec_module(sys.modules[name])
    return sys.modules[name]


gpu_check = _load()


def run(*args, **kwargs):
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=120,
                          **kwargs)


def test_plan_lists_every_piece_within_the_limits():
    out = run("--plan")
    assert out.returncode == 0, out.stderr
    pieces = re.findall(r"^piece (\d): .* expected ([\d.]+) min", out.stdout, re.M)
    assert [p for p, _ in pieces] == ["0", "1", "2", "3", "4", "5"]
    assert all(float(minutes) < 9 for _, minutes in pieces)
    assert float(pieces[0][1]) * 60 <= gpu_check.SMOKE_LIMIT_S == 300  # the smoke piece: 5 minutes at most
    total = float(re.search(r"expected ([\d.]+) min in all", out.stdout).group(1))
    assert total < 30 and total == pytest.approx(sum(float(m) for _, m in pieces), abs=0.3)
    for fresh in re.findall(r"([\d.]+) min on a fresh one", out.stdout):
        assert float(fresh) * 60 < gpu_check.PIECE_LIMIT_S
    for variant in ("-k 'not compile'", "-k 'compile and not reduce'", "-k reduce", "tests -m cuda",
                    "bench/test_ops.py", "bench/test_ops_conv.py", "bench/test_data.py"):
        assert variant in out.stdout
    # the first 15-minute session: piece 0 on a fresh machine, then what fits at its worst case, within 900 s
    assert "A 15-minute device session" in out.stdout
    calls = re.findall(r"call (\d): bench/gpu-check (\d) .*?; (\d+) s used", out.stdout)
    assert [(c, p) for c, p, _ in calls][:2] == [("1", "0"), ("2", "1")]
    assert all(int(used) <= 900 for _, _, used in calls)
    assert re.search(r"Later sessions: pieces 2, 3, 4, 5", out.stdout)


def test_plan_needs_no_torch():
    """--plan runs on any machine: the script imports torch only in the pieces' child processes."""
    code = (f"import sys; sys.modules['torch'] = None; sys.argv = ['gpu-check', '--plan']; "
            f"exec(compile(open({str(SCRIPT)!r}).read(), 'gpu-check', 'exec'), "
            f"{{'__name__': '__main__', '__file__': {str(SCRIPT)!r}}})")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "piece 5" in out.stdout


@pytest.mark.parametrize("args, message", [
    (["7"], "piece '7': expected one of 0, 1, 2, 3, 4, 5 or all"),
    (["0", "--steps", "env,nope"], "--steps env,nope: piece 0 has no step nope"),
    (["all", "--steps", "env"], "--steps: name one piece"),
    ([], "name a piece"),
    (["1", "--dali", "/nonexistent-dali"], "--dali /nonexistent-dali: no such folder"),
    (["1", "--limit-s", "5"], "--limit-s 5: at least 60"),
    (["--collect", "/nonexistent-dir"], "--collect /nonexistent-dir: no such folder"),
])
def test_misuse_is_one_line_and_exit_2(args, message):
    out = run(*args)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"bench/gpu-check: {message}"), out.stderr


TESTS = '''
import time
import pytest

def test_passes():
    pass

def test_fails():
    assert 1 == 2, "one is not two"

def test_skips():
    pytest.skip("no GPU here")

@pytest.fixture
def broken():
    raise RuntimeError("fixture broke")

def test_errors(broken):
    pass

def test_hangs():
    time.sleep(60)
'''


def test_pytest_step_lists_failures_by_test_id_and_the_test_that_hung(tmp_path):
    (tmp_path / "test_sample.py").write_text(TESTS)
    outcomes = tmp_path / "outcomes.jsonl"
    log = tmp_path / "log"
    cmd = [sys.executable, str(SCRIPT), "--pytest-child", str(outcomes), "--", str(tmp_path / "test_sample.py"),
           "-q", "-p", "no:cacheprovider", "-p", "no:randomly"]
    start = time.monotonic()
    rc, seconds = gpu_check.run_logged(cmd, dict(os.environ), log, timeout_s=12)
    assert rc is None and seconds < 40 and time.monotonic() - start < 45  # killed at its limit, not after 60 s
    got = gpu_check.read_outcomes(outcomes, timed_out=True)
    assert got["counts"] == {"passed": 1, "failed": 1, "error": 1, "skipped": 1}
    assert got["skips"] == {"no GPU here": 1}
    by_id = {f["nodeid"].split("::")[-1]: f for f in got["failures"]}
    assert by_id["test_fails"]["outcome"] == "failed" and "one is not two" in by_id["test_fails"]["message"]
    assert by_id["test_errors"]["outcome"] == "error" and "fixture broke" in by_id["test_errors"]["message"]
    assert by_id["test_hangs"]["outcome"] == "timeout"
    assert "$ " in log.read_text()


def test_outcomes_of_a_finished_run_name_no_hang(tmp_path):
    path = tmp_path / "o.jsonl"
    events = [{"event": "start", "nodeid": "t::a"}, {"event": "report", "nodeid": "t::a", "outcome": "passed"},
              {"event": "report", "nodeid": "t::a", "outcome": "error", "message": "teardown"},
              {"event": "start", "nodeid": "t::b"}]
    path.write_text("\n".join(json.dumps(e) for e in events) + '\n{"event": "rep')  # cut short by a kill
    got = gpu_check.read_outcomes(path, timed_out=False)
    assert got["counts"] == {"passed": 0, "failed": 0, "error": 1, "skipped": 0}
    assert [f["nodeid"] for f in got["failures"]] == ["t::a"]


def test_digest_covers_code_and_skips_build_outputs_and_results(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_check, "ROOT", tmp_path)
    for name, text in {"fastgan/a.py": "x = 1", "bench/results/r.json": "{}", "fastgan/__pycache__/a.pyc": "",
                       "fastgan/_C.so": "", "setup.py": ""}.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    first = gpu_check.digest()
    for name in ("bench/results/r.json", "fastgan/__pycache__/a.pyc", "fastgan/_C.so"):
        (tmp_path / name).write_text("changed")
    assert gpu_check.digest() == first
    (tmp_path / "fastgan/a.py").write_text("x = 2")
    assert gpu_check.digest() != first


def _device_results(digest, piece, sha=None):
    record = {"title": "t", "started": "s", "finished": f"2026-12-01T0{piece}:00:00Z", "status": "passed",
              "steps": []}
    return {"benchmarks": [{"name": f"test_x[{piece}]", "fullname": f"bench/t.py::test_x[{piece}]",
                            "extra_info": {}, "stats": {}}],
            "fastgan": {"schema": gpu_check.report.SCHEMA, "gpu": "NVIDIA H200", "gpu_slug": "nvidia-h200",
                        "date": "20261201", "digest": digest, "sha": sha, "head": None, "dirty": None,
                        "planned_pieces": ["1", "2"], "pieces": {piece: record}}}


def test_collect_names_the_sha_when_the_code_matches_and_merges_pieces(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(gpu_check, "revision",
                        lambda: {"digest": "d" * 64, "sha": "abc1234", "head": "fff0000", "dirty": False})
    results, returned = tmp_path / "results", tmp_path / "files"
    results.mkdir()
    returned.mkdir()
    (returned / "nvidia-h200-20261201-treedddddddd.json").write_text(json.dumps(_device_results("d" * 64, "1")))
    assert gpu_check.collect(str(returned), results) == 0
    path = results / "nvidia-h200-20261201-abc1234.json"
    first = json.loads(path.read_text())
    assert first["fastgan"]["sha"] == "abc1234" and first["fastgan"]["dirty"] is False
    assert path.with_suffix(".md").exists()
    # the next piece comes back from a device tree without .git: merged into the same file
    (returned / "nvidia-h200-20261201-treedddddddd.json").write_text(json.dumps(_device_results("d" * 64, "2")))
    gpu_check.collect(str(returned), results)
    merged = json.loads(path.read_text())
    assert sorted(merged["fastgan"]["pieces"]) == ["1", "2"] and len(merged["benchmarks"]) == 2
    assert sorted(p.name for p in results.iterdir()) == [path.name, path.with_suffix(".md").name]
    # other code: the sha stays unknown and the file keeps the digest's name
    (returned / "nvidia-h200-20261201-treedddddddd.json").unlink()
    (returned / "other.json").write_text(json.dumps(_device_results("e" * 64, "1")))
    gpu_check.collect(str(returned), results)
    assert (results / "nvidia-h200-20261201-treeeeeeeeee.json").exists()
    assert "sha stays unknown" in capsys.readouterr().out


def test_smoke_piece_dry_run_writes_every_step_and_reruns_some(tmp_path):
    """Piece 0's plumbing on the CPU, limited to its first steps (the whole dry run takes minutes): the results
    file records every step, and a rerun of one step keeps the others' records."""
    results = tmp_path / "results"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = run("0", "--cpu-dry-run", "--steps", "env,extension", "--results", str(results), env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    [path] = results.glob("cpu-*.json")
    piece = json.loads(path.read_text())["fastgan"]["pieces"]["0"]
    steps = {s["name"]: s for s in piece["steps"]}
    assert list(steps) == [step.name for step in gpu_check.PIECES["0"][1]]
    assert steps["env"]["status"] == "passed" and {"gpu", "torch", "cudnn", "nvcc"} <= set(steps["env"]["details"])
    assert steps["extension"]["status"] == "skipped" and "dry run: not built" in steps["extension"]["note"]
    assert all(s["status"] == "skipped" and s["note"] == "not selected (--steps)" for name, s in steps.items()
               if name not in ("env", "extension"))
    assert "## Smoke piece (0)" in path.with_suffix(".md").read_text()
    first_extension = steps["extension"]
    out = run("0", "--cpu-dry-run", "--steps", "env", "--results", str(results), env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    steps = {s["name"]: s for s in json.loads(path.read_text())["fastgan"]["pieces"]["0"]["steps"]}
    assert steps["extension"] == first_extension


def test_image_folder_is_the_same_from_the_same_seed(tmp_path):
    first = gpu_check.make_images(tmp_path / "a", per_domain=3, size=24, seed=4)
    second = gpu_check.make_images(tmp_path / "b", per_domain=3, size=24, seed=4)
    names = sorted(p.relative_to(first).as_posix() for p in first.rglob("*.jpg"))
    assert names == [f"train{d}/{d.lower()}{i:03d}.jpg" for d in "AB" for i in range(3)]
    assert all((first / n).read_bytes() == (second / n).read_bytes() for n in names)
    other = gpu_check.make_images(tmp_path / "c", per_domain=3, size=24, seed=5)
    assert (other / names[0]).read_bytes() != (first / names[0]).read_bytes()
    assert not list(tmp_path.glob("*.tmp"))  # built aside, then renamed into place
