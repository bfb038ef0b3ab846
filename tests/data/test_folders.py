import os

import numpy as np
import pytest
import torch
from PIL import Image

from fastgan.data.folders import (
    CROP_STEPS,
    check_geometry,
    check_images,
    class_labels,
    list_images,
    load_center_crop,
    load_image,
    load_preprocessed,
    load_resized_crop,
    preprocess_geometry,
    scan_images,
)
from fastgan.errors import UserError


def test_list_images_recursive_case_insensitive(tmp_path, datagen):
    for name in ("b/x.PNG", "a.jpg", "c/d/e.JpEg", "f.png"):
        datagen.save_image(tmp_path / name, 4, 4)
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "scan.bmp").write_bytes(b"BM")  # listed by its extension; the start-up check finds it unreadable
    datagen.save_image(tmp_path / ".hidden.png", 4, 4)  # e.g. macOS ._ resource forks
    datagen.save_image(tmp_path / ".cache" / "g.png", 4, 4)
    names = [os.path.relpath(p, tmp_path) for p in list_images(str(tmp_path))]
    assert names == ["a.jpg", "b/x.PNG", "c/d/e.JpEg", "f.png", "scan.bmp"]
    listing = scan_images(str(tmp_path))
    assert [os.path.relpath(p, tmp_path) for p in listing.others] == [".hidden.png", "notes.txt"]


def test_list_images_survives_a_symlink_loop(tmp_path, datagen):
    datagen.save_image(tmp_path / "a" / "x.png", 4, 4)
    (tmp_path / "a" / "loop").symlink_to(tmp_path, target_is_directory=True)
    names = [os.path.relpath(p, tmp_path) for p in list_images(str(tmp_path))]
    assert names == ["a/x.png"]


def test_list_images_missing_dir(tmp_path):
    with pytest.raises(UserError, match="no such directory") as e:
        list_images(str(tmp_path / "nope"))
    assert str(tmp_path / "nope") in str(e.value)


def test_list_images_empty_dir(tmp_path):
    (tmp_path / "readme.txt").write_text("x")
    with pytest.raises(UserError, match="no images"):
        list_images(str(tmp_path))


@pytest.mark.parametrize("mode", ["RGB", "L", "RGBA", "P"])
def test_load_image_converts_to_rgb(tmp_path, mode):
    rng = np.random.default_rng(0)
    rgba = rng.integers(0, 256, (7, 5, 4), dtype=np.uint8)  # height 7, width 5
    img = Image.fromarray(rgba, "RGBA")
    img = img.convert(mode) if mode != "RGBA" else img
    img.save(tmp_path / "x.png")
    x = load_image(str(tmp_path / "x.png"))
    assert x.dtype == torch.uint8 and x.shape == (3, 7, 5)
    expected = np.array(img.convert("RGB")).transpose(2, 0, 1)
    np.testing.assert_array_equal(x.numpy(), expected)
    if mode == "L":
        assert torch.equal(x[0], x[1]) and torch.equal(x[1], x[2])
    if mode == "RGBA":  # alpha dropped, colour kept
        np.testing.assert_array_equal(x.numpy(), rgba[..., :3].transpose(2, 0, 1))


