"""DCGAN (Radford et al. 2015) in two layouts.

- image_size=28, the MNIST-family variant: G projects z to a 7x7 map and doubles it twice with
  transposed convolutions; D halves 28 -> 14 -> 7 with strided convolutions and ends in a linear layer.
- image_size 32, 64, 128 or 256, the pytorch/examples dcgan layout (written there for 64): G 1x1 -> 4 and
  then one transposed-conv stage per doubling up to image_size, the width halving at each stage from
  ngf * image_size/8 at 4x4 to ngf at image_size/2; D its mirror image (no BatchNorm on D's first layer,
  no biases before BatchNorm). At 64 this is exactly pytorch/examples' network.

Both D's return logits (the sigmoid belongs to the loss). Each BatchNorm and the activation after it are one
fastgan.nn.BatchNorm2dAct followed by an nn.Identity where the activation was, as fastgan.accelerate leaves
such a pair, and G's last transposed convolution and its Tanh are one fastgan.nn.ConvTranspose2dTanh (the bias
added in the tanh's pass) followed by an nn.Identity: the layer indices, and so the state_dict keys, are those
of the unfused networks (at 64, pytorch/examples' own G keys under ``net.`` instead of ``main.``).
"""

from __future__ import annotations

import torch
from torch import nn

from .. import nn as fnn
from ..errors import UserError
from . import ArchitectureError, base, register

IMAGE_SIZES = (28, 32, 64, 128, 256)
SIZES_TEXT = "28 (the MNIST-family layout) or 32, 64, 128, 256 (one stage per doubling)"


def check_image_size(model: str, image_size: int) -> None:
    if image_size not in IMAGE_SIZES:
        raise ArchitectureError(f"{model}: image_size={image_size} is not supported; use {SIZES_TEXT}")


def check_size_flag(model: str, image_size: int) -> None:
    """GanModel.check_size for the DCGAN backbones: the same rule, worded for the --image-size flag."""
    if image_size not in IMAGE_SIZES:
        raise UserError(f"--image-size {image_size}: {model} takes {SIZES_TEXT}")


