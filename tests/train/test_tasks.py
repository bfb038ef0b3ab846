import pytest
import torch

from fastgan.models.base import adversarial_loss
from fastgan.train.loop import resolve_config
from fastgan.train.steps import train_step
from fastgan.train.tasks import LinearDecay, build_task

INFO = {
    "gan": {"channels": 1, "num_classes": 10, "num_images": 64},
    "dcgan": {"channels": 1, "num_classes": 10, "num_images": 64},
    "cgan": {"channels": 1, "num_classes": 10, "num_images": 64},
    "cyclegan": {"channels": 3, "num_classes": 0, "num_images": 8},
}


def make_batch(model, cfg):
    size = cfg.image_size
    if model == "cyclegan":
        return {"A": torch.rand(cfg.batch_size, 3, size, size) * 2 - 1,
                "B": torch.rand(cfg.batch_size, 3, size, size) * 2 - 1}
    return {"real": torch.rand(cfg.batch_size, 1, size, size) * 2 - 1,
            "label": torch.randint(0, 10, (cfg.batch_size,))}


def make_task(tiny, tmp_path, model, **overrides):
    cfg = resolve_config(tiny(model, tmp_path, **overrides))
    return cfg, build_task(cfg, INFO[model], "cpu", batches_per_epoch=4)


def snapshot(net):
    return [p.detach().clone() for p in net.parameters()]


def changed(before, net):
    return any(not torch.equal(a, b) for a, b in zip(before, net.parameters()))