def test_load_image_corrupt(tmp_path):
    path = tmp_path / "broken.jpg"
    path.write_text("this is not a JPEG")
    with pytest.raises(UserError) as e:
        load_image(str(path))
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def _corrupt_files(tmp_path, datagen):
    text = tmp_path / "text.jpg"
    text.write_text("not an image")
    png = datagen.save_image(tmp_path / "cut.png", 32, 32)
    with open(png, "rb") as f:
        data = f.read()
    with open(png, "wb") as f:
        f.write(data[: len(data) // 2])
    jpg = datagen.save_image(tmp_path / "cut.jpg", 64, 64)
    with open(jpg, "rb") as f:
        data = f.read()
    with open(jpg, "wb") as f:
        f.write(data[: len(data) // 2])  # header intact, scan data cut: only a full decode notices
    return [str(text), png, jpg]


def test_check_images_skips_each_corrupt_file_with_a_warning(tmp_path, datagen):
    good = [datagen.save_image(tmp_path / f"ok{i}.png", 8, 8, seed=i) for i in range(2)]
    bad = _corrupt_files(tmp_path, datagen)
    with pytest.warns(UserWarning) as record:
        kept = check_images(good[:1] + bad + good[1:], strict=False)
    assert kept == good
    messages = [str(w.message) for w in record]
    assert len(messages) == len(bad)
    for path, message in zip(bad, messages):
        assert path in message


@pytest.mark.parametrize("which", [0, 1, 2])  # text as .jpg, truncated png, truncated jpeg
def test_check_images_strict_names_the_file(tmp_path, datagen, which):
    bad = _corrupt_files(tmp_path, datagen)[which]
    good = datagen.save_image(tmp_path / "ok.png", 8, 8)
    with pytest.raises(UserError, match="--strict") as e:
        check_images([good, bad], strict=True)
    assert bad in str(e.value)


def test_class_labels_from_subfolders(tmp_path, datagen):
    paths = [datagen.save_image(tmp_path / c / f"{i}.png", 4, 4) for c in ("cat", "ant") for i in range(2)]
    labels, num_classes = class_labels(str(tmp_path), paths)
    assert num_classes == 2 and labels.tolist() == [1, 1, 0, 0]  # sorted class names: ant=0, cat=1


@pytest.mark.parametrize("layout", [["a.png", "b.png"], ["only/a.png", "only/b.png"], ["x/a.png", "b.png"]])
def test_class_labels_none(tmp_path, datagen, layout):
    paths = [datagen.save_image(tmp_path / name, 4, 4) for name in layout]
    labels, num_classes = class_labels(str(tmp_path), paths)
    assert num_classes == 0 and labels.tolist() == [0, 0]


def test_load_resized_crop(tmp_path, datagen):
    path = datagen.save_image(tmp_path / "x.png", 23, 17)
    x = load_resized_crop(path, 11, 8, top=2, left=3)
    full = np.array(Image.open(path).convert("RGB").resize((11, 11), Image.BICUBIC)).transpose(2, 0, 1)
    assert x.shape == (3, 8, 8)
    np.testing.assert_array_equal(x.numpy(), full[:, 2:10, 3:11])


@pytest.mark.parametrize("width,height", [(40, 20), (20, 40), (9, 9)])  # wide, tall, square upscaled
def test_load_center_crop(tmp_path, datagen, width, height):
    path = datagen.save_image(tmp_path / "x.png", width, height, mode="L")
    x = load_center_crop(path, 16)
    assert x.shape == (3, 16, 16) and x.dtype == torch.uint8


# --preprocess as junyanz/pytorch-CycleGAN-and-pix2pix defines it (data/base_dataset.py), L = 32, C = 16:
@pytest.mark.parametrize("mode,size,expected", [
    ("resize_and_crop", (40, 30), ((32, 32), True)),
    ("crop", (40, 30), ((40, 30), True)),  # no resize
    ("scale_width", (40, 30), ((32, 24), False)),  # width to L, height L * h / w
    ("scale_width", (40, 10), ((32, 16), False)),  # ... but at least C
    ("scale_width", (32, 50), ((32, 50), False)),  # width already L, height >= C: kept
    ("scale_width", (32, 8), ((32, 16), False)),  # width already L, height < C: resized
    ("scale_width_and_crop", (37, 53), ((32, 45), True)),  # int(32 * 53 / 37) = 45
    ("none", (37, 53), ((36, 52), False)),  # each side to the nearest multiple of 4
    ("none", (38, 54), ((40, 56), False)),  # round half to even, as the reference's round()
])  # fmt: skip
def test_preprocess_geometry(mode, size, expected):
    assert preprocess_geometry(*size, mode, 32, 16) == expected


def _pil_expected(path, mode, top_left=None):
    """What the reference's transforms make of the image: Pillow resizes and crops, done by hand."""
    img = Image.open(path).convert("RGB")
    w, h = img.size
    if mode == "crop":
        scaled = img
    elif mode == "scale_width_and_crop":
        scaled = img.resize((32, int(max(32 * h / w, 16))), Image.BICUBIC)
    else:  # none
        return np.asarray(img.resize((round(w / 4) * 4, round(h / 4) * 4), Image.BICUBIC)).transpose(2, 0, 1)
    top, left = top_left if top_left else ((scaled.height - 16) // 2, (scaled.width - 16) // 2)
    return np.asarray(scaled.crop((left, top, left + 16, top + 16))).transpose(2, 0, 1)


@pytest.mark.parametrize("mode,size", [("crop", (40, 23)), ("scale_width_and_crop", (37, 53)), ("none", (15, 17))])
def test_load_preprocessed_matches_the_reference_transform(tmp_path, datagen, mode, size):
    path = datagen.save_image(tmp_path / "x.png", *size)
    centre = load_preprocessed(path, mode, 32, 16, None)
    assert centre.shape == (3, 16, 16)
    np.testing.assert_array_equal(centre.numpy(), _pil_expected(path, mode))
    if mode != "none":  # the plan's offset r in [0, CROP_STEPS] lands at r * (range + 1) // (CROP_STEPS + 1)
        w, h = preprocess_geometry(*size, mode, 32, 16)[0]
        for r in (0, CROP_STEPS // 3, CROP_STEPS):
            top, left = r * (h - 16 + 1) // (CROP_STEPS + 1), r * (w - 16 + 1) // (CROP_STEPS + 1)
            x = load_preprocessed(path, mode, 32, 16, (r, r))
            np.testing.assert_array_equal(x.numpy(), _pil_expected(path, mode, (top, left)))
        assert top == h - 16 and left == w - 16  # the last offset reaches the far edge


@pytest.mark.parametrize("mode,size,words", [
    ("crop", (40, 12), ["40x12", "smaller than the --image-size 16"]),
    ("scale_width", (40, 40), ["becomes 32x32", "scale_width_and_crop"]),
    ("none", (18, 22), ["becomes 16x24", "resize_and_crop"]),  # round(4.5) = 4, round(5.5) = 6
])  # fmt: skip
def test_check_geometry_names_the_image(mode, size, words):
    with pytest.raises(UserError) as e:
        check_geometry("dir/x.png", *size, mode, 32, 16)
    assert "dir/x.png" in str(e.value) and all(w in str(e.value) for w in words), str(e.value)


def test_grey_channel_reads_luma(tmp_path, datagen):
    path = datagen.save_image(tmp_path / "x.png", 23, 17)
    x = load_resized_crop(path, 11, 8, top=2, left=3, channels=1)
    full = np.array(Image.open(path).convert("L").resize((11, 11), Image.BICUBIC))
    assert x.shape == (1, 8, 8)
    np.testing.assert_array_equal(x[0].numpy(), full[2:10, 3:11])
