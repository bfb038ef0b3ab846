"""Paired data (fastgan/data/paired.py): both folder layouts, the same jitter for A and B, the fashion-edges
demo, and every kind of mismatched input as a one-line error naming the file."""

import dataclasses
import os
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from fastgan.data import DataRequest, build_loader
from fastgan.data import datasets as datasets_module
from fastgan.data.datasets import DataSpec, TensorSource, data_origin, resolve_data
from fastgan.data.folders import load_resized_crop
from fastgan.data.loaders import DeviceLoader, epoch_plan
from fastgan.data.paired import edge_map
from fastgan.errors import UserError

IMAGE_SIZE, LOAD_SIZE = 16, 20
ONE_LEVEL = 1 / 127.5  # one uint8 step in [-1, 1]


def _pattern(i: int, h: int = 24, w: int = 24) -> np.ndarray:
    """An image that is not left-right symmetric (a flip shows) and whose blue plane names it (40 i + 20)."""
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 255 // (w - 1), y * 255 // (h - 1), np.full((h, w), 40 * i + 20)], -1).astype(np.uint8)


def _save(path, array: np.ndarray) -> None:
    os.makedirs(os.path.dirname(str(path)), exist_ok=True)
    Image.fromarray(array).save(str(path))


def make_aligned(root, n: int = 5, split: str = "train") -> str:
    """split/ of n side-by-side files: A the pattern, B its negative (255 - A), so an identical crop and flip
    of both halves gives B = -A in [-1, 1]."""
    for i in range(n):
        a = _pattern(i)
        _save(os.path.join(root, split, f"{i:03d}.png"), np.concatenate([a, 255 - a], axis=1))
    return str(root)


def make_two_folders(root, n: int = 5) -> str:
    """trainA/ and trainB/ of the same names (one in a subfolder, one with an upper-case extension in B)."""
    for i in range(n):
        name = os.path.join("sub", f"{i}") if i == 0 else f"{i}"
        a = _pattern(i, 30, 22)  # not square: both are resized to the load size
        _save(os.path.join(root, "trainA", name + ".png"), a)
        _save(os.path.join(root, "trainB", name + (".PNG" if i == 1 else ".png")), 255 - a)
    return str(root)


def _request(data, **kw) -> DataRequest:
    kw = {"batch_size": 2, "image_size": IMAGE_SIZE, "load_size": LOAD_SIZE, "workers": 0, **kw}
    return DataRequest(kind="paired", data=str(data), model="pix2pix", **kw)


def _blue_ids(images: torch.Tensor) -> list[int]:
    """The file index a batch's A images came from (their blue plane, 40 i + 20)."""
    blue = (images[:, 2].float().mean((1, 2)) + 1) * 127.5
    return [round((v - 20) / 40) for v in blue.tolist()]


def _one_line_error(fn, *words) -> str:
    with pytest.raises(UserError) as e:
        fn()
    message = str(e.value)
    assert "\n" not in message
    for word in words:
        assert word in message, message
    return message


# --- the layouts -------------------------------------------------------------------------------------

@pytest.mark.parametrize("make", [make_aligned, make_two_folders])
def test_pairs_get_the_same_crop_and_flip(tmp_path, make):
    root = make(tmp_path / "pairs")
    assert data_origin(_request(root)) == "paired-folder"
    loader = build_loader(_request(root), "cpu")
    assert loader.info["kind"] == "paired" and loader.info["num_images"] == 5 and loader.info["impl"] == "torch"
    seen_a = []
    for epoch in range(4):
        for batch in loader.epoch(epoch):
            assert batch["A"].shape == batch["B"].shape == (2, 3, IMAGE_SIZE, IMAGE_SIZE)
            # B is A's negative only where both got the same file, crop and flip (bicubic rounding: 2 levels).
            assert (batch["A"] + batch["B"]).abs().max() <= 2 * ONE_LEVEL
            seen_a.append(batch["A"])
    # The jitter is random: the same file comes back cropped or flipped differently across epochs.
    a = torch.cat(seen_a)
    ids = _blue_ids(a)
    first = {}
    differing = 0
    for image, i in zip(a, ids):
        if i in first:
            differing += not torch.equal(first[i], image)
        first.setdefault(i, image)
    assert differing > 0


