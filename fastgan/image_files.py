"""Image files in numpy and Pillow, without torch: listing and decoding folders of images, sample grids,
and writing PNG/JPEG atomically (an interrupted run never leaves a truncated image behind).

The data loaders, the trainer's sample grids and fastgan.generate/fastgan.translate all use these, so
``--backend onnxruntime`` runs where PyTorch is not installed and writes the same pixels as the torch
backend."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from .errors import UserError
from .train.files import atomic_write

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
GRID_COLUMNS = 8  # sample grids: 8 images per row


def list_images(root: str) -> list[str]:
    """All jpg/jpeg/png files below `root` (extensions case-insensitive, hidden files skipped), sorted."""
    if not os.path.isdir(root):
        raise UserError(f"{root}: no such directory; pass an existing image folder")
    paths = []
    visited = set()  # real paths of the folders listed: a symlink loop is followed once, not forever
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in visited:
            dirnames[:] = []
            continue
        visited.add(real)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        paths += [
            os.path.join(dirpath, name)
            for name in filenames
            if not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)
        ]
    if not paths:
        raise UserError(f"{root}: no images ({', '.join(IMAGE_EXTENSIONS)}) found below it")
    return sorted(paths)


def open_rgb(path: str, draft_size: int = 0) -> Image.Image:
    """Decode fully (so truncated data fails here, not later) and convert to RGB."""
    with Image.open(path) as img:
        if draft_size and img.format == "JPEG":
            # JPEG can decode at 1/2, 1/4, 1/8 scale straight from the DCT; still reads the whole stream.
            img.draft("RGB", (draft_size, draft_size))
        img.load()
        if img.mode == "P" and "transparency" in img.info:
            img = img.convert("RGBA")  # PIL warns when a transparent palette goes straight to RGB
        return img.convert("RGB")


def read_image(path: str) -> np.ndarray:
    """One image as uint8 [H, W, 3] RGB (grey, palette and RGBA converted)."""
    try:
        return np.array(open_rgb(path), dtype=np.uint8)
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise UserError(f"{path}: not a readable image ({e})") from None


def to_unit(images: np.ndarray) -> np.ndarray:
    """[N, 1 or 3, H, W] images in [-1, 1] -> float32 [N, 3, H, W] in [0, 1]."""
    images = (images.astype(np.float32) + 1) / 2
    return np.repeat(images, 3, axis=1) if images.shape[1] == 1 else images


def make_grid(images: np.ndarray, columns: int, padding: int = 2) -> np.ndarray:
    """[N, C, H, W] -> one [C, rows*(H+p)+p, columns*(W+p)+p] image, filled row by row, zero between."""
    n, c, h, w = images.shape
    rows = -(-n // columns)
    grid = np.zeros((c, rows * (h + padding) + padding, columns * (w + padding) + padding), images.dtype)
    for i in range(n):
        y, x = divmod(i, columns)
        top, left = padding + y * (h + padding), padding + x * (w + padding)
        grid[:, top:top + h, left:left + w] = images[i]
    return grid


def to_uint8(image: np.ndarray) -> np.ndarray:
    """[3, H, W] float in [0, 1] -> [H, W, 3] uint8 (clamped, rounded to nearest)."""
    return (np.clip(image.astype(np.float32), 0, 1) * 255).round().astype(np.uint8).transpose(1, 2, 0)


def save_image(image: np.ndarray, path: str | os.PathLike) -> None:
    """Writes a [3, H, W] float image in [0, 1] to ``path`` (format from the extension) atomically."""
    path = Path(path)
    fmt = Image.registered_extensions().get(path.suffix.lower(), "PNG")
    pixels = Image.fromarray(to_uint8(image))
    atomic_write(path, lambda tmp: pixels.save(tmp, format=fmt))
