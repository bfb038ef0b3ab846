"""Sample grids and image files, without torchvision: torch ops for the grid, Pillow for the file,
written atomically so an interrupted run never leaves a truncated image behind."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from .files import atomic_write


def to_unit(images: Tensor) -> Tensor:
    """[-1, 1] images with 1 or 3 channels -> 3-channel [0, 1] images."""
    images = (images.float() + 1) / 2
    return images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images


def make_grid(images: Tensor, columns: int, padding: int = 2) -> Tensor:
    """[N, 3, H, W] in [0, 1] -> one [3, rows*(H+p)+p, columns*(W+p)+p] image, filled row by row."""
    n, c, h, w = images.shape
    rows = -(-n // columns)
    grid = images.new_zeros(c, rows * (h + padding) + padding, columns * (w + padding) + padding)
    for i in range(n):
        y, x = divmod(i, columns)
        top, left = padding + y * (h + padding), padding + x * (w + padding)
        grid[:, top:top + h, left:left + w] = images[i]
    return grid


def to_uint8(image: Tensor) -> np.ndarray:
    """[3, H, W] float in [0, 1] -> [H, W, 3] uint8 array."""
    # sync: copies the image to the host (only at sample/inference time, never inside a step)
    return (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()


def save_image(image: Tensor, path: str | os.PathLike) -> None:
    """Writes a [3, H, W] float image in [0, 1] to ``path`` (format from the extension) atomically."""
    path = Path(path)
    fmt = Image.registered_extensions().get(path.suffix.lower(), "PNG")
    pixels = Image.fromarray(to_uint8(image))
    atomic_write(path, lambda tmp: pixels.save(tmp, format=fmt))
