"""Per-model training tasks: networks, losses, Adam optimisers, the learning-rate schedule and the
phases that update D and G (fastgan.train.steps.Phase). Losses are computed in fp32 even under autocast.

gan / dcgan / cgan: D phase (real vs G(z) detached) then G phase (non-saturating loss), fresh noise in
each phase. cyclegan: G phase (G_A: A -> B, G_B: B -> A; adversarial + cycle L1 + identity L1) then D
phase on fakes drawn from the image pools. D_A judges domain A images (real A vs G_B's fakes), D_B
judges domain B images (real B vs G_A's fakes).

Learning rate: constant for cfg.epochs, then linear decay to zero over cfg.epochs_decay. The schedulers
are stepped once per iteration, so a run resumed mid-epoch continues on exactly the same curve.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import UserError
from ..models import init_weights
from .config import TrainConfig
from .images import make_grid, to_unit
from .steps import Phase, Task

GRID_COLUMNS = 8  # sample grids: 8 images per row
SAMPLE_ROWS = 8  # rows of real and rows of generated images (gan/dcgan; cgan: one generated row per class)
TRANSLATE_ROWS = 4  # cyclegan sample rows per grid


def adversarial_loss(kind: str):
    """(logits, target_is_real) -> fp32 scalar: "vanilla" = BCE with logits, "lsgan" = MSE to 1/0."""
    criteria = {"vanilla": F.binary_cross_entropy_with_logits, "lsgan": F.mse_loss}
    if kind not in criteria:
        raise UserError(f"--gan-loss {kind!r}: use lsgan or vanilla")
    criterion = criteria[kind]

    def loss(logits: Tensor, real: bool) -> Tensor:
        logits = logits.float()
        target = torch.ones_like(logits) if real else torch.zeros_like(logits)
        return criterion(logits, target)

    return loss


class LinearDecay:
    """LambdaLR factor per iteration: 1 for ``constant`` iterations, then linear to 0 over ``decay``.
    A class, not a closure, so LambdaLR.state_dict() records it."""

    def __init__(self, constant: int, decay: int):
        self.constant, self.decay = constant, decay

    def __call__(self, iteration: int) -> float:
        if self.decay <= 0 or iteration < self.constant:
            return 1.0
        return max(0.0, 1.0 - (iteration - self.constant) / self.decay)


def build_nets(cfg: TrainConfig, info: dict) -> dict[str, torch.nn.Module]:
    """The model's networks (uninitialised), from the resolved config and the data's channels/classes."""
    channels, size = info["channels"], cfg.image_size
    if cfg.model == "gan":
        from ..models import gan
        shape = (channels, size, size)
        return {"G": gan.Generator(cfg.z_dim, cfg.hidden, shape), "D": gan.Discriminator(shape, cfg.hidden)}
    if cfg.model == "dcgan":
        from ..models import dcgan
        return {"G": dcgan.Generator(cfg.z_dim, cfg.ngf, channels, size),
                "D": dcgan.Discriminator(cfg.ndf, channels, size)}
    if cfg.model == "cgan":
        from ..models import cgan
        classes = info.get("num_classes", 0)
        if classes < 2:
            raise UserError(f"--data {cfg.data or 'default'}: cgan needs labelled data (IDX files with "
                            "labels or synthetic); use dcgan for unlabelled images")
        return {"G": cgan.Generator(cfg.z_dim, classes, cfg.ngf, channels, size),
                "D": cgan.Discriminator(cfg.ndf, classes, channels, size)}
    if cfg.model == "cyclegan":
        from ..models import cyclegan
        return {name: cyclegan.ResnetGenerator(channels, channels, cfg.ngf, cfg.n_blocks, cfg.upsample)
                for name in ("G_A", "G_B")} | \
               {name: cyclegan.PatchDiscriminator(channels, cfg.ndf, 3) for name in ("D_A", "D_B")}
    raise UserError(f"model {cfg.model!r}: use gan, dcgan, cgan or cyclegan")


def _adam(params, cfg: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    fused = device.type == "cuda"
    return torch.optim.Adam(params, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=fused or None)


def amp_dtype(cfg: TrainConfig) -> torch.dtype | None:
    if not cfg.amp:
        return None
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[cfg.amp_dtype]


def _noise_sampler(cfg: TrainConfig, n: int, device: torch.device) -> Tensor:
    # A private generator: the fixed noise neither consumes nor depends on the global RNG.
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    return torch.randn(n, cfg.z_dim, generator=gen).to(device)


def _gan_phases(cfg: TrainConfig, nets: dict, loss_fn, num_classes: int) -> list[Phase]:
    G, D = nets["G"], nets["D"]
    conditional = num_classes > 0

    def generate(batch_size: int, device):
        z = torch.randn(batch_size, cfg.z_dim, device=device)
        if conditional:
            labels = torch.randint(0, num_classes, (batch_size,), device=device)
            return G(z, labels), labels
        return G(z), None

    def judge(images, labels):
        return D(images, labels) if conditional else D(images)

    def d_loss(batch):
        real = batch["real"]
        fake, fake_labels = generate(real.shape[0], real.device)
        loss_real = loss_fn(judge(real, batch.get("label")), True)
        loss_fake = loss_fn(judge(fake.detach(), fake_labels), False)
        return {"total": loss_real + loss_fake, "real": loss_real, "fake": loss_fake}

    def g_loss(batch):
        real = batch["real"]
        fake, fake_labels = generate(real.shape[0], real.device)
        loss = loss_fn(judge(fake, fake_labels), True)
        return {"total": loss}

    return [Phase("D", "D", cfg.d_steps, d_loss, ["D"]), Phase("G", "G", cfg.g_steps, g_loss, ["G"])]


def gan_phases(cfg: TrainConfig, nets: dict, num_classes: int = 0) -> list[Phase]:
    """D then G phases for a generator/discriminator pair {"G", "D"} (cgan when num_classes > 0)."""
    return _gan_phases(cfg, nets, adversarial_loss(cfg.gan_loss or "vanilla"), num_classes)


def _cyclegan_phases(cfg: TrainConfig, nets: dict, pools: dict) -> list[Phase]:
    G_A, G_B, D_A, D_B = nets["G_A"], nets["G_B"], nets["D_A"], nets["D_B"]
    gan = adversarial_loss(cfg.gan_loss or "lsgan")
    lambda_cycle, lambda_idt = cfg.lambda_cycle, cfg.lambda_identity * cfg.lambda_cycle
    kept: dict[str, Tensor] = {}  # the G phase's detached fakes, for the D phase

    def g_loss(batch):
        real_A, real_B = batch["A"], batch["B"]
        fake_B = G_A(real_A)
        rec_A = G_B(fake_B)
        fake_A = G_B(real_B)
        rec_B = G_A(fake_A)
        losses = {"G_A": gan(D_B(fake_B), True), "G_B": gan(D_A(fake_A), True),
                  "cycle_A": F.l1_loss(rec_A.float(), real_A.float()) * lambda_cycle,
                  "cycle_B": F.l1_loss(rec_B.float(), real_B.float()) * lambda_cycle}
        if lambda_idt > 0:
            # G_A should leave an image that is already in domain B unchanged, and G_B one in A.
            losses["idt_A"] = F.l1_loss(G_A(real_B).float(), real_B.float()) * lambda_idt
            losses["idt_B"] = F.l1_loss(G_B(real_A).float(), real_A.float()) * lambda_idt
        kept["fake_A"], kept["fake_B"] = fake_A.detach(), fake_B.detach()
        return {"total": sum(losses.values())} | losses

    def d_loss(batch):
        fake_A, fake_B = pools["pool_A"](kept["fake_A"]), pools["pool_B"](kept["fake_B"])
        loss_A = 0.5 * (gan(D_A(batch["A"]), True) + gan(D_A(fake_A), False))
        loss_B = 0.5 * (gan(D_B(batch["B"]), True) + gan(D_B(fake_B), False))
        return {"total": loss_A + loss_B, "D_A": loss_A, "D_B": loss_B}

    return [Phase("G", "G", cfg.g_steps, g_loss, ["G_A", "G_B"]),
            Phase("D", "D", cfg.d_steps, d_loss, ["D_A", "D_B"])]


def build_task(cfg: TrainConfig, info: dict, device: torch.device,
               batches_per_epoch: int | None = None) -> Task:
    """The model's Task from a resolved config (image_size, gan_loss, n_blocks set) and loader.info.

    ``batches_per_epoch`` (len(loader)) places the learning-rate decay; without it the decay is placed
    from info["num_images"] // cfg.batch_size."""
    device = torch.device(device)
    nets = build_nets(cfg, info)
    for net in nets.values():
        init_weights(net)
        net.to(device).train()
    if batches_per_epoch is None:
        batches_per_epoch = max(1, info.get("num_images", 0) // cfg.batch_size)
    state: dict[str, torch.nn.Module] = {}
    if cfg.model == "cyclegan":
        from ..models.cyclegan import ImagePool
        shape = (info["channels"], cfg.image_size, cfg.image_size)
        state = {name: ImagePool(cfg.pool_size, shape).to(device) for name in ("pool_A", "pool_B")}
        phases = _cyclegan_phases(cfg, nets, state)
        groups = {"G": ["G_A", "G_B"], "D": ["D_A", "D_B"]}
    else:
        classes = info.get("num_classes", 0) if cfg.model == "cgan" else 0
        phases = gan_phases(cfg, nets, classes)
        groups = {"D": ["D"], "G": ["G"]}
    optimizers = {key: _adam([p for name in names for p in nets[name].parameters()], cfg, device)
                  for key, names in groups.items()}
    schedule = LinearDecay(cfg.epochs * batches_per_epoch, cfg.epochs_decay * batches_per_epoch)
    schedulers = {key: torch.optim.lr_scheduler.LambdaLR(opt, schedule) for key, opt in optimizers.items()}
    dtype = amp_dtype(cfg)
    scalers = {key: torch.amp.GradScaler(device.type, enabled=dtype == torch.float16) for key in optimizers}
    task = Task(nets, optimizers, schedulers, scalers, phases, state, device=device, amp_dtype=dtype)
    task.sampler = _cyclegan_sampler(nets) if cfg.model == "cyclegan" else \
        _gan_sampler(cfg, nets, info, device)
    task.fixed_size = TRANSLATE_ROWS if cfg.model == "cyclegan" else SAMPLE_ROWS * GRID_COLUMNS
    return task


def _gan_sampler(cfg: TrainConfig, nets: dict, info: dict, device: torch.device):
    G = nets["G"]
    classes = info.get("num_classes", 0) if cfg.model == "cgan" else 0
    if classes:
        # One row per class.
        z = _noise_sampler(cfg, classes * GRID_COLUMNS, device)
        labels = torch.arange(classes, device=device).repeat_interleave(GRID_COLUMNS)
    else:
        z = _noise_sampler(cfg, SAMPLE_ROWS * GRID_COLUMNS, device)

    def sample(fixed: dict) -> Tensor:
        fake = G(z, labels) if classes else G(z)
        real = fixed["real"][:SAMPLE_ROWS * GRID_COLUMNS].to(fake.device)
        return make_grid(torch.cat([to_unit(real), to_unit(fake)]), GRID_COLUMNS)

    return sample


def _cyclegan_sampler(nets: dict):
    G_A, G_B = nets["G_A"], nets["G_B"]

    def sample(fixed: dict) -> Tensor:
        real_A, real_B = fixed["A"], fixed["B"]
        fake_B, fake_A = G_A(real_A), G_B(real_B)
        rec_A, rec_B = G_B(fake_B), G_A(fake_A)
        # One row per example: real A | fake B | rec A | real B | fake A | rec B.
        columns = torch.stack([real_A, fake_B, rec_A, real_B, fake_A, rec_B], dim=1)
        return make_grid(to_unit(columns.flatten(0, 1)), 6)

    return sample


def nets_from_checkpoint(ckpt: dict, names: list[str], device: torch.device) -> dict[str, torch.nn.Module]:
    """The named networks of a loaded checkpoint, with its weights, in eval mode on ``device``."""
    cfg = TrainConfig(**{k: v for k, v in ckpt["config"].items() if k in TrainConfig.__dataclass_fields__})
    nets = build_nets(cfg, ckpt["info"])
    out = {}
    for name in names:
        nets[name].load_state_dict(ckpt["nets"][name])
        out[name] = nets[name].to(device).eval()
    return out
