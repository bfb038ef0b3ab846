"""What a hostile but ordinary user does to a run (issue 22). One trained run per module, copied by the tests
that change it; helpers in hostile_helpers.py."""

import shutil
from pathlib import Path

import pytest
from hostile_helpers import TINY, train


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A finished run: 4 iterations, checkpoints at steps 2 and 4, one loss record per step."""
    out = tmp_path_factory.mktemp("trained") / "run"
    proc = train(*TINY, "--iters", 4, "--save-every", 2, "--keep-checkpoints", 5, "--out", out)
    assert proc.returncode == 0, proc.stderr
    return out


@pytest.fixture
def copy_of(trained, tmp_path):
    """``copy_of("name")``: a copy of the trained run at tmp_path/name (the lock file left out)."""
    def copy(name="run") -> Path:
        target = tmp_path / name
        shutil.copytree(trained, target, ignore=shutil.ignore_patterns("lock"))
        return target
    return copy
