"""The training loop: resolve the config, build data and task, run the phases, and write the outputs.

Run directory (--out, default runs/<model>):
    config.json                the resolved config of the latest start or resume
    losses.jsonl               one record per log interval: step, epoch, lr, mean losses since the last one
    samples/step-XXXXXXXX.png  sample grids from fixed noise (every --sample-every and at the end)
    checkpoint-XXXXXXXX.pt     the full training state (every --save-every, at the end and when stopped by
                               SIGTERM/SIGINT; the newest --keep-checkpoints are kept)
    checkpoint-XXXXXXXX.pt.sha256  its checksum, verified whenever the checkpoint is read
    latest                     the newest checkpoint's file name
    lock                       flock-ed by the training process while it runs; holds its PID
    report.html                config, loss curves, sample grids and checkpoints (fastgan.report), rewritten with
                               every sample grid
    tensorboard/               scalars, with --tensorboard

How a run ends early (fastgan/train/stops.py): SIGTERM/SIGINT finish the current iteration, save it and
raise Interrupted; a non-finite loss or weight raises Diverged before anything non-finite is saved.

Under torchrun (fastgan/train/distributed.py) every process trains a replica on its block of the global
batch; rank 0 alone writes the run directory (every file above, evaluation included) and holds the lock,
and the other ranks resume from the checkpoint rank 0 chose. Checkpoints, stops and divergence checks
are collective: every rank reaches them after the same step.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import shutil
import sys
import time
import warnings
from pathlib import Path

import torch
from tqdm import tqdm

from ..data import LOADERS
from ..data.datasets import UnreadableImage
from ..errors import UserError
from ..image_files import save_image
from ..models import get_model, model_names
from ..report import write_report
from .checkpoint import (
    DamagedCheckpoint,
    checkpoint_name,
    existing_checkpoints,
    gather_rank_states,
    latest_checkpoint,
    load_checkpoint,
    load_rank_state,
    load_task_state,
    resume_candidates,
    save_checkpoint,
    set_aside,
)
from .config import TrainConfig
from .distributed import (
    Distributed,
    all_reduce_gradients,
    broadcast_tensors,
    check_sync_bn,
    convert_sync_batchnorm,
    world_from_env,
)
from .files import atomic_write
from .graphs import check_cuda_graphs, configure_engine, make_train_step, memory_format
from .init_from import checkpoint_file, chosen_nets, init_from_checkpoint
from .lock import RunLock
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
# Fields that shape the networks or the data stream: a resumed run must use the checkpoint's values.
# The schedule (--epochs, --epochs-decay, --iters) may change; Adam's settings live in the optimiser state.
RESUME_FIXED = ("model", "data", "image_size", "batch_size", "gan_loss", "seed", "lr", "beta1", "beta2")


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


def resolve_config(cfg: TrainConfig) -> TrainConfig:
    """Validates the config and fills what it leaves to the model (its recipe, then the defaults that
    depend on the data), the output directory and the device. Returns a new config; the input is left
    as it was."""
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
    device = resolve_device(cfg.device)
    _, world_size, local_rank = world_from_env()
    if world_size > 1 and device.type == "cuda":  # torchrun: one GPU per process, its LOCAL_RANK
        if device.index is not None:
            raise UserError(f"--device {cfg.device}: under torchrun each process uses cuda:LOCAL_RANK; "
                            "pass --device cuda (or auto)")
        device = resolve_device(f"cuda:{local_rank}")
    cfg.device = str(device)
    cfg.eval_feature = cfg.eval_feature or "inception"
    if cfg.eval_every and cfg.eval_feature == "inception":  # the file is found now, its contents checked in train
        from ..metrics.spaces import find_inception_weights
        cfg.inception_weights = str(find_inception_weights(cfg.inception_weights or None))
    if cfg.channels_last is None:
        cfg.channels_last = device.type == "cuda" and model.convolutional
    cfg = with_recipe(cfg)
    missing = [name for name, value in cfg.to_dict().items() if value is None]
    if missing:  # a model whose recipe misses a field it reads
        raise RuntimeError(f"model {cfg.model!r} leaves {', '.join(missing)} unset: add it to its recipe")
    model.check_size(cfg)
    if cfg.init_nets and not cfg.init_from:
        raise UserError(f"--init-nets {cfg.init_nets}: names networks to take from --init-from CHECKPOINT; add it")
    if cfg.init_from:
        if cfg.resume not in ("", "auto"):
            raise UserError(f"--init-from {cfg.init_from} --resume {cfg.resume}: choose one (--resume continues "
                            "that run; --init-from starts a new one from its weights)")
        cfg.init_from = str(checkpoint_file(cfg.init_from))  # the file, as config.json records it
        cfg.init_nets = ",".join(chosen_nets(cfg.init_nets, [n for nets in model.optimizers.values() for n in nets]))
    if not cfg.out:
        # Resuming from a file continues in that file's run directory.
        resume_file = cfg.resume not in ("", "auto")
        cfg.out = str(Path(cfg.resume).parent) if resume_file else str(Path("runs") / cfg.model)
    return cfg


def _find_resume(cfg: TrainConfig, out: Path) -> Path | None:
    """The checkpoint file given by --resume PATH, or None to start fresh (refusing an existing run)."""
    if cfg.resume:
        path = Path(cfg.resume)
        if out.is_dir() and existing_checkpoints(out) and path.resolve().parent != out.resolve():
            raise UserError(f"--out {out}: already holds checkpoints of another run; choose another --out "
                            f"for the run resumed from {path}")
        return path
    if out.is_dir() and existing_checkpoints(out):
        raise UserError(f"--out {out}: already holds checkpoints; pass --resume auto to continue that run "
                        "or choose another --out")
    return None


def _newest_valid(out: Path, model: str, device: torch.device) -> tuple[Path | None, dict | None]:
    """--resume auto: the newest checkpoint that reads and verifies. Damaged newer ones are set aside
    (renamed *.damaged) with a warning naming both files."""
    damaged: list[tuple[Path, DamagedCheckpoint]] = []
    for path in resume_candidates(out):
        try:
            ckpt = load_checkpoint(path, model, map_location=device)
        except DamagedCheckpoint as e:
            damaged.append((path, e))
            continue
        for bad, error in damaged:
            aside = set_aside(bad)
            print(f"fastgan.train: warning: {error}; resuming from {path} instead (the damaged file is kept as "
                  f"{aside.name})", file=sys.stderr, flush=True)
        return path, ckpt
    if damaged:
        raise UserError(f"{damaged[0][1]}; no older checkpoint of the run is valid either")
    return None, None


def _resume_point(cfg: TrainConfig, out: Path, device: torch.device) -> tuple[Path | None, dict | None]:
    """The checkpoint to resume from (None to start fresh), loaded and checked against the config."""
    if cfg.resume == "auto":
        path, ckpt = _newest_valid(out, cfg.model, device) if out.is_dir() else (None, None)
    else:
        path = _find_resume(cfg, out)
        ckpt = None if path is None else load_checkpoint(path, cfg.model, map_location=device)
    if ckpt is not None:
        _check_resume_config(cfg, ckpt["config"], path)
    return path, ckpt


def _check_resume_config(cfg: TrainConfig, saved: dict, path: Path) -> None:
    for name in resume_fixed(get_model(cfg.model)):
        if name in saved and saved[name] != getattr(cfg, name):
            raise UserError(f"{_flag(name)} {getattr(cfg, name)!r} differs from {saved[name]!r} in "
                            f"checkpoint {path}; resume with the same value")


def _write_json(path: Path, obj) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(obj, indent=2) + "\n"))


def _trim_log(log: Path, step: int) -> None:
    """Drops records after ``step`` (written by the interrupted run after its last checkpoint)."""
    if not log.is_file():
        return
    kept = [line for line in log.read_text().splitlines() if line and json.loads(line)["step"] <= step]
    atomic_write(log, lambda tmp: tmp.write_text("".join(line + "\n" for line in kept)))


def _setup_determinism(cfg: TrainConfig, device: torch.device) -> None:
    if cfg.deterministic:
        # cuBLAS needs a fixed workspace for deterministic GEMMs.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(cfg.deterministic)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = not cfg.deterministic


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


def train(cfg: TrainConfig) -> dict:
    """Trains cfg.model; returns a summary (step, epoch, last logged losses, paths, it/s, already_complete).

    Holds the run directory's lock (fastgan.train.lock) from before it reads the run's checkpoints to the
    end. Raises UserError for bad input, Interrupted after saving on SIGTERM/SIGINT, Diverged on a
    non-finite loss or weight (fastgan.train.stops)."""
    cfg = resolve_config(cfg)
    ddp = Distributed.setup(torch.device(cfg.device), cfg.dist_timeout)  # a no-op without torchrun
    lock = RunLock(cfg.out)
    try:
        summary = _train(cfg, lock, ddp)
    except TrainingStopped:
        # Every rank stopped after the same step with its peers alive: close the group in order, as at the end.
        # Left to the interpreter's exit, gloo's threads were destroyed unjoined and the process aborted
        # (SIGABRT, "terminate called without an active exception"; 1 of about 15 stopped ranks on CPU).
        ddp.close(barrier=True)
        raise
    finally:
        lock.release()
    # Not on errors: a group whose peer died may block in its destructor; the process exit frees it.
    ddp.close()
    return summary


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


def _check_world_size(ckpt: dict, path: Path | None, world_size: int) -> None:
    saved = ckpt.get("world_size", 1)
    if saved != world_size:
        raise UserError(f"checkpoint {path} was written by {saved} process(es), this run has {world_size}; resume "
                        f"with {saved} (the data order and each rank's random streams depend on the number)")


def _train(cfg: TrainConfig, lock: RunLock, ddp: Distributed) -> dict:
    from ..data import build_loader

    device = torch.device(cfg.device)
    check_cuda_graphs(cfg, device, ddp.world_size)
    out = Path(cfg.out)
    main = ddp.is_main  # writes the run directory; the other ranks only read the checkpoint it picks
    if main and out.is_dir():
        lock.acquire()  # before reading the run's checkpoints: no other trainer changes them from here on
    resume_path, ckpt = _resume_point(cfg, out, device) if main else (None, None)

    _setup_determinism(cfg, device)
    torch.manual_seed(cfg.seed)
    request = data_request(cfg, rank=ddp.rank, world_size=ddp.world_size)
    loader = build_loader(request, device, memory_format=memory_format(cfg, device))
    batches_per_epoch = len(loader)
    if batches_per_epoch == 0:
        processes = f" x {ddp.world_size} processes" if ddp.enabled else ""
        raise UserError(f"--batch-size {cfg.batch_size}{processes}: larger than the dataset "
                        f"({loader.info.get('num_images', 0)} images); use a smaller batch")
    info = dict(loader.info)
    task = build_task(cfg, info, device, batches_per_epoch)
    if cfg.init_from and ckpt is None:  # a new run (resuming one that started so takes its own checkpoint)
        init_from_checkpoint(task, cfg, info)
    _start_replicas(task, cfg, ddp)
    task = configure_engine(task, cfg)
    fixed = loader.fixed(task.fixed_size)
    if main and not lock.held:  # a new run directory: created only now, once the config and the data are good
        out.mkdir(parents=True, exist_ok=True)
        lock.acquire()
        if existing_checkpoints(out):  # another trainer started the same run meanwhile and has ended
            resume_path, ckpt = _resume_point(cfg, out, device)
    if ddp.enabled:  # --resume auto: every rank continues from the checkpoint rank 0 chose
        chosen = ddp.broadcast_object(str(resume_path) if resume_path else None)
        resume_path = Path(chosen) if chosen else None
        if not main and resume_path is not None:
            ckpt = load_checkpoint(resume_path, cfg.model, map_location=device)
    step = 0
    if ckpt is not None:
        _check_world_size(ckpt, resume_path, ddp.world_size)
        load_task_state(task, ckpt)
        load_rank_state(task, ckpt, ddp.rank)
        step = ckpt["step"]

    config = cfg.to_dict()
    log_path = out / "losses.jsonl"
    if main:
        print("fastgan.train: " + json.dumps(config), flush=True)
        if ddp.enabled:
            print(f"fastgan.train: {ddp.world_size} processes ({ddp.backend}): batch {cfg.batch_size} per process, "
                  f"effective batch {cfg.batch_size * ddp.world_size} per step; learning rate {cfg.lr} not scaled "
                  f"with the number of processes; BatchNorm statistics "
                  f"{'of the global batch (--sync-bn)' if cfg.sync_bn else 'per process'}", flush=True)
        out.mkdir(parents=True, exist_ok=True)
        (out / "samples").mkdir(exist_ok=True)
        _write_json(out / "config.json", config)
        if ckpt is not None:
            _trim_log(log_path, step)
        else:
            log_path.unlink(missing_ok=True)

    total = (cfg.epochs + cfg.epochs_decay) * batches_per_epoch
    if cfg.iters:
        total = min(total, cfg.iters)
    if cfg.dry_run:
        total = min(total, step + 1)

    writer = None
    if main and cfg.tensorboard:
        from torch.utils.tensorboard import SummaryWriter
        writer = SummaryWriter(str(out / "tensorboard"), purge_step=step + 1)

    repeats = {phase.name: phase.repeats for phase in task.phases}
    accum: dict[str, torch.Tensor] = {}
    pending = 0  # iterations accumulated in accum since the last read
    latest: dict[str, float] = {}
    start_step, start_time = step, time.perf_counter()
    bar = tqdm(total=total, initial=step, unit="it", dynamic_ncols=True, disable=None if main else True,
               file=sys.stderr)

    def read_losses() -> None:
        nonlocal accum, pending, latest
        keys = sorted(accum)
        # sync: the loop's only read of the losses, every --log-every iterations. Under torchrun: the mean over
        # the ranks (the global batch's losses), so every rank takes the same divergence decision.
        values = ddp.mean(torch.stack([accum[k].float() for k in keys])).tolist()
        # Losses as means per update; fp16 loss-scale overflows (updates the GradScaler skipped) as counts.
        latest = {k: int(v) if k.endswith("/" + AMP_SKIPPED) else v / (pending * repeats[k.split("/")[0]])
                  for k, v in zip(keys, values)}
        first_step = step - pending + 1
        accum, pending = {}, 0
        lr = float(next(iter(task.optimizers.values())).param_groups[0]["lr"])  # a tensor under --cuda-graphs
        record = {"step": step, "epoch": step // batches_per_epoch, "lr": lr} | latest
        if main:
            with open(log_path, "a") as f:
                f.write(json.dumps(record) + "\n")
        if writer is not None:
            for k, v in latest.items():
                writer.add_scalar(k, v, step)
            writer.add_scalar("lr", lr, step)
        short = {k: f"{v:.3g}" for k, v in latest.items()
                 if k.endswith("total") or "cycle" in k or (k.endswith(AMP_SKIPPED) and v)}
        if main and bar.disable:
            print(f"step {step}/{total} " + " ".join(f"{k}={v}" for k, v in short.items()), flush=True)
        elif main:
            bar.set_postfix(short, refresh=False)
        last_good = checkpoint_path or resume_path
        check_losses({k: v for k, v in latest.items() if not k.endswith(AMP_SKIPPED)}, first_step, step,
                     str(last_good) if last_good else None)

    def write_sample() -> Path:
        path = out / "samples" / f"step-{step:08d}.png"
        save_image(task.sample(fixed), path)
        write_report(out)
        return path

    def save() -> Path:
        """Collective under torchrun: checks the replicas and gathers every rank's own state to rank 0."""
        ranks = gather_rank_states(task, ddp, step, str(checkpoint_path or resume_path or "") or None)
        if not main:
            return out / checkpoint_name(step)
        return save_checkpoint(out, task, step=step, epoch=step // batches_per_epoch, config=config, info=info,
                               keep=cfg.keep_checkpoints, ranks=ranks)

    def saved_now() -> bool:
        return checkpoint_path is not None and checkpoint_path.name.endswith(f"{step:08d}.pt")

    if cfg.eval_every:  # a missing weights or classifier file, or too small an --eval-n, fails now
        from ..metrics import evaluate_during_training, feature_space
        from ..metrics.evaluation import TRAINING_METRICS, check_sizes
        check_sizes(feature_space(cfg.eval_feature, cfg.inception_weights or None), TRAINING_METRICS, cfg.eval_n,
                    None, flag="--eval-n")

    sample_path = checkpoint_path = step_fn = stopping = None
    stop = StopSignals()
    task.train()
    try:
        stop.install()
        while step < total and stopping is None:
            epoch, position = divmod(step, batches_per_epoch)
            for batch in _batches(loader, epoch, position, stop):
                if step_fn is None:  # graphs are captured for the first batch's shapes
                    step_fn = make_train_step(task, batch, cfg.cuda_graphs)
                step_fn(batch, accum)
                with warnings.catch_warnings():
                    # fp16: the schedule follows iterations even where a GradScaler skipped an overflowing
                    # optimiser step, which LambdaLR would otherwise warn about.
                    warnings.filterwarnings("ignore", "Detected call of `lr_scheduler.step", UserWarning)
                    for scheduler in task.schedulers.values():
                        scheduler.step()
                step += 1
                pending += 1
                bar.update(1)
                if step % cfg.log_every == 0:
                    read_losses()
                if main and cfg.sample_every and step % cfg.sample_every == 0:
                    sample_path = write_sample()
                if cfg.save_every and step % cfg.save_every == 0:
                    checkpoint_path = save()
                if cfg.eval_every and step % cfg.eval_every == 0:
                    # Rank 0 evaluates (the others wait, within --dist-timeout) and says whether to save best.pt.
                    best = main and evaluate_during_training(task, cfg, step, out)["best"]
                    if ddp.broadcast_object(best):  # best.pt: a copy of the checkpoint of the lowest FID so far
                        checkpoint_path = checkpoint_path if saved_now() else save()
                        if main:
                            atomic_write(out / "best.pt", functools.partial(shutil.copyfile, checkpoint_path))
                # Checked once per iteration: a stop lands between whole iterations (between graph replays),
                # the same one on every rank.
                stopping = ddp.agree_stop(stop.signum)
                if step >= total or stopping is not None:
                    break
            if stopping is None and stop.signum is not None:  # the batch fetch ended with the signal
                stopping = ddp.agree_stop(stop.signum)
        if pending:
            read_losses()
        if stopping is not None and step < total:
            if step > start_step and not saved_now():
                checkpoint_path = save()
                if main:
                    write_report(out)
            saved = checkpoint_path or resume_path
            raise Interrupted(stopping, step, str(saved) if saved else None)
        if step > start_step or ckpt is None:
            if main and (sample_path is None or not sample_path.name.endswith(f"{step:08d}.png")):
                sample_path = write_sample()
            if not saved_now():
                checkpoint_path = save()
            if main:
                write_report(out)  # again: the final checkpoint came after the last grid
    except UnreadableImage as e:  # --strict: an image stopped decoding mid-run (without it: one warning, skipped)
        if ddp.enabled:  # saving is collective and the other ranks are mid-step: exit 2, as at start
            raise
        if pending:
            read_losses()
        if step > start_step and not saved_now():
            checkpoint_path = save()
            write_report(out)
        saved = checkpoint_path or resume_path
        raise DataStopped(str(e), step, str(saved) if saved else None) from None
    finally:
        if stopping is not None and ddp.enabled:
            stop.ignore_until_exit()  # torchrun SIGTERMs the ranks still tearing down when the first one exits
        else:
            stop.restore()
        bar.close()
        if writer is not None:
            writer.close()
    seconds = time.perf_counter() - start_time
    iterations = step - start_step
    return {"model": cfg.model, "step": step, "epoch": step // batches_per_epoch, "losses": latest,
            "out": str(out), "checkpoint": str(checkpoint_path or latest_checkpoint(out)),
            "sample": str(sample_path) if sample_path else None,
            "already_complete": ckpt is not None and iterations == 0,
            "it_per_s": iterations / seconds if seconds > 0 else 0.0,
            "images_per_s": iterations * cfg.batch_size * ddp.world_size / seconds if seconds > 0 else 0.0,
            "rank": ddp.rank, "world_size": ddp.world_size}
