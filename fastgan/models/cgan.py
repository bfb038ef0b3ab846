"""Class-conditional DCGAN (Mirza & Osindero 2014 on the DCGAN backbones of fastgan.models.dcgan).

- G: a learned label embedding (num_classes -> num_classes) is concatenated to z, and the DCGAN
  generator of the same image_size maps [z, embedding] to an image.
- D: the label enters as num_classes one-hot maps concatenated to the image channels, so the first
  convolution sees the class at every position; the rest is the DCGAN discriminator. One-hot maps
  (rather than a projection discriminator) add no parameters beyond the first conv's extra input
  channels and let every layer relate image features to the class.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import UserError
from . import base, dcgan, register


class Generator(nn.Module):
    """(z [B, z_dim], labels int64 [B]) -> images [B, channels, image_size, image_size] in [-1, 1]."""

    def __init__(self, z_dim: int = 100, num_classes: int = 10, ngf: int = 64, channels: int = 1,
                 image_size: int = 28):
        super().__init__()
        dcgan.check_image_size("cgan", image_size)
        self.z_dim, self.num_classes, self.image_size = z_dim, num_classes, image_size
        self.label_embedding = nn.Embedding(num_classes, num_classes)
        self.dcgan = dcgan.Generator(z_dim + num_classes, ngf, channels, image_size)

    def forward(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        h = torch.cat([z, self.label_embedding(labels).to(z.dtype)], dim=1)  # state: (z_dim + num_classes)
        return self.dcgan(h)  # state: channels x image_size x image_size


class Discriminator(nn.Module):
    """(images [B, channels, S, S], labels int64 [B]) -> logits [B]."""

    def __init__(self, ndf: int = 64, num_classes: int = 10, channels: int = 1, image_size: int = 28):
        super().__init__()
        dcgan.check_image_size("cgan", image_size)
        self.num_classes, self.image_size = num_classes, image_size
        self.dcgan = dcgan.Discriminator(ndf, channels + num_classes, image_size)

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        # A comparison rather than F.one_hot, whose range checks would synchronise with the host.
        classes = torch.arange(self.num_classes, device=labels.device)
        label_maps = (labels.view(b, 1, 1, 1) == classes.view(1, -1, 1, 1)).to(x.dtype)
        x = torch.cat([x, label_maps.expand(b, self.num_classes, h, w)], dim=1)
        # state: (channels + num_classes) x S x S
        return self.dcgan(x)


@register
class Model(dcgan.Model):
    """DCGAN's recipe, sizes and checks (its Model), with class labels in both networks."""

    name = "cgan"
    summary = "class-conditional DCGAN (Mirza & Osindero 2014) on labelled data"
    # recipe: dcgan's on MNIST-family data (pytorch/examples dcgan/main.py; batch 64 as PyTorch-GAN's cgan.py).
    data_kind = "labelled"
    conditional = True
    grid_legend = (f"the top {base.SAMPLE_ROWS} rows are real training images, the rows below generated from fixed "
                   "noise, one row per class (class 0 first)")

    def build_nets(self, cfg, info: dict) -> dict[str, nn.Module]:
        channels, classes = info["channels"], info.get("num_classes", 0)
        if classes < 2:
            raise UserError(f"--data {cfg.data or 'default'}: cgan needs labelled data (IDX files with "
                            "labels or synthetic); use dcgan for unlabelled images")
        return {"G": Generator(cfg.z_dim, classes, cfg.ngf, channels, cfg.image_size),
                "D": Discriminator(cfg.ndf, classes, channels, cfg.image_size)}

    def phases(self, cfg, nets: dict, state: dict, info: dict) -> list[base.Phase]:
        return base.noise_gan_phases(cfg, nets["G"], nets["D"], info["num_classes"])

    def sampler(self, cfg, nets: dict, info: dict, device: torch.device) -> base.Sampler:
        return base.noise_gan_sampler(cfg, nets["G"], device, info["num_classes"])

    def grid_labels(self, cfg, info: dict) -> base.GridLabels:
        return base.noise_gan_grid_labels(info["num_classes"])