def test_aligned_left_half_is_a(tmp_path):
    root = make_aligned(tmp_path / "pairs", n=3)
    loader = build_loader(_request(root, batch_size=1), "cpu")
    fixed = loader.fixed(3)  # centre crops, no flips
    centre = (LOAD_SIZE - IMAGE_SIZE) // 2
    for a, b, i in zip(fixed["A"], fixed["B"], _blue_ids(fixed["A"])):
        path = os.path.join(root, "train", f"{i:03d}.png")
        for image, half in ((a, "left"), (b, "right")):
            expected = load_resized_crop(path, LOAD_SIZE, IMAGE_SIZE, centre, centre, half).float() / 127.5 - 1
            torch.testing.assert_close(image, expected, rtol=0, atol=1e-6)
    assert sorted(_blue_ids(fixed["A"])) == [0, 1, 2]


def test_two_folders_pair_by_name(tmp_path):
    root = make_two_folders(tmp_path / "pairs")
    spec = resolve_data(_request(root))
    a, b = spec.sources["A"].paths, spec.sources["B"].paths
    names = [os.path.splitext(os.path.relpath(p, os.path.join(root, "trainA")))[0] for p in a]
    assert names == [os.path.splitext(os.path.relpath(p, os.path.join(root, "trainB")))[0] for p in b]
    assert names == ["1", "2", "3", "4", os.path.join("sub", "0")]
    assert b[0].endswith("1.PNG")


def test_test_split(tmp_path):
    root = make_aligned(tmp_path / "pairs", n=4)
    make_aligned(root, n=2, split="test")
    assert resolve_data(_request(root), "test").num_images == 2
    assert resolve_data(_request(root), "train").num_images == 4


def test_epoch_plan_is_shared_only_by_pairs():
    images = torch.arange(6, dtype=torch.uint8).view(6, 1, 1, 1).expand(6, 1, 4, 4).contiguous()
    sources = {"A": TensorSource(images, None), "B": TensorSource(images.clone(), None)}
    paired = DataSpec("p", "paired", sources, 1, 4, 0, True, 2, paired=True)
    plans = epoch_plan(paired, seed=1, epoch=3)
    assert plans["A"] is plans["B"]
    unpaired = dataclasses.replace(paired, paired=False)
    plans = epoch_plan(unpaired, seed=1, epoch=3)
    assert not torch.equal(plans["A"].order, plans["B"].order)  # 1 in 720 to be equal by chance; seeded
    assert not unpaired.paired and unpaired.unpaired and not paired.unpaired


def test_device_loader_flips_pairs_together():
    # Left-right ramps: a flip of A without the same flip of B (or the reverse) shows in every batch.
    ramp = torch.arange(8, dtype=torch.uint8).mul(30).expand(16, 1, 8, 8).contiguous()
    sources = {"A": TensorSource(ramp, None), "B": TensorSource(ramp.clone(), None)}
    spec = DataSpec("ramps", "paired", sources, 1, 8, 0, True, 0, paired=True)
    loader = DeviceLoader(spec, 4, 0, torch.device("cpu"), torch.contiguous_format, torch.float32)
    flipped = 0
    for batch in loader.epoch(0):
        assert torch.equal(batch["A"], batch["B"])
        flipped += int((batch["A"][:, 0, 0, 0] > 0).sum())
    assert 0 < flipped < 16  # some flipped, some not


