"""Learning tests: short trainings that must reach a target, so a wrong sign, a detached graph or a phase
updating the wrong network fails them."""

import json
import os

import pytest
import torch

from fastgan.data import build_loader
from fastgan.metrics import histogram_distance
from fastgan.models import gan
from fastgan.models.base import noise_gan_phases
from fastgan.train.config import TrainConfig
from fastgan.train.loop import resolve_config, train
from fastgan.train.steps import Task, train_step
from fastgan.train.tasks import LinearDecay, build_task, data_request

pytestmark = pytest.mark.slow


def test_mlp_gan_matches_a_2d_gaussian():
    torch.manual_seed(0)
    mean, std = torch.tensor([0.4, -0.3]), torch.tensor([0.3, 0.2])
    cfg = TrainConfig(model="gan", z_dim=4, gan_loss="lsgan")
    nets = {"G": gan.Generator(4, 64, (2,)), "D": gan.Discriminator((2,), 64)}
    optimizers = {k: torch.optim.Adam(v.parameters(), lr=1e-3, betas=(0.5, 0.999)) for k, v in nets.items()}
    # The decay to zero settles the generator instead of leaving it orbiting the target.
    schedulers = {k: torch.optim.lr_scheduler.LambdaLR(o, LinearDecay(200, 600)) for k, o in optimizers.items()}
    scalers = {k: torch.amp.GradScaler("cpu", enabled=False) for k in optimizers}
    task = Task(nets, optimizers, schedulers, scalers, noise_gan_phases(cfg, nets["G"], nets["D"]))

    def generated():
        with torch.no_grad():
            return nets["G"](torch.randn(8192, 4))

    x = generated()
    assert (x.mean(0) - mean).abs().max() > 0.2 and (x.std(0) - std).abs().max() > 0.15  # far at the start
    for _ in range(800):
        train_step(task, {"real": mean + std * torch.randn(512, 2)}, {})
        for s in schedulers.values():
            s.step()
    x = generated()
    assert (x.mean(0) - mean).abs().max() < 0.1, x.mean(0)
    assert (x.std(0) - std).abs().max() < 0.15, x.std(0)


def test_cyclegan_lowers_the_cycle_loss(tiny, tmp_path):
    train(tiny("cyclegan", tmp_path, data="synthetic", iters=40, lr=1e-3, batch_size=2, ngf=8, ndf=8))
    log = [json.loads(line) for line in (tmp_path / "losses.jsonl").read_text().splitlines()]
    cycle = [r["G/cycle_A"] + r["G/cycle_B"] for r in log]
    assert len(cycle) == 40
    assert sum(cycle[-5:]) / 5 < 0.5 * cycle[0], cycle


FASHION = os.environ.get("FASTGAN_DATA", "/usr/share/datasets/fashion-mnist")


@pytest.mark.skipif(not any(os.path.exists(os.path.join(root, "train-images-idx3-ubyte.gz"))
                            for root in (FASHION, os.path.join(FASHION, "fashion-mnist"))),
                    reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
def test_dcgan_samples_move_toward_fashion_mnist(tmp_path):
    cfg = resolve_config(TrainConfig(model="dcgan", data="fashion-mnist", device="cpu", batch_size=32, ngf=16,
                                     ndf=16, lr=5e-4, out=str(tmp_path), seed=1))
    torch.manual_seed(cfg.seed)
    loader = build_loader(data_request(cfg), torch.device("cpu"))
    task = build_task(cfg, loader.info, "cpu", len(loader))
    real = loader.fixed(512)["real"]
    z = torch.randn(512, cfg.z_dim, generator=torch.Generator().manual_seed(5))

    def distance():
        task.nets["G"].eval()
        with torch.no_grad():
            fake = task.nets["G"](z)
        task.nets["G"].train()
        return histogram_distance(fake, real).item()

    before = distance()
    for step, batch in enumerate(loader.epoch(0)):
        train_step(task, batch, {})
        if step == 250:
            break
    after = distance()
    assert after < 0.7 * before, (before, after)
