"""Sample statistics of image batches: cheap checks that generated images move toward the data.

All functions take tensors on any device and return tensors (no host sync); callers read them with
.item() outside any training step.
"""

from __future__ import annotations

import torch


def moments(x: torch.Tensor, per_pixel: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and standard deviation (biased) of a batch, in fp32.

    Args:
        x: [N, ...] samples.
        per_pixel: False for one mean/std over everything (0-dim tensors); True for the statistics
            over the batch dimension at each position (tensors shaped x.shape[1:]).
    """
    x = x.float()
    if per_pixel:
        return x.mean(0), x.std(0, correction=0)
    return x.mean(), x.std(correction=0)


def histogram(x: torch.Tensor, bins: int = 64, range: tuple[float, float] = (-1.0, 1.0)) -> torch.Tensor:
    """Normalised histogram (sums to 1) of all values of x; values outside ``range`` are clamped into
    the end bins so that every sample counts."""
    lo, hi = range
    if bins < 1 or not hi > lo:
        raise ValueError(f"histogram: need bins >= 1 and range[0] < range[1], got bins={bins}, range={range}")
    counts = torch.histc(x.float().clamp(lo, hi), bins=bins, min=lo, max=hi)
    return counts / counts.sum().clamp_min(1)


def histogram_distance(a: torch.Tensor, b: torch.Tensor, bins: int = 64,
                       range: tuple[float, float] = (-1.0, 1.0)) -> torch.Tensor:
    """Total variation distance between the value histograms of a and b: 0 for identical
    distributions, 1 for disjoint ones (0-dim fp32 tensor)."""
    return 0.5 * (histogram(a, bins, range) - histogram(b, bins, range)).abs().sum()
