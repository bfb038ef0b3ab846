"""--cuda-graphs: each training phase (forward, backward, optimiser step, loss-scale update, loss
accumulation) captured once as a CUDA graph and replayed every iteration.

How the eager step (fastgan.train.steps.train_step) becomes replayable:
- Static inputs: the loader's batch is copied into buffers allocated once (``copy_(non_blocking=True)``;
  a loader that writes into :attr:`GraphedTrainStep.static_batch` itself skips the copy).
- Optimisers: every param group gets ``capturable=True`` and its learning rate as a 0-dim fp32 device
  tensor; the LR schedulers fill that tensor in place outside the graph (torch's LRScheduler does
  ``fill_`` on tensor learning rates), so the schedule needs no re-capture. Adam's state (step count
  included) lives on the device and is updated inside the graph.
- fp16 loss scaling: torch's GradScaler is captured as it is, one per optimiser (D and G apart), when
  the optimiser is fused: then ``scaler.step`` hands ``grad_scale``/``found_inf`` to the fused kernel,
  which skips the update on overflow on the device, and ``scaler.update`` is ``_amp_update_scale_`` on
  device tensors. With an unfused optimiser ``scaler.step`` reads ``found_inf`` with ``.item()``, which
  cannot be captured: that combination fails at start with the reason.
- RNG: noise and image-pool choices are drawn with torch's CUDA generator, which CUDA graphs replay
  with a fresh Philox offset each time, so the graphed run draws the same numbers as the eager one.
- Losses: added into fp32 device accumulators inside the graph; the loop reads them at log intervals.
- Gradients: set to None before each capture, so backward allocates them in the graph's memory pool
  and every replay overwrites them (the eager step's zero_grad(set_to_none=True)).

Memory: all phase graphs share one private memory pool (one pool instead of one per phase: the phases'
activations are not alive at the same time, so the step needs the largest phase's memory, not the sum).
That is safe because the graphs replay in capture order, one after the other, never concurrently: a
later graph may reuse the memory an earlier graph freed at the end of its capture, and the earlier graph
is done with it by then. A gradient lives from its phase's backward to that phase's optimiser step, both
inside the phase's graph, and nothing outside the graphs may read it: between replays ``p.grad`` is not a
gradient to use (a later phase's graph, or a second phase of the same optimiser, may have written over
its memory). Gradient clipping, gradient-norm logging or a hook that reads ``.grad`` belongs inside the
phase (fastgan.train.steps.run_phase), where it is captured too. The CPU stand-in of this module
(fastgan.testing.tasks.graphed_standin) fails any read of a gradient between replays.

Capture order: the trainer builds this step before it starts iterating the loader, from a batch of the
loader's shapes, dtypes and memory format (:func:`example_batch`), so no DataLoader worker, pin-memory
thread or DALI thread exists while the phases are captured. Capture uses torch's default
``capture_error_mode="global"``, under which another thread's CUDA call during the capture (the
pin-memory thread's ``cudaHostAlloc``, say) invalidates it; with no such thread alive, "global" also
catches an unsafe call made by the capturing thread itself.

Warm-up: before capture every phase runs eagerly a few times on a side stream (cuDNN algorithm choice,
Triton compilation, lazy optimiser and GradScaler state). Those warm-up updates are then undone:
parameters, buffers, optimiser state, loss scales, image pools and the RNG are put back in place, so
iteration 1 of a graphed run is iteration 1 of the eager run.

Limits: build the step after everything that replaces tensors (resuming a checkpoint with
optimizer.load_state_dict, .to(memory_format=...), torch.compile); afterwards only in-place changes
reach the graphs. Autocast keeps its weight-cast cache inside the graphs: each phase's autocast region
opens and closes inside its capture, so each weight's one cast is a kernel of the graph that every replay
runs again on the weights of the moment (the reasoning in fastgan/ops/_casts.py).
"""

from __future__ import annotations

