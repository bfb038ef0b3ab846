"""The training loop: set the run up (config, resume point, data, task, run directory), then run the phases
and write the outputs. What the run directory holds, who may write it, how a run continues and what is pruned
is decided by its owner, fastgan.rundir; this module asks it.

How a run ends early (fastgan/train/stops.py): SIGTERM, SIGINT, SIGHUP and SIGUSR1 finish the current
iteration, save it and raise Interrupted; a non-finite loss or weight raises Diverged before anything
non-finite is saved.

Under torchrun (fastgan/train/distributed.py) every process trains a replica on its block of the global
batch; rank 0 alone writes the run directory (every file, evaluation included) and holds the lock, and the
other ranks resume from the checkpoint rank 0 chose, with the config rank 0 resolved. Checkpoints, stops and
divergence checks are collective: every rank reaches them after the same step.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import shutil
import warnings
from collections.abc import Iterable
from pathlib import Path

import torch

from ..data import LOADERS
from ..data.datasets import UnreadableImage
from ..errors import UserError
from ..files import atomic_write
from ..image_files import save_image
from ..limits import check_train_memory
from ..models import get_model, model_names
from ..report import write_report
from ..rundir import (
    BEST,
    LOSSES,
    METRICS,
    REPORT,
    SAMPLES,
    TENSORBOARD,
    ResumePoint,
    RunDir,
    check_out_path,
    checkpoint_name,
    read_checkpoint,
)
from .checkpoint import gather_rank_states, load_rank_state, load_task_state, save_checkpoint
from .cli import SEED_MAX
from .config import TrainConfig
from .distributed import (
    Distributed,
    all_reduce_gradients,
    broadcast_tensors,
    check_sync_bn,
    convert_sync_batchnorm,
    world_from_env,
)
from .graphs import (
    check_cuda_graphs,
    configure_backends,
    configure_engine,
    example_batch,
    make_train_step,
    memory_format,
)
from .init_from import checkpoint_file, chosen_nets, init_from_checkpoint
from .progress import Progress, collected_warnings, one_line_warnings, report_data_warnings, summary_lines
from .stops import AMP_SKIPPED, DataStopped, Interrupted, StopSignals, TrainingStopped, check_losses
from .tasks import build_task, data_request, with_recipe

CHOICES = {  # the shared fields'; a model's own options take Model.choices
    "loader": LOADERS,
    "gan_loss": ("lsgan", "vanilla"),
    "amp_dtype": ("bf16", "fp16"),
    "impl": ("auto", "ref"),
}
POSITIVE = ("batch_size", "image_size", "d_steps", "g_steps", "z_dim", "hidden", "ngf", "ndf", "log_every", "eval_n",
            "keep_checkpoints", "dist_timeout")
NON_NEGATIVE = ("epochs", "epochs_decay", "iters", "workers", "n_blocks", "load_size",
                "pool_size", "sample_every", "save_every", "lambda_cycle", "lambda_identity", "eval_every")
# Fields that shape the networks or the data stream: a resumed run must use the checkpoint's values (Adam's
# settings live in the optimiser state). The others come from the checkpoint unless a flag overrides them
# (the schedule, loss weights, output cadence, precision), except the machine's own (MACHINE).
RESUME_FIXED = ("model", "data", "image_size", "batch_size", "gan_loss", "seed", "lr", "beta1", "beta2")
# Fields of the machine and of this command that a resumed run takes from its command line, never from the
# checkpoint (--init-from applies to a new run only; a resumed one has its own checkpoint).
MACHINE = ("device", "channels_last", "cuda_graphs", "compile", "loader", "workers", "dist_timeout", "out", "resume",
           "dry_run", "init_from", "init_nets", "inception_weights")


def resume_fixed(model) -> tuple[str, ...]:
    """The fields a resumed run of ``model`` must take from its checkpoint: the shared ones above and the
    model's own options, which shape its networks or its data, except loss weights (``lambda_*``)."""
    return RESUME_FIXED + tuple(name for name in model.options if not name.startswith("lambda_"))


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"--device {name!r}: use auto, cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise UserError(f"--device {name!r}: use auto, cpu, cuda or cuda:N")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"--device {name}: no CUDA GPU is visible; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UserError(f"--device {name}: only {torch.cuda.device_count()} GPU(s) visible")
    return device