def test_synthetic_pairs_share_their_shape():
    spec = resolve_data(DataRequest(kind="paired", data="synthetic", image_size=32, batch_size=2))
    assert spec.paired and spec.channels == 3 and spec.image_size == 32
    a, b = spec.sources["A"].images, spec.sources["B"].images
    disc, square = a.amax(1) > 0, b.amin(1) < 255  # A: a disc on black; B: a square on white
    for d, s in zip(disc[:20], square[:20]):
        ys, xs = torch.nonzero(d, as_tuple=True)
        assert s[ys, xs].all()  # the disc lies inside the square of the same centre and radius
        assert s.sum() > d.sum()


# --- fashion-edges ----------------------------------------------------------------------------------

def test_edge_map_of_a_square():
    image = torch.zeros(1, 1, 12, 12, dtype=torch.uint8)
    image[..., 4:8, 4:8] = 200
    edges = edge_map(image)[0, 0] == 0
    assert edges.dtype == torch.bool and not edges[:2].any() and not edges[:, :2].any()  # flat: no edges
    assert edges[3:9, 3:9].sum() == edges.sum() > 0  # only around the square
    assert edges[3, 5] and edges[5, 3] and edges[8, 5] and edges[5, 8]  # all four sides
    assert torch.equal(edge_map(torch.full((2, 1, 5, 5), 255, dtype=torch.uint8)),
                       torch.full((2, 1, 5, 5), 255, dtype=torch.uint8))  # a frame is no edge


def test_fashion_edges_from_env(tmp_path, monkeypatch, datagen):
    monkeypatch.setattr(datasets_module, "DEFAULT_FASHION_DIR", str(tmp_path / "absent"))
    monkeypatch.setenv("FASTGAN_DATA", datagen.make_idx_dir(tmp_path / "idx", n=20))
    req = DataRequest(kind="paired", batch_size=1)
    assert req.default_data == "fashion-edges" and data_origin(req) == "fashion-edges"
    spec = resolve_data(req)
    assert spec.paired and spec.in_memory and spec.name == "fashion-edges" and spec.kind == "paired"
    assert spec.num_images == 20 and spec.channels == 3 and spec.image_size == 256 and spec.crop_range == 0
    images = spec.sources["B"].images
    assert torch.equal(spec.sources["A"].images, edge_map(images)) and images.shape == (20, 1, 28, 28)
    loader = build_loader(dataclasses.replace(req, image_size=32, batch_size=4), "cpu")
    batch = next(iter(loader.epoch(0)))
    assert loader.info["impl"] == "device" and batch["A"].shape == batch["B"].shape == (4, 3, 32, 32)


@pytest.mark.skipif(not os.path.isdir("/usr/share/datasets/fashion-mnist"), reason="dataset-fashion-mnist missing")
def test_fashion_edges_outline_the_items(monkeypatch):
    monkeypatch.delenv("FASTGAN_DATA", raising=False)
    spec = resolve_data(DataRequest(kind="paired", batch_size=1), "test")
    edges, items = spec.sources["A"].images == 0, spec.sources["B"].images > 0
    assert spec.num_images == 10_000
    # Outlines, not fills: a minority of the pixels, most of them on or next to an item.
    assert 0.1 < edges.float().mean() < 0.5
    assert (edges & items).sum() > 2 * (edges & ~items).sum()


# --- bad input ---------------------------------------------------------------------------------------

def test_unpaired_folders_are_refused_naming_a_file(tmp_path):
    root = make_two_folders(tmp_path / "pairs")
    os.rename(os.path.join(root, "trainB", "3.png"), os.path.join(root, "trainB", "3b.png"))
    _one_line_error(lambda: resolve_data(_request(root)), os.path.join(root, "trainA", "3.png"),
                    "no image of the same name", "2 of 6 names unmatched")
    os.remove(os.path.join(root, "trainA", "3.png"))
    _one_line_error(lambda: resolve_data(_request(root)), os.path.join(root, "trainB", "3b.png"), "trainA")


