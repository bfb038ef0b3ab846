"""A CUDA run's training setup, built on the CPU at tiny sizes, and its --cuda-graphs step without a GPU.

:func:`cpu_standin` is the one place that builds a task for the gpu_ready checks, the way
fastgan.train.loop.train does (resolve_config, build_loader, build_task, configure_engine), with what a
CUDA run changes made on the CPU too: channels_last networks and batches, and fused Adam (on CUDA
fastgan.train.tasks picks fused Adam, whose step state and loss-scale handling live on the device).

:func:`graphed_standin` builds fastgan.train.graphs.GraphedTrainStep on the CPU: torch.cuda's streams,
graphs and synchronisation are replaced by stand-ins, so warm-up, capture and replay run the module's own
code, and ``on_capture`` wraps exactly the code it captures. The gradients the capture left in ``.grad``
stand for the graphs' shared memory pool (fastgan/train/graphs.py, Memory): any read of one between
replays fails.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from unittest import mock

import torch

__all__ = ["GraphPoolGradient", "Setup", "TINY", "cpu_standin", "graphed_standin"]

# Small enough for a CPU step in well under a second; every model keeps all of its layer kinds.
TINY = {
    "gan": dict(batch_size=8, z_dim=8, hidden=16),
    "dcgan": dict(batch_size=8, z_dim=8, ngf=4, ndf=4),
    "cgan": dict(batch_size=8, z_dim=8, ngf=4, ndf=4),
    "cyclegan": dict(batch_size=2, image_size=32, load_size=36, ngf=4, ndf=4, n_blocks=1, pool_size=3),
    "pix2pix": dict(batch_size=2, image_size=32, load_size=36, ngf=4, ndf=4, unet_depth=5),
}


@dataclass
class Setup:
    cfg: object  # the resolved fastgan.train.config.TrainConfig
    loader: object  # what fastgan.data.build_loader returned
    task: object  # fastgan.train.steps.Task, configured by fastgan.train.graphs.configure_engine

    def batch(self, epoch: int = 0) -> dict[str, torch.Tensor]:
        return next(iter(self.loader.epoch(epoch)))


def cpu_standin(model: str, amp_dtype: str | None = None, loader: str = "device", tiny: bool = True,
                **overrides) -> Setup:
    """Data, task and engine of a --device cuda run of ``model``, on the CPU, with synthetic data.

    Args:
        model: a registered model name.
        amp_dtype: None (fp32), "bf16" or "fp16" (--amp --amp-dtype ...; fp16 enables the GradScalers).
        loader: "device" or "torch".
        tiny: TINY[model] sizes; False keeps the model's recipe (e.g. CycleGAN 256x256, ngf 64, 9 blocks).
        overrides: further TrainConfig fields.
    """
    from ..data import build_loader
    from ..train.config import TrainConfig
    from ..train.graphs import configure_engine, memory_format
    from ..train.loop import resolve_config
    from ..train.tasks import build_task, data_request

    fields = dict(model=model, data="synthetic", device="cpu", loader=loader, workers=0, seed=3,
                  channels_last=True, amp=amp_dtype is not None, amp_dtype=amp_dtype or "bf16",
                  sample_every=0, save_every=0, log_every=1)
    fields |= (TINY.get(model, {}) if tiny else {}) | overrides
    with contextlib.ExitStack() as stack:
        if not tiny:
            # A recipe-sized stand-in is only traced on fake tensors (fastgan.testing.fake_cuda, .ledger): its
            # activations never exist here, and the GPU it models is not this CPU, whose free memory the
            # trainer's size check would otherwise weigh a CUDA step against.
            from ..train import loop

            stack.enter_context(mock.patch.object(loop, "check_train_memory", lambda *args, **kwargs: None))
        cfg = resolve_config(TrainConfig(**fields))
    device = torch.device(cfg.device)
    data = build_loader(data_request(cfg), device, memory_format=memory_format(cfg, device))
    task = configure_engine(build_task(cfg, dict(data.info), device, len(data)), cfg)
    for optimizer in task.optimizers.values():
        _fuse_like_cuda(optimizer)
    task.train()
    return Setup(cfg, data, task)


def _fuse_like_cuda(optimizer: torch.optim.Optimizer) -> None:
    """What torch.optim.Adam(fused=True) sets at construction, on an optimiser that has not stepped yet."""
    if optimizer.state:
        raise ValueError("cpu_standin: the optimiser has state already; fuse it before its first step")
    for group in optimizer.param_groups:
        group["fused"], group["foreach"] = True, False
    optimizer._step_supports_amp_scaling = True


class _Stream:
    def __init__(self, *args, **kwargs):
        pass

    def wait_stream(self, other) -> None:
        pass


class _Graph:
    replays = 0

    def replay(self) -> None:
        type(self).replays += 1


# What may be asked of a gradient between replays: its metadata, never its values.
_GRADIENT_METADATA = frozenset({"shape", "dtype", "device", "layout", "ndim", "requires_grad", "is_leaf", "grad_fn",
                                "is_cuda", "is_sparse", "is_meta", "is_nested", "is_quantized", "names", "size", "dim",
                                "stride", "numel", "is_contiguous", "element_size"})


class GraphPoolGradient(torch.Tensor):
    """A gradient the captured graphs own: between replays its memory may hold another phase's data, so any
    use of its values (an op, a copy, a norm, saving it) raises. Setting ``.grad`` to None stays allowed."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        name = getattr(getattr(func, "__self__", None), "__name__", None) if func.__name__ == "__get__" \
            else func.__name__
        if name in _GRADIENT_METADATA:
            with torch._C.DisableTorchFunctionSubclass():
                return func(*args, **(kwargs or {}))
        raise AssertionError(f"{name or func}: a gradient was read between CUDA graph replays; the graphs share "
                             "one memory pool, so a gradient is valid only inside its phase's graph "
                             "(fastgan/train/graphs.py, Memory)")


