"""Image folders for the torch loader: the check that skips or rejects unreadable files, class labels from
subfolders, and the per-image transforms (CycleGAN/pix2pix ``--preprocess`` modes, DCGAN resize + centre
crop).

``--preprocess`` follows junyanz/pytorch-CycleGAN-and-pix2pix (data/base_dataset.py, get_transform), with
L = --load-size and C = --image-size (the reference's --crop_size), resizing bicubic:

    resize_and_crop       resize to L x L, then a random C x C crop (the default, and the papers' jitter)
    crop                  a random C x C crop of the image as it is (no resize)
    scale_width           width to L, height to max(L * h / w, C) (kept when the width already is L and
                          the height at least C); no crop
    scale_width_and_crop  scale_width, then a random C x C crop
    none                  each side rounded to the nearest multiple of 4 (resized only if that changes it)

A batch is C x C images, so ``scale_width`` and ``none`` (which keep the image's shape) need every image to
come out C x C, and the cropping modes need every image to be at least C x C after scaling: an image that
does not is a UserError naming it at start (the reference fails mid-epoch, in its collate or RandomCrop)."""

from __future__ import annotations

import os
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from PIL import Image

from fastgan.errors import UserError
from fastgan.image_files import (  # listing and decoding live there, torch-free
    IMAGE_EXTENSIONS,
    NOT_AN_IMAGE,
    PREPROCESS,
    UNREADABLE,
    ImageFacts,
    ImageListing,
    inspect_image,
    list_images,
    open_image,
    open_rgb,
    read_image,
    scan_images,
)

__all__ = ["CROP_STEPS", "IMAGE_EXTENSIONS", "NOT_AN_IMAGE", "PREPROCESS", "UNREADABLE", "ImageFacts", "ImageListing",
           "check_geometry", "check_images", "class_labels", "class_names", "dali_reason", "inspect_images",
           "list_images", "load_center_crop", "load_image", "load_preprocessed", "load_resized_crop", "open_image",
           "open_rgb", "preprocess_geometry", "scan_images"]

POWER_BASE = 4  # --preprocess none: sides rounded to a multiple of this (the reference's __make_power_2 base)
# Modes whose crop range differs per image draw offsets in [0, CROP_STEPS] (the epoch plan) and scale them to
# each image's range: offset = r * (range + 1) // (CROP_STEPS + 1), uniform to within range / 65536.
CROP_STEPS = 2**16 - 1


def _to_tensor(img: Image.Image) -> torch.Tensor:
    pixels = np.array(img, dtype=np.uint8)
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    return torch.from_numpy(pixels).permute(2, 0, 1).contiguous()


def load_image(path: str, channels: int = 3) -> torch.Tensor:
    """One image as uint8 [channels, H, W] (any mode converted by fastgan.image_files.convert_image)."""
    pixels = read_image(path, channels)
    return torch.from_numpy(pixels.reshape(*pixels.shape[:2], channels)).permute(2, 0, 1).contiguous()


def _inspect(path: str, draft_size: int) -> ImageFacts | str:
    """The image's facts if it decodes, else the reason it does not."""
    try:
        return inspect_image(path, draft_size)
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        return str(e) or type(e).__name__


def inspect_images(paths: list[str], strict: bool, threads: int = 2, draft_size: int = 0) -> dict[str, ImageFacts]:
    """The paths that decode, with their facts, in the given order. An unreadable one raises UserError when
    `strict`, else it is skipped with one warning naming it. Checked once before training so that an epoch's
    batches never change."""
    with ThreadPoolExecutor(max(1, threads)) as pool:  # PIL releases the GIL while decoding
        results = list(pool.map(lambda p: _inspect(p, draft_size), paths))
    kept = {}
    for path, result in zip(paths, results):
        if isinstance(result, ImageFacts):
            kept[path] = result
        elif strict:
            raise UserError(f"{path}: not a readable image ({result}); remove it or drop --strict to skip it")
        else:
            warnings.warn(f"skipping {path}: not a readable image ({result})", stacklevel=2)
    return kept


def check_images(paths: list[str], strict: bool, threads: int = 2, draft_size: int = 0) -> list[str]:
    """The paths that decode (inspect_images without the facts)."""
    return list(inspect_images(paths, strict, threads, draft_size))


def class_names(root: str, paths: list[str]) -> list[str]:
    """ImageFolder convention: with every image inside one of >= 2 first-level subfolders, the subfolders'
    names, sorted (class k is the k-th); otherwise [] (no classes)."""
    tops = [os.path.relpath(p, root).split(os.sep) for p in paths]
    if all(len(parts) > 1 for parts in tops):
        classes = sorted({parts[0] for parts in tops})
        if len(classes) > 1:
            return classes
    return []


def class_labels(root: str, paths: list[str]) -> tuple[torch.Tensor, int]:
    """Each image's class (class_names' index; all 0 when there are no classes) and the number of classes."""
    classes = class_names(root, paths)
    if not classes:
        return torch.zeros(len(paths), dtype=torch.int64), 0
    index = {name: k for k, name in enumerate(classes)}
    tops = [os.path.relpath(p, root).split(os.sep)[0] for p in paths]
    return torch.tensor([index[top] for top in tops], dtype=torch.int64), len(classes)


