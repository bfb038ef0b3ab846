"""Labels drawn into a sample grid: a header row naming the columns (CycleGAN's real A | fake B | rec A | ...,
pix2pix's input | output | target) and a left column naming the rows (real | generated, one row per class).

Each model declares its labels (fastgan.models.base.GanModel.grid_labels); the trainer draws them into every
sample grid it writes, so a grid explains itself without the docs. Pillow and numpy only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont

BACKGROUND = 0.0  # the grid's padding is black; labels sit on the same background
INK = (230, 230, 230)
MIN_FONT, MAX_FONT = 8, 22  # pixel sizes: legible at 28x28 tiles, not shouting at 256x256 ones


@dataclass(frozen=True)
class GridLabels:
    """What a model's sample grid shows: a name per column (a header row), a name per row (a left column,
    written where a run of equal names starts), or both; empty means none."""

    columns: tuple[str, ...] = ()
    rows: tuple[str, ...] = ()


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1 with FreeType: any size
    except (TypeError, OSError, ImportError):
        return ImageFont.load_default()  # the fixed bitmap font


def _text_size(font, text: str) -> tuple[int, int]:
    left, top, right, bottom = font.getbbox(text)
    return right - left, bottom - top


def _fitting_font(texts, width: int, target: int):
    """The largest font of at most ``target`` pixels (not below MIN_FONT) in which every text fits ``width``."""
    size = max(MIN_FONT, min(MAX_FONT, target))
    while size > MIN_FONT and any(_text_size(_font(size), t)[0] > width for t in texts):
        size -= 1
    return _font(size)


def _cell(text: str, width: int, height: int, font, align: str) -> np.ndarray:
    """[height, width, 3] uint8: ``text`` on the background, clipped to the cell."""
    cell = Image.new("RGB", (width, height), (int(BACKGROUND * 255),) * 3)
    draw = ImageDraw.Draw(cell)
    left, top, right, bottom = font.getbbox(text)
    x = (width - (right - left)) // 2 - left if align == "center" else width - (right - left) - 3 - left
    draw.text((x, (height - (bottom - top)) // 2 - top), text, fill=INK, font=font)
    return np.asarray(cell)


def label_grid(grid: np.ndarray, labels: GridLabels, tile: tuple[int, int], columns: int,
               padding: int = 2) -> np.ndarray:
    """``grid`` ([3, H, W] float in [0, 1], from fastgan.image_files.make_grid with ``columns`` tiles of
    ``tile`` = (height, width) per row and ``padding``) with ``labels`` drawn around it: a header row above
    it, a label column left of it. Returns a new, larger [3, H', W'] float array; the tiles are unchanged."""
    if not labels.columns and not labels.rows:
        return grid
    h, w = tile
    rows = (grid.shape[1] - padding) // (h + padding)
    if labels.columns and len(labels.columns) != columns:
        raise ValueError(f"{len(labels.columns)} column labels for a grid of {columns} columns")
    if labels.rows and len(labels.rows) != rows:
        raise ValueError(f"{len(labels.rows)} row labels for a grid of {rows} rows")
    image = np.ascontiguousarray((np.clip(grid, 0, 1) * 255).round().astype(np.uint8).transpose(1, 2, 0))
    target = max(MIN_FONT, h // 6)
    if labels.rows:
        font = _fitting_font(labels.rows, 10 * max(h, 24), target)  # rows: the column grows to the text
        width = max(_text_size(font, t)[0] for t in labels.rows) + 6 + padding
        left = np.full((image.shape[0], width, 3), int(BACKGROUND * 255), np.uint8)
        for i, text in enumerate(labels.rows):
            if i and labels.rows[i - 1] == text:
                continue  # written once per run of equal labels
            top = padding + i * (h + padding)
            left[top:top + h] = _cell(text, width, h, font, "right")
        image = np.concatenate([left, image], axis=1)
    else:
        width = 0
    if labels.columns:
        font = _fitting_font(labels.columns, w + padding, target)
        height = max(_text_size(font, t)[1] for t in labels.columns) + 6
        header = np.full((height, image.shape[1], 3), int(BACKGROUND * 255), np.uint8)
        for j, text in enumerate(labels.columns):
            x = width + padding + j * (w + padding)
            header[:, x - padding // 2:x + w + padding // 2] = _cell(text, w + 2 * (padding // 2), height, font,
                                                                      "center")
        image = np.concatenate([header, image], axis=0)
    return image.transpose(2, 0, 1).astype(np.float32) / 255
