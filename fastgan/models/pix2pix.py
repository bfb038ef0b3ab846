"""pix2pix (Isola et al. 2017, "Image-to-Image Translation with Conditional Adversarial Networks"): a U-Net
generator and a conditional 70x70 PatchGAN (it judges the input and the output together), trained on
aligned pairs with the GAN loss plus lambda_L1 times the L1 distance to the target.

Layouts and parameter counts follow the authors' pytorch-CycleGAN-and-pix2pix (models/networks.py
UnetGenerator, UnetSkipConnectionBlock, NLayerDiscriminator): with BatchNorm and ngf = ndf = 64, unet_256
has 54,413,955 parameters (the reference prints "54.414 M") and the PatchGAN on 6 channels 2,768,705
("2.769 M"). LeakyReLU and the generator's norm + activation are fastgan.nn layers, so their fast paths
reach the networks; the discriminator's BatchNorm (cyclegan.PatchDiscriminator) stays nn.BatchNorm2d.

--direction: the data names its domains A and B (the left and right halves of an aligned file, or trainA/
and trainB/); AtoB trains the generator to map A to B, BtoA B to A. A checkpoint holds that one generator,
so `python -m fastgan.translate` translates its training direction (the default there) and refuses the
other.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from .. import nn as fnn
from ..errors import UserError
from . import ArchitectureError, base, register
from .cyclegan import NORMS, PatchDiscriminator

DIRECTIONS = ("AtoB", "BtoA")
MIN_DEPTH = 5  # the four outer levels (ngf, 2ngf, 4ngf, 8ngf) and the innermost one
RECIPE_DEPTH = 8  # unet_256


class DropoutAtTest(nn.Dropout):
    """nn.Dropout that stays on in eval mode: pix2pix's only noise, applied "at both training and test time"
    (Isola et al. 2017, sec. 2.1 and 3.3)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.dropout(x, self.p, True, self.inplace)


def _norm_act(norm: str, channels: int, act: str) -> list[nn.Module]:
    """A norm and its activation as one fused layer: InstanceNormAct or BatchNorm2dAct.

    BatchNorm keeps no running statistics: the reference normalises with the batch's statistics in training
    and, never calling eval(), at test time too (sec. 3.3: "the statistics of the test batch"), so running
    averages would never be read."""
    if norm == "instance":
        return [fnn.InstanceNormAct(channels, act=act, negative_slope=0.2)]
    return [fnn.BatchNorm2dAct(channels, act=act, negative_slope=0.2, track_running_stats=False)]


class UnetGenerator(nn.Module):
    """The U-Net of pix2pix: ``depth`` 4x4 stride-2 convolutions down to the bottleneck, as many 4x4 stride-2
    transposed convolutions up, each up level fed the level below concatenated with the encoder output of its
    size (the skip connections). [B, in, H, W] -> [B, out, H, W] in [-1, 1], H and W multiples of 2^depth.

    Written flat rather than as the reference's recursive UnetSkipConnectionBlock, so that every activation
    fuses with its norm; the outputs are the same (tested against the recursive form). Where the reference
    applies ReLU to a concatenation [skip, up], it is applied to each part here: the skip gets F.relu (of a
    LeakyReLU output y, relu(y) equals the reference's relu of the pre-activation, which its in-place
    LeakyReLU turns into relu(leaky_relu)), and the up part's ReLU is fused into its norm, before the dropout
    (a dropout mask scales by 0 or 2, which commutes with ReLU).

    Args:
        in_channels, out_channels: image channels of the input and the output.
        ngf: width of the first level (64 in the paper); the widths are ngf, 2ngf, 4ngf, then 8ngf.
        depth: down-sampling levels, at least 5; 8 is unet_256 (a 1x1 bottleneck at 256x256), 7 unet_128.
        norm: "batch" (the paper) or "instance"; a conv followed by BatchNorm has no bias.
        dropout: probability of the decoder's dropout, in the levels between the fourth and the innermost one
            (at depth 8 the three up levels after the innermost, as the reference has them), at test time too.
    """

    def __init__(self, in_channels: int = 3, out_channels: int = 3, ngf: int = 64, depth: int = RECIPE_DEPTH,
                 norm: str = "batch", dropout: float = 0.5):
        super().__init__()
        if depth < MIN_DEPTH:
            raise ArchitectureError(f"UnetGenerator: depth={depth} must be >= {MIN_DEPTH}")
        if norm not in NORMS:
            raise ArchitectureError(f"UnetGenerator: norm={norm!r} is not one of {NORMS}")
        bias = norm == "instance"
        widths = [ngf * min(2**level, 8) for level in range(depth)]  # encoder outputs, outermost first
        self.down = nn.ModuleList([fnn.Conv2dLeakyReLU(in_channels, widths[0], 4, 2, 1, bias=bias,
                                                       negative_slope=0.2)])
        # state: ngf x H/2 x W/2
        for level in range(1, depth - 1):
            self.down.append(nn.Sequential(fnn.Conv2d(widths[level - 1], widths[level], 4, 2, 1, bias=bias,
                                                      norm_follows=bias),
                                           *_norm_act(norm, widths[level], "leaky_relu")))
        # state: (ngf*8) x H/2^(depth-1) x W/2^(depth-1)
        self.bottleneck = nn.Sequential(nn.Conv2d(widths[-2], widths[-1], 4, 2, 1, bias=bias), nn.ReLU())
        # state: (ngf*8) x H/2^depth x W/2^depth (1x1 for unet_256 at 256x256)
        self.up = nn.ModuleList([nn.Sequential(fnn.ConvTranspose2d(widths[-1], widths[-2], 4, 2, 1, bias=bias,
                                                                   norm_follows=bias),
                                               *_norm_act(norm, widths[-2], "relu"))])
        # state: (ngf*8) x H/2^(depth-1) x W/2^(depth-1), concatenated with the encoder's output of that size
        for level in range(depth - 2, 0, -1):
            layers = [fnn.ConvTranspose2d(2 * widths[level], widths[level - 1], 4, 2, 1, bias=bias, norm_follows=bias),
                      *_norm_act(norm, widths[level - 1], "relu")]
            if dropout and level >= 4:
                layers.append(DropoutAtTest(dropout))
            self.up.append(nn.Sequential(*layers))
        # state: ngf x H/2 x W/2, concatenated with the first encoder output
        self.outer = nn.Sequential(fnn.ConvTranspose2dTanh(2 * widths[0], out_channels, 4, 2, 1), nn.Identity())
        # state: out_channels x H x W

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for layer in self.down:
            x = layer(x)
            skips.append(x)
        y = self.up[0](self.bottleneck(x))
        for layer, skip in zip(self.up[1:], reversed(skips[1:])):
            y = layer(torch.cat([F.relu(skip), y], 1))
        return self.outer(torch.cat([F.relu(skips[0]), y], 1))