def preprocess_geometry(width: int, height: int, preprocess: str, load_size: int,
                        image_size: int) -> tuple[tuple[int, int], bool]:
    """((width, height) after the mode's scaling, whether a random image_size crop follows) for an image
    (or half of an aligned pair) of ``width`` x ``height`` (module docstring)."""
    if preprocess not in PREPROCESS:
        raise UserError(f"--preprocess {preprocess}: choose from {', '.join(PREPROCESS)}")
    if preprocess == "resize_and_crop":
        return (load_size, load_size), True
    if preprocess == "crop":
        return (width, height), True
    if preprocess == "none":
        return (round(width / POWER_BASE) * POWER_BASE, round(height / POWER_BASE) * POWER_BASE), False
    if not (width == load_size and height >= image_size):  # scale_width[_and_crop]
        width, height = load_size, int(max(load_size * height / width, image_size))
    return (width, height), preprocess == "scale_width_and_crop"


def check_geometry(path: str, width: int, height: int, preprocess: str, load_size: int, image_size: int) -> None:
    """UserError naming the image when ``preprocess`` cannot make an image_size square of it."""
    (w, h), crop = preprocess_geometry(width, height, preprocess, load_size, image_size)
    if crop and (w < image_size or h < image_size):
        raise UserError(f"{path}: {width}x{height} becomes {w}x{h} under --preprocess {preprocess}, smaller than "
                        f"the --image-size {image_size} crop; use --preprocess resize_and_crop or remove it")
    if not crop and (w, h) != (image_size, image_size):
        instead = "scale_width_and_crop" if preprocess == "scale_width" else "crop or resize_and_crop"
        raise UserError(f"{path}: {width}x{height} becomes {w}x{h} under --preprocess {preprocess}, but batches are "
                        f"--image-size {image_size} squares; use --preprocess {instead}")


def _half(img: Image.Image, half: str) -> Image.Image:
    """The left or right half of an aligned A|B image (pix2pix's layout); all of it for ""."""
    if not half:
        return img
    w, h = img.width // 2, img.height
    return img.crop((0, 0, w, h) if half == "left" else (w, 0, 2 * w, h))


def load_preprocessed(path: str, preprocess: str, load_size: int, image_size: int,
                      crop: tuple[int, int] | None, half: str = "", channels: int = 3) -> torch.Tensor:
    """CycleGAN and pix2pix training transform (module docstring) -> uint8 [channels, image_size, image_size].
    ``crop`` (top, left): the epoch plan's offsets, in pixels for resize_and_crop and in [0, CROP_STEPS] (scaled
    to this image's range) for crop and scale_width_and_crop; None takes the centre. ``half`` "left" or
    "right" first takes that half of an aligned A|B file (pix2pix)."""
    draft = load_size if preprocess == "resize_and_crop" else 0  # JPEG's reduced decode only before a resize
    img = _half(open_image(path, draft, channels), half)
    (w, h), crops = preprocess_geometry(img.width, img.height, preprocess, load_size, image_size)
    if (w, h) != img.size:
        img = img.resize((w, h), Image.BICUBIC)
    if crops:
        range_y, range_x = h - image_size, w - image_size
        if crop is None:
            top, left = range_y // 2, range_x // 2
        elif preprocess == "resize_and_crop":
            top, left = crop
        else:
            top, left = crop[0] * (range_y + 1) // (CROP_STEPS + 1), crop[1] * (range_x + 1) // (CROP_STEPS + 1)
        img = img.crop((left, top, left + image_size, top + image_size))
    if img.size != (image_size, image_size):  # checked at start; a file replaced since then lands here
        raise ValueError(f"{img.width}x{img.height} after --preprocess {preprocess}, not {image_size}x{image_size}")
    return _to_tensor(img)


def load_resized_crop(path: str, load_size: int, image_size: int, top: int, left: int, half: str = "",
                      channels: int = 3) -> torch.Tensor:
    """--preprocess resize_and_crop: resize to load_size square (bicubic), crop image_size at (top, left)."""
    return load_preprocessed(path, "resize_and_crop", load_size, image_size, (top, left), half, channels)


def load_center_crop(path: str, image_size: int, channels: int = 3) -> torch.Tensor:
    """DCGAN transform (pytorch/examples): shorter side to image_size (bilinear), centre crop image_size."""
    img = open_image(path, image_size, channels)
    w, h = img.size
    scale = image_size / min(w, h)
    w, h = max(image_size, round(w * scale)), max(image_size, round(h * scale))
    img = img.resize((w, h), Image.BILINEAR)
    left, top = (w - image_size) // 2, (h - image_size) // 2
    return _to_tensor(img.crop((left, top, left + image_size, top + image_size)))


# What DALI's decoders are trusted to read as Pillow and convert_image do (checked on DALI's CPU decoders in
# tests/data/test_dali.py; its GPU decoders are not checked against the other modes, so those stay away).
DALI_MODES = ("1", "L", "LA", "P", "RGB", "RGBA")
DALI_FORMATS = ("JPEG", "MPO", "PNG", "BMP", "TIFF", "WEBP", "PPM")


def dali_reason(facts: ImageFacts) -> str:
    """Why the DALI loader should not read this image ("" when it may)."""
    if facts.format not in DALI_FORMATS:
        return f"a {facts.format or 'unknown'} file"
    if facts.mode not in DALI_MODES:
        what = {"F": "floating-point grey", "I": "32-bit grey", "CMYK": "CMYK"}
        return f"a {what.get(facts.mode, '16-bit grey' if facts.mode.startswith('I;16') else facts.mode)} image"
    return ""