import functools
import os
import warnings
from collections.abc import Callable

import torch
from torch import Tensor

from .. import ops
from ..errors import UserError
from ..models import get_model
from ..nn import set_impl
from .steps import Task, run_phase, set_trainable, train_step

__all__ = ["GraphedTrainStep", "check_cuda_graphs", "compile_nets", "configure_backends", "configure_engine",
           "example_batch", "make_capturable",
           "make_train_step", "memory_format", "WARMUP_ITERS"]

WARMUP_ITERS = 3  # eager iterations before capture: cuDNN's algorithm choice and lazy state settle in 1-2


def check_cuda_graphs(cfg, device: torch.device, world_size: int = 1) -> None:
    """Fails at start, with the flag to change, when ``--cuda-graphs`` cannot run for this config."""
    if not cfg.cuda_graphs:
        return
    if world_size > 1:
        # run_phase's gradient all-reduce (fastgan/train/distributed.py) would be captured with its phase, which
        # NCCL allows, but no multi-GPU machine has run it yet: refused at start rather than shipped untested.
        raise UserError(f"--cuda-graphs with {world_size} processes: capturing the gradient all-reduce in CUDA "
                        "graphs is untested (no multi-GPU machine was available); drop --cuda-graphs under torchrun")
    if device.type != "cuda":
        raise UserError(f"--cuda-graphs needs a CUDA device, but the run is on {device}; "
                        "drop --cuda-graphs or use --device cuda")
    if cfg.compile:
        raise UserError("--cuda-graphs with --compile: choose one (torch.compile's own CUDA graphs are "
                        "mode='reduce-overhead'); fastgan's graphs capture the eager step")


def configure_backends(cfg, device: torch.device) -> None:
    """The trainer's backend settings for ``cfg``: deterministic algorithms with --deterministic, else cuDNN's
    benchmark mode on CUDA (each convolution shape times its algorithms once, then uses the fastest). The
    trainer and the training-step benchmark both call this, so a benchmark measures what a run runs."""
    if cfg.deterministic:
        # cuBLAS needs a fixed workspace for deterministic GEMMs.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(cfg.deterministic)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = not cfg.deterministic


def memory_format(cfg, device: torch.device, model=None) -> torch.memory_format:
    """channels_last for conv models on CUDA unless --no-channels-last; the batches and nets use it.
    ``model``: cfg.model's definition, when the caller has it."""
    if not (model or get_model(cfg.model)).convolutional:
        return torch.contiguous_format
    on = cfg.channels_last if cfg.channels_last is not None else device.type == "cuda"
    return torch.channels_last if on else torch.contiguous_format


def compile_nets(nets, mode: str | None = None) -> None:
    """``nn.Module.compile`` on each network, in place (``mode``: torch.compile's, e.g. "reduce-overhead")."""
    # torch 2.11 (the GPU machines') skips the guard on a parameter's requires_grad when its module's dict is
    # unchanged (pytorch/pytorch#139476, fixed by #177158): set_trainable freezes G in the D phase, and G
    # compiled there would keep running without autograd in the G phase ("element 0 of tensors does not
    # require grad"). Checking the tensors' guards again costs microseconds per call.
    torch._dynamo.config.skip_tensor_guards_with_matching_dict_tags = False
    for net in nets:
        net.compile(mode=mode)


def configure_engine(task: Task, cfg, model=None) -> Task:
    """Applies --impl, --channels-last and --compile to the task's networks, in place; call it before
    loading a checkpoint so the optimiser state follows the parameters' memory format.

    In place because the phases hold the networks themselves: ``nn.Module.compile`` compiles a module's
    forward without replacing the object, and ``.to(memory_format=...)`` keeps the Parameter objects.
    """
    fmt = memory_format(cfg, task.device, model)
    for net in task.nets.values():
        set_impl(net, cfg.impl)
        if fmt is torch.channels_last:
            net.to(memory_format=fmt)
    if cfg.compile:
        compile_nets(task.nets.values())
    return task


