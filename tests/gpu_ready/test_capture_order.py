"""--cuda-graphs capture against the loader, and the graphs' shared memory pool, checked on the CPU stand-in
(fastgan.testing.tasks.graphed_standin) inside the real training loop (fastgan.train.loop.train).

A DataLoader's pin-memory thread (and DALI's threads) call into CUDA; one such call during a capture in
torch's default capture_error_mode="global" invalidates it, so the trainer captures before it starts
iterating the loader. The phases share one memory pool, so no code may read a gradient between replays.
"""

import contextlib
import gc
import multiprocessing
import types

import pytest
import torch

from fastgan.data.loaders import DeviceLoader, TorchLoader
from fastgan.testing import tasks
from fastgan.testing.tasks import TINY, cpu_standin, graphed_standin
from fastgan.train import loop
from fastgan.train.config import TrainConfig

EPOCH_CODES = {TorchLoader.epoch.__code__, DeviceLoader.epoch.__code__}


def live_loader_iterators() -> list[str]:
    """What of a loader's iteration is alive now: DataLoader iterators, unfinished epoch generators, worker
    processes."""
    gc.collect()
    objects = gc.get_objects()  # type(o), not isinstance: some objects answer __class__ with a warning
    alive = [type(o).__name__ for o in objects if issubclass(type(o), torch.utils.data.dataloader._BaseDataLoaderIter)]
    alive += [f"{o.gi_code.co_qualname} generator" for o in objects
              if type(o) is types.GeneratorType and o.gi_code in EPOCH_CODES and o.gi_frame is not None]
    alive += [f"worker process {p.pid}" for p in multiprocessing.active_children()]
    return alive


def test_the_trainer_captures_before_any_loader_iterator_and_reads_no_gradient_between_replays(
        tmp_path, monkeypatch):
    captures, steps = [], []

    @contextlib.contextmanager
    def check_capture():
        captures.append(live_loader_iterators())
        yield

    def graphed_step(task, batch, cuda_graphs):
        assert cuda_graphs
        for optimizer in task.optimizers.values():
            tasks._fuse_like_cuda(optimizer)  # as build_task makes them on CUDA
        steps.append(graphed_standin(task, batch, check_capture))
        return steps[-1]

    monkeypatch.setattr(loop, "check_cuda_graphs", lambda *args, **kwargs: None)  # the task is on the CPU
    monkeypatch.setattr(loop, "make_train_step", graphed_step)
    replays = tasks._Graph.replays
    # The torch loader with workers, as a CUDA run over image folders uses it; synthetic data keeps it small.
    cfg = TrainConfig(model="cyclegan", data="synthetic", loader="torch", workers=2, device="cpu", cuda_graphs=True,
                      channels_last=True, iters=3, log_every=1, sample_every=2, save_every=2, seed=3,
                      out=str(tmp_path / "run"), **TINY["cyclegan"])
    summary = loop.train(cfg)
    assert summary["step"] == 3
    assert len(steps) == 1 and len(captures) == len(steps[0].task.phases)  # one capture per phase
    assert captures == [[]] * len(captures), captures
    # Every iteration replayed every phase, and the loop, its sample grids and checkpoints ran between the
    # replays without touching a gradient (the stand-in's gradients raise on any read).
    assert tasks._Graph.replays - replays == 3 * sum(phase.repeats for phase in steps[0].task.phases)


def test_the_capture_check_sees_a_live_dataloader_iterator():
    """The check above can fail: a started epoch of the torch loader with workers is seen."""
    setup = cpu_standin("dcgan", loader="torch", workers=2)
    batches = iter(setup.loader.epoch(0))
    next(batches)
    alive = live_loader_iterators()
    assert any("DataLoaderIter" in a for a in alive) and any("worker process" in a for a in alive), alive
    assert any("epoch generator" in a for a in alive), alive
    del batches
    assert live_loader_iterators() == []


def test_a_gradient_read_between_replays_fails_in_the_standin():
    setup = cpu_standin("dcgan")
    step = graphed_standin(setup.task, setup.batch())
    step(setup.batch(1), {})
    grads = [p.grad for net in setup.task.nets.values() for p in net.parameters() if p.grad is not None]
    assert grads and all(isinstance(g, tasks.GraphPoolGradient) for g in grads)
    assert grads[0].shape == grads[0].shape and grads[0].dtype == torch.float32  # metadata stays readable
    for read in (lambda g: g.norm(), lambda g: g.clone(), lambda g: torch.nn.utils.clip_grad_norm_(
            [p for p in setup.task.nets["G"].parameters()], 1.0)):
        with pytest.raises(AssertionError, match="a gradient was read between CUDA graph replays"):
            read(grads[0])
    for optimizer in setup.task.optimizers.values():
        optimizer.zero_grad(set_to_none=True)  # dropping them is not a read
