"""CycleGAN (Zhu et al. 2017): the ResNet generator, the 70x70 PatchGAN discriminator and the image pool.

Layouts and parameter counts follow the authors' pytorch-CycleGAN-and-pix2pix with InstanceNorm
(affine off, so every conv keeps its bias): 9-block generator 11,378,179 parameters, 70x70 PatchGAN
2,764,737. Every reflection-padded conv is a ReflectPadConv2d and every norm + activation an
InstanceNormAct, so the fast paths of fastgan.ops reach the whole network. Each conv whose output goes
only to an InstanceNormAct is built with ``norm_follows=True``: the norm cancels its bias, so the fast path
adds none and reduces no gradient for it (fastgan.nn.layers._NormFollows; ``--impl ref`` adds it as torch does).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import nn as fnn
from .. import ops
from ..errors import UserError
from . import ArchitectureError, base, register

UPSAMPLE_MODES = ("deconv", "resize")
NORMS = ("instance", "batch")  # of the PatchGAN


class ResnetBlock(nn.Module):
    """x + IN(conv3(ReLU(IN(conv3(x))))) with reflection padding; the residual add is fused into the
    second InstanceNormAct.

    Each reflection pad is written by the InstanceNormAct before it (``pad_output``), in the pass that writes its
    output, so the convolutions pad nothing and the backward's folds happen inside the norms' passes.
    ``input_padded``: x comes reflection-padded by 1 (from the layer before, built with ``pad_output=1``), and the
    residual add takes its centre. ``pad_output``: 1 when the next layer is another block, whose first
    convolution then reads the padded output directly.
    """

    samples_independent = True  # its own forward mixes no samples; its layers answer for themselves

    def __init__(self, channels: int, input_padded: bool = False, pad_output: int = 0):
        super().__init__()
        self.conv1 = fnn.ReflectPadConv2d(channels, channels, 3, padding=1, norm_follows=True,
                                          input_padded=input_padded)
        self.norm1 = fnn.InstanceNormAct(channels, act="relu", pad_output=1)
        self.conv2 = fnn.ReflectPadConv2d(channels, channels, 3, padding=1, norm_follows=True, input_padded=True)
        self.norm2 = fnn.InstanceNormAct(channels, act="none", pad_output=pad_output)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm1(self.conv1(x))
        return self.norm2(self.conv2(h), residual=x)


class Upsample2x(nn.Module):
    """Nearest-neighbour x2 then a reflection-padded 3x3 conv: the checkerboard-free alternative to
    a transposed conv (Odena et al. 2016), with the same parameter count. ``norm_follows``: the conv's output
    goes only to an InstanceNorm (see fastgan.nn.ReflectPadConv2d)."""

    samples_independent = True  # its own forward mixes no samples; its layers answer for themselves

    def __init__(self, in_channels: int, out_channels: int, norm_follows: bool = False):
        super().__init__()
        self.conv = fnn.ReflectPadConv2d(in_channels, out_channels, 3, padding=1, norm_follows=norm_follows)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class ResnetGenerator(nn.Module):
    """c7s1-64, d128, d256, n_blocks x R256, u128, u64, c7s1-3 (tanh); [B, in, H, W] -> [B, out, H, W]
    for H and W divisible by 4.

    Args:
        in_channels, out_channels: image channels of the two domains.
        ngf: width of the first layer (64 in the paper).
        n_blocks: residual blocks (9 for 256x256 images, 6 for 128x128 and smaller).
        upsample: "deconv" (ConvTranspose2d k3 s2, the paper's form) or "resize" (nearest x2 + conv3).
    """

    samples_independent = True  # its own forward mixes no samples; its layers answer for themselves

    def __init__(self, in_channels: int = 3, out_channels: int = 3, ngf: int = 64, n_blocks: int = 9,
                 upsample: str = "deconv"):
        super().__init__()
        if upsample not in UPSAMPLE_MODES:
            raise ArchitectureError(f"ResnetGenerator: upsample={upsample!r} is not one of {UPSAMPLE_MODES}")
        if n_blocks < 0:
            raise ArchitectureError(f"ResnetGenerator: n_blocks={n_blocks} must be >= 0")
        layers: list[nn.Module] = [
            fnn.ReflectPadConv2d(in_channels, ngf, 7, padding=3, norm_follows=True),
            fnn.InstanceNormAct(ngf, act="relu"),
            # state: ngf x H x W
            fnn.Conv2d(ngf, ngf * 2, 3, 2, 1, norm_follows=True),
            fnn.InstanceNormAct(ngf * 2, act="relu"),
            # state: (ngf*2) x H/2 x W/2
            fnn.Conv2d(ngf * 2, ngf * 4, 3, 2, 1, norm_follows=True),
            # The residual blocks' reflection pads are written by the norm before each convolution (ResnetBlock).
            fnn.InstanceNormAct(ngf * 4, act="relu", pad_output=1 if n_blocks else 0),
            # state: (ngf*4) x H/4 x W/4 (padded by 1 for a block)
        ]
        layers += [ResnetBlock(ngf * 4, input_padded=True, pad_output=1 if i + 1 < n_blocks else 0)
                   for i in range(n_blocks)]
        # state: (ngf*4) x H/4 x W/4
        for c in (ngf * 4, ngf * 2):
            if upsample == "deconv":
                layers.append(fnn.ConvTranspose2d(c, c // 2, 3, 2, 1, output_padding=1, norm_follows=True))
            else:
                layers.append(Upsample2x(c, c // 2, norm_follows=True))
            layers.append(fnn.InstanceNormAct(c // 2, act="relu", pad_output=3 if c == ngf * 2 else 0))
        # state: ngf x H x W (padded by 3 for the output layer's 7x7 convolution)
        layers += [fnn.Conv2dTanh(ngf, out_channels, 7, padding=3, padding_mode="reflect", input_padded=True),
                   nn.Identity()]
        # state: out_channels x H x W
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class PatchDiscriminator(nn.Module):
    """The PatchGAN discriminator: each output logit judges one receptive field (70x70 for n_layers=3).

    [B, in_channels, H, W] -> logits [B, 1, h, w] (30x30 for 256x256 inputs).

    ``norm``: "instance" (CycleGAN; InstanceNormAct, convs keep their bias) or "batch" (pix2pix's default;
    nn.BatchNorm2d with batch statistics, as the reference, which never calls eval(), always uses, then the
    fused LeakyReLU; the convs before a norm drop their bias, 2,768,705 parameters with 6 input channels).
    """

    samples_independent = True  # its own forward mixes no samples; its layers answer for themselves

    def __init__(self, in_channels: int = 3, ndf: int = 64, n_layers: int = 3, norm: str = "instance"):
        super().__init__()
        if n_layers < 1:
            raise ArchitectureError(f"PatchDiscriminator: n_layers={n_layers} must be >= 1")
        if norm not in NORMS:
            raise ArchitectureError(f"PatchDiscriminator: norm={norm!r} is not one of {NORMS}")
        layers: list[nn.Module] = [fnn.Conv2dLeakyReLU(in_channels, ndf, 4, 2, 1, negative_slope=0.2)]
        # state: ndf x H/2 x W/2
        width = ndf
        for n in range(1, n_layers + 1):
            stride = 2 if n < n_layers else 1
            out = ndf * min(2**n, 8)
            if norm == "instance":
                layers += [fnn.Conv2d(width, out, 4, stride, 1, norm_follows=True),
                           fnn.InstanceNormAct(out, act="leaky_relu", negative_slope=0.2)]
            else:
                layers += [nn.Conv2d(width, out, 4, stride, 1, bias=False),
                           nn.BatchNorm2d(out, track_running_stats=False), fnn.LeakyReLU(0.2)]
            width = out
        # state: (ndf*8) x (H/2^n_layers - 1) x (W/2^n_layers - 1)
        layers.append(nn.Conv2d(width, 1, 4, 1, 1))
        # state: 1 x (H/2^n_layers - 2) x (W/2^n_layers - 2)
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ImagePool(nn.Module):
    """The history of generated images that D trains on (Shrivastava et al. 2017; CycleGAN uses 50).

    Per incoming image, in batch order: while the pool is not full the image is stored and returned;
    once full, with probability 1/2 a uniformly chosen stored image is returned and replaced by the
    new one, otherwise the new image is returned. The pool is buffers (``images``, and ``count``, the
    number filled, a 0-dim int64 tensor), so it follows ``.to(device)`` and is saved in state_dict.
    Every choice is a device tensor drawn from the torch RNG (``torch.rand(N)`` then ``torch.randint``) and
    applied by fastgan.ops.image_pool (one Triton launch per batch on a GPU; where/index_copy_ on the
    reference path): no Python random, no host sync, so a CUDA graph can capture it. Returned images carry
    no autograd history (D trains on them) and keep the input's dtype and memory layout.

    Args:
        pool_size: images kept; 0 disables the pool (inputs are returned as they are).
        image_shape: (C, H, W) of one image.
        impl: fastgan.ops.image_pool's implementation (the trainer's --impl).
    """

    def __init__(self, pool_size: int, image_shape, impl: str = "auto"):
        super().__init__()
        if pool_size < 0:
            raise ArchitectureError(f"ImagePool: pool_size={pool_size} must be >= 0")
        self.pool_size, self.image_shape, self.impl = pool_size, tuple(image_shape), impl
        self.register_buffer("images", torch.zeros(pool_size, *self.image_shape))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.pool_size == 0:
            return images
        if tuple(images.shape[1:]) != self.image_shape:
            raise ValueError(f"ImagePool: images of shape {tuple(images.shape[1:])} given to a pool of "
                             f"{self.image_shape}")
        batch = images.shape[0]
        device = self.images.device
        draws = torch.rand(batch, device=device)
        slots = torch.randint(self.pool_size, (batch,), device=device)
        return ops.image_pool(images, self.images, self.count, draws, slots, impl=self.impl)


@register
class Model(base.GanModel):
    """G phase (G_A: A -> B, G_B: B -> A; adversarial + cycle L1 + identity L1), then D phase on fakes
    drawn from the image pools. D_A judges domain A images (real A vs G_B's fakes), D_B judges domain B
    images (real B vs G_A's fakes)."""

    name = "cyclegan"
    summary = "CycleGAN (Zhu et al. 2017): unpaired image-to-image translation between domains A and B"
    options = ("domains", "load_size", "ngf", "ndf", "n_blocks", "upsample", "lambda_cycle", "lambda_identity",
               "pool_size", *base.IMAGE_DATA_OPTIONS)
    recipe = {
        # junyanz/pytorch-CycleGAN-and-pix2pix options (base/train_options.py, cycle_gan_model.py): batch 1,
        # 100 epochs at constant LR + 100 decaying linearly to 0, Adam 2e-4 (0.5, 0.999), load 286 / crop 256,
        # lambda_A = lambda_B = 10, lambda_identity 0.5, pool 50, LSGAN, ngf = ndf = 64, resnet_9blocks.
        "batch_size": 1, "epochs": 100, "epochs_decay": 100, "lr": 2e-4, "beta1": 0.5, "beta2": 0.999,
        "image_size": 256, "gan_loss": "lsgan", "ngf": 64, "ndf": 64, "lambda_cycle": 10.0, "lambda_identity": 0.5,
        "pool_size": 50,
        "upsample": "deconv",  # the paper's transposed convolutions; "resize" is the checkerboard-free option
        "domains": "7,9",  # fashion-unpaired: sneaker <-> ankle boot (fastgan's built-in demo)
        **base.IMAGE_DATA_RECIPE,
    }
    default_notes = {"n_blocks": "9 at 256x256, 6 below", "load_size": "image_size * 286 / 256"}
    choices = {"upsample": UPSAMPLE_MODES, **base.IMAGE_DATA_CHOICES}
    data_kind = "unpaired"
    optimizers = {"G": ["G_A", "G_B"], "D": ["D_A", "D_B"]}
    inference = "translate"
    translators = {"AtoB": "G_A", "BtoA": "G_B"}
    size_multiple = 4  # the ResNet generator down-samples twice by 2
    fixed_size = 4  # sample rows per grid
    grid_legend = ("each row: real A | fake B = G_A(real A) | rec A = G_B(fake B) | real B | fake A = G_B(real B) | "
                   "rec B = G_A(fake A)")

    def resolve(self, cfg, origin: str) -> None:
        cfg.n_blocks = cfg.n_blocks or (9 if cfg.image_size >= 256 else 6)  # the authors' 256 / 128 choice
        cfg.load_size = cfg.load_size or cfg.image_size * 286 // 256
        if cfg.load_size < cfg.image_size:
            raise UserError(f"--load-size {cfg.load_size}: must be at least --image-size {cfg.image_size}")

    def check_size(self, cfg) -> None:
        # The generator halves the side twice and must give the input's size back (a multiple of 4); the
        # 70x70 PatchGAN's last InstanceNorm needs 2x2 positions, floor(image_size / 8) - 1 >= 2.
        if cfg.image_size % self.size_multiple or cfg.image_size < 24:
            raise UserError(f"--image-size {cfg.image_size}: cyclegan takes multiples of 4 from 24 up (e.g. 128 "
                            "or 256): its generator halves the side twice, its PatchGAN needs at least 24")

    def build_nets(self, cfg, info: dict) -> dict[str, nn.Module]:
        channels = info["channels"]
        generators = {name: ResnetGenerator(channels, channels, cfg.ngf, cfg.n_blocks, cfg.upsample)
                      for name in ("G_A", "G_B")}
        return generators | {name: PatchDiscriminator(channels, cfg.ndf, 3) for name in ("D_A", "D_B")}

    def build_state(self, cfg, info: dict) -> dict[str, nn.Module]:
        shape = (info["channels"], cfg.image_size, cfg.image_size)
        return {name: ImagePool(cfg.pool_size, shape, cfg.impl) for name in ("pool_A", "pool_B")}

    def phases(self, cfg, nets: dict, state: dict, info: dict) -> list[base.Phase]:
        G_A, G_B, D_A, D_B = nets["G_A"], nets["G_B"], nets["D_A"], nets["D_B"]
        gan = base.adversarial_loss(cfg.gan_loss, cfg.impl)
        lambda_cycle, lambda_idt = cfg.lambda_cycle, cfg.lambda_identity * cfg.lambda_cycle
        kept: dict[str, torch.Tensor] = {}  # the G phase's detached fakes, for the D phase

        # Independent applications of one network share a call where its samples are independent (InstanceNorm
        # computes per sample): G_B's first and identity passes, G_A's first, identity and cycle passes, and each
        # D's real and fake halves. Decided once, from what the networks declare (fastgan.nn.samples_independent).
        batched = {name: fnn.samples_independent(net) for name, net in nets.items()}

        def g_loss(batch):
            real_A, real_B = batch["A"], batch["B"]
            identity = lambda_idt > 0
            # G_B first, on real B (-> fake A) and, for the identity loss, real A. Then G_A once, on real A (-> fake
            # B), real B (identity) and G_B's fake A (-> rec B), and G_B again on fake B (-> rec A): three
            # generator calls, one of them without a second call whose weight gradients would need adding.
            out_B = base.apply_batched(G_B, [real_B, real_A] if identity else [real_B], batched["G_B"])
            fake_A = out_B[0]
            out_A = base.apply_batched(G_A, [real_A, real_B, fake_A] if identity else [real_A, fake_A],
                                       batched["G_A"])
            fake_B, rec_B = out_A[0], out_A[-1]
            rec_A = G_B(fake_B)
            losses = {"G_A": gan(D_B(fake_B), True), "G_B": gan(D_A(fake_A), True),
                      "cycle_A": base.l1_loss(rec_A, real_A, lambda_cycle, cfg.impl),
                      "cycle_B": base.l1_loss(rec_B, real_B, lambda_cycle, cfg.impl)}
            if identity:
                # G_A should leave an image that is already in domain B unchanged, and G_B one in A.
                losses["idt_A"] = base.l1_loss(out_A[1], real_B, lambda_idt, cfg.impl)
                losses["idt_B"] = base.l1_loss(out_B[1], real_A, lambda_idt, cfg.impl)
            kept["fake_A"], kept["fake_B"] = fake_A.detach(), fake_B.detach()
            return {"total": ops.loss_sum(losses.values(), impl=cfg.impl)} | losses  # one launch for five adds

        def d_loss(batch):
            fake_A, fake_B = state["pool_A"](kept["fake_A"]), state["pool_B"](kept["fake_B"])
            real_A_logits, fake_A_logits = base.apply_batched(D_A, [batch["A"], fake_A], batched["D_A"])
            real_B_logits, fake_B_logits = base.apply_batched(D_B, [batch["B"], fake_B], batched["D_B"])
            # 0.5 * (real + fake) as 0.5 * real + 0.5 * fake, the halving folded into the losses' kernels: the same
            # fp32 value (halving is exact), two launches fewer each way.
            loss_A = gan(real_A_logits, True, 0.5) + gan(fake_A_logits, False, 0.5)
            loss_B = gan(real_B_logits, True, 0.5) + gan(fake_B_logits, False, 0.5)
            return {"total": loss_A + loss_B, "D_A": loss_A, "D_B": loss_B}

        return [base.Phase("G", "G", cfg.g_steps, g_loss, ["G_A", "G_B"]),
                base.Phase("D", "D", cfg.d_steps, d_loss, ["D_A", "D_B"])]

    def sampler(self, cfg, nets: dict, info: dict, device: torch.device) -> base.Sampler:
        G_A, G_B = nets["G_A"], nets["G_B"]

        def sample(fixed: dict) -> tuple[torch.Tensor, int]:
            real_A, real_B = fixed["A"], fixed["B"]
            fake_B, fake_A = G_A(real_A), G_B(real_B)
            rec_A, rec_B = G_B(fake_B), G_A(fake_A)
            # One row per example: real A | fake B | rec A | real B | fake A | rec B.
            columns = torch.stack([real_A.to(fake_B.dtype), fake_B, rec_A, real_B.to(fake_B.dtype), fake_A, rec_B],
                                  dim=1)
            return columns.flatten(0, 1), 6

        return sample

    def grid_labels(self, cfg, info: dict) -> base.GridLabels:
        return base.GridLabels(columns=("real A", "fake B", "rec A", "real B", "fake A", "rec B"))