class Generator(nn.Module):
    """z [B, z_dim] -> images [B, channels, image_size, image_size] in [-1, 1]."""

    def __init__(self, z_dim: int = 100, ngf: int = 64, channels: int = 1, image_size: int = 28):
        super().__init__()
        check_image_size("dcgan", image_size)
        self.z_dim, self.image_size = z_dim, image_size
        if image_size == 28:
            self.project = nn.Linear(z_dim, ngf * 2 * 7 * 7, bias=False)
            self.net = nn.Sequential(
                nn.Unflatten(1, (ngf * 2, 7, 7)),
                fnn.BatchNorm2dAct(ngf * 2, act="relu"),
                nn.Identity(),
                # state: (ngf*2) x 7 x 7
                nn.ConvTranspose2d(ngf * 2, ngf, 4, 2, 1, bias=False),
                fnn.BatchNorm2dAct(ngf, act="relu"),
                nn.Identity(),
                # state: ngf x 14 x 14
                fnn.ConvTranspose2dTanh(ngf, channels, 4, 2, 1),
                nn.Identity(),
                # state: channels x 28 x 28
            )
        else:
            self.project = nn.Unflatten(1, (z_dim, 1, 1))
            width = ngf * image_size // 8
            layers = [nn.ConvTranspose2d(z_dim, width, 4, 1, 0, bias=False), fnn.BatchNorm2dAct(width, act="relu"),
                      nn.Identity()]
            # state: (ngf*image_size/8) x 4 x 4
            side = 4
            while side < image_size // 2:  # one stage per doubling
                layers += [nn.ConvTranspose2d(width, width // 2, 4, 2, 1, bias=False),
                           fnn.BatchNorm2dAct(width // 2, act="relu"), nn.Identity()]
                width, side = width // 2, side * 2
                # state: width x side x side (at 64: (ngf*4) x 8 x 8, (ngf*2) x 16 x 16, ngf x 32 x 32)
            layers += [fnn.ConvTranspose2dTanh(ngf, channels, 4, 2, 1, bias=False), nn.Identity()]
            # state: channels x image_size x image_size
            self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(self.project(z))


class Discriminator(nn.Module):
    """images [B, channels, image_size, image_size] -> logits [B]."""

    def __init__(self, ndf: int = 64, channels: int = 1, image_size: int = 28):
        super().__init__()
        check_image_size("dcgan", image_size)
        self.image_size = image_size
        if image_size == 28:
            self.net = nn.Sequential(
                fnn.Conv2dLeakyReLU(channels, ndf, 4, 2, 1, negative_slope=0.2),
                # state: ndf x 14 x 14
                nn.Conv2d(ndf, ndf * 2, 4, 2, 1, bias=False),
                fnn.BatchNorm2dAct(ndf * 2, act="leaky_relu", negative_slope=0.2),
                nn.Identity(),
                # state: (ndf*2) x 7 x 7
                nn.Flatten(),
                nn.Linear(ndf * 2 * 7 * 7, 1),
                # state: 1
            )
        else:
            layers = [fnn.Conv2dLeakyReLU(channels, ndf, 4, 2, 1, bias=False, negative_slope=0.2)]
            # state: ndf x image_size/2 x image_size/2
            width, side = ndf, image_size // 2
            while side > 4:  # one stage per halving
                layers += [nn.Conv2d(width, width * 2, 4, 2, 1, bias=False),
                           fnn.BatchNorm2dAct(width * 2, act="leaky_relu", negative_slope=0.2), nn.Identity()]
                width, side = width * 2, side // 2
                # state: width x side x side (at 64: (ndf*2) x 16 x 16, (ndf*4) x 8 x 8, (ndf*8) x 4 x 4)
            layers.append(nn.Conv2d(width, 1, 4, 1, 0, bias=False))
            # state: 1 x 1 x 1
            self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).view(-1)


def size_for(origin: str) -> int:
    """28 for the MNIST family (IDX files, synthetic), 64 for image folders (Radford et al.)."""
    return 28 if origin in ("fashion-mnist", "synthetic", "idx-dir") else 64


@register
class Model(base.GanModel):
    name = "dcgan"
    summary = "DCGAN (Radford et al. 2015): 28x28 on MNIST-family data, 64x64 (or 32 to 256) on image folders"
    options = ("z_dim", "ngf", "ndf")
    recipe = {
        # pytorch/examples dcgan/main.py: Adam 2e-4 (0.5, 0.999), nz 100, ngf = ndf = 64, 25 epochs (--niter),
        # BCE loss. Batch: 128 at 64x64 (Radford et al. 2015, section 4); 64 on 28x28 MNIST-family data,
        # as the MNIST DCGANs (PyTorch-GAN dcgan.py) use: set in resolve() from the image size.
        "epochs": 25, "epochs_decay": 0, "lr": 2e-4, "beta1": 0.5, "beta2": 0.999,
        "gan_loss": "vanilla", "z_dim": 100, "ngf": 64, "ndf": 64,
    }
    default_notes = {"image_size": "28 on MNIST-family data, 64 on image folders",
                     "batch_size": "64 at 28x28, 128 at 64x64"}
    data_kind = "images"
    optimizers = {"D": ["D"], "G": ["G"]}
    inference = "generate"
    grid_legend = base.NOISE_GAN_LEGEND

    def resolve(self, cfg, origin: str) -> None:
        cfg.image_size = cfg.image_size or size_for(origin)
        if cfg.batch_size is None:
            cfg.batch_size = 64 if cfg.image_size == 28 else 128

    def check_size(self, cfg) -> None:
        check_size_flag(self.name, cfg.image_size)

    def build_nets(self, cfg, info: dict) -> dict[str, nn.Module]:
        channels = info["channels"]
        return {"G": Generator(cfg.z_dim, cfg.ngf, channels, cfg.image_size),
                "D": Discriminator(cfg.ndf, channels, cfg.image_size)}

    def phases(self, cfg, nets: dict, state: dict, info: dict) -> list[base.Phase]:
        return base.noise_gan_phases(cfg, nets["G"], nets["D"])

    def sampler(self, cfg, nets: dict, info: dict, device: torch.device) -> base.Sampler:
        return base.noise_gan_sampler(cfg, nets["G"], device)

    def grid_labels(self, cfg, info: dict) -> base.GridLabels:
        return base.noise_gan_grid_labels()