def test_linear_decay_constant_then_to_zero():
    f = LinearDecay(constant=4, decay=4)
    assert [f(i) for i in range(9)] == [1, 1, 1, 1, 1, 0.75, 0.5, 0.25, 0]
    assert LinearDecay(3, 0)(100) == 1.0


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)` before")
def test_schedulers_step_per_iteration(tiny, tmp_path):
    _, task = make_task(tiny, tmp_path, "dcgan", epochs=1, epochs_decay=2, lr=1e-3)
    lrs = []
    for _ in range(12):
        lrs.append(task.optimizers["G"].param_groups[0]["lr"])
        task.schedulers["G"].step()
    expected = [1e-3] * 4 + [1e-3 * (1 - k / 8) for k in range(8)]
    assert lrs == pytest.approx(expected)


@pytest.mark.parametrize("loss", ["vanilla", "lsgan"])
def test_adversarial_losses_fp32_and_values(loss):
    fn = adversarial_loss(loss)
    logits = torch.tensor([0.0, 2.0], dtype=torch.bfloat16)
    real, fake = fn(logits, True), fn(logits, False)
    assert real.dtype == fake.dtype == torch.float32
    if loss == "vanilla":
        expected = torch.nn.functional.softplus(-torch.tensor([0.0, 2.0])).mean()
        assert real.item() == pytest.approx(expected.item())
    else:
        assert real.item() == pytest.approx(1.0) and fake.item() == pytest.approx(2.0)


@pytest.mark.parametrize("model", ["gan", "dcgan", "cgan", "cyclegan"])
def test_phases_order_and_each_updates_only_its_nets(tiny, tmp_path, model):
    cfg, task = make_task(tiny, tmp_path, model)
    names = [p.name for p in task.phases]
    assert names == (["G", "D"] if model == "cyclegan" else ["D", "G"])
    batch = make_batch(model, cfg)
    for phase in task.phases:
        # Run one phase alone: only the nets it trains may move.
        only = type(task)(task.nets, task.optimizers, task.schedulers, task.scalers, [phase], task.state)
        before = {k: snapshot(v) for k, v in task.nets.items()}
        if model == "cyclegan" and phase.name == "D":
            train_step(type(task)(task.nets, task.optimizers, task.schedulers, task.scalers,
                                  task.phases[:1], task.state), batch, {})
            before = {k: snapshot(v) for k, v in task.nets.items()}
        train_step(only, batch, {})
        for name, net in task.nets.items():
            assert changed(before[name], net) == (name in phase.trains), (phase.name, name)


@pytest.mark.parametrize("model", ["dcgan", "cyclegan"])
def test_d_and_g_steps_repeat_phases_and_losses_accumulate(tiny, tmp_path, model):
    cfg, task = make_task(tiny, tmp_path, model, d_steps=3, g_steps=2)
    accum = {}
    train_step(task, make_batch(model, cfg), accum)
    for key, repeats in (("D", 3), ("G", 2)):
        state = next(iter(task.optimizers[key].state.values()))
        assert int(state["step"]) == repeats
    assert all(v.dim() == 0 and v.dtype == torch.float32 and v.device.type == "cpu" for v in accum.values())
    assert all(torch.isfinite(v) for v in accum.values())
    if model == "cyclegan":
        assert {"G/total", "G/cycle_A", "G/cycle_B", "G/idt_A", "G/idt_B", "D/D_A", "D/D_B"} <= set(accum)
        g = sum(accum[f"G/{k}"] for k in ("G_A", "G_B", "cycle_A", "cycle_B", "idt_A", "idt_B"))
        torch.testing.assert_close(accum["G/total"], g)
    else:
        torch.testing.assert_close(accum["D/total"], accum["D/real"] + accum["D/fake"])


def test_cyclegan_identity_off_and_vanilla_loss(tiny, tmp_path):
    cfg, task = make_task(tiny, tmp_path, "cyclegan", lambda_identity=0.0, gan_loss="vanilla")
    accum = {}
    train_step(task, make_batch("cyclegan", cfg), accum)
    assert "G/idt_A" not in accum and "G/cycle_A" in accum


def test_cyclegan_pools_fill_with_generated_images(tiny, tmp_path):
    cfg, task = make_task(tiny, tmp_path, "cyclegan", pool_size=3)
    train_step(task, make_batch("cyclegan", cfg), {})
    assert int(task.state["pool_A"].count) == 2 and int(task.state["pool_B"].count) == 2


def test_bf16_autocast_keeps_losses_fp32(tiny, tmp_path):
    cfg, task = make_task(tiny, tmp_path, "dcgan", amp=True, amp_dtype="bf16")
    assert not any(s.is_enabled() for s in task.scalers.values())
    accum = {}
    train_step(task, make_batch("dcgan", cfg), accum)
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in accum.values())


@pytest.mark.parametrize("model", ["gan", "dcgan", "cgan", "cyclegan"])
def test_sample_grid_layout_and_no_rng_use(tiny, tmp_path, model):
    cfg, task = make_task(tiny, tmp_path, model)
    size = cfg.image_size
    if model == "cyclegan":
        fixed = {d: torch.rand(task.fixed_size, 3, size, size) * 2 - 1 for d in "AB"}
        rows, columns = task.fixed_size, 6
    else:
        fixed = {"real": torch.rand(task.fixed_size, 1, size, size) * 2 - 1}
        rows, columns = 8 + (10 if model == "cgan" else 8), 8
    state = torch.get_rng_state()
    grid = task.sample(fixed)
    assert torch.equal(state, torch.get_rng_state())
    assert grid.shape == (3, rows * (size + 2) + 2, columns * (size + 2) + 2)
    assert grid.min() >= 0 and grid.max() <= 1
    torch.testing.assert_close(grid, task.sample(fixed))
    assert all(net.training for net in task.nets.values())


@pytest.mark.parametrize("model", ["cyclegan", "pix2pix"])
def test_image_data_flags_reach_the_data_request(model):
    from fastgan.train.__main__ import parse_config
    from fastgan.train.tasks import data_request, with_recipe

    recipe = data_request(with_recipe(parse_config([model, "--data", "synthetic"])))
    assert (recipe.flip, recipe.preprocess, recipe.channels) == (True, "resize_and_crop", 3)
    cfg = parse_config([model, "--data", "synthetic", "--no-flip", "--preprocess", "scale_width_and_crop",
                        "--channels", "1"])
    assert (cfg.flip, cfg.preprocess, cfg.channels) == (False, "scale_width_and_crop", 1)
    request = data_request(cfg)
    assert (request.flip, request.preprocess, request.channels) == (False, "scale_width_and_crop", 1)
    assert {"flip", "preprocess", "channels"} <= set(cfg.to_dict())  # saved in config.json, checked on resume
