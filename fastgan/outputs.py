"""Where an inference command may write: the one guard that generate, translate, export, evaluate and
train-classifier ask before they compute anything, so a refused path costs nothing and writes nothing.

An output path is refused, with one line naming the flag (exit code 2 through fastgan.errors.UserError), when
- it is empty (``--out ''``), inside /dev, /proc or /sys (fastgan.rundir.SYSTEM_DIRS: ``/dev/null``,
  ``/proc/x``), a path under a file, somewhere nothing can be created (a read-only folder: a probe file is
  created and removed there first), or an existing thing that is not a regular file (a fifo, a folder where
  a file is written);
- it names a file of a training run (a name fastgan.rundir.is_run_file gives to checkpoints, their
  checksums, config.json, latest, lock and the logs, in a folder that holds a run): never, even with
  ``--overwrite``;
- it is the command's own input: the same path once symlinks and ``DIR/`` vs ``DIR`` are resolved, or the
  same file under another name (a hard link; os.path.samefile);
- it exists and is not of the command's own output type (an image for generate/translate, an ONNX model or
  exported program for export, a metrics record for evaluate, a classifier for train-classifier), unless
  ``--overwrite`` is given. A file of the command's own type is replaced, as re-running a command does.

Files are then written whole (fastgan.files.atomic_write): an interrupted command leaves the old file
or the new one. Torch-free at import: ``generate``/``translate --backend onnxruntime`` run without torch.
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
from collections.abc import Callable, Iterable
from pathlib import Path

from .errors import UserError
from .rundir import CHECKPOINT_GLOB, CHECKSUM, CONFIG, LATEST, LOCK, SYSTEM_DIRS, is_run_file

OwnType = Callable[[Path], bool]  # does an existing file hold what this command writes?


# --- what each command writes, recognised by content (a suffix alone is a name anyone can give) ---

def is_image(path: Path) -> bool:
    """A PNG or JPEG file (what generate and translate write)."""
    return _head(path, 8).startswith((b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff"))


def is_onnx_model(path: Path) -> bool:
    """An ONNX model: a protobuf ModelProto, whose first field is ir_version (field 1, varint: byte 0x08)."""
    return path.suffix == ".onnx" and _head(path, 1) == b"\x08"


def is_exported_program(path: Path) -> bool:
    """A torch.export program (.pt2): a zip archive holding an ``archive_format`` record."""
    return path.suffix == ".pt2" and _zip_has(path, lambda name, read: name.endswith("archive_format"))


def is_metrics_record(path: Path) -> bool:
    """A metrics file written by fastgan.evaluate: a JSON object with its results and feature space."""
    try:
        with open(path, encoding="utf-8") as f:
            record = json.load(f)
    except (OSError, ValueError):
        return False
    return isinstance(record, dict) and {"results", "feature_space", "checkpoint"} <= record.keys()


def is_classifier(path: Path) -> bool:
    """A classifier file of ``fastgan.evaluate train-classifier`` (a torch zip whose pickle names its format),
    recognised without unpickling it."""
    return _zip_has(path, lambda name, read: name.endswith("data.pkl") and b"fastgan-classifier" in read(name))


def _head(path: Path, n: int) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(n)
    except OSError:
        return b""


def _zip_has(path: Path, match: Callable[[str, Callable[[str], bytes]], bool]) -> bool:
    try:
        with zipfile.ZipFile(path) as archive:
            return any(match(name, archive.read) for name in archive.namelist())
    except (OSError, zipfile.BadZipFile, KeyError, ValueError):
        return False


# --- the guard ---

def _shown(path) -> str:
    return repr(str(path)) if str(path) in ("", ".") or str(path) != str(path).strip() else str(path)


def _same(a: Path, b: Path) -> bool:
    """The same file or folder: equal once resolved (symlinks, ``DIR/``), or one inode (hard links)."""
    try:
        if a.resolve() == b.resolve():
            return True
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except (OSError, RuntimeError):  # a symlink loop or an unreadable path: not provably the same
        return False


def _check_not_system(path: Path, flag: str) -> None:
    """/dev, /proc, /sys hold no user files (and root may create files in /dev): a path there is a typo."""
    try:
        candidates = (Path(os.path.abspath(path)), path.resolve())
    except (OSError, RuntimeError):  # a symlink loop: the literal path alone
        candidates = (Path(os.path.abspath(path)),)
    for candidate in candidates:
        for system in map(Path, SYSTEM_DIRS):
            if candidate == system or system in candidate.parents:
                raise UserError(f"{flag} {_shown(path)}: inside {system}, which holds no user files; choose another "
                                "path")


def _check_parents(path: Path, flag: str) -> Path:
    """The nearest existing folder at or above ``path``'s parent; refuses a path under a file."""
    parent = path.parent
    for folder in (parent, *parent.parents):
        if folder.exists() or folder.is_symlink():
            if not folder.is_dir():
                raise UserError(f"{flag} {_shown(path)}: {folder} is a file, not a directory")
            return folder
    return Path(".")


def _probe(folder: Path, path: Path, flag: str) -> None:
    """Creates and removes a file in ``folder``: refuses where nothing can be written (read-only, /proc, ...)."""
    try:
        fd, name = tempfile.mkstemp(dir=folder, prefix=".fastgan-probe-")
    except OSError as e:
        raise UserError(f"{flag} {_shown(path)}: cannot write in {folder} ({e.strerror or e})") from None
    os.close(fd)
    os.unlink(name)