def test_missing_b_folder(tmp_path):
    root = make_two_folders(tmp_path / "pairs")
    os.rename(os.path.join(root, "trainB"), os.path.join(root, "other"))
    _one_line_error(lambda: resolve_data(_request(root)), os.path.join(root, "trainB"), "trainA/ and trainB/")


def test_duplicate_names_are_refused(tmp_path):
    root = make_two_folders(tmp_path / "pairs")
    _save(os.path.join(root, "trainA", "2.jpg"), _pattern(2))
    _one_line_error(lambda: resolve_data(_request(root)), "2.jpg", "2.png", "two images named '2'")


def test_both_layouts_or_neither(tmp_path):
    root = make_two_folders(tmp_path / "pairs")
    make_aligned(root)
    _one_line_error(lambda: resolve_data(_request(root)), "train/", "trainA/ trainB/", "keep one layout")
    empty = tmp_path / "empty"
    empty.mkdir()
    _one_line_error(lambda: resolve_data(_request(empty)), str(empty), "side-by-side A|B", "same-named")


def test_odd_width_is_not_a_pair(tmp_path):
    root = make_aligned(tmp_path / "pairs", n=3)
    _save(os.path.join(root, "train", "odd.png"), _pattern(0, 24, 47))
    _one_line_error(lambda: resolve_data(_request(root)), os.path.join(root, "train", "odd.png"), "47x24",
                    "two halves of equal width")


def test_unreadable_file_drops_its_pair(tmp_path):
    root = make_two_folders(tmp_path / "pairs")
    bad = os.path.join(root, "trainB", "2.png")
    with open(bad, "wb") as f:
        f.write(b"not a png")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        spec = resolve_data(_request(root))
    messages = [str(w.message) for w in caught]
    assert any(bad in m and "not a readable image" in m for m in messages), messages
    assert any(os.path.join(root, "trainA", "2.png") in m and "partner" in m for m in messages), messages
    assert spec.num_images == 4 and all("2.png" not in p for p in spec.sources["A"].paths)
    _one_line_error(lambda: resolve_data(_request(root, strict=True)), bad, "--strict")


@pytest.mark.parametrize("kind, data, words", [
    ("paired", "fashion-mnist", ("needs aligned A/B pairs", "fashion-edges")),
    ("paired", "fashion-unpaired", ("unpaired translation", "aligned A/B pairs")),
    ("images", "fashion-edges", ("aligned pairs", "one domain of images")),
    ("unpaired", "fashion-edges", ("aligned pairs", "two domains")),
])
def test_named_sets_of_the_wrong_kind(kind, data, words):
    _one_line_error(lambda: data_origin(DataRequest(kind=kind, data=data)), f"--data {data}", *words)


def test_batch_larger_than_the_pairs(tmp_path):
    root = make_aligned(tmp_path / "pairs", n=3)
    _one_line_error(lambda: resolve_data(_request(root, batch_size=4)), "--batch-size 4", "3 images")


# --- DALI --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("make", [make_aligned, make_two_folders])
def test_dali_serves_the_torch_loaders_pairs(tmp_path, make):
    pytest.importorskip("nvidia.dali", reason="NVIDIA DALI is not installed (pip install 'fastgan[dali]')")
    from fastgan.data.dali import build_dali_loader

    root = make(tmp_path / "pairs")
    req = _request(root)
    dali, ref = build_dali_loader(req, "cpu"), build_loader(req, "cpu")
    for epoch in (0, 1):
        for ours, theirs in zip(dali.epoch(epoch), ref.epoch(epoch), strict=True):
            assert (ours["A"] + ours["B"]).abs().max() <= 2 * ONE_LEVEL  # the same crop and flip for both
            for key in ("A", "B"):
                diff = (ours[key] - theirs[key]).abs()
                # DALI's and PIL's bicubic resampling differ by rounding on these smooth ramps
                assert diff.max() <= 3 * ONE_LEVEL and diff.mean() <= 0.5 * ONE_LEVEL, key
