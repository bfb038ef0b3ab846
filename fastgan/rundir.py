"""The run directory: the one owner of what a training run's folder holds, who may write it, and how a run
continues. The trainer asks it for every path, write, check and decision about the folder; the inference
commands ask it which files belong to a run (never to be written over) and to read a checkpoint.

Torch-free at import: generate/translate with ``--backend onnxruntime`` import it without torch; the
functions that read or write checkpoints import torch themselves.

Run directory (--out, default runs/<model>):
    config.json                the resolved config of the latest start or resume
    losses.jsonl               one record per --log-every iterations: step, epoch, lr, mean losses since the last
    metrics.jsonl              evaluation records (--eval-every)
    samples/step-XXXXXXXX.png  sample grids from fixed noise
    checkpoint-XXXXXXXX.pt     the full training state
    checkpoint-XXXXXXXX.pt.sha256  its checksum (``sha256sum`` format), verified whenever the checkpoint is read
    best.pt                    with --eval-every: a copy of the checkpoint of the lowest FID so far
    latest                     the newest checkpoint's file name
    lock                       flock-ed by the training process while it runs; holds its PID
    report.html                config, loss curves, sample grids and checkpoints
    tensorboard/               scalars, with --tensorboard

Rules kept here:
- Writes: every file is replaced whole (temp file, fsync, rename; fastgan.files) except losses.jsonl,
  which is appended to; a failed write (a full disk, a read-only folder) is one line naming the file, and the
  files already there stay as they were.
- The lock: ``lock`` is flock-ed by the trainer (the kernel drops it however the process ends). Before each
  write the holder checks that ``lock`` still names the file it locked (same inode); if the file was deleted
  or replaced, or the run directory removed, it stops with one line (exit 2) and writes nothing more, since
  another trainer may already own the run.
- Checkpoints: the checksum is written before the checkpoint is renamed into place, so a checkpoint never
  stands without it. A new checkpoint is read back and verified before ``latest`` points at it and before
  older ones are pruned; pruning keeps the newest ``--keep-checkpoints`` and, until a newer one is verified,
  the checkpoint the run resumed from. A checkpoint without a checksum (copied alone) is read with one
  warning and checked for NaN/Inf instead.
- Resume: ``--resume auto`` continues the newest valid checkpoint in ``--out`` (a damaged newer one is set
  aside as ``*.damaged``). ``--resume RUN_DIR`` or ``--resume RUN_DIR/checkpoint-N.pt`` continues in RUN_DIR,
  unless ``--out`` names another directory: then the run is a branch, written there, and the source run is
  only read. Continuing in place from a checkpoint older than the run's newest is refused (it would abandon
  the newer ones); branch instead. A fresh start never writes into a directory that holds checkpoints.
- Start-up: nothing is written before the run is known to start (config, data, checkpoint all good); then
  leftovers of an interrupted save (a checksum without its checkpoint, ``.NAME.tmp`` files of run files) are
  removed, saying so.
"""

from __future__ import annotations

import fcntl
import fnmatch
import hashlib
import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from .errors import UserError
from .files import atomic_write, fsync_dir

CONFIG = "config.json"
LOSSES = "losses.jsonl"
METRICS = "metrics.jsonl"
LATEST = "latest"  # pointer file: the name of the newest checkpoint
LOCK = "lock"
REPORT = "report.html"
SAMPLES = "samples"
BEST = "best.pt"
TENSORBOARD = "tensorboard"
CHECKPOINT_GLOB = "checkpoint-*.pt"
CHECKSUM = ".sha256"  # suffix of the file beside each checkpoint that holds its SHA-256
DAMAGED = ".damaged"  # suffix given to a checkpoint that failed verification when a run resumed past it

# Files a run owns that no other command may replace or remove (patterns match the file's name).
RUN_FILE_PATTERNS = ("*.pt", "*.pt.sha256", "*.pt.damaged", CONFIG, LATEST, LOCK, LOSSES, METRICS)

