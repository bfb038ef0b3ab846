"""The MLP GAN (Goodfellow et al. 2014) on flattened images: z=100 -> 256 -> 256 -> 784 and back."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from .. import nn as fnn
from . import ArchitectureError


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