def _guard_gradients(task) -> int:
    """Marks every gradient left by the capture as owned by the graphs; returns how many there are."""
    count = 0
    for net in task.nets.values():
        for param in net.parameters():
            if param.grad is not None:
                param.grad = param.grad.as_subclass(GraphPoolGradient)
                count += 1
    return count


def graphed_standin(task, batch: dict, on_capture: Callable[[], contextlib.AbstractContextManager] | None = None):
    """fastgan.train.graphs.GraphedTrainStep(task, batch) built on the CPU.

    Args:
        task: a CPU task (see :func:`cpu_standin`).
        batch: the example batch the graphs are captured for.
        on_capture: a context manager factory entered around each captured region (where
            ``torch.cuda.graph`` would record), e.g. a fresh HostSyncRecorder.
    Returns:
        The step object; calling it runs its per-iteration host code, and each replay is a no-op counted
        in ``type(step.graphs[0]).replays``. Every gradient the capture allocated is a
        :class:`GraphPoolGradient` afterwards: code that reads one between replays fails.
    """
    from .. import ops
    from ..train import graphs

    @contextlib.contextmanager
    def capture(graph, pool=None, **kwargs):
        with on_capture() if on_capture is not None else contextlib.nullcontext():
            yield

    def autocast(self):  # the graphs' autocast, on the task's device (torch.autocast("cuda") needs a GPU)
        return ops.autocast(self.task.device.type, self.task.amp_dtype)

    with contextlib.ExitStack() as stack:
        for name, value in (("Stream", _Stream), ("stream", lambda s: contextlib.nullcontext()),
                            ("current_stream", lambda *a, **k: _Stream()), ("synchronize", lambda *a: None),
                            ("graph", capture), ("CUDAGraph", _Graph), ("graph_pool_handle", lambda: None)):
            stack.enter_context(mock.patch.object(torch.cuda, name, value))
        stack.enter_context(mock.patch.object(graphs, "_check_task", lambda task: None))
        stack.enter_context(mock.patch.object(graphs.GraphedTrainStep, "_autocast", autocast))
        step = graphs.GraphedTrainStep(task, batch)
    if _guard_gradients(task) == 0:
        raise AssertionError("graphed_standin: the capture left no gradients to guard")
    return step
