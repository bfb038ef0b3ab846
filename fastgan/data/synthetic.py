"""Generated datasets of each model's shape, for smoke tests and benchmarks: deterministic in the seed,
easy enough that a short run visibly learns them, and built in one vectorised pass on the host."""

from __future__ import annotations

import math

import torch

NUM_CLASSES = 10
_ELEMENT_BUDGET = 1 << 22  # uint8 elements per domain: small sets at 28^2, at least 64 images at 256^2


def synthetic_size(channels: int, image_size: int, batch_size: int) -> int:
    """Images per domain: about 4 MB of uint8, at least 64 and at least two batches."""
    return max(2 * batch_size, min(2048, max(64, _ELEMENT_BUDGET // (channels * image_size * image_size))))


def _grid(image_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    coords = torch.arange(image_size, dtype=torch.float32) + 0.5
    return coords.view(1, -1, 1), coords.view(1, 1, -1)  # y [1, S, 1], x [1, 1, S]


def synthetic_labelled(
    n: int, image_size: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """n grey images uint8 [n, 1, S, S] of one Gaussian blob whose position on a circle encodes the class
    (labels int64 [n], 10 classes), with jittered position and width."""
    labels = torch.randint(0, NUM_CLASSES, (n,), generator=generator)
    angle = labels.float() * (2 * math.pi / NUM_CLASSES)
    jitter = (torch.rand(n, 2, generator=generator) - 0.5) * (0.1 * image_size)
    cy = image_size / 2 + 0.3 * image_size * torch.sin(angle) + jitter[:, 0]
    cx = image_size / 2 + 0.3 * image_size * torch.cos(angle) + jitter[:, 1]
    sigma = image_size * (0.08 + 0.04 * torch.rand(n, generator=generator))
    y, x = _grid(image_size)
    d2 = (y - cy.view(-1, 1, 1)) ** 2 + (x - cx.view(-1, 1, 1)) ** 2
    images = 255 * torch.exp(-d2 / (2 * sigma.view(-1, 1, 1) ** 2))
    return images.round().to(torch.uint8).unsqueeze(1), labels


def synthetic_domain(n: int, image_size: int, domain: str, generator: torch.Generator) -> torch.Tensor:
    """n RGB images uint8 [n, 3, S, S]: domain "A" a coloured disc on black, domain "B" a coloured square
    on white, at random positions, sizes and colours (a simple shape-and-background translation)."""
    return _draw_shapes(_shapes(n, image_size, generator), image_size, domain)


def synthetic_pairs(n: int, image_size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """n aligned pairs uint8 [n, 3, S, S] each: A a coloured disc on black, B the square of the same centre,
    size and colour on white, so B is a function of A that a short paired training can learn."""
    shapes = _shapes(n, image_size, generator)
    return _draw_shapes(shapes, image_size, "A"), _draw_shapes(shapes, image_size, "B")


def _shapes(n: int, image_size: int, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
    """Random centres [n, 2], radii [n] and colours uint8 [n, 3]."""
    centre = image_size * (0.3 + 0.4 * torch.rand(n, 2, generator=generator))
    radius = image_size * (0.12 + 0.12 * torch.rand(n, generator=generator))
    colour = (64 + 191 * torch.rand(n, 3, generator=generator)).round().to(torch.uint8)
    return centre, radius, colour


def _draw_shapes(shapes: tuple[torch.Tensor, ...], image_size: int, domain: str) -> torch.Tensor:
    centre, radius, colour = shapes
    y, x = _grid(image_size)
    dy, dx = y - centre[:, 0].view(-1, 1, 1), x - centre[:, 1].view(-1, 1, 1)
    r = radius.view(-1, 1, 1)
    if domain == "A":
        inside, background = (dy**2 + dx**2 <= r**2), 0
    else:
        inside, background = (dy.abs() <= r) & (dx.abs() <= r), 255
    background = torch.tensor(background, dtype=torch.uint8)
    return torch.where(inside.unsqueeze(1), colour.view(-1, 3, 1, 1), background)
