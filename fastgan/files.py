"""Files fastgan writes (the trainer's run directory, every command's outputs) are replaced whole: a
partial write never takes the place of a good file, and a replaced file is on disk (fsync) before the
rename that publishes it, so a crash of the machine, not only of the process, leaves the old file or the
new one. Torch-free: the inference commands use it where torch is not installed."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path


def atomic_write(path: str | os.PathLike, write: Callable[[Path], object]) -> None:
    """Calls ``write(tmp)`` on a temporary file beside ``path``, then renames it over ``path``; on any
    error the temporary file is removed and ``path`` is left as it was."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def fsync_dir(directory: str | os.PathLike) -> None:
    """Makes a rename in ``directory`` durable (where the file system supports it)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems refuse fsync on a directory; the rename itself is still atomic
    finally:
        os.close(fd)
