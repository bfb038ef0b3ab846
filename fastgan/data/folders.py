"""Image folders for the torch loader: the check that skips or rejects unreadable files, class labels from
subfolders, and the per-image transforms (CycleGAN/pix2pix resize + crop, DCGAN resize + centre crop)."""

from __future__ import annotations

import os
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from PIL import Image

from fastgan.errors import UserError
from fastgan.image_files import list_images, open_rgb, read_image  # listing and decoding live there, torch-free

__all__ = ["check_images", "class_labels", "list_images", "load_center_crop", "load_image", "load_resized_crop"]


def _to_tensor(img: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1).contiguous()


def load_image(path: str) -> torch.Tensor:
    """One image as uint8 [3, H, W] RGB (grey, palette and RGBA converted)."""
    return torch.from_numpy(read_image(path)).permute(2, 0, 1).contiguous()


def _readable(path: str, draft_size: int) -> str | None:
    """None if the image decodes, else the reason it does not."""
    try:
        open_rgb(path, draft_size)
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        return str(e) or type(e).__name__
    return None


def check_images(paths: list[str], strict: bool, threads: int = 2, draft_size: int = 0) -> list[str]:
    """The paths that decode. An unreadable one raises UserError when `strict`, else it is skipped with
    one warning naming it. Checked once before training so that an epoch's batches never change."""
    with ThreadPoolExecutor(max(1, threads)) as pool:  # PIL releases the GIL while decoding
        reasons = list(pool.map(lambda p: _readable(p, draft_size), paths))
    kept = []
    for path, reason in zip(paths, reasons):
        if reason is None:
            kept.append(path)
        elif strict:
            raise UserError(f"{path}: not a readable image ({reason}); remove it or drop --strict to skip it")
        else:
            warnings.warn(f"skipping {path}: not a readable image ({reason})", stacklevel=2)
    return kept


def class_labels(root: str, paths: list[str]) -> tuple[torch.Tensor, int]:
    """ImageFolder convention: with every image inside one of >= 2 first-level subfolders, the subfolder
    is the class (sorted names -> 0..K-1); otherwise all labels are 0 and there are no classes."""
    tops = [os.path.relpath(p, root).split(os.sep) for p in paths]
    if all(len(parts) > 1 for parts in tops):
        classes = sorted({parts[0] for parts in tops})
        if len(classes) > 1:
            index = {name: k for k, name in enumerate(classes)}
            return torch.tensor([index[parts[0]] for parts in tops], dtype=torch.int64), len(classes)
    return torch.zeros(len(paths), dtype=torch.int64), 0


def load_resized_crop(path: str, load_size: int, image_size: int, top: int, left: int, half: str = "") -> torch.Tensor:
    """CycleGAN and pix2pix training transform: resize to load_size square (bicubic), crop image_size at
    (top, left). ``half`` "left" or "right" first takes that half of an aligned A|B file (pix2pix)."""
    img = open_rgb(path, load_size)
    if half:
        w, h = img.width // 2, img.height
        img = img.crop((0, 0, w, h) if half == "left" else (w, 0, 2 * w, h))
    img = img.resize((load_size, load_size), Image.BICUBIC)
    return _to_tensor(img.crop((left, top, left + image_size, top + image_size)))


def load_center_crop(path: str, image_size: int) -> torch.Tensor:
    """DCGAN transform (pytorch/examples): shorter side to image_size (bilinear), centre crop image_size."""
    img = open_rgb(path, image_size)
    w, h = img.size
    scale = image_size / min(w, h)
    w, h = max(image_size, round(w * scale)), max(image_size, round(h * scale))
    img = img.resize((w, h), Image.BILINEAR)
    left, top = (w - image_size) // 2, (h - image_size) // 2
    return _to_tensor(img.crop((left, top, left + image_size, top + image_size)))
