"""The MLP GAN (Goodfellow et al. 2014) on flattened images: z=100 -> 256 -> 256 -> 784 and back."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from .. import nn as fnn
from . import ArchitectureError, base, register


def _widths(hidden: int | Sequence[int]) -> tuple[int, ...]:
    widths = (hidden, hidden) if isinstance(hidden, int) else tuple(hidden)
    if not widths or any(int(w) != w or w < 1 for w in widths):
        raise ArchitectureError(f"gan: hidden={hidden!r} must be a positive width or a list of them")
    return widths


class Generator(nn.Module):
    """z [B, z_dim] -> images [B, *out_shape] in [-1, 1].

    Args:
        z_dim: latent size.
        hidden: width of both hidden layers, or one width per hidden layer.
        out_shape: (C, H, W) of the generated images.
    """

    def __init__(self, z_dim: int = 100, hidden: int | Sequence[int] = 256, out_shape=(1, 28, 28)):
        super().__init__()
        self.z_dim, self.out_shape = z_dim, tuple(out_shape)
        layers, width = [], z_dim
        for w in _widths(hidden):
            layers += [nn.Linear(width, w), nn.ReLU(inplace=True)]
            width = w
        layers += [nn.Linear(width, math.prod(self.out_shape)), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z).view(z.shape[0], *self.out_shape)  # state: C x H x W


class Discriminator(nn.Module):
    """images [B, *in_shape] (or already flattened) -> logits [B].

    Args:
        in_shape: (C, H, W) of the images.
        hidden: width of both hidden layers, or one width per hidden layer.
    """

    def __init__(self, in_shape=(1, 28, 28), hidden: int | Sequence[int] = 256):
        super().__init__()
        self.in_shape = tuple(in_shape)
        layers, width = [], math.prod(self.in_shape)
        for w in _widths(hidden):
            layers += [nn.Linear(width, w), fnn.LeakyReLU(0.2)]
            width = w
        layers.append(nn.Linear(width, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.reshape(x.shape[0], -1)).view(-1)  # state: B logits


@register
class Model(base.GanModel):
    name = "gan"
    summary = "MLP GAN (Goodfellow et al. 2014) on flattened images"
    options = ("z_dim", "hidden")
    recipe = {
        # eriklindernoren/PyTorch-GAN implementations/gan/gan.py: batch 64, Adam 2e-4 (0.5, 0.999),
        # latent 100, 200 epochs, BCE loss (the non-saturating loss of Goodfellow et al.).
        "batch_size": 64, "epochs": 200, "epochs_decay": 0, "lr": 2e-4, "beta1": 0.5, "beta2": 0.999,
        "gan_loss": "vanilla", "z_dim": 100,
        "hidden": 256,  # fastgan's width: two hidden layers of 256 in G and D (the reference uses 128..1024)
    }
    default_notes = {"image_size": "28 on MNIST-family data, 64 on image folders"}
    data_kind = "images"
    optimizers = {"D": ["D"], "G": ["G"]}
    inference = "generate"
    grid_legend = base.NOISE_GAN_LEGEND
    convolutional = False

    def resolve(self, cfg, origin: str) -> None:
        if not cfg.image_size:
            cfg.image_size = 28 if origin in ("fashion-mnist", "synthetic", "idx-dir") else 64

    def build_nets(self, cfg, info: dict) -> dict[str, nn.Module]:
        shape = (info["channels"], cfg.image_size, cfg.image_size)
        return {"G": Generator(cfg.z_dim, cfg.hidden, shape), "D": Discriminator(shape, cfg.hidden)}

    def phases(self, cfg, nets: dict, state: dict, info: dict) -> list[base.Phase]:
        return base.noise_gan_phases(cfg, nets["G"], nets["D"])

    def sampler(self, cfg, nets: dict, info: dict, device: torch.device) -> base.Sampler:
        return base.noise_gan_sampler(cfg, nets["G"], device)

    def grid_labels(self, cfg, info: dict) -> base.GridLabels:
        return base.noise_gan_grid_labels()
