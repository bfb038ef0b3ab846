"""fastgan.rundir on its own: torch-free at import, the files it calls a run's, the log reader, the lock's
inode check and the --out checks. The trainer's use of it is tested through the CLI in tests/hostile/."""

import os
import subprocess
import sys

import pytest

from fastgan.errors import UserError
from fastgan.rundir import LockLost, RunDir, RunLock, check_out_path, is_run_file, read_log


def test_imports_without_torch():
    # generate/translate with --backend onnxruntime ask it which files belong to a run, where torch is absent.
    code = "import sys, fastgan.rundir; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], env=os.environ, timeout=120).returncode == 0


@pytest.mark.parametrize("name, owned", [
    ("checkpoint-00000010.pt", True), ("checkpoint-00000010.pt.sha256", True), ("best.pt", True),
    ("checkpoint-00000006.pt.damaged", True), ("config.json", True), ("latest", True), ("lock", True),
    ("losses.jsonl", True), ("metrics.jsonl", True),
    ("grid.png", False), ("report.html", False), ("generator.onnx", False), ("config.json.bak", False),
])
def test_run_files(name, owned):
    assert is_run_file(f"some/dir/{name}") is owned


def test_a_torn_last_line_is_dropped_and_a_bad_middle_line_refused(tmp_path, capsys):
    log = tmp_path / "losses.jsonl"
    log.write_text('{"step": 1, "D/total": 1.0}\n{"step": 2, "D/total": 0.9}\n{"step": 3, "D/to')
    assert [r["step"] for r in read_log(log)] == [1, 2]
    assert capsys.readouterr().err == (f"fastgan.train: warning: {log}: line 3 is cut short (a crash or a full disk "
                                       "during a write); dropping it\n")
    log.write_text('{"step": 1}\n{"step": 2}')  # whole records, only the last line end missing: kept
    assert [r["step"] for r in read_log(log)] == [1, 2] and capsys.readouterr().err == ""
    log.write_text('{"step": 1}\n{"st\n{"step": 3}\n')
    with pytest.raises(UserError, match=f"{log}: line 2 is not a log record"):
        read_log(log)


def test_the_lock_holder_sees_its_lock_file_deleted_or_replaced(tmp_path):
    with RunLock(tmp_path) as lock:
        lock.check()
        (tmp_path / "lock").unlink()
        with pytest.raises(LockLost, match="its lock file was deleted or replaced"):
            lock.check()
        with RunLock(tmp_path):  # what a second trainer can now do
            with pytest.raises(LockLost):
                lock.check()


def test_a_run_directory_that_holds_nothing_of_a_run_is_not_locked_before_it_is_used(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    assert not RunDir(tmp_path).holds_run()
    (tmp_path / "checkpoint-00000001.pt").write_bytes(b"")
    assert RunDir(tmp_path).holds_run()


@pytest.mark.parametrize("out, says", [
    ("", "--out '': give a directory"),
    ("/dev/null", "inside /dev"),
    ("/proc/1/x", "inside /proc"),
    ("/sys/x", "inside /sys"),
])
def test_out_paths_that_are_no_run_directory(out, says):
    with pytest.raises(UserError, match=says):
        check_out_path(out)


def test_out_under_a_file_or_a_file(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(UserError, match="is a file, not a directory"):
        check_out_path(str(tmp_path / "f"))
    with pytest.raises(UserError, match=f"is under {tmp_path / 'f'}, which is a file"):
        check_out_path(str(tmp_path / "f" / "run"))
    assert check_out_path(str(tmp_path / "new" / "run")) == tmp_path / "new" / "run"
