"""No host synchronisation inside a training step, found without a GPU (fastgan.testing.host_sync).

One iteration of every model runs on the CPU, set up as a CUDA run is (channels_last, fused Adam,
GradScaler for fp16; fastgan.testing.tasks.cpu_standin), under a recorder in which every tensor stands for
a device tensor: the eager step with its scheduler steps, exactly the code that --cuda-graphs captures
(fastgan.train.graphs.GraphedTrainStep built on the CPU, recording inside each capture), its per-iteration
host code, and the per-batch path of each loader. Each check is shown to catch a planted sync.
"""

import pytest
import torch

from fastgan.models import REGISTRY
from fastgan.testing.host_sync import HostSyncRecorder
from fastgan.testing.tasks import TINY, cpu_standin, graphed_standin
from fastgan.train.steps import train_step

MODELS = list(REGISTRY)
# fp32 and fp16 (GradScaler, scaler.step into fused Adam) for every model; bf16 autocast for the largest.
CASES = [(model, amp) for model in MODELS for amp in (None, "fp16")] + [("cyclegan", "bf16")]


def test_every_model_has_tiny_sizes():
    assert set(TINY) == set(REGISTRY)


def _standin_recorder(**kwargs):
    return HostSyncRecorder({"cpu"}, **kwargs)


def _eager_syncs(setup) -> HostSyncRecorder:
    task, batch, accum = setup.task, setup.batch(), {}
    train_step(task, batch, accum)  # first step: lazy optimiser and scaler state, as the loop's first iteration
    with _standin_recorder() as syncs:
        train_step(task, batch, accum)
        for scheduler in task.schedulers.values():  # the loop steps them every iteration
            scheduler.step()
    return syncs


def _graphed_syncs(setup) -> list[HostSyncRecorder]:
    captures = []

    def capture():
        captures.append(_standin_recorder(host_to_device=True))
        return captures[-1]

    step = graphed_standin(setup.task, setup.batch(), capture)
    assert len(captures) == len(setup.task.phases)  # one captured region per phase
    batch, accum = setup.batch(1), {}
    with _standin_recorder() as per_iteration:
        step(batch, accum)
    return captures + [per_iteration]


@pytest.mark.parametrize("model,amp", CASES)
def test_eager_step_never_syncs(model, amp):
    syncs = _eager_syncs(cpu_standin(model, amp))
    assert not syncs.found, syncs.report()


@pytest.mark.parametrize("model,amp", CASES)
def test_cuda_graph_step_never_syncs(model, amp):
    recorders = _graphed_syncs(cpu_standin(model, amp))
    found = [s for r in recorders for s in r.found]
    assert not found, "\n".join(r.report() for r in recorders if r.found)


@pytest.mark.parametrize("loader", ["device", "torch", "dali"])
@pytest.mark.parametrize("model", ["dcgan", "cyclegan"])
def test_loader_batches_never_sync(model, loader):
    if loader == "dali":
        pytest.importorskip("nvidia.dali", reason="NVIDIA DALI is not installed")
    # workers=2 as the CUDA run's default: decoding happens in worker processes, which hold only host
    # tensors (the epoch plan), so what runs here is the main process's per-batch path.
    setup = cpu_standin(model, loader=loader, workers=2)
    batches = iter(setup.loader.epoch(0))
    next(batches)  # the epoch's start: its plan moves to the device once
    with _standin_recorder() as syncs:
        next(batches)
        next(batches)
    assert not syncs.found, syncs.report()


# --- the checks catch what they are for ------------------------------------------------------------
def _plant(setup, defect):
    """Makes every phase's loss run ``defect(losses)`` after computing its losses."""
    for phase in setup.task.phases:
        def loss(batch, original=phase.loss):
            losses = original(batch)
            defect(losses)
            return losses
        phase.loss = loss


DEFECTS = {
    "item": (lambda losses: losses["total"].item(), "aten._local_scalar_dense.default"),
    "bool": (lambda losses: bool(losses["total"] > 0), "aten._local_scalar_dense.default"),
    "nonzero": (lambda losses: torch.where(losses["total"].reshape(1) > 0), "aten.nonzero.default"),
    "mask": (lambda losses: losses["total"].reshape(1)[losses["total"].reshape(1) > 0], "aten.index.Tensor"),
    "cpu": (lambda losses: losses["total"].cpu(), "Tensor.cpu"),
}


@pytest.mark.parametrize("defect", DEFECTS)
def test_a_planted_sync_in_a_phase_is_named_with_its_line(defect):
    plant, op = DEFECTS[defect]
    setup = cpu_standin("dcgan")
    _plant(setup, plant)
    syncs = _eager_syncs(setup)
    assert [s.op for s in syncs.found] == [op, op]  # D and G phase
    report = syncs.report()
    assert "test_host_sync.py" in syncs.found[0].where and f'"{defect}":' in syncs.found[0].where  # its line
    assert "fastgan/train/steps.py" in report and "run_phase" in report  # the fastgan frames that led there


def test_a_planted_sync_in_the_captured_code_is_caught():
    setup = cpu_standin("cyclegan", "fp16")
    _plant(setup, DEFECTS["item"][0])
    recorders = _graphed_syncs(setup)
    ops = [[s.op for s in r.found] for r in recorders]
    assert ops == [["aten._local_scalar_dense.default"]] * len(setup.task.phases) + [[]], ops
    assert "fastgan/train/graphs.py" in recorders[0].report()  # captured by GraphedTrainStep._capture


def test_a_host_to_device_copy_in_the_captured_code_is_caught():
    setup = cpu_standin("gan")
    _plant(setup, lambda losses: torch.tensor(1.0, device=losses["total"].device))
    recorders = _graphed_syncs(setup)
    assert all([s.op for s in r.found] == ["aten.lift_fresh.default"] for r in recorders[:-1])


def test_a_planted_sync_in_a_loader_is_caught(monkeypatch):
    from fastgan.data import loaders

    finish = loaders.finish_batch

    def finish_with_sync(images, *args, **kwargs):
        images.float().mean().item()
        return finish(images, *args, **kwargs)

    monkeypatch.setattr(loaders, "finish_batch", finish_with_sync)
    setup = cpu_standin("dcgan")
    batches = iter(setup.loader.epoch(0))
    next(batches)
    with _standin_recorder() as syncs:
        next(batches)
    assert [s.op for s in syncs.found] == ["aten._local_scalar_dense.default"]
    assert "fastgan/data/loaders.py" in syncs.report()


def test_fake_cuda_tensors_separate_host_from_device():
    """On (fake) CUDA tensors the rule is exact: host tensors may be read, device tensors may not."""
    from fastgan.testing.fake_cuda import fake_cuda_mode

    host = torch.arange(4)
    with fake_cuda_mode(), HostSyncRecorder({"cuda"}) as syncs:
        device = host.to("cuda")
        int(host[1])  # a host read: no sync
        device[1].item()
        device.cpu()
    assert [s.op for s in syncs.found] == ["aten._local_scalar_dense.default", "aten._to_copy.default"]


@pytest.mark.cuda
def test_dali_gpu_batches_never_sync(tmp_path):
    """DALI's GPU path (feed_ndarray into CUDA tensors) differs from the CPU operators checked above."""
    pytest.importorskip("nvidia.dali", reason="NVIDIA DALI is not installed")
    setup = cpu_standin("cyclegan", loader="dali", device="cuda", workers=2)
    batches = iter(setup.loader.epoch(0))
    next(batches)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        with HostSyncRecorder({"cuda"}) as syncs:
            next(batches)
            next(batches)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert not syncs.found, syncs.report()
