"""Reading every image mode to 8-bit RGB (or grey), and the image extensions listed."""

import os
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from fastgan.image_files import IMAGE_EXTENSIONS, inspect_image, read_image, scan_images

# An 8-bit grey gradient with every level, and its 16-bit version (v * 257: 0 -> 0, 255 -> 65535).
GRADIENT = np.tile(np.arange(256, dtype=np.uint8), (6, 1))
RGB = np.random.default_rng(0).integers(0, 256, (9, 13, 3), dtype=np.uint8)


def write_png16(path, pixels: np.ndarray) -> str:
    """A 16-bit PNG (Pillow writes none with colour): grey [H, W], grey + alpha [H, W, 2], RGB or RGBA."""
    pixels = np.asarray(pixels, dtype=">u2")
    height, width = pixels.shape[:2]
    channels = 1 if pixels.ndim == 2 else pixels.shape[2]
    colour_type = {1: 0, 2: 4, 3: 2, 4: 6}[channels]  # PNG: grey, grey + alpha, RGB, RGBA
    raw = b"".join(b"\0" + row.tobytes() for row in pixels)  # filter type 0 before each row

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw))
                + chunk(b"IEND", b""))
    return str(path)


def test_sixteen_bit_grey_png_reads_as_its_eight_bit_version(tmp_path):
    path = write_png16(tmp_path / "g16.png", GRADIENT.astype(np.uint16) * 257)
    assert Image.open(path).mode == "I;16"
    assert np.asarray(Image.open(path).convert("RGB")).mean() > 250  # what a plain convert("RGB") reads
    pixels = read_image(path)
    assert abs(pixels.mean() - GRADIENT.mean()) <= 1
    np.testing.assert_array_equal(pixels, np.repeat(GRADIENT[..., None], 3, axis=2))  # v * 257 / 257 exactly
    np.testing.assert_array_equal(read_image(path, channels=1), GRADIENT)


@pytest.mark.parametrize("channels", [2, 3, 4])  # grey + alpha, RGB, RGBA at 16 bits
def test_sixteen_bit_colour_png(tmp_path, channels):
    pixels = np.repeat(GRADIENT[..., None].astype(np.uint16) * 257, channels, axis=2)
    pixels[..., -1] = 65535 if channels != 3 else pixels[..., -1]
    path = write_png16(tmp_path / "c16.png", pixels)
    np.testing.assert_array_equal(read_image(path), np.repeat(GRADIENT[..., None], 3, axis=2))


@pytest.mark.parametrize("mode,values", [
    ("I;16", GRADIENT.astype(np.uint16) * 257),  # 16-bit TIFF
    ("I", GRADIENT.astype(np.int32) * 257),  # 32-bit integer TIFF holding 16-bit data
    ("I", GRADIENT.astype(np.int32)),  # 32-bit integer TIFF holding 8-bit data
    ("F", GRADIENT.astype(np.float32) / 255),  # float TIFF in [0, 1]
    ("F", GRADIENT.astype(np.float32)),  # float TIFF in [0, 255]
])  # fmt: skip
def test_integer_and_float_tiff(tmp_path, mode, values):
    path = tmp_path / "x.tif"
    Image.fromarray(values, None if mode == "I;16" else mode).save(path)
    assert Image.open(path).mode == mode
    pixels = read_image(str(path))
    np.testing.assert_array_equal(pixels, np.repeat(GRADIENT[..., None], 3, axis=2))
    assert inspect_image(str(path)).grey


def _palette_with_transparency() -> Image.Image:
    img = Image.fromarray(RGB).quantize(8)
    img.info["transparency"] = 2
    return img


# Pillow's documented conversion is the reference where it converts to 8-bit RGB itself: LA and RGBA drop
# alpha, a palette maps through its colours, CMYK by Pillow's CMYK -> RGB.
@pytest.mark.parametrize("name,make", [
    ("la.png", lambda: Image.fromarray(np.dstack([RGB[..., 0], RGB[..., 1]]), "LA")),
    ("p.png", lambda: Image.fromarray(RGB).quantize(8)),
    ("pt.png", _palette_with_transparency),
    ("cmyk.jpg", lambda: Image.fromarray(RGB).convert("CMYK")),
    ("cmyk.tif", lambda: Image.fromarray(RGB).convert("CMYK")),
    ("one.png", lambda: Image.fromarray(RGB[..., 0]).convert("1")),
    ("rgb.bmp", lambda: Image.fromarray(RGB)),
    ("rgb.tif", lambda: Image.fromarray(RGB)),
    ("rgb.TIFF", lambda: Image.fromarray(RGB)),
    ("rgb.webp", lambda: Image.fromarray(RGB)),
    ("rgb.ppm", lambda: Image.fromarray(RGB)),
    ("p.bmp", lambda: Image.fromarray(RGB).quantize(8)),
])  # fmt: skip
def test_modes_and_formats_as_pillow_converts_them(tmp_path, name, make):
    img = make()
    path = tmp_path / name
    img.save(path, **({"transparency": img.info["transparency"]} if "transparency" in img.info else {}),
             **({"lossless": True} if name.endswith("webp") else {}))
    with Image.open(path) as saved:
        saved.load()
        expected = saved.convert("RGBA" if saved.mode == "P" and "transparency" in saved.info else saved.mode)
        expected = np.asarray(expected.convert("RGB"))
    pixels = read_image(str(path))
    assert pixels.shape == (9, 13, 3) and pixels.dtype == np.uint8
    np.testing.assert_array_equal(pixels, expected)


def test_every_reference_extension_is_listed_and_the_rest_counted(tmp_path):
    assert set(IMAGE_EXTENSIONS) == {".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".tif", ".tiff", ".webp"}
    for i, ext in enumerate(IMAGE_EXTENSIONS):  # names with a space, non-ASCII letters and upper-case extensions
        Image.fromarray(RGB).save(tmp_path / f"{i} café{ext.upper() if i % 2 else ext}", lossless=True)
    for other in ("notes.txt", ".DS_Store", "scan.gif"):
        (tmp_path / other).write_bytes(b"x")
    listing = scan_images(str(tmp_path))
    assert len(listing.paths) == len(IMAGE_EXTENSIONS)
    assert sorted(os.path.basename(p) for p in listing.others) == [".DS_Store", "notes.txt", "scan.gif"]
    for path in listing.paths:
        if not path.lower().endswith((".jpg", ".jpeg")):  # the lossless ones
            np.testing.assert_array_equal(read_image(path), RGB)