FORMAT_VERSION = 1  # bump when the checkpoint layout changes; older readers refuse newer files
# Top-level keys of a checkpoint: what every reader needs, and what resuming training needs besides.
CHECKPOINT_KEYS = ("format_version", "model", "step", "epoch", "config", "info", "nets")
TRAINING_KEYS = ("optimizers", "schedulers", "scalers", "state", "rng")
# Directories that hold no user files: a run directory there is a typo (/dev/null, /proc/x).
SYSTEM_DIRS = ("/proc", "/sys", "/dev")


def is_run_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` names a file that a training run owns (a checkpoint, its checksum, the config, the
    logs, the lock or the latest pointer), judged by its name alone."""
    name = Path(path).name
    return any(fnmatch.fnmatchcase(name, p) for p in RUN_FILE_PATTERNS)


class DamagedCheckpoint(UserError):
    """A checkpoint file that cannot be read, does not match its checksum or holds NaN/Inf (not: another
    model, a newer format); an older checkpoint of the run may still be good."""


class LockLost(UserError):
    """The run directory's lock file was deleted or replaced (or the directory removed) under its holder."""


def warn(message: str) -> None:
    """One line on stderr, prefixed with the command's name (fastgan.train unless another fastgan command runs)."""
    script = Path(sys.argv[0]) if sys.argv and sys.argv[0] else Path()
    tool = f"fastgan.{script.stem}" if script.parent.name == "fastgan" and script.suffix == ".py" else "fastgan.train"
    print(f"{tool}: warning: {message}", file=sys.stderr, flush=True)


def _reason(error: OSError) -> str:
    return error.strerror or str(error) or type(error).__name__


@contextmanager
def writing(path: Path) -> Iterator[None]:
    """Turns an OSError while writing ``path`` (a full disk, a read-only folder, a folder removed) into one
    line naming the file."""
    try:
        yield
    except OSError as e:
        raise UserError(f"cannot write {path} ({_reason(e)}); the files already in {path.parent} are "
                        "unchanged") from None


# --- the --out path ---

def check_out_path(out: str, flag: str = "--out") -> Path:
    """Refuses, before anything is written, a run directory that cannot be one: '' (given explicitly), an
    existing file (/dev/null included), a path under a file, a system directory, a parent we cannot write."""
    if not out:
        raise UserError(f"{flag} '': give a directory (leave {flag} out for runs/<model>)")
    path = Path(out)
    absolute = Path(os.path.abspath(path))
    resolved = path.resolve()
    for system in SYSTEM_DIRS:
        if any(p == Path(system) or Path(system) in p.parents for p in (absolute, resolved)):
            raise UserError(f"{flag} {out}: inside {system}, which holds no user files; choose a directory for the run")
    ancestor = absolute
    while not os.path.lexists(ancestor):
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        what = "is" if ancestor == absolute else f"is under {ancestor}, which is"
        raise UserError(f"{flag} {out}: {what} a file, not a directory; choose a directory for the run")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise UserError(f"{flag} {out}: {ancestor} is not writable; choose a directory you can write")
    return path


def same_dir(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return a.resolve() == b.resolve()


# --- the lock ---

class RunLock:
    """``with RunLock(run_dir):`` holds the run directory's lock, or raises UserError naming the holder.

    An exclusive ``fcntl.flock`` on ``<run dir>/lock``: the kernel drops it when the process ends, however
    it ends (kill -9 included), so a lock is never stale; the file stays behind, holding its last holder's
    PID. Readers (generate, translate, evaluate, export) never take it: checkpoints are replaced by rename,
    so a reader always sees a whole file. A flock belongs to an open file description, which fork() shares
    (DataLoader workers); LOCK_UN frees it for every sharer at once.

    A lock file that a user deletes no longer excludes anyone (a second trainer creates a new one), so the
    holder calls ``check()`` before each write: it raises LockLost once ``lock`` is not the file it locked."""

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
        with writing(self.path):
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
        try:
            with writing(self.path):
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except BaseException:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
            raise
        self._fd = fd

    def check(self) -> None:
        """Raises LockLost unless ``lock`` in the run directory is still the file this process locked."""
        if self._fd is None:
            return
        run_dir = self.path.parent
        try:
            now = os.stat(self.path)
        except OSError:
            now = None
        mine = os.fstat(self._fd)
        if now is not None and (now.st_dev, now.st_ino) == (mine.st_dev, mine.st_ino):
            return
        if not run_dir.is_dir():
            raise LockLost(f"--out {run_dir}: the run directory was removed while training; stopped without "
                           "writing anything more")
        raise LockLost(f"--out {run_dir}: its lock file was deleted or replaced while this trainer held it (another "
                       "trainer may now own the run); stopped without writing anything more")

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


# --- checkpoint files ---

def checkpoint_name(step: int) -> str:
    return f"checkpoint-{step:08d}.pt"


def checksum_path(path: Path) -> Path:
    return path.with_name(path.name + CHECKSUM)


def existing_checkpoints(out: Path) -> list[Path]:
    return sorted(Path(out).glob(CHECKPOINT_GLOB))


def resume_candidates(out: Path) -> list[Path]:
    """The run's checkpoints, newest step first: the order in which --resume auto tries them."""
    return sorted(existing_checkpoints(out), reverse=True)


def latest_checkpoint(out: Path) -> Path | None:
    """The checkpoint named by out/latest (else the newest checkpoint file), or None."""
    out = Path(out)
    pointer = out / LATEST
    if pointer.is_file():
        try:
            path = out / pointer.read_text().strip()
        except (OSError, UnicodeDecodeError):
            path = None
        if path is not None and path.name and path.is_file():
            return path
    found = existing_checkpoints(out)
    return found[-1] if found else None


def set_aside(path: Path) -> Path:
    """Renames a damaged checkpoint (and its checksum) to ``*.damaged`` so that no later resume or pruning
    takes it for a good one; the bytes stay for inspection."""
    target = path.with_name(path.name + DAMAGED)
    os.replace(path, target)
    sidecar = checksum_path(path)
    if sidecar.is_file():
        os.replace(sidecar, checksum_path(target))
    return target


def _sha256(path: Path) -> str:
    sha256 = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            sha256.update(chunk)
    return sha256.hexdigest()


_unverified_warned: set[Path] = set()


def verify_checksum(path: Path) -> bool:
    """Raises DamagedCheckpoint when ``path`` differs from the SHA-256 written beside it. Returns False when
    there is none (a file copied alone, or written before fastgan kept checksums): read_checkpoint then warns
    once and checks the values themselves."""
    sidecar = checksum_path(path)
    if not sidecar.is_file():
        return False
    try:
        expected = sidecar.read_text().split()[:1]
    except (OSError, UnicodeDecodeError):
        expected = []
    if expected != [_sha256(path)]:
        raise DamagedCheckpoint(f"checkpoint {path}: damaged (its SHA-256 differs from the one in {sidecar.name})")
    return True


def read_checkpoint(path: str | os.PathLike, model: str | None = None, map_location="cpu",
                    training: bool = False) -> dict:
    """Reads and checks a checkpoint (a file, a run directory or its ``latest`` pointer): its checksum (or,
    without one, that it holds no NaN/Inf), its format version, the keys every reader needs (and, with
    ``training``, those a resume needs), that its model matches its config and, if given, ``model``.
    Bad files raise UserError (DamagedCheckpoint where an older checkpoint may still be good)."""
    import torch

    from .train.stops import first_nonfinite

    path = Path(path)
    if path.is_dir() or path.name == LATEST:
        run_dir = path if path.is_dir() else path.parent
        found = latest_checkpoint(run_dir)
        if found is None:
            raise UserError(f"{path}: no checkpoint-*.pt in {run_dir}; pass one written by fastgan.train")
        path = found
    if not path.is_file():
        raise UserError(f"checkpoint {path}: no such file; pass a checkpoint-*.pt written by fastgan.train")
    verified = verify_checksum(path)
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch.load fails on foreign or truncated files in many different ways
        raise DamagedCheckpoint(f"checkpoint {path}: not a readable fastgan checkpoint ({type(e).__name__}); "
                                "pass a checkpoint-*.pt written by fastgan.train") from None
    if not isinstance(ckpt, dict) or "format_version" not in ckpt or "model" not in ckpt:
        raise UserError(f"checkpoint {path}: not a fastgan checkpoint (no format_version/model)")
    if not isinstance(ckpt["format_version"], int) or ckpt["format_version"] > FORMAT_VERSION:
        raise UserError(f"checkpoint {path}: format version {ckpt['format_version']} is newer than this "
                        f"fastgan reads ({FORMAT_VERSION}); upgrade fastgan")
    needed = CHECKPOINT_KEYS + (TRAINING_KEYS if training else ())
    missing = [key for key in needed if key not in ckpt]
    if missing:
        raise UserError(f"checkpoint {path}: has no {', '.join(repr(k) for k in missing)} (edited or not written by "
                        "fastgan.train); use another checkpoint of the run")
    if not isinstance(ckpt["config"], dict) or ckpt["config"].get("model") != ckpt["model"]:
        saved = ckpt["config"].get("model") if isinstance(ckpt["config"], dict) else None
        raise UserError(f"checkpoint {path}: says model {ckpt['model']!r} but was trained as {saved!r} (edited); "
                        "use another checkpoint of the run")
    if model is not None and ckpt["model"] != model:
        raise UserError(f"checkpoint {path}: holds a {ckpt['model']} model, not {model}")
    if not verified:
        bad = first_nonfinite({group: ckpt[group] for group in ("nets", "optimizers", "state") if group in ckpt})
        if bad is not None:
            raise DamagedCheckpoint(f"checkpoint {path}: holds a non-finite value in {bad} (and no "
                                    f"{checksum_path(path).name}); not a usable checkpoint")
        if path.resolve() not in _unverified_warned:
            _unverified_warned.add(path.resolve())
            warn(f"checkpoint {path}: no {checksum_path(path).name} beside it, so its bytes cannot be verified; "
                 "its values were checked for NaN/Inf instead")
    return ckpt


class _HashingWriter:
    """A write-only file for torch.save that hashes what it writes, sparing a second read while writing;
    it keeps the OSError of a failed write, which torch.save reports as a RuntimeError of its own."""

    def __init__(self, f):
        self.f, self.sha256, self.error = f, hashlib.sha256(), None

    def write(self, data) -> int:
        try:
            written = self.f.write(data)
        except OSError as e:
            self.error = e
            raise
        self.sha256.update(data)
        return written

    def flush(self) -> None:
        self.f.flush()


# --- the losses log ---

def read_log(path: Path) -> list[dict]:
    """The records of a JSON-lines log. A torn last line (what a crash or a full disk during an append leaves)
    is dropped with a one-line warning; a bad line elsewhere is a UserError naming the file and line."""
    if not path.is_file():
        return []
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: unreadable ({e}); move it away to resume without the loss history") from None
    lines = text.split("\n")
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        last = number == len(lines) or (number == len(lines) - 1 and not lines[-1])
        try:
            record = json.loads(line)
            if not isinstance(record, dict) or not isinstance(record.get("step"), int):
                raise ValueError("no step")
        except ValueError:
            if last:
                warn(f"{path}: line {number} is cut short (a crash or a full disk during a write); dropping it")
                break
            raise UserError(f"{path}: line {number} is not a log record; repair or remove the line to resume") from None
        records.append(record)
    return records


# --- the run directory ---

@dataclass
class ResumePoint:
    """Where a run continues: the checkpoint (read, checked), the run it belongs to and that run's log up to
    the checkpoint's step."""

    path: Path
    ckpt: dict
    source: Path  # the run directory the checkpoint belongs to
    log: list[dict] = field(default_factory=list)

    @property
    def step(self) -> int:
        return self.ckpt["step"]


class RunDir:
    """One run directory, as the trainer writes it (rank 0 only, under torchrun)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.lock = RunLock(self.path)
        self.last_good: Path | None = None  # the newest checkpoint known verified and finite

    def __str__(self) -> str:
        return str(self.path)

    def file(self, name: str) -> Path:
        return self.path / name

    def checkpoints(self) -> list[Path]:
        return existing_checkpoints(self.path) if self.path.is_dir() else []

    def latest(self) -> Path | None:
        return latest_checkpoint(self.path) if self.path.is_dir() else None

    def holds_run(self) -> bool:
        """Whether the directory holds a run (checkpoints or a lock): its lock is taken before reading it."""
        return self.path.is_dir() and (bool(self.checkpoints()) or self.file(LOCK).exists())

    # --- start-up ---

    def create(self) -> None:
        with writing(self.path):
            self.path.mkdir(parents=True, exist_ok=True)

    def leftovers(self) -> list[Path]:
        """Files an interrupted save leaves: a checksum whose checkpoint is missing, a run file's temp file."""
        if not self.path.is_dir():
            return []
        found = []
        for path in sorted(self.path.iterdir()):
            name = path.name
            if name.endswith(CHECKSUM) and fnmatch.fnmatchcase(name, "*.pt" + CHECKSUM):
                if not path.with_name(name[:-len(CHECKSUM)]).exists():
                    found.append(path)
            elif name.startswith(".") and name.endswith(".tmp"):
                inner = name[1:-len(".tmp")]
                if is_run_file(inner) or inner in (REPORT, BEST):
                    found.append(path)
        return found

    def clean(self) -> None:
        """Removes the leftovers of an interrupted save, saying so."""
        found = self.leftovers()
        for path in found:
            path.unlink(missing_ok=True)
        if found:
            warn(f"removed {len(found)} leftover file(s) of an interrupted save in {self.path}: "
                 f"{', '.join(p.name for p in found)}")

    def resume_point(self, resume: str, model: str, map_location) -> ResumePoint | None:
        """The checkpoint this run continues from, read and checked (None: a fresh start), or UserError.

        ``resume``: "" (fresh; refuses a directory that holds checkpoints), "auto" (the newest valid checkpoint
        here, if any), a run directory or its ``latest``, or a checkpoint file. Nothing is written, except that a
        damaged checkpoint of this run passed over by the search is renamed ``*.damaged``."""
        if not resume:
            if self.checkpoints():
                raise UserError(f"--out {self.path}: already holds checkpoints; pass --resume auto to continue that "
                                "run or choose another --out")
            return None
        if resume == "auto":
            if not self.checkpoints():
                return None
            point = self._newest_valid(self.path, model, map_location)
            point.log = [r for r in read_log(self.file(LOSSES)) if r["step"] <= point.step]
            return point
        given = Path(resume)
        if not given.exists():
            raise UserError(f"--resume {resume}: no such file or directory; pass a run directory, a checkpoint-*.pt "
                            "or auto")
        source = given if given.is_dir() else given.parent
        in_place = same_dir(source, self.path) if self.path.exists() else False
        if not in_place and self.checkpoints():
            raise UserError(f"--out {self.path}: already holds checkpoints of another run; choose a new --out for "
                            f"the run branched from {resume}")
        if given.is_dir() or given.name == LATEST:
            if not existing_checkpoints(source):
                raise UserError(f"--resume {resume}: no checkpoint-*.pt in {source}")
            point = self._newest_valid(source, model, map_location, set_aside_bad=in_place)
        else:
            point = ResumePoint(given, read_checkpoint(given, model, map_location, training=True), source)
            newer = [p for p in existing_checkpoints(source) if p.name > given.name]
            if in_place and newer:
                raise UserError(f"--resume {resume}: the run has newer checkpoints ({newer[-1].name}); continuing in "
                                f"{source} from step {point.step} would abandon them: branch with --out NEW_DIR")
        point.log = [r for r in read_log(source / LOSSES) if r["step"] <= point.step]
        return point

    def _newest_valid(self, run: Path, model: str, map_location, set_aside_bad: bool = True) -> ResumePoint:
        """The newest checkpoint of ``run`` that reads and verifies. Damaged newer ones are set aside (renamed
        *.damaged; in a run this one only reads: left alone) with a warning naming both files."""
        damaged: list[tuple[Path, DamagedCheckpoint]] = []
        for path in resume_candidates(run):
            try:
                ckpt = read_checkpoint(path, model, map_location, training=True)
            except DamagedCheckpoint as e:
                damaged.append((path, e))
                continue
            for bad, error in damaged:
                if set_aside_bad:
                    kept = f"the damaged file is kept as {set_aside(bad).name}"
                else:
                    kept = "the damaged file is left as it is"
                warn(f"{error}; resuming from {path} instead ({kept})")
            return ResumePoint(path, ckpt, run)
        raise UserError(f"{damaged[0][1]}; no older checkpoint of the run is valid either")

    def start(self, config: dict, point: ResumePoint | None) -> None:
        """Writes what a starting run writes before its first iteration (the run is known to start): the
        config, and the losses log (the source run's records up to the resumed step; empty when fresh).
        Removes leftovers of an interrupted save first."""
        self.clean()
        with writing(self.file(SAMPLES)):
            self.file(SAMPLES).mkdir(exist_ok=True)
        self.write_json(CONFIG, config)
        records = point.log if point is not None else []
        log = self.file(LOSSES)
        if records or log.exists():
            self.lock.check()
            with writing(log):
                atomic_write(log, lambda tmp: tmp.write_text("".join(json.dumps(r) + "\n" for r in records)))
        if point is not None:
            self.last_good = point.path  # read and verified (a branch's: in the source run)

    def last_good_checkpoint(self) -> str | None:
        """The newest checkpoint known to be verified and finite: this run's last save or resume point, else
        the newest checkpoint here that reads and verifies; None if there is none."""
        if self.last_good is not None:
            return str(self.last_good)
        for path in resume_candidates(self.path) if self.path.is_dir() else []:
            try:
                read_checkpoint(path)
            except UserError:
                continue
            return str(path)
        return None

    # --- writes during the run ---

    def write_json(self, name: str, obj) -> None:
        path = self.file(name)
        self.lock.check()
        with writing(path):
            atomic_write(path, lambda tmp: tmp.write_text(json.dumps(obj, indent=2) + "\n"))

    def append_record(self, name: str, record: dict) -> None:
        path = self.file(name)
        self.lock.check()
        with writing(path), open(path, "a") as f:
            f.write(json.dumps(record) + "\n")

    def write_with(self, path: Path, write: Callable[[], object]):
        """Calls ``write()`` (a sample grid, the report, best.pt) after the lock check, with one-line errors."""
        self.lock.check()
        with writing(path):
            return write()

    def save_checkpoint(self, payload: dict, step: int, keep: int) -> Path:
        """Writes checkpoint-<step>.pt (checksum first, then the file by rename), reads it back to verify it,
        and only then points ``latest`` at it and prunes to the newest ``keep``: the checkpoint the run resumed
        from (or any older one) is never removed before a newer one is verified. A failed write (a full disk)
        is one line; the checkpoints already there stay valid."""
        import torch

        self.lock.check()
        path = self.file(checkpoint_name(step))
        tmp = path.with_name(f".{path.name}.tmp")
        sidecar = checksum_path(path)
        try:
            with open(tmp, "wb") as f:
                writer = _HashingWriter(f)
                try:
                    torch.save(payload, writer)
                except RuntimeError:
                    if writer.error is not None:  # torch.save wraps the OSError in an error of its own
                        raise writer.error from None
                    raise
                f.flush()
                os.fsync(f.fileno())
            digest = writer.sha256.hexdigest()
            # The checksum goes first: a checkpoint file never stands without the checksum of its content.
            atomic_write(sidecar, lambda t: t.write_text(f"{digest}  {path.name}\n"))
            os.replace(tmp, path)
            fsync_dir(self.path)
        except OSError as e:
            if not path.exists():
                sidecar.unlink(missing_ok=True)
            previous = f"; the previous checkpoint {self.last_good.name} is intact" if self.last_good else ""
            raise UserError(f"cannot write checkpoint {path} ({_reason(e)}){previous}; free space and resume "
                            "with --resume auto") from None
        finally:
            tmp.unlink(missing_ok=True)
        if _sha256(path) != digest:
            aside = set_aside(path)
            raise DamagedCheckpoint(f"checkpoint {path}: reads back differently from what was written (kept as "
                                    f"{aside.name}); the disk may be failing")
        self.last_good = path
        with writing(self.file(LATEST)):
            atomic_write(self.file(LATEST), lambda t: t.write_text(path.name + "\n"))
        older = [p for p in existing_checkpoints(self.path) if p != path]
        for old in older[:max(0, len(older) - (keep - 1))]:
            old.unlink(missing_ok=True)  # the checkpoint first, so none ever stands without its checksum
            checksum_path(old).unlink(missing_ok=True)
        return path