@contextlib.contextmanager
def _recording(net: nn.Module):
    """Autograd records ``net`` inside, whatever the phase has switched off, and the flags are put back."""
    params = list(net.parameters())
    flags = [p.requires_grad for p in params]
    net.requires_grad_(True)
    try:
        yield
    finally:
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)


@register
class Model(base.GanModel):
    """D phase, then G phase, on one forward of G per iteration, as the reference's optimize_parameters:
    D learns real pairs (source, target) against fake ones (source, G(source)); G, against the updated D,
    learns to make its pair judged real and its output close to the target in L1. The D phase computes G's
    forward with autograd recording G, and the G phase back-propagates through that same forward (so both
    see the same dropout masks); the D loss takes the output detached."""

    name = "pix2pix"
    summary = "pix2pix (Isola et al. 2017): paired image-to-image translation, A -> B (or B -> A)"
    options = ("direction", "load_size", "ngf", "ndf", "norm", "unet_depth", "lambda_l1", *base.IMAGE_DATA_OPTIONS)
    recipe = {
        # junyanz/pytorch-CycleGAN-and-pix2pix: pix2pix_model.py (norm batch, netG unet_256, vanilla GAN loss,
        # lambda_L1 100, no image pool, Adam betas (beta1, 0.999)), options/base_options.py (ngf = ndf = 64,
        # netD basic = 70x70 PatchGAN, direction AtoB, load 286 / crop 256, batch 1, dropout on) and
        # options/train_options.py (100 epochs at lr 2e-4 + 100 decaying linearly to 0, beta1 0.5); Isola et
        # al. 2017, sec. 3.3 and 6.1.
        "batch_size": 1, "epochs": 100, "epochs_decay": 100, "lr": 2e-4, "beta1": 0.5, "beta2": 0.999,
        "image_size": 256, "gan_loss": "vanilla", "ngf": 64, "ndf": 64, "norm": "batch", "lambda_l1": 100.0,
        "direction": "AtoB",  # fashion-edges: edge map -> image, as edges2shoes in the paper
        **base.IMAGE_DATA_RECIPE,
    }
    default_notes = {"unet_depth": "8 (unet_256), or the deepest of 7, 6, 5 that divides --image-size",
                     "load_size": "image_size * 286 / 256"}
    choices = {"direction": DIRECTIONS, "norm": NORMS, **base.IMAGE_DATA_CHOICES}
    data_kind = "paired"
    optimizers = {"G": ["G"], "D": ["D"]}
    inference = "translate"
    translators = {"AtoB": "G", "BtoA": "G"}  # the one generator, for its training's direction: translator()
    size_multiple = 2**RECIPE_DEPTH  # input_multiple() reads a checkpoint's own depth
    fixed_size = 4  # sample rows per grid
    grid_legend = "each row: input | output = G(input) | target (A -> B, or B -> A with --direction BtoA)"

    def resolve(self, cfg, origin: str) -> None:
        for flag, value, choices in (("direction", cfg.direction, DIRECTIONS), ("norm", cfg.norm, NORMS)):
            if value not in choices:
                raise UserError(f"--{flag} {value!r}: choose from {', '.join(choices)}")
        if cfg.g_steps != 1:
            raise UserError(f"--g-steps {cfg.g_steps}: pix2pix's G step back-propagates through the generator "
                            "forward of its D step, once; use --g-steps 1")
        if cfg.lambda_l1 < 0:
            raise UserError(f"--lambda-l1 {cfg.lambda_l1}: must not be negative")
        cfg.load_size = cfg.load_size or cfg.image_size * 286 // 256
        if cfg.load_size < cfg.image_size:
            raise UserError(f"--load-size {cfg.load_size}: must be at least --image-size {cfg.image_size}")
        if cfg.unet_depth is None:  # unet_256, else the deepest U-Net the size takes (check_size says if none)
            fitting = [d for d in range(RECIPE_DEPTH, MIN_DEPTH, -1) if cfg.image_size % 2**d == 0]
            cfg.unet_depth = fitting[0] if fitting else MIN_DEPTH

    def check_size(self, cfg) -> None:
        # Every level halves the side, down to the bottleneck; the 70x70 PatchGAN then has at least 3x3
        # positions at its last norm (floor(32 / 8) - 1).
        if cfg.unet_depth < MIN_DEPTH:
            raise UserError(f"--unet-depth {cfg.unet_depth}: must be at least {MIN_DEPTH}")
        if cfg.image_size % 2**cfg.unet_depth:
            raise UserError(f"--image-size {cfg.image_size}: a U-Net of depth {cfg.unet_depth} needs a multiple of "
                            f"{2**cfg.unet_depth} (e.g. 256 for unet_256); change --image-size or --unet-depth")

    def build_nets(self, cfg, info: dict) -> dict[str, nn.Module]:
        channels = info["channels"]
        return {"G": UnetGenerator(channels, channels, cfg.ngf, cfg.unet_depth, cfg.norm),
                "D": PatchDiscriminator(2 * channels, cfg.ndf, 3, cfg.norm)}  # judges (source, output) together

    def phases(self, cfg, nets: dict, state: dict, info: dict) -> list[base.Phase]:
        G, D = nets["G"], nets["D"]
        gan = base.adversarial_loss(cfg.gan_loss, cfg.impl)
        source_key, target_key = _keys(cfg.direction)
        kept: dict[str, torch.Tensor] = {}  # the D phase's G(source), with its graph, for the G phase

        def d_loss(batch):
            source, target = batch[source_key], batch[target_key]
            with _recording(G):
                fake = G(source)
            kept["fake"] = fake
            loss_fake = gan(D(torch.cat([source, fake.detach()], 1)), False)
            loss_real = gan(D(torch.cat([source, target], 1)), True)
            loss = 0.5 * (loss_fake + loss_real)  # "slows down the rate at which D learns relative to G" (3.3)
            return {"total": loss, "real": loss_real, "fake": loss_fake}

        def g_loss(batch):
            source, target = batch[source_key], batch[target_key]
            fake = kept.pop("fake")
            losses = {"gan": gan(D(torch.cat([source, fake], 1)), True),
                      "l1": base.l1_loss(fake, target, cfg.lambda_l1, cfg.impl)}
            return {"total": losses["gan"] + losses["l1"]} | losses

        return [base.Phase("D", "D", cfg.d_steps, d_loss, ["D"]),
                base.Phase("G", "G", cfg.g_steps, g_loss, ["G"])]

    def sampler(self, cfg, nets: dict, info: dict, device: torch.device) -> base.Sampler:
        G = nets["G"]
        source_key, target_key = _keys(cfg.direction)

        def sample(fixed: dict) -> tuple[torch.Tensor, int]:
            source, target = fixed[source_key], fixed[target_key]
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                # Dropout is on at test time: fixed masks make grids comparable, and fork_rng leaves the
                # training RNG as it was.
                torch.random.default_generator.manual_seed(cfg.seed)
                if device.type == "cuda":
                    with torch.cuda.device(device):
                        torch.cuda.manual_seed(cfg.seed)
                # One image at a time, as translate runs it: BatchNorm uses each image's own statistics.
                fake = torch.cat([G(image.unsqueeze(0)) for image in source])
            # One row per example: input | output | target.
            rows = torch.stack([source.to(fake.dtype), fake, target.to(fake.dtype)], dim=1)
            return rows.flatten(0, 1), 3

        return sample

    def grid_labels(self, cfg, info: dict) -> base.GridLabels:
        source, target = _keys(cfg.direction)
        return base.GridLabels(columns=(f"input {source}", f"output {target}", f"target {target}"))

    def translator(self, config: dict, direction: str | None) -> tuple[str, str]:
        trained = config["direction"]
        if direction not in (None, trained):
            raise UserError(f"--direction {direction}: this pix2pix checkpoint has one generator, trained "
                            f"--direction {trained}; translate {trained}, or train with --direction {direction}")
        return trained, "G"

    def input_multiple(self, config: dict) -> int:
        return 2 ** config["unet_depth"]


def _keys(direction: str) -> tuple[str, str]:
    """The batch keys of the generator's input and target."""
    return ("A", "B") if direction == "AtoB" else ("B", "A")
