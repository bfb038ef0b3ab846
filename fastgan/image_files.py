"""Image files in numpy and Pillow, without torch: listing and decoding folders of images, sample grids,
and writing PNG/JPEG atomically (an interrupted run never leaves a truncated image behind).

The data loaders, the trainer's sample grids and fastgan.generate/fastgan.translate all use these, so
``--backend onnxruntime`` runs where PyTorch is not installed and writes the same pixels as the torch
backend."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .errors import UserError
from .files import atomic_write

# What junyanz/pytorch-CycleGAN-and-pix2pix reads (data/image_folder.py), and WebP.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".tif", ".tiff", ".webp")
GRID_COLUMNS = 8  # sample grids: 8 images per row
NOT_AN_IMAGE = "non-image"  # a skip reason: the name's extension, or a hidden file
UNREADABLE = "unreadable"  # a skip reason: an image file that does not decode
# How CycleGAN and pix2pix make image_size squares of folder images (--preprocess; fastgan.data.folders).
PREPROCESS = ("resize_and_crop", "crop", "scale_width", "scale_width_and_crop", "none")
GREY_MODES = ("1", "L", "LA", "La", "I", "F", "I;16", "I;16B", "I;16L", "I;16N")


@dataclass
class ImageListing:
    """The image files below a folder, and the other files that were passed over (hidden or not images)."""

    paths: list[str]  # sorted
    others: list[str]  # files skipped for their name: hidden, or an extension not in IMAGE_EXTENSIONS


def scan_images(root: str) -> ImageListing:
    """The image files below ``root`` (IMAGE_EXTENSIONS, case-insensitive; hidden files and folders
    skipped; a symlinked folder loop followed once), and the files skipped for their name. An empty
    listing is allowed here; list_images refuses it."""
    if not os.path.isdir(root):
        raise UserError(f"{root}: no such directory; pass an existing image folder")
    paths, others = [], []
    visited = set()  # real paths of the folders listed: a symlink loop is followed once, not forever
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in visited:
            dirnames[:] = []
            continue
        visited.add(real)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            image = not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)
            (paths if image else others).append(os.path.join(dirpath, name))
    return ImageListing(sorted(paths), sorted(others))


def list_images(root: str) -> list[str]:
    """All image files below `root` (IMAGE_EXTENSIONS, case-insensitive, hidden files skipped), sorted."""
    paths = scan_images(root).paths
    if not paths:
        raise UserError(f"{root}: no images ({', '.join(IMAGE_EXTENSIONS)}) found below it")
    return paths


def _eight_bit(img: Image.Image) -> Image.Image:
    """Integer and float single-channel images (16-bit PNG and TIFF: I;16*, I; F) -> mode L, scaled, not
    clipped: Pillow's convert("L"/"RGB") clips such values at 255, which reads a 16-bit image as almost
    white. 16-bit data (I;16*, and I or F with values above 255) maps 0..65535 to 0..255 (v / 257, rounded,
    so an 8-bit image stored as 16 bits, v * 257, reads back exactly); F within [0, 1] maps 0..1 to 0..255;
    I or F within [0, 255] is taken as 8-bit. Out-of-range values are clipped to the range so chosen."""
    values = np.asarray(img, dtype=np.float64)
    top = float(values.max()) if values.size else 0.0
    if img.mode.startswith("I;16") or top > 255:
        values = values / 257
    elif img.mode == "F" and top <= 1:
        values = values * 255
    return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), "L")


def convert_image(img: Image.Image, channels: int = 3) -> Image.Image:
    """A decoded image in any Pillow mode -> 8-bit RGB (``channels`` 3) or L (1): 16-bit and float grey
    scaled (_eight_bit), a palette with transparency through RGBA, alpha dropped (as Pillow's convert and
    the reference's ``Image.open(path).convert("RGB")``), CMYK and YCbCr by Pillow's conversion; RGB to L
    by Pillow's ITU-R 601-2 luma (torchvision's Grayscale on a PIL image)."""
    if img.mode in ("I", "F") or img.mode.startswith("I;16"):
        img = _eight_bit(img)
    elif img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")  # PIL warns when a transparent palette goes straight to RGB
    target = "L" if channels == 1 else "RGB"
    return img if img.mode == target else img.convert(target)


@dataclass(frozen=True)
class ImageFacts:
    """What the start-up check learns of a readable image, from its header and one decode."""

    width: int
    height: int
    mode: str  # Pillow's mode of the file (I;16 for a 16-bit grey PNG, CMYK, P, ...)
    format: str  # Pillow's format name (PNG, JPEG, TIFF, ...)
    transparency: bool  # a palette or grey image with a transparent colour

    @property
    def grey(self) -> bool:
        return self.mode in GREY_MODES


def open_image(path: str, draft_size: int = 0, channels: int = 3) -> Image.Image:
    """Decode fully (so truncated data fails here, not later) and convert to 8-bit RGB (or L when
    ``channels`` is 1) with convert_image. ``draft_size`` lets a JPEG decode at a reduced scale no smaller
    than that."""
    with Image.open(path) as img:
        if draft_size and img.format == "JPEG" and img.mode in ("L", "RGB"):
            # JPEG can decode at 1/2, 1/4, 1/8 scale straight from the DCT; still reads the whole stream.
            img.draft("RGB" if channels == 3 else "L", (draft_size, draft_size))
        img.load()
        return convert_image(img, channels)


def open_rgb(path: str, draft_size: int = 0) -> Image.Image:
    """open_image as 8-bit RGB."""
    return open_image(path, draft_size, 3)


def inspect_image(path: str, draft_size: int = 0) -> ImageFacts:
    """Decodes the image once (so an unreadable file fails here) and returns its facts; raises OSError,
    ValueError or Image.DecompressionBombError for a file that does not decode."""
    with Image.open(path) as img:
        facts = ImageFacts(img.width, img.height, img.mode, img.format or "", "transparency" in img.info)
        if draft_size and img.format == "JPEG" and img.mode in ("L", "RGB"):
            img.draft(img.mode, (draft_size, draft_size))
        img.load()
        convert_image(img)
    return facts


def read_image(path: str, channels: int = 3) -> np.ndarray:
    """One image as uint8 [H, W, 3] RGB (or [H, W] grey when ``channels`` is 1), any mode converted by
    convert_image; a file that does not decode is a UserError naming it."""
    try:
        return np.array(open_image(path, 0, channels), dtype=np.uint8)
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
