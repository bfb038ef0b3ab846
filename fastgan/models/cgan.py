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
class Model(base.GanModel):
    name = "cgan"
    summary = "class-conditional DCGAN (Mirza & Osindero 2014) on labelled data"
    options = ("z_dim", "ngf", "ndf")
    recipe = {
        # The DCGAN recipe on MNIST-family data (pytorch/examples dcgan/main.py: Adam 2e-4 (0.5, 0.999),
        # nz 100, ngf = ndf = 64, 25 epochs; batch 64 as PyTorch-GAN's cgan.py), BCE loss.
        "epochs": 25, "epochs_decay": 0, "lr": 2e-4, "beta1": 0.5, "beta2": 0.999,
        "gan_loss": "vanilla", "z_dim": 100, "ngf": 64, "ndf": 64,
    }
    default_notes = {"image_size": "28 on MNIST-family data, 64 on image folders",
                     "batch_size": "64 at 28x28, 128 at 64x64"}
    data_kind = "labelled"
    optimizers = {"D": ["D"], "G": ["G"]}
    inference = "generate"
    conditional = True

    def resolve(self, cfg, origin: str) -> None:
        cfg.image_size = cfg.image_size or dcgan.size_for(origin)
        if cfg.batch_size is None:
            cfg.batch_size = 64 if cfg.image_size == 28 else 128

    def check_size(self, cfg) -> None:
        dcgan.check_size_flag(self.name, cfg.image_size)

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