def _check_not_input(path: Path, inputs: Iterable, flag: str) -> None:
    for source in inputs:
        if source is not None and _same(path, Path(source)):
            raise UserError(f"{flag} {_shown(path)}: is the input {source}; choose another path")


def _in_run_dir(path: Path) -> bool:
    """``path`` bears a run file's name (fastgan.rundir.is_run_file) in a folder that holds a run: its config,
    latest pointer, lock or checkpoints, or this file's checksum (a checkpoint copied elsewhere with it).
    The same name elsewhere (``classifier.pt``, a ``config.json`` of another program) is an ordinary file."""
    if not is_run_file(path):
        return False
    folder = path.parent
    try:
        return (any((folder / name).exists() for name in (CONFIG, LATEST, LOCK, path.name + CHECKSUM))
                or next(folder.glob(CHECKPOINT_GLOB), None) is not None)
    except OSError:
        return False


def _check_not_run_file(path: Path, flag: str) -> None:
    try:
        target = path.resolve() if path.is_symlink() else path
    except (OSError, RuntimeError):  # a symlink loop
        target = path
    if _in_run_dir(path) or _in_run_dir(target):
        raise UserError(f"{flag} {_shown(path)}: names a training run's file (checkpoints, checksums, config.json, "
                        "latest, lock and the logs are the run's); choose another name")


def _check_existing_file(path: Path, flag: str, own_type: OwnType, what: str, overwrite: bool) -> None:
    _check_not_run_file(path, flag)
    if not (path.exists() or path.is_symlink()):
        return
    if path.is_dir():
        raise UserError(f"{flag} {_shown(path)}: is a directory; name a file")
    if not path.is_file():
        raise UserError(f"{flag} {_shown(path)}: exists and is not a regular file")
    if not overwrite and not own_type(path):
        raise UserError(f"{flag} {_shown(path)}: exists and is not {what}; choose another path, or pass "
                        "--overwrite to replace it")


def _check_placement(path: str | os.PathLike, flag: str, inputs: Iterable, kind: str) -> Path:
    """The rules every output path follows, file or folder: not empty, not in a system folder, not a run's
    file, not the command's input. Returns it as a Path."""
    if str(path) == "":
        raise UserError(f"{flag} '': an empty path; name {kind}")
    path = Path(path)
    _check_not_system(path, flag)
    _check_not_run_file(path, flag)
    _check_not_input(path, inputs, flag)
    return path


def check_output_file(path: str | os.PathLike, *, own_type: OwnType, what: str, inputs: Iterable = (),
                      overwrite: bool = False, flag: str = "--out") -> Path:
    """Refuses (UserError naming ``flag``) a file output that the rules of this module forbid; returns it as
    a Path. ``what`` names the command's output type in the message ("an image"); ``inputs``: the paths the
    command reads (a checkpoint, a run directory, an image folder). Nothing is created."""
    path = _check_placement(path, flag, inputs, "a file")
    _check_existing_file(path, flag, own_type, what, overwrite)
    folder = _check_parents(path, flag)
    if folder != path.parent:
        raise UserError(f"{flag} {_shown(path)}: directory {path.parent} does not exist")
    _probe(folder, path, flag)
    return path


def check_output_dir(path: str | os.PathLike, *, inputs: Iterable = (), flag: str = "--out") -> Path:
    """Refuses (UserError naming ``flag``) a folder output the rules forbid: empty, an existing non-folder, a
    path under a file, a run's file name, the command's input, or a place nothing can be written. The folder
    is not created here (the caller creates it when it writes the first file)."""
    path = _check_placement(path, flag, inputs, "a directory")
    if (path.exists() or path.is_symlink()) and not path.is_dir():
        raise UserError(f"{flag} {_shown(path)}: exists and is not a directory")
    folder = path if path.is_dir() else _check_parents(path, flag)
    _probe(folder, path, flag)
    return path


def check_outputs_in_dir(directory: str | os.PathLike, names: Iterable[str | os.PathLike] | Callable[[str], bool], *,
                         own_type: OwnType, what: str, inputs: Iterable = (), overwrite: bool = False,
                         flag: str = "--out") -> None:
    """The files ``directory/name`` a command is about to write, checked like check_output_file (inputs, run
    files, existing files of another type) before the first is written. ``names``: the relative paths, or a
    predicate that says which names directly in ``directory`` will be written (for a count too large to
    list, e.g. generate's ``--n``). Only names that exist are looked at."""
    directory = Path(directory)
    if not directory.is_dir():
        return  # a new folder: nothing in it to replace
    inputs = [Path(p) for p in inputs if p is not None]
    present = os.listdir(directory)
    if callable(names):
        targets = [directory / name for name in present if names(name)]
    else:
        present = set(present)
        targets = [directory / name for name in map(Path, names) if name.parts and name.parts[0] in present]
    for target in targets:
        if not (target.exists() or target.is_symlink()):
            continue
        _check_not_run_file(target, flag)
        _check_not_input(target, inputs, flag)
        _check_existing_file(target, flag, own_type, what, overwrite)