def example_batch(fixed: dict[str, Tensor], batch_size: int) -> dict[str, Tensor]:
    """A training batch's shapes, dtypes, device and memory format, made without iterating the loader.

    Args:
        fixed: the loader's ``fixed(n)`` batch (the keys, dtypes, device and layout of its training batches).
        batch_size: rows per training batch; ``fixed``'s rows are repeated cyclically to fill them.
    """
    batch = {}
    for key, value in fixed.items():
        rows = torch.arange(batch_size, device=value.device) % value.shape[0]
        picked = value.index_select(0, rows)
        if value.dim() == 4 and value.is_contiguous(memory_format=torch.channels_last) and not value.is_contiguous():
            picked = picked.contiguous(memory_format=torch.channels_last)
        batch[key] = picked
    return batch


def make_train_step(task: Task, batch: dict, cuda_graphs: bool) -> Callable[[dict, dict], None]:
    """The loop's step function ``step(batch, accum)``: graphed, or the eager train_step."""
    if cuda_graphs:
        return GraphedTrainStep(task, batch)
    return functools.partial(train_step, task)


def _check_task(task: Task) -> None:
    if task.device.type != "cuda":
        raise UserError(f"--cuda-graphs needs a CUDA device, but the task is on {task.device}; "
                        "drop --cuda-graphs or use --device cuda")
    for key, optimizer in task.optimizers.items():
        if any("capturable" not in group for group in optimizer.param_groups):
            raise UserError(f"--cuda-graphs: optimiser {key!r} ({type(optimizer).__name__}) cannot update "
                            "inside a CUDA graph (no capturable mode); drop --cuda-graphs")
        if task.scalers[key].is_enabled() and not getattr(optimizer, "_step_supports_amp_scaling", False):
            raise UserError(f"--cuda-graphs --amp-dtype fp16: optimiser {key!r} is not fused, and GradScaler "
                            "then reads found_inf with .item(), which a CUDA graph cannot capture; "
                            "use --amp-dtype bf16 or drop --cuda-graphs")


def make_capturable(optimizer: torch.optim.Optimizer, device: torch.device) -> None:
    """The optimiser as the graphs step it: capturable, its learning rate a device tensor (see the module doc)."""
    for group in optimizer.param_groups:
        group["capturable"] = True
        # float(): a learning rate resumed from a graphed run's checkpoint is already a tensor.
        group["lr"] = torch.tensor(float(group["lr"]), dtype=torch.float32, device=device)


class _Snapshot:
    """The training state before warm-up, put back in place (same tensors) after capture."""

    def __init__(self, task: Task):
        modules = list(task.nets.values()) + list(task.state.values())
        tensors = [t for m in modules for t in (*m.parameters(), *m.buffers())]
        self.had_state = {id(opt): set(opt.state) for opt in task.optimizers.values()}
        tensors += [v for opt in task.optimizers.values() for st in opt.state.values()
                    for v in st.values() if isinstance(v, Tensor)]
        self.saved = [(t, t.detach().clone()) for t in tensors]
        self.task = task
        self.scalers = {key: s.state_dict() for key, s in task.scalers.items()}  # sync: once, at start
        self.cpu_rng = torch.get_rng_state()
        self.device_rng = torch.cuda.get_rng_state(task.device) if task.device.type == "cuda" else None

    @torch.no_grad()
    def restore(self) -> None:
        for live, saved in self.saved:
            live.copy_(saved)
        for opt in self.task.optimizers.values():
            for param, st in opt.state.items():
                if param not in self.had_state[id(opt)]:
                    # State created by warm-up: zero is Adam's initial state (moments and step count).
                    for v in st.values():
                        if isinstance(v, Tensor):
                            v.zero_()
        for key, scaler in self.task.scalers.items():
            if self.scalers[key]:
                scaler.load_state_dict(self.scalers[key])  # fills the scale tensors in place
        torch.set_rng_state(self.cpu_rng)
        if self.device_rng is not None:
            torch.cuda.set_rng_state(self.device_rng, self.task.device)