def process_device(name: str) -> torch.device:
    """--device resolved for this process: under torchrun with CUDA, cuda:LOCAL_RANK."""
    device = resolve_device(name)
    _, world_size, local_rank = world_from_env()
    if world_size > 1 and device.type == "cuda":  # torchrun: one GPU per process, its LOCAL_RANK
        if device.index is not None:
            raise UserError(f"--device {name}: under torchrun each process uses cuda:LOCAL_RANK; "
                            "pass --device cuda (or auto)")
        device = resolve_device(f"cuda:{local_rank}")
    return device


def resolve_config(cfg: TrainConfig, model=None) -> TrainConfig:
    """Validates the config and fills what it leaves to the model (its recipe, then the defaults that
    depend on the data), the output directory and the device. Returns a new config; the input is left
    as it was. ``model``: cfg.model's definition, when the caller has it already."""
    if model is None:
        if cfg.model not in model_names():
            raise UserError(f"model {cfg.model!r}: choose from {', '.join(model_names())}")
        model = get_model(cfg.model)
    cfg = dataclasses.replace(cfg)
    for name, value in model.defaults().items():  # before validating: a recipe value is checked like a flag
        if getattr(cfg, name) is None:
            setattr(cfg, name, value)
    for name, choices in (CHOICES | model.choices).items():
        value = getattr(cfg, name)
        if value is not None and value not in choices:
            raise UserError(f"{_flag(name)} {value!r}: choose from {', '.join(choices)}")
    for name in POSITIVE:
        value = getattr(cfg, name)
        if value is not None and value < 1:
            raise UserError(f"{_flag(name)} {value}: must be at least 1")
    for name in NON_NEGATIVE:
        value = getattr(cfg, name)
        if value is not None and value < 0:
            raise UserError(f"{_flag(name)} {value}: must not be negative")
    for f in dataclasses.fields(cfg):  # the CLI's types refuse these too (fastgan/train/cli.py); library calls here
        value = getattr(cfg, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise UserError(f"{_flag(f.name)} {value}: must be a finite number")
    if not 0 <= cfg.seed <= SEED_MAX:
        raise UserError(f"--seed {cfg.seed}: use 0 to {SEED_MAX}")
    if not cfg.lr > 0:
        raise UserError(f"--lr {cfg.lr}: must be positive")
    for name in ("beta1", "beta2"):
        if not 0 <= getattr(cfg, name) < 1:
            raise UserError(f"{_flag(name)} {getattr(cfg, name)}: must be in [0, 1)")
    if cfg.epochs + cfg.epochs_decay == 0:
        raise UserError("--epochs 0 --epochs-decay 0: nothing to train; give at least one epoch")
    if cfg.tensorboard:
        try:
            import torch.utils.tensorboard  # noqa: F401
        except ImportError:
            raise UserError("--tensorboard: the tensorboard package is not installed; "
                            "pip install tensorboard, or drop the flag") from None
    device = process_device(cfg.device)
    cfg.device = str(device)
    cfg.eval_feature = cfg.eval_feature or "inception"
    if cfg.eval_every:  # a missing or unreadable weights or classifier file, or too small an --eval-n, fails now
        from ..metrics import feature_space
        from ..metrics.evaluation import TRAINING_METRICS, check_sizes
        space = feature_space(cfg.eval_feature, cfg.inception_weights or None)
        check_sizes(space, TRAINING_METRICS, cfg.eval_n, None, flag="--eval-n")
        if cfg.eval_feature == "inception":  # config.json records the file found
            cfg.inception_weights = space.weights
    if cfg.channels_last is None:
        cfg.channels_last = device.type == "cuda" and model.convolutional
    cfg = with_recipe(cfg, model)
    missing = [name for name, value in cfg.to_dict(model).items() if value is None]
    if missing:  # a model whose recipe misses a field it reads
        raise RuntimeError(f"model {cfg.model!r} leaves {', '.join(missing)} unset: add it to its recipe")
    model.check_size(cfg)
    check_train_memory(cfg, model)  # before any data or network is allocated
    if cfg.init_nets and not cfg.init_from:
        raise UserError(f"--init-nets {cfg.init_nets}: names networks to take from --init-from CHECKPOINT; add it")
    if cfg.init_from:
        _check_init_from(cfg)
        cfg.init_from = str(checkpoint_file(cfg.init_from))  # the file, as config.json records it
        cfg.init_nets = ",".join(chosen_nets(cfg.init_nets, [n for nets in model.optimizers.values() for n in nets]))
    cfg.out = cfg.out or default_out(cfg)
    return cfg


def _check_init_from(cfg: TrainConfig) -> None:
    if cfg.init_from and cfg.resume not in ("", "auto"):
        raise UserError(f"--init-from {cfg.init_from} --resume {cfg.resume}: choose one (--resume continues "
                        "that run; --init-from starts a new one from its weights)")


def _batches(loader, epoch: int, position: int, stop: StopSignals):
    """loader.epoch(epoch, start=position), ended early when fetching a batch fails after a stop signal: a
    scheduler's SIGTERM to the whole process group also ends the DataLoader's workers, and the fetch in
    flight then raises; the run stops after its last whole iteration, as for any stop."""
    batches = loader.epoch(epoch, start=position)
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except RuntimeError:
            if stop.signum is None:
                raise
            return
        yield batch


def train(cfg: TrainConfig, given: Iterable[str] | None = None) -> dict:
    """Trains cfg.model; returns a summary (step, epoch, last logged losses, paths, it/s, already_complete).

    ``given``: the fields the user set (the CLI passes the flags on its command line); None counts every field
    that differs from TrainConfig's default. A resumed run takes the fields not given from its checkpoint
    (resumed_config). Holds the run directory's lock (fastgan.rundir) from before it reads the run's
    checkpoints to the end. Raises UserError for bad input, Interrupted after saving on a stop signal,
    Diverged on a non-finite loss or weight (fastgan.train.stops)."""
    given = frozenset(given) if given is not None else _differing_from_defaults(cfg)
    if "out" in given:
        check_out_path(cfg.out)  # --out '' is refused, not read as "the default"
    model = get_model(cfg.model)  # the one look-up of the model definition; passed down from here
    _check_init_from(cfg)
    if not cfg.resume:
        cfg = resolve_config(cfg, model)  # every flag checked on every rank before anything is written
    run = RunDir(check_out_path(cfg.out or default_out(cfg)))
    device = process_device(cfg.device)
    ddp = Distributed.setup(device, cfg.dist_timeout)  # a no-op without torchrun
    try:
        with one_line_warnings():
            summary = _train(cfg, given, model, run, device, ddp)
    except TrainingStopped:
        # Every rank stopped after the same step with its peers alive: close the group in order, as at the end.
        # Left to the interpreter's exit, gloo's threads were destroyed unjoined and the process aborted
        # (SIGABRT, "terminate called without an active exception"; 1 of about 15 stopped ranks on CPU).
        ddp.close(barrier=True)
        raise
    finally:
        run.lock.release()
    # Not on errors: a group whose peer died may block in its destructor; the process exit frees it.
    ddp.close()
    return summary


def _differing_from_defaults(cfg: TrainConfig) -> frozenset[str]:
    return frozenset(f.name for f in dataclasses.fields(cfg)
                     if getattr(cfg, f.name) != (f.default if f.default is not dataclasses.MISSING else None))


def default_out(cfg: TrainConfig) -> str:
    """Where a run goes without --out: the run directory --resume names (a directory, its ``latest`` or one of
    its checkpoints), else runs/<model>."""
    if cfg.resume and cfg.resume != "auto":
        given = Path(cfg.resume)
        return str(given if given.is_dir() else given.parent)
    return str(Path("runs") / cfg.model)


def resumed_config(cfg: TrainConfig, given: frozenset[str], saved: dict, path: Path, model) -> tuple[TrainConfig, str]:
    """The config a resumed run trains with, and the line that says what the flags changed ("" if nothing):
    fields that shape the networks or the data stream (resume_fixed) come from the checkpoint and a flag given
    again must match; the machine's (MACHINE) come from this command line; every other field (the schedule,
    loss weights, output cadence, precision) comes from the checkpoint unless a flag overrides it."""
    merged = dataclasses.replace(cfg)
    fixed = resume_fixed(model)
    changed = []
    for f in dataclasses.fields(cfg):
        name = f.name
        if name in MACHINE or name not in saved:
            continue
        if name not in given:
            setattr(merged, name, saved[name])
            continue
        value = getattr(cfg, name)
        if value == saved[name]:
            continue
        if name in fixed:
            raise UserError(f"{_flag(name)} {value!r} differs from {saved[name]!r} in checkpoint {path}; resume "
                            "with the same value, or leave the flag out")
        changed.append(f"{_flag(name)} {value} (was {saved[name]})")
    note = "resumed run: " + ", ".join(changed) + " from this command line" if changed else ""
    return merged, note


def _start_replicas(task, cfg: TrainConfig, ddp: Distributed) -> None:
    """--sync-bn, rank 0's weights on every rank, and gradient averaging in each phase's update."""
    if cfg.sync_bn:
        check_sync_bn(cfg.model, task.nets)
        if ddp.enabled:
            for net in task.nets.values():
                convert_sync_batchnorm(net, task.device, ddp.group)
    if not ddp.enabled:
        return
    # The same seed already builds the same weights everywhere; the broadcast makes it a guarantee.
    broadcast_tensors([t for net in task.nets.values() for t in (*net.parameters(), *net.buffers())], ddp.group)
    task.gradient_sync = functools.partial(_average_gradients, ddp)


def _average_gradients(ddp: Distributed, optimizer: torch.optim.Optimizer) -> None:
    params = [p for group in optimizer.param_groups for p in group["params"]]
    all_reduce_gradients(params, ddp.world_size, ddp.group)


def _check_classes(point: ResumePoint, info: dict, data: str) -> None:
    """A conditional model's classes are its label embedding's rows: the data of a resumed run must have the
    classes, in the order, that the checkpoint was trained on (a class folder added, removed or renamed is not)."""
    saved = point.ckpt["info"]
    before, now = saved.get("classes") or [], info.get("classes") or []
    if saved.get("num_classes") != info.get("num_classes") or before != now:
        def listed(names, count):
            return f"[{', '.join(names)}]" if names else f"{count} classes"
        raise UserError(f"--data {data}: its classes are {listed(now, info.get('num_classes'))}, the checkpoint "
                        f"{point.path} was trained on {listed(before, saved.get('num_classes'))}; resume with the "
                        "same class folders, or start a new run")


def _check_world_size(ckpt: dict, path: Path | None, world_size: int) -> None:
    saved = ckpt.get("world_size", 1)
    if saved != world_size:
        raise UserError(f"checkpoint {path} was written by {saved} process(es), this run has {world_size}; resume "
                        f"with {saved} (the data order and each rank's random streams depend on the number)")


def _train(cfg: TrainConfig, given: frozenset[str], model, run: RunDir, device: torch.device,
           ddp: Distributed) -> dict:
    """Sets the run up (resume point, config, data, task, run directory) and hands it to the loop."""
    from ..data import build_loader

    main = ddp.is_main  # writes the run directory; the other ranks only read the checkpoint it picks
    point: ResumePoint | None = None
    note = ""
    if main:
        if run.holds_run():
            run.lock.acquire()  # before reading the run's checkpoints: no other trainer changes them from here on
        point = run.resume_point(cfg.resume, cfg.model, device)
        if cfg.resume:
            cfg = dataclasses.replace(cfg, out=str(run.path))
            if point is not None:
                cfg, note = resumed_config(cfg, given, point.ckpt["config"], point.path, model)
    if cfg.resume:
        cfg = resolve_config(ddp.broadcast_object(cfg), model)  # every rank trains with rank 0's resolved config
    check_cuda_graphs(cfg, device, ddp.world_size)

    configure_backends(cfg, device)
    torch.manual_seed(cfg.seed)
    request = data_request(cfg, rank=ddp.rank, world_size=ddp.world_size, model=model)
    with collected_warnings() as data_warnings:  # shown once the run is known to be new or resumed
        loader = build_loader(request, device, memory_format=memory_format(cfg, device, model))
    batches_per_epoch = len(loader)
    if batches_per_epoch == 0:
        processes = f" x {ddp.world_size} processes" if ddp.enabled else ""
        raise UserError(f"--batch-size {cfg.batch_size}{processes}: larger than the dataset "
                        f"({loader.info.get('num_images', 0)} images); use a smaller batch")
    info = dict(loader.info)
    if point is not None and model.conditional:
        _check_classes(point, info, cfg.data)
    task = build_task(cfg, info, device, batches_per_epoch, model=model)
    if cfg.init_from and point is None:  # a new run (resuming one that started so takes its own checkpoint)
        init_from_checkpoint(task, cfg, info)
    _start_replicas(task, cfg, ddp)
    task = configure_engine(task, cfg, model)
    fixed = loader.fixed(task.fixed_size)
    if main and not run.lock.held:  # a new run directory: created only now, once the config and the data are good
        run.create()
        run.lock.acquire()
        if run.checkpoints():
            raise UserError(f"--out {run.path}: another trainer wrote checkpoints there while this one started; "
                            "run again with --resume auto to continue that run, or choose another --out")
    resume_path = point.path if point is not None else None
    if ddp.enabled:  # every rank continues from the checkpoint rank 0 chose
        chosen = ddp.broadcast_object(str(resume_path) if resume_path else None)
        resume_path = Path(chosen) if chosen else None
    ckpt = point.ckpt if point is not None else None
    if ckpt is None and resume_path is not None:
        ckpt = read_checkpoint(resume_path, cfg.model, map_location=device, training=True)
    step, pending_log = 0, {"sums": {}, "iterations": 0}
    if ckpt is not None:
        _check_world_size(ckpt, resume_path, ddp.world_size)
        load_task_state(task, ckpt, resume_path)
        pending_log = load_rank_state(task, ckpt, ddp.rank, resume_path)
        step = ckpt["step"]

    config = cfg.to_dict(model)
    if main:  # the run is known to start: only now is anything in the run directory written
        # A summary here; the whole config goes to config.json.
        total = total_iterations(cfg, batches_per_epoch, step)
        for line in summary_lines(cfg, info, task.nets, batches_per_epoch, total, step,
                                  point.path if point is not None else None, ddp.world_size):
            print(line, flush=True)
        report_data_warnings(data_warnings, resumed=point is not None)
        if ddp.enabled:
            print(f"fastgan.train: {ddp.world_size} processes ({ddp.backend}): batch {cfg.batch_size} per process, "
                  f"effective batch {cfg.batch_size * ddp.world_size} per step; learning rate {cfg.lr} not scaled "
                  f"with the number of processes; BatchNorm statistics "
                  f"{'of the global batch (--sync-bn)' if cfg.sync_bn else 'per process'}", flush=True)
        if note:
            print(f"fastgan.train: {note}", flush=True)
        run.start(config, point)
    return _Loop(cfg, config, task, loader, fixed, info, run, ddp, step, pending_log, resume_path).run()


def total_iterations(cfg: TrainConfig, batches_per_epoch: int, step: int) -> int:
    """Where the run ends: the schedule's last iteration, or --iters, or one more with --dry-run."""
    total = (cfg.epochs + cfg.epochs_decay) * batches_per_epoch
    if cfg.iters:
        total = min(total, cfg.iters)
    if cfg.dry_run:
        total = min(total, step + 1)
    return total


class _Loop:
    """The training iterations of a set-up run, with what they write: loss records, sample grids,
    checkpoints, evaluations (rank 0, through the run directory), and how they end (done, a stop signal,
    divergence)."""

    def __init__(self, cfg: TrainConfig, config: dict, task, loader, fixed: dict, info: dict, run: RunDir,
                 ddp: Distributed, step: int, pending_log: dict, resume_path: Path | None):
        self.cfg, self.config, self.task, self.loader, self.fixed, self.info = cfg, config, task, loader, fixed, info
        self.run_dir, self.ddp, self.main = run, ddp, ddp.is_main
        self.step = self.start_step = step
        self.resumed = resume_path is not None
        self.resume_path = resume_path
        self.batches_per_epoch = len(loader)
        self.total = total = total_iterations(cfg, self.batches_per_epoch, step)
        self.repeats = {phase.name: phase.repeats for phase in task.phases}
        # Loss sums since the last record (a resumed run continues the sums its checkpoint saved, so its log
        # equals an uninterrupted run's), and the iterations they cover.
        self.accum: dict[str, torch.Tensor] = {k: t.clone() for k, t in pending_log["sums"].items()}
        self.pending = pending_log["iterations"]
        self.latest: dict[str, float] = {}
        self.sample_path: Path | None = None
        self.checkpoint_path: Path | None = None
        self.writer = None
        if self.main and cfg.tensorboard:
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(str(run.file(TENSORBOARD)), purge_step=step + 1)
        self.progress = Progress(total, step, enabled=self.main)

    @property
    def last_good(self) -> str | None:
        """The newest checkpoint known to be verified and finite (for the divergence message)."""
        last = self.checkpoint_path or self.resume_path
        return str(last) if last else None

    def read_losses(self) -> None:
        step = self.step
        keys = sorted(self.accum)
        # sync: the loop's only read of the losses, every --log-every iterations. Under torchrun: the mean over
        # the ranks (the global batch's losses), so every rank takes the same divergence decision.
        values = self.ddp.mean(torch.stack([self.accum[k].float() for k in keys])).tolist()
        pending = self.pending
        # Losses as means per update; fp16 loss-scale overflows (updates the GradScaler skipped) as counts.
        latest = {k: int(v) if k.endswith("/" + AMP_SKIPPED) else v / (pending * self.repeats[k.split("/")[0]])
                  for k, v in zip(keys, values)}
        self.latest = latest
        first_step = step - pending + 1
        self.accum, self.pending = {}, 0
        lr = float(next(iter(self.task.optimizers.values())).param_groups[0]["lr"])  # a tensor under --cuda-graphs
        record = {"step": step, "epoch": step // self.batches_per_epoch, "lr": lr} | latest
        if self.main:
            self.run_dir.append_record(LOSSES, record)
        if self.writer is not None:
            for k, v in latest.items():
                self.writer.add_scalar(k, v, step)
            self.writer.add_scalar("lr", lr, step)
        self.progress.report(step, lr, latest)
        check_losses({k: v for k, v in latest.items() if not k.endswith(AMP_SKIPPED)}, first_step, step,
                     self.last_good)

    def write_sample(self) -> Path:
        path = self.run_dir.file(SAMPLES) / f"step-{self.step:08d}.png"
        self.run_dir.write_with(path, lambda: save_image(self.task.sample(self.fixed, labelled=True), path))
        self.write_report(live=True)
        return path

    def first_report(self) -> None:
        """Rate, ETA and losses after this process's first iteration rather than after the first --log-every: a
        peek at the loss sums that leaves them to read_losses."""
        keys = sorted(self.accum)
        # sync: once per process start (rank 0 only), so that a slow run shows its pace after one iteration.
        values = torch.stack([self.accum[k].float() for k in keys]).tolist()
        losses = {k: int(v) if k.endswith("/" + AMP_SKIPPED) else v / (self.pending * self.repeats[k.split("/")[0]])
                  for k, v in zip(keys, values)}
        self.progress.report(self.step, float(next(iter(self.task.optimizers.values())).param_groups[0]["lr"]), losses)

    def write_report(self, live: bool = False) -> None:
        """report.html; ``live`` while the loop goes on (the page reloads itself), not in the last rewrite."""
        self.run_dir.write_with(self.run_dir.file(REPORT), lambda: write_report(self.run_dir.path, live=live))

    def save(self) -> Path:
        """Collective under torchrun: checks the replicas and gathers every rank's own state to rank 0."""
        log = {"sums": dict(self.accum), "iterations": self.pending}
        ranks = gather_rank_states(self.task, self.ddp, self.step, self.last_good, log)
        if not self.main:
            return self.run_dir.file(checkpoint_name(self.step))
        return save_checkpoint(self.run_dir, self.task, step=self.step, epoch=self.step // self.batches_per_epoch,
                               config=self.config, info=self.info, keep=self.cfg.keep_checkpoints, ranks=ranks,
                               log=log)

    def saved_now(self) -> bool:
        return self.checkpoint_path is not None and self.checkpoint_path.name == checkpoint_name(self.step)

    def evaluate(self) -> None:
        """Rank 0 evaluates (the others wait, within --dist-timeout) and says whether to save best.pt."""
        from ..metrics import evaluate_during_training

        run = self.run_dir
        best = self.main and run.write_with(run.file(METRICS), lambda: evaluate_during_training(
            self.task, self.cfg, self.step, run.path))["best"]
        if self.ddp.broadcast_object(best):  # best.pt: a copy of the checkpoint of the lowest FID so far
            self.checkpoint_path = self.checkpoint_path if self.saved_now() else self.save()
            if self.main:
                run.write_with(run.file(BEST), lambda: atomic_write(
                    run.file(BEST), functools.partial(shutil.copyfile, self.checkpoint_path)))

    def run(self) -> dict:
        cfg, task, ddp = self.cfg, self.task, self.ddp
        stopping = None
        stop = StopSignals()
        task.train()
        # Before the first loader iterator: under --cuda-graphs this captures the phases, and a DataLoader's
        # pin-memory thread or DALI's threads calling into CUDA during a capture would invalidate it.
        step_fn = make_train_step(task, example_batch(self.fixed, cfg.batch_size), cfg.cuda_graphs) \
            if self.step < self.total else None
        try:
            stop.install()
            while self.step < self.total and stopping is None:
                epoch, position = divmod(self.step, self.batches_per_epoch)
                for batch in _batches(self.loader, epoch, position, stop):
                    step_fn(batch, self.accum)
                    with warnings.catch_warnings():
                        # fp16: the schedule follows iterations even where a GradScaler skipped an overflowing
                        # optimiser step, which LambdaLR would otherwise warn about.
                        warnings.filterwarnings("ignore", "Detected call of `lr_scheduler.step", UserWarning)
                        for scheduler in task.schedulers.values():
                            scheduler.step()
                    self.step += 1
                    self.pending += 1
                    self.progress.update()
                    self.after_iteration()
                    # Checked once per iteration: a stop lands between whole iterations (between graph replays),
                    # the same one on every rank.
                    stopping = ddp.agree_stop(stop.signum)
                    if self.step >= self.total or stopping is not None:
                        break
                if stopping is None and stop.signum is not None:  # the batch fetch ended with the signal
                    stopping = ddp.agree_stop(stop.signum)
            if stopping is not None and self.step < self.total:
                # The loss sums since the last record go into the checkpoint, not into a record of their own:
                # the resumed run writes the records an uninterrupted one would.
                if self.step > self.start_step and not self.saved_now():
                    self.checkpoint_path = self.save()
                    if self.main:
                        self.write_report()
                raise Interrupted(stopping, self.step, self.last_good)
            if self.pending:
                self.read_losses()
            if self.step > self.start_step or not self.resumed:
                if self.main and (self.sample_path is None or self.sample_path.name != f"step-{self.step:08d}.png"):
                    self.sample_path = self.write_sample()
                if not self.saved_now():
                    self.checkpoint_path = self.save()
                if self.main:
                    self.write_report()  # again: the final checkpoint came after the last grid
        except UnreadableImage as e:  # --strict: an image stopped decoding mid-run (without it: one warning, skipped)
            if ddp.enabled:  # saving is collective and the other ranks are mid-step: exit 2, as at start
                raise
            if self.step > self.start_step and not self.saved_now():  # the loss sums go into it, as for a signal
                self.checkpoint_path = self.save()
                self.write_report()
            raise DataStopped(str(e), self.step, self.last_good) from None
        finally:
            if stopping is not None and ddp.enabled:
                stop.ignore_until_exit()  # torchrun SIGTERMs the ranks still tearing down when the first one exits
            else:
                stop.restore()
            self.progress.close()
            if self.writer is not None:
                self.writer.close()
        seconds = self.progress.elapsed
        iterations = self.step - self.start_step
        step = self.step
        return {"model": cfg.model, "step": step, "epoch": step // self.batches_per_epoch, "losses": self.latest,
                "out": str(self.run_dir.path),
                "checkpoint": str(self.checkpoint_path or self.resume_path or self.run_dir.latest()),
                "sample": str(self.sample_path) if self.sample_path else None,
                "already_complete": self.resumed and iterations == 0,
                "it_per_s": iterations / seconds if seconds > 0 else 0.0,
                "images_per_s": iterations * cfg.batch_size * ddp.world_size / seconds if seconds > 0 else 0.0,
                "rank": ddp.rank, "world_size": ddp.world_size, "seconds": seconds}

    def after_iteration(self) -> None:
        """The outputs due after iteration ``self.step``: a loss record, a sample grid, a checkpoint, an evaluation."""
        cfg, step = self.cfg, self.step
        if step % cfg.log_every == 0:
            self.read_losses()
        elif self.main and step == self.start_step + 1 and step < self.total:  # the last one is read at the end
            self.first_report()
        if self.main and cfg.sample_every and step % cfg.sample_every == 0:
            self.sample_path = self.write_sample()
        if cfg.save_every and step % cfg.save_every == 0:
            self.checkpoint_path = self.save()
        if cfg.eval_every and step % cfg.eval_every == 0:
            self.evaluate()
