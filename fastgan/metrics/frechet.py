"""A Fréchet distance between image sets, on features of a fixed random convolutional network.

This is NOT FID: there are no Inception weights (fastgan downloads nothing). The extractor is a small
conv net whose weights are drawn from a seeded generator, so the same seed gives the same features on
every machine; distances are comparable between fastgan runs and checkpoints with the same
``feature_dim`` and ``seed``, not with published FID numbers. Random conv features still separate
distributions by local texture, contrast and layout, which is what a regression check needs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class RandomFeatures(nn.Module):
    """Images [N, 1 or 3, H, W] in [-1, 1] -> features [N, feature_dim].

    Grey images are repeated to three channels and everything is resized to 32x32, so image sets of
    any size and channel count land in one feature space.
    """

    def __init__(self, feature_dim: int = 64, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        widths = (3, 32, 64, feature_dim)
        self.depth = len(widths) - 1
        for i, (cin, cout) in enumerate(zip(widths[:-1], widths[1:])):
            # Variance-preserving scale for LeakyReLU(0.2) so no layer's features vanish or saturate.
            std = (2.0 / (1 + 0.2**2) / (cin * 9)) ** 0.5
            self.register_buffer(f"weight{i}", torch.randn(cout, cin, 3, 3, generator=g) * std)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] not in (1, 3):
            raise ValueError(f"RandomFeatures: expected images [N, 1 or 3, H, W], got {tuple(x.shape)}")
        x = x.float()
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        h = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False, antialias=True)
        for i in range(self.depth):
            h = F.leaky_relu(F.conv2d(h, getattr(self, f"weight{i}"), stride=2, padding=1), 0.2)
        # state: feature_dim x 4 x 4
        return h.mean((2, 3))


def feature_statistics(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean [D] and covariance [D, D] (unbiased) of features [N, D], in float64."""
    f = features.double()
    if f.shape[0] < 2:
        raise ValueError(f"feature_statistics: need at least 2 samples, got {f.shape[0]}")
    return f.mean(0), torch.cov(f.T).reshape(f.shape[1], f.shape[1])


def frechet_distance_from_statistics(mu1, sigma1, mu2, sigma2) -> torch.Tensor:
    """Squared Fréchet (2-Wasserstein) distance between N(mu1, sigma1) and N(mu2, sigma2):
    |mu1 - mu2|^2 + tr(sigma1 + sigma2 - 2 (sigma1 sigma2)^(1/2)).

    tr((sigma1 sigma2)^(1/2)) is computed as the sum of square roots of the eigenvalues of the
    symmetric sqrt(sigma1) sigma2 sqrt(sigma1), which avoids the complex results of a general sqrtm.
    """
    mu1, sigma1, mu2, sigma2 = (t.double() for t in (mu1, sigma1, mu2, sigma2))
    evals, evecs = torch.linalg.eigh(sigma1)
    sqrt1 = evecs @ torch.diag(evals.clamp_min(0).sqrt()) @ evecs.T
    middle = sqrt1 @ sigma2 @ sqrt1
    tr_sqrt = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp_min(0).sqrt().sum()
    # Rounding can take identical statistics a hair below zero.
    return ((mu1 - mu2).square().sum() + sigma1.trace() + sigma2.trace() - 2 * tr_sqrt).clamp_min(0)


def frechet_distance(a: torch.Tensor, b: torch.Tensor, features: nn.Module | None = None,
                     batch_size: int = 256) -> torch.Tensor:
    """Fréchet distance between two image sets [N, C, H, W] in [-1, 1] on RandomFeatures (not FID).

    Args:
        a, b: image sets (at least 2 images each; a few hundred for a stable value).
        features: the extractor; default RandomFeatures() (feature_dim 64, seed 0) on a's device.
        batch_size: images per extractor call.
    Returns:
        0-dim float64 tensor.
    """
    if features is None:
        features = RandomFeatures()
    features = features.to(a.device)
    stats = []
    for images in (a, b):
        f = torch.cat([features(images[i : i + batch_size]) for i in range(0, images.shape[0], batch_size)])
        stats.append(feature_statistics(f))
    return frechet_distance_from_statistics(*stats[0], *stats[1])
