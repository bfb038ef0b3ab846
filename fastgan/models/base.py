"""What a model is in fastgan: one ``GanModel`` per file under fastgan/models/, registered by name.

A model file holds everything that makes the model itself (junyanz pytorch-CycleGAN-and-pix2pix
``models/<name>_model.py``): its networks, its recipe (the defaults of its paper or reference code, with
the source), the kind of data it consumes, its losses and phases (the D and G updates, as ``Phase`` data
that the engine runs eagerly or captures in CUDA graphs), its sample grid and the inference it offers.
The trainer, the data layer, ``generate``/``translate`` and the benchmarks ask the registry
(``fastgan.models.get_model``) and never test a model's name.

``cfg`` below is the trainer's config (fastgan.train.config.TrainConfig); models read its fields by name
and never import fastgan.train (the import graph is train -> models -> nn -> ops).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.distributed
from torch import Tensor, nn

from .. import ops
from ..errors import UserError
from ..grid_labels import GridLabels
from ..image_files import GRID_COLUMNS, PREPROCESS

SAMPLE_ROWS = 8  # rows of real and rows of generated images (cgan: one generated row per class)

# The data options of the image-to-image models, as junyanz/pytorch-CycleGAN-and-pix2pix has them
# (options/base_options.py: --preprocess resize_and_crop, --no_flip off, --input_nc = --output_nc = 3).
IMAGE_DATA_OPTIONS = ("preprocess", "flip", "channels")
IMAGE_DATA_RECIPE = {"preprocess": "resize_and_crop", "flip": True, "channels": 3}
IMAGE_DATA_CHOICES = {"preprocess": PREPROCESS, "channels": (1, 3)}


@dataclass
class Phase:
    name: str  # "D" or "G"
    optimizer: str  # key in Task.optimizers (GanModel.optimizers)
    repeats: int  # cfg.d_steps or cfg.g_steps
    loss: Callable[[dict], dict[str, Tensor]]  # batch -> named fp32 scalars; "total" is backpropagated
    trains: list[str]  # Task.nets keys this phase updates (requires_grad on, all others off)


# A sampler maps the loader's fixed batch to (images [N, C, H, W] in [-1, 1], images per grid row).
Sampler = Callable[[dict], tuple[Tensor, int]]


def adversarial_loss(kind: str, impl: str = "auto") -> Callable[..., Tensor]:
    """(logits, target_is_real, weight=1.0) -> fp32 scalar: "vanilla" = BCE with logits, "lsgan" = MSE to 1/0,
    times ``weight`` (a constant folded into the loss's kernels).

    ``impl`` (the trainer's --impl) picks fastgan.ops.mean_loss's path: its one-launch Triton kernels on a GPU
    under "auto", or today's ``criterion(logits.float(), ones_like/zeros_like)`` (CPU tensors, "ref").
    """
    criteria = {"vanilla": "bce_with_logits", "lsgan": "mse"}
    if kind not in criteria:
        raise UserError(f"--gan-loss {kind!r}: use lsgan or vanilla")
    criterion = criteria[kind]

    def loss(logits: Tensor, real: bool, weight: float = 1.0) -> Tensor:
        return ops.mean_loss(logits, 1.0 if real else 0.0, criterion, weight=weight, impl=impl)

    return loss


class GanModel:
    """A model definition. Subclasses set the class attributes and implement build_nets, phases and
    sampler; the trainer does the rest (optimisers, schedule, engine, checkpoints)."""

    name: ClassVar[str]  # the CLI sub-command and the checkpoint's "model"
    summary: ClassVar[str]  # one line for --help
    options: ClassVar[tuple[str, ...]]  # TrainConfig fields this model reads beyond the shared ones
    recipe: ClassVar[dict[str, Any]]  # the model's defaults, shared fields included (sources in comments)
    data_kind: ClassVar[str]  # what it trains on: a fastgan.data.KINDS entry
    optimizers: ClassVar[dict[str, list[str]]]  # optimiser key -> the networks it updates
    inference: ClassVar[str]  # "generate" (noise -> images) or "translate" (image -> image)
    conditional: ClassVar[bool] = False  # generate: the generator takes class labels
    translators: ClassVar[dict[str, str]] = {}  # translate: direction -> generator network
    size_multiple: ClassVar[int] = 1  # translate: input sides must be multiples of this (see input_multiple)
    convolutional: ClassVar[bool] = True  # channels_last applies to its networks
    fixed_size: ClassVar[int] = SAMPLE_ROWS * GRID_COLUMNS  # images per domain a sample grid needs
    choices: ClassVar[dict[str, tuple]] = {}  # the values each of its options takes (checked, listed in --help)
    default_notes: ClassVar[dict[str, str]] = {}  # --help text of defaults that resolve() sets from the data
    grid_legend: ClassVar[str]  # one sentence saying what the sample grid shows (report.html)

    def resolve(self, cfg, origin: str) -> None:
        """Fills, in place, the defaults that depend on the data (``origin``: what --data names, a
        fastgan.data.datasets.ORIGINS key), e.g. the image size; validates the model's own options."""

    def check_size(self, cfg) -> None:
        """Raises UserError when the networks cannot take ``cfg.image_size`` (or ``cfg.load_size``, for a model
        that reads it), naming the sizes that work. Called on the resolved config, before any data or network
        is built, so a size the architecture cannot take is one line at start, not a traceback in step 1."""

    def build_nets(self, cfg, info: dict) -> dict[str, nn.Module]:
        """The networks, uninitialised, from the resolved config and the loader's info."""
        raise NotImplementedError

    def build_state(self, cfg, info: dict) -> dict[str, nn.Module]:
        """Training state that is not a network but is saved in checkpoints (e.g. image pools)."""
        return {}

    def phases(self, cfg, nets: dict, state: dict, info: dict) -> list[Phase]:
        raise NotImplementedError

    def sampler(self, cfg, nets: dict, info: dict, device: torch.device) -> Sampler:
        raise NotImplementedError

    def grid_labels(self, cfg, info: dict) -> GridLabels:
        """The names of the sampler's grid columns and/or rows, drawn into every grid the trainer writes."""
        raise NotImplementedError

    def defaults(self) -> dict[str, Any]:
        """The recipe: this model's default for each field it reads (data-dependent ones absent)."""
        return dict(self.recipe)

    def translator(self, config: dict, direction: str | None) -> tuple[str, str]:
        """translate: (direction, generator network) for a checkpoint trained with ``config``; ``direction``
        None means the model's first one. A direction the checkpoint cannot translate is a UserError."""
        direction = direction or next(iter(self.translators))
        if direction not in self.translators:
            raise UserError(f"--direction {direction}: a {self.name} checkpoint translates "
                            f"{' or '.join(self.translators)}")
        return direction, self.translators[direction]

    def input_multiple(self, config: dict) -> int:
        """translate: input sides are padded to a multiple of this for a checkpoint trained with ``config``."""
        return self.size_multiple


def l1_loss(output: Tensor, target: Tensor, weight: float = 1.0, impl: str = "auto") -> Tensor:
    """``F.l1_loss(output.float(), target.float()) * weight`` (no multiply when ``weight`` is 1), whose gradient
    keeps ``output``'s memory layout: fastgan.ops.mean_loss, one launch each way on the Triton path (``impl``,
    the trainer's --impl), the NHWC view of a channels_last output on the reference path (see mean_loss_ref).
    """
    return ops.mean_loss(output, target, "l1", weight=weight, impl=impl)


def apply_batched(net: nn.Module, inputs: list[Tensor], batched: bool) -> list[Tensor]:
    """``[net(x) for x in inputs]``, as one call on the inputs' concatenation when ``batched``.

    Pass ``batched=fastgan.nn.samples_independent(net)``: then every sample's output, and every gradient
    that flows through it, is what its own call gives (the weight gradients of both applications are summed
    inside the convolutions' weight-gradient kernels instead of by separate adds), with half the launches
    at batch 1, where each kernel leaves the GPU half idle. Networks whose samples share statistics (batch
    norm) or random draws (dropout) get separate calls. Inputs of different dtypes are concatenated in the
    promoted one, which changes no value.
    """
    if not batched or len(inputs) == 1:
        return [net(x) for x in inputs]
    return list(net(torch.cat(inputs)).split([x.shape[0] for x in inputs]))


def fixed_noise(seed: int, n: int, z_dim: int, device: torch.device) -> Tensor:
    """Noise for sample grids from a private generator: it neither consumes nor depends on the global RNG."""
    gen = torch.Generator().manual_seed(seed + 1)
    return torch.randn(n, z_dim, generator=gen).to(device)


def global_batch_rows(draw: Callable[[int], Tensor], batch_size: int) -> Tensor:
    """``draw(n)`` (noise, fake labels: any per-sample random draw of a phase) for this process's rows of a
    data-parallel step. Under torchrun (fastgan.train.distributed) every rank draws the whole global batch,
    ``draw(batch_size * world_size)``, from the same stream (one seed everywhere) and keeps rows
    ``rank * batch_size`` to ``(rank + 1) * batch_size``, the block of the global batch its loader serves
    (fastgan.data): N processes of batch B then draw what one process of batch N*B does. Rank and world
    size come from torch.distributed's default group, so models need nothing from fastgan.train."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return draw(batch_size)
    rank, world_size = torch.distributed.get_rank(), torch.distributed.get_world_size()
    return draw(batch_size * world_size)[rank * batch_size:(rank + 1) * batch_size]


def noise_gan_phases(cfg, G: nn.Module, D: nn.Module, num_classes: int = 0) -> list[Phase]:
    """D then G phases of a noise-to-image GAN (conditional when num_classes > 0): D on real vs G(z)
    detached, G with the non-saturating loss, fresh noise (and labels) in each phase."""
    loss_fn = adversarial_loss(cfg.gan_loss, cfg.impl)
    conditional = num_classes > 0

    def generate(batch_size: int, device):
        z = global_batch_rows(lambda n: torch.randn(n, cfg.z_dim, device=device), batch_size)
        if conditional:
            labels = global_batch_rows(lambda n: torch.randint(0, num_classes, (n,), device=device), batch_size)
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
        return {"total": loss_fn(judge(fake, fake_labels), True)}

    return [Phase("D", "D", cfg.d_steps, d_loss, ["D"]), Phase("G", "G", cfg.g_steps, g_loss, ["G"])]


NOISE_GAN_LEGEND = f"the top {SAMPLE_ROWS} rows are real training images, the rows below generated from fixed noise"


def noise_gan_grid_labels(num_classes: int = 0) -> GridLabels:
    """noise_gan_sampler's rows: real, then generated (with classes: one generated row per class)."""
    generated = tuple(f"class {k}" for k in range(num_classes)) if num_classes else ("generated",) * SAMPLE_ROWS
    return GridLabels(rows=("real",) * SAMPLE_ROWS + generated)


def noise_gan_sampler(cfg, G: nn.Module, device: torch.device, num_classes: int = 0) -> Sampler:
    """Real images above generated ones from fixed noise; with classes, one generated row per class."""
    if num_classes:
        z = fixed_noise(cfg.seed, num_classes * GRID_COLUMNS, cfg.z_dim, device)
        labels = torch.arange(num_classes, device=device).repeat_interleave(GRID_COLUMNS)
    else:
        z = fixed_noise(cfg.seed, SAMPLE_ROWS * GRID_COLUMNS, cfg.z_dim, device)

    def sample(fixed: dict) -> tuple[Tensor, int]:
        fake = G(z, labels) if num_classes else G(z)
        real = fixed["real"][:SAMPLE_ROWS * GRID_COLUMNS].to(fake.device)
        return torch.cat([real.to(fake.dtype), fake]), GRID_COLUMNS

    return sample
