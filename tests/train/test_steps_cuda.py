"""The eager training step on a GPU: no host synchronisation inside a step, fused Adam, amp (bf16, fp16)."""

import pytest
import torch

from fastgan.train.loop import resolve_config
from fastgan.train.steps import train_step
from fastgan.train.tasks import build_task

pytestmark = pytest.mark.cuda


def cuda_task(tiny, tmp_path, model, **overrides):
    cfg = resolve_config(tiny(model, tmp_path, device="cuda", **overrides))
    channels = 3 if model == "cyclegan" else 1
    info = {"channels": channels, "num_classes": 10, "num_images": 64}
    task = build_task(cfg, info, cfg.device)
    shape = (cfg.batch_size, channels, cfg.image_size, cfg.image_size)
    if model == "cyclegan":
        batch = {d: torch.rand(shape, device="cuda") * 2 - 1 for d in "AB"}
    else:
        batch = {"real": torch.rand(shape, device="cuda") * 2 - 1,
                 "label": torch.randint(0, 10, (cfg.batch_size,), device="cuda")}
    return task, batch


@pytest.mark.parametrize("amp", [None, "bf16", "fp16"])
@pytest.mark.parametrize("model", ["gan", "dcgan", "cgan", "cyclegan"])
def test_step_never_waits_for_the_gpu(tiny, tmp_path, model, amp):
    task, batch = cuda_task(tiny, tmp_path, model, amp=amp is not None, amp_dtype=amp or "bf16")
    assert all(g["fused"] for opt in task.optimizers.values() for g in opt.param_groups)
    assert all(s.is_enabled() == (amp == "fp16") for s in task.scalers.values())
    accum = {}
    train_step(task, batch, accum)  # first call: lazy state (optimiser moments, cuDNN plans)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            train_step(task, batch, accum)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert all(v.device.type == "cuda" and v.dtype == torch.float32 for v in accum.values())
    assert all(torch.isfinite(v).item() for v in accum.values())