class GraphedTrainStep:
    """``step(batch, accum)`` with each phase of ``task`` replayed from a CUDA graph.

    Built from one example batch (shapes, dtypes and memory formats of every later batch). ``accum``
    is the loop's dict of loss sums: the step puts its device accumulators into it (starting them from
    what a new dict holds, else zero), so the loop reads them like the eager step's.
    """

    def __init__(self, task: Task, batch: dict, warmup_iters: int = WARMUP_ITERS):
        _check_task(task)
        self.task = task
        self.static_batch = {k: torch.empty_like(v).copy_(v) for k, v in batch.items()}
        for optimizer in task.optimizers.values():
            make_capturable(optimizer, task.device)
        snapshot = _Snapshot(task)
        self.accum = self._warm_up(warmup_iters)
        self.graphs = self._capture()
        snapshot.restore()
        torch.cuda.synchronize(task.device)  # sync: once, at start, so capture errors surface here

    def _autocast(self):
        # The region, and with it every cached weight cast, begins and ends inside run_phase, so inside the
        # capture: the cache never hands a captured tensor to eager code, nor an old cast to a new replay.
        return ops.autocast("cuda", self.task.amp_dtype)

    def _warm_up(self, iters: int) -> dict[str, Tensor]:
        task, device = self.task, self.task.device
        keys: set[str] = set()
        stream = torch.cuda.Stream(device)
        stream.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(stream), warnings.catch_warnings():
            # Optimisers made capturable warn when they step outside a graph; here that is the point.
            warnings.filterwarnings("ignore", message=".*capturable=True.*")
            for _ in range(max(1, iters)):
                for phase in task.phases:
                    set_trainable(task, phase)
                    for _ in range(phase.repeats):
                        task.optimizers[phase.optimizer].zero_grad(set_to_none=True)
                        losses = run_phase(task, phase, self.static_batch, self._autocast)
                        keys.update(f"{phase.name}/{name}" for name in losses)
        torch.cuda.current_stream(device).wait_stream(stream)
        set_trainable(task, None)
        return {key: torch.zeros((), dtype=torch.float32, device=device) for key in sorted(keys)}

    def _capture(self) -> list[torch.cuda.CUDAGraph]:
        task = self.task
        pool = torch.cuda.graph_pool_handle()  # one pool for every phase: see Memory in the module docstring
        graphs = []
        for phase in task.phases:
            set_trainable(task, phase)
            task.optimizers[phase.optimizer].zero_grad(set_to_none=True)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                losses = run_phase(task, phase, self.static_batch, self._autocast)
                # One multi-tensor launch for all of the phase's losses instead of one add_ each (the same fp32 adds).
                torch._foreach_add_([self.accum[f"{phase.name}/{name}"] for name in losses],
                                    [value.detach() for value in losses.values()])
            graphs.append(graph)
        set_trainable(task, None)
        return graphs

    def __call__(self, batch: dict, accum: dict[str, Tensor]) -> None:
        for key, static in self.static_batch.items():
            given = batch[key]
            if given is not static:
                if given.shape != static.shape or given.dtype != static.dtype:
                    raise ValueError(f"GraphedTrainStep: batch[{key!r}] is {tuple(given.shape)} "
                                     f"{given.dtype}; captured for {tuple(static.shape)} {static.dtype}")
                static.copy_(given, non_blocking=True)
        for key, static in self.accum.items():
            if accum.get(key) is not static:
                # A new log interval: the loop handed in a fresh dict, empty or holding the sums a resumed run
                # carries over from its checkpoint.
                if key in accum:
                    static.copy_(accum[key])
                else:
                    static.zero_()
                accum[key] = static
        for phase, graph in zip(self.task.phases, self.graphs):
            for _ in range(phase.repeats):
                graph.replay()
