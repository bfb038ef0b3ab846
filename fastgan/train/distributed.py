"""Data-parallel training under ``torchrun``: one model replica per process, gradients averaged per phase.

Set up from torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK and the rendezvous it already did):
NCCL on CUDA (device cuda:LOCAL_RANK), gloo on CPU, with --dist-timeout on every collective. Without
torchrun (no WORLD_SIZE, or 1) nothing here runs: no process group, world size 1.

Why not DistributedDataParallel: DDP's reducer assumes one forward and one backward per step over a fixed
set of parameters. A GAN step is phases (fastgan.models.base.Phase): D is used inside the G phase with
its parameters frozen, the phases update different parameter sets, and --cuda-graphs captures each phase
on its own. So each phase averages the gradients of its own optimiser's parameters with explicit
collectives on flattened buckets, after backward and before the optimiser step (``Task.gradient_sync``,
called by fastgan.train.steps.run_phase): the same arithmetic as DDP's buckets, at a point the phases
control. Under fp16 loss scaling the scaled gradients are averaged before the GradScaler unscales them,
so every rank finds the same inf/NaN and skips (or takes) the same update.

Random numbers: every rank seeds alike, so the global RNG streams stay equal across ranks. A phase's noise
and fake labels are drawn for the whole global batch, each rank keeping its rows
(fastgan.models.base.global_batch_rows); N ranks of batch B then draw what one process of batch N*B does.

What stays per rank: the batch (each rank serves its block of the global batch, fastgan.data), BatchNorm
statistics without --sync-bn (as data-parallel GAN code keeps them unless told otherwise), CycleGAN's
image pools and pix2pix's dropout masks (drawn per rank, B at a time, from the common stream). Each rank's
RNG state and pools are saved in checkpoints (fastgan.train.checkpoint.gather_rank_states), which also
checks that the parameters are identical on every rank.

Control flow that must agree across ranks (a rank that leaves a loop early would leave the others
waiting in a collective until the timeout): a stop signal is agreed once per iteration by an all-reduce
(MAX) of a CPU flag on a gloo group, which never waits for the GPU (:meth:`Distributed.agree_stop`);
logged losses are averaged over the ranks before the divergence check, so every rank decides alike.
"""

from __future__ import annotations

import datetime
import hashlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

from ..errors import UserError
from ..nn import BatchNorm2dAct, unfuse_batch_norm_act
from .stops import TrainingStopped

__all__ = ["BUCKET_BYTES", "Distributed", "GlobalBatchNorm2d", "ReplicasDiffer", "all_reduce_gradients",
           "broadcast_tensors", "check_sync_bn", "convert_sync_batchnorm", "has_batch_norm", "parameter_digest",
           "world_from_env"]

BUCKET_BYTES = 25 * 2**20  # gradients per all-reduce: DDP's default bucket_cap_mb


def world_from_env() -> tuple[int, int, int]:
    """(rank, world size, local rank) as torchrun sets them; (0, 1, 0) outside torchrun."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return 0, 1, 0
    return int(os.environ["RANK"]), world_size, int(os.environ.get("LOCAL_RANK", "0"))


@dataclass
class Distributed:
    """This process's place in the job. ``group`` does the training collectives (NCCL or gloo);
    ``cpu_group`` (gloo) the control ones on CPU tensors and Python objects."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str = ""
    group: dist.ProcessGroup | None = None
    cpu_group: dist.ProcessGroup | None = None

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def setup(cls, device: torch.device, timeout_s: int) -> Distributed:
        """Joins torchrun's job on ``device`` (type cpu or cuda); a single process without torchrun."""
        rank, world_size, local_rank = world_from_env()
        if world_size == 1:
            return cls()
        backend = "nccl" if device.type == "cuda" else "gloo"
        timeout = datetime.timedelta(seconds=timeout_s)
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend, timeout=timeout, device_id=device if device.type == "cuda" else None)
        group = dist.group.WORLD
        cpu_group = group if backend == "gloo" else dist.new_group(backend="gloo", timeout=timeout)
        return cls(rank, world_size, local_rank, backend, group, cpu_group)

    def close(self, barrier: bool = False) -> None:
        """Destroys the process group; ``barrier``: first waits for every rank (on the gloo group, within
        --dist-timeout), so that no rank closes its connections while a peer is still in a collective."""
        if self.enabled and dist.is_initialized():
            if barrier:
                dist.barrier(group=self.cpu_group)
            dist.destroy_process_group()

    # --- collectives of the loop (no-ops in a single process) ---

    def broadcast_object(self, obj):
        """Rank 0's ``obj`` on every rank (e.g. the checkpoint --resume auto chose)."""
        if not self.enabled:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0, group=self.cpu_group)
        return box[0]

    def all_gather_object(self, obj) -> list:
        if not self.enabled:
            return [obj]
        out = [None] * self.world_size
        dist.all_gather_object(out, obj, group=self.cpu_group)
        return out

    def gather_object(self, obj) -> list | None:
        """Every rank's ``obj`` on rank 0 (in rank order), None elsewhere."""
        if not self.enabled:
            return [obj]
        out = [None] * self.world_size if self.is_main else None
        dist.gather_object(obj, out, dst=0, group=self.cpu_group)
        return out

    def agree_stop(self, signum: int | None) -> int | None:
        """The stop signal every rank acts on after this iteration: the largest one any rank received
        (SIGTERM over SIGINT), or None. One all-reduce of a CPU flag on the gloo group per iteration, so
        all ranks leave the loop after the same step and save it together; it never waits for the GPU."""
        if not self.enabled:
            return signum
        flag = torch.tensor([signum or 0], dtype=torch.int32)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self.cpu_group)
        return int(flag) or None

    def mean(self, values: Tensor) -> Tensor:
        """The mean over the ranks of ``values`` (the logged losses: one read every --log-every steps)."""
        if not self.enabled:
            return values
        values = values.clone()
        dist.all_reduce(values, group=self.group)
        return values / self.world_size


