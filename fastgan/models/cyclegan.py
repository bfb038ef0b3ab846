"""CycleGAN (Zhu et al. 2017): the ResNet generator, the 70x70 PatchGAN discriminator and the image pool.

Layouts and parameter counts follow the authors' pytorch-CycleGAN-and-pix2pix with InstanceNorm
(affine off, so every conv keeps its bias): 9-block generator 11,378,179 parameters, 70x70 PatchGAN
2,764,737. Every reflection-padded conv is a ReflectPadConv2d and every norm + activation an
InstanceNormAct, so the fast paths of fastgan.ops reach the whole network.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import nn as fnn
from . import ArchitectureError

UPSAMPLE_MODES = ("deconv", "resize")


class ResnetBlock(nn.Module):
    """x + IN(conv3(ReLU(IN(conv3(x))))) with reflection padding; the residual add is fused into the
    second InstanceNormAct."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = fnn.ReflectPadConv2d(channels, channels, 3, padding=1)
        self.norm1 = fnn.InstanceNormAct(channels, act="relu")
        self.conv2 = fnn.ReflectPadConv2d(channels, channels, 3, padding=1)
        self.norm2 = fnn.InstanceNormAct(channels, act="none")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm1(self.conv1(x))
        return self.norm2(self.conv2(h), residual=x)


class Upsample2x(nn.Module):
    """Nearest-neighbour x2 then a reflection-padded 3x3 conv: the checkerboard-free alternative to
    a transposed conv (Odena et al. 2016), with the same parameter count."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = fnn.ReflectPadConv2d(in_channels, out_channels, 3, padding=1)

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

    def __init__(self, in_channels: int = 3, out_channels: int = 3, ngf: int = 64, n_blocks: int = 9,
                 upsample: str = "deconv"):
        super().__init__()
        if upsample not in UPSAMPLE_MODES:
            raise ArchitectureError(f"ResnetGenerator: upsample={upsample!r} is not one of {UPSAMPLE_MODES}")
        if n_blocks < 0:
            raise ArchitectureError(f"ResnetGenerator: n_blocks={n_blocks} must be >= 0")
        layers: list[nn.Module] = [
            fnn.ReflectPadConv2d(in_channels, ngf, 7, padding=3),
            fnn.InstanceNormAct(ngf, act="relu"),
            # state: ngf x H x W
            nn.Conv2d(ngf, ngf * 2, 3, 2, 1),
            fnn.InstanceNormAct(ngf * 2, act="relu"),
            # state: (ngf*2) x H/2 x W/2
            nn.Conv2d(ngf * 2, ngf * 4, 3, 2, 1),
            fnn.InstanceNormAct(ngf * 4, act="relu"),
            # state: (ngf*4) x H/4 x W/4
        ]
        layers += [ResnetBlock(ngf * 4) for _ in range(n_blocks)]
        # state: (ngf*4) x H/4 x W/4
        for c in (ngf * 4, ngf * 2):
            if upsample == "deconv":
                layers.append(nn.ConvTranspose2d(c, c // 2, 3, 2, 1, output_padding=1))
            else:
                layers.append(Upsample2x(c, c // 2))
            layers.append(fnn.InstanceNormAct(c // 2, act="relu"))
        # state: ngf x H x W
        layers += [fnn.ReflectPadConv2d(ngf, out_channels, 7, padding=3), nn.Tanh()]
        # state: out_channels x H x W
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class PatchDiscriminator(nn.Module):
    """The PatchGAN discriminator: each output logit judges one receptive field (70x70 for n_layers=3).

    [B, in_channels, H, W] -> logits [B, 1, h, w] (30x30 for 256x256 inputs).
    """

    def __init__(self, in_channels: int = 3, ndf: int = 64, n_layers: int = 3):
        super().__init__()
        if n_layers < 1:
            raise ArchitectureError(f"PatchDiscriminator: n_layers={n_layers} must be >= 1")
        layers: list[nn.Module] = [fnn.Conv2dLeakyReLU(in_channels, ndf, 4, 2, 1, negative_slope=0.2)]
        # state: ndf x H/2 x W/2
        width = ndf
        for n in range(1, n_layers + 1):
            stride = 2 if n < n_layers else 1
            out = ndf * min(2**n, 8)
            layers += [nn.Conv2d(width, out, 4, stride, 1),
                       fnn.InstanceNormAct(out, act="leaky_relu", negative_slope=0.2)]
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
    Every choice is a device tensor drawn from the torch RNG and applied with where/index_copy: no
    Python random, no host sync, so a CUDA graph can capture it. Returned images carry no autograd
    history (D trains on them) and keep the input's dtype and memory layout.

    Args:
        pool_size: images kept; 0 disables the pool (inputs are returned as they are).
        image_shape: (C, H, W) of one image.
    """

    def __init__(self, pool_size: int, image_shape):
        super().__init__()
        if pool_size < 0:
            raise ArchitectureError(f"ImagePool: pool_size={pool_size} must be >= 0")
        self.pool_size, self.image_shape = pool_size, tuple(image_shape)
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
        swap = torch.rand(batch, device=device) < 0.5
        slot = torch.randint(self.pool_size, (batch,), device=device)
        out = torch.empty_like(images)
        for i in range(batch):  # sequential: an image stored here may be drawn by a later one in the batch
            new = images[i : i + 1].to(self.images.dtype)
            filling = self.count < self.pool_size
            index = torch.where(filling, self.count, slot[i]).view(1)
            stored = self.images.index_select(0, index)
            take_stored = ~filling & swap[i]
            out[i : i + 1] = torch.where(take_stored, stored, new)
            self.images.index_copy_(0, index, torch.where(filling | swap[i], new, stored))
            self.count += filling
        return out
