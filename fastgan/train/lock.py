"""One training process per run directory: an exclusive ``fcntl.flock`` on ``<run dir>/lock``.

The kernel drops a flock when the process that holds it ends, however it ends (kill -9 included), so a
lock is never stale and nothing has to clean it up; the file itself stays behind, holding the PID of its
last holder. Readers (generate, translate, evaluate, export) never take the lock: checkpoints are replaced
by rename, so a reader always sees a whole file.

A lock belongs to an open file description, which fork() shares: a DataLoader worker forked while the
lock is held shares it too. Releasing with LOCK_UN (not just close) frees it for every sharer at once;
workers left behind by a killed trainer exit within seconds (they watch their parent).
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from ..errors import UserError

LOCK = "lock"  # the lock file's name in the run directory


class RunLock:
    """``with RunLock(run_dir):`` holds the run directory's lock, or raises UserError naming the holder."""

    def __init__(self, run_dir: str | os.PathLike):
        self.path = Path(run_dir) / LOCK
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        """Takes the lock without waiting; the run directory must exist."""
        if self._fd is not None:
            return
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise UserError(f"--out {self.path.parent}: another training process (PID {holder}) is using this "
                            "run directory; wait for it to end or choose another --out") from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