def _buckets(tensors: list[Tensor], bucket_bytes: int) -> list[list[Tensor]]:
    """Consecutive runs of tensors of one dtype and device, each at most ``bucket_bytes`` (or one tensor)."""
    buckets: list[list[Tensor]] = []
    size = 0
    for t in tensors:
        last = buckets[-1] if buckets else None
        nbytes = t.numel() * t.element_size()
        if last is None or t.dtype != last[0].dtype or t.device != last[0].device or size + nbytes > bucket_bytes:
            buckets.append([t])
            size = nbytes
        else:
            last.append(t)
            size += nbytes
    return buckets


def all_reduce_gradients(params, world_size: int, group=None, bucket_bytes: int = BUCKET_BYTES) -> None:
    """Replaces the gradient of each of ``params`` that has one by its mean over the ``world_size`` ranks
    of ``group``: flattened into buckets, one all-reduce each, copied back in place. Every rank must pass
    the same parameters with the same gradients present (the same phase of the same model). Enqueues device
    work only (no host sync)."""
    grads = [p.grad for p in params if p.grad is not None]
    for bucket in _buckets(grads, bucket_bytes):
        flat = _flatten_dense_tensors(bucket)
        # Divided before the sum (DDP's gradient_predivide_factor): fp16 sums of scaled gradients stay in range.
        flat.div_(world_size)
        dist.all_reduce(flat, group=group)  # SUM: gloo has no ReduceOp.AVG
        for grad, averaged in zip(bucket, _unflatten_dense_tensors(flat, bucket)):
            grad.copy_(averaged)


def broadcast_tensors(tensors: list[Tensor], group=None, bucket_bytes: int = BUCKET_BYTES) -> None:
    """Rank 0's values of ``tensors`` (parameters, buffers) on every rank, in place, in flattened buckets."""
    with torch.no_grad():
        for bucket in _buckets(tensors, bucket_bytes):
            flat = _flatten_dense_tensors(bucket)
            dist.broadcast(flat, src=0, group=group)
            for t, value in zip(bucket, _unflatten_dense_tensors(flat, bucket)):
                t.copy_(value)


class ReplicasDiffer(TrainingStopped):
    """Some rank's parameters are no longer rank 0's: averaged gradients should keep them equal bit for bit,
    so something changed one replica alone (a non-deterministic collective, a rank-local edit)."""

    def __init__(self, ranks: list[int], step: int, checkpoint: str | None):
        last = f"the last good checkpoint is {checkpoint}" if checkpoint else "no checkpoint was written"
        super().__init__(f"at step {step} the parameters of rank(s) {', '.join(map(str, ranks))} differ from rank "
                         f"0's; stopped without saving, {last}", step, checkpoint)


def parameter_digest(nets: dict[str, nn.Module]) -> str:
    """SHA-256 of every parameter's bytes, in a fixed order: equal on all ranks when the replicas agree.
    Buffers are left out: BatchNorm running statistics are per rank without --sync-bn."""
    sha = hashlib.sha256()
    for name in sorted(nets):
        for key, p in nets[name].named_parameters():
            sha.update(f"{name}.{key}".encode())
            # sync: once per checkpoint, the weights are read anyway to be saved.
            sha.update(p.detach().contiguous().cpu().view(-1).view(torch.uint8).numpy().tobytes())
    return sha.hexdigest()


# --- --sync-bn ---

_BATCH_NORMS = (nn.modules.batchnorm._BatchNorm, BatchNorm2dAct)


def has_batch_norm(module: nn.Module) -> bool:
    return any(isinstance(m, _BATCH_NORMS) for m in module.modules())


class _AllReduceSum(torch.autograd.Function):
    """The sum over the ranks, differentiable: its backward sums the ranks' gradients, since every rank's loss
    depends on every rank's input through the global statistics. (torch.distributed.nn.functional.all_reduce
    does the same but is deprecated from torch 2.14, and its replacement in _functional_collectives has no
    autograd.)"""

    @staticmethod
    def forward(ctx, x: Tensor, group) -> Tensor:
        ctx.group = group
        x = x.clone()
        dist.all_reduce(x, group=group)
        return x

    @staticmethod
    def backward(ctx, grad: Tensor):
        grad = grad.clone()
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """nn.BatchNorm2d whose training-mode statistics are those of the global batch across the ranks of
    ``group``: --sync-bn on CPU, where torch.nn.SyncBatchNorm refuses to run (it needs CUDA tensors).

    Two differentiable all-reduces (:class:`_AllReduceSum`, fp32): the per-channel sums with the element
    count give the global mean; then the sums of squared deviations from that mean give the biased variance
    that normalises and the unbiased one that updates running_var, as nn.BatchNorm2d on the concatenated
    batch does. (One all-reduce of sum x and sum x^2 would do, but E[x^2] - mean^2 cancels catastrophically
    in fp32 where a channel's mean is large against its spread.) Eval mode is nn.BatchNorm2d's. Same
    parameters, buffers and state_dict keys as nn.BatchNorm2d.
    """

    def __init__(self, *args, group=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.group = group

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4:
            raise ValueError(f"expected 4D input (got {x.dim()}D input)")
        # Synchronised in training mode only, as nn.SyncBatchNorm: rank 0 alone samples and evaluates in eval mode.
        if not self.training or not dist.is_initialized():
            return super().forward(x)
        return self._synced_forward(x)

    @torch.compiler.disable  # --compile: the collective stays outside the compiled graphs
    def _synced_forward(self, x: Tensor) -> Tensor:
        xf = x.float()
        count = torch.full((1,), x.numel() // x.shape[1], dtype=torch.float32, device=x.device)
        group = self.group or dist.group.WORLD
        total = _AllReduceSum.apply(torch.cat([xf.sum(dim=(0, 2, 3)), count]), group)
        c = self.num_features
        n = total[c]
        shape = (1, c, 1, 1)
        mean = total[:c] / n
        centred = xf - mean.view(shape)
        var = _AllReduceSum.apply((centred * centred).sum(dim=(0, 2, 3)), group) / n  # biased: what normalises
        if self.training and self.track_running_stats:
            factor = self.momentum
            self.num_batches_tracked.add_(1)
            if factor is None:  # sync: a cumulative average needs the count on the host (as nn.BatchNorm2d)
                factor = 1.0 / float(self.num_batches_tracked)
            with torch.no_grad():
                self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), factor)
                unbiased = var.detach() * n / (n - 1).clamp_min(1)
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), factor)
        y = centred * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)


class _CudaSyncBatchNorm(nn.SyncBatchNorm):
    """nn.SyncBatchNorm kept out of --compile's graphs, so its collectives run eagerly like every other one."""

    @torch.compiler.disable
    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x)


def _synced(norm: nn.modules.batchnorm._BatchNorm, device: torch.device, group) -> nn.Module:
    """A synchronised copy of ``norm`` holding the same Parameter and buffer objects (optimisers keep theirs)."""
    kwargs = dict(eps=norm.eps, momentum=norm.momentum, affine=norm.affine,
                  track_running_stats=norm.track_running_stats)
    if device.type == "cuda":
        new = _CudaSyncBatchNorm(norm.num_features, process_group=group, **kwargs)
    else:
        new = GlobalBatchNorm2d(norm.num_features, group=group, **kwargs)
    if norm.affine:
        new.weight, new.bias = norm.weight, norm.bias
    new.running_mean, new.running_var = norm.running_mean, norm.running_var
    new.num_batches_tracked = norm.num_batches_tracked
    new.train(norm.training)
    return new.to(device)


def convert_sync_batchnorm(module: nn.Module, device: torch.device, group=None) -> nn.Module:
    """--sync-bn: every BatchNorm2d inside ``module`` replaced in place by one that normalises with the global
    batch's statistics: nn.SyncBatchNorm on CUDA, GlobalBatchNorm2d on CPU. fastgan's fused BatchNorm2dAct is
    first unfused into a NormThenAct around a plain BatchNorm2d (fastgan.nn.unfuse_batch_norm_act), whose
    norm is then replaced. Parameters and buffers stay the same objects, so optimisers built before still
    update them, and state_dict keys do not change."""
    unfuse_batch_norm_act(module)
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            setattr(module, name, _synced(child, device, group))
        else:
            convert_sync_batchnorm(child, device, group)
    return module


def check_sync_bn(model: str, nets: dict[str, nn.Module]) -> None:
    if not any(has_batch_norm(net) for net in nets.values()):
        raise UserError(f"--sync-bn: {model}'s networks have no BatchNorm layer to synchronise; drop --sync-bn")

