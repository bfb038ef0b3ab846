import dataclasses
import os

import pytest
import torch

from fastgan.data import datasets
from fastgan.data.datasets import FolderSource, TensorSource, data_origin, find_fashion_mnist, resolve_data
from fastgan.data.idx import load_idx
from fastgan.errors import UserError
from fastgan.models import get_model


def _cfg(cfg, model=None, **changes):
    """The request with ``changes``; ``model`` asks as that registered model does (its data kind)."""
    if model is not None:
        changes.update(kind=get_model(model).data_kind, model=model)
    return dataclasses.replace(cfg, **changes)


def _one_line_error(fn, *words):
    with pytest.raises(UserError) as e:
        fn()
    message = str(e.value)
    assert "\n" not in message
    for word in words:
        assert word in message, message
    return message


@pytest.mark.parametrize(
    "model,data,origin",
    [
        ("gan", "", "fashion-mnist"),
        ("dcgan", "", "fashion-mnist"),
        ("cgan", "", "fashion-mnist"),
        ("cyclegan", "", "fashion-unpaired"),
        ("dcgan", "synthetic", "synthetic"),
        ("cyclegan", "synthetic", "synthetic"),
    ],
)
def test_default_and_named_origins(cfg, model, data, origin):
    assert data_origin(_cfg(cfg, model=model, data=data)) == origin


def test_directory_origins(cfg, idx_dir, unpaired_dir):
    assert data_origin(_cfg(cfg, data=idx_dir)) == "idx-dir"
    assert data_origin(_cfg(cfg, data=unpaired_dir)) == "image-folder"  # dcgan takes all images below
    assert data_origin(_cfg(cfg, model="cyclegan", data=unpaired_dir)) == "unpaired-folder"


def test_fashion_mnist_from_env(cfg, tmp_path, monkeypatch, datagen):
    monkeypatch.setattr(datasets, "DEFAULT_FASHION_DIR", str(tmp_path / "absent"))
    root = datagen.make_idx_dir(tmp_path / "direct")
    monkeypatch.setenv("FASTGAN_DATA", root)
    assert find_fashion_mnist() == root
    nested = datagen.make_idx_dir(tmp_path / "parent" / "fashion-mnist")
    monkeypatch.setenv("FASTGAN_DATA", str(tmp_path / "parent"))
    assert find_fashion_mnist() == nested
    spec = resolve_data(_cfg(cfg, data="fashion-mnist"))
    assert spec.kind == "idx" and spec.num_images == 20 and spec.image_size == 28 and spec.num_classes == 10


def test_fashion_mnist_missing_says_how_to_install(cfg, tmp_path, monkeypatch):
    monkeypatch.setattr(datasets, "DEFAULT_FASHION_DIR", str(tmp_path / "absent"))
    monkeypatch.setenv("FASTGAN_DATA", str(tmp_path / "empty"))
    _one_line_error(lambda: resolve_data(cfg), "apt-get install dataset-fashion-mnist", "--data DIR")
    _one_line_error(
        lambda: resolve_data(_cfg(cfg, model="cyclegan")), "apt-get install dataset-fashion-mnist"
    )


def test_missing_directory(cfg, tmp_path):
    _one_line_error(lambda: resolve_data(_cfg(cfg, data=str(tmp_path / "nope"))), "nope", "no such directory")


@pytest.mark.parametrize("model", ["dcgan", "cyclegan"])
def test_empty_directory(cfg, tmp_path, model):
    _one_line_error(lambda: resolve_data(_cfg(cfg, model=model, data=str(tmp_path))), str(tmp_path))


def test_unpaired_needs_both_domains(cfg, tmp_path, datagen):
    datagen.save_image(tmp_path / "trainA" / "a.png", 8, 8)
    _one_line_error(lambda: resolve_data(_cfg(cfg, model="cyclegan", data=str(tmp_path))), "trainB")


def test_empty_domain(cfg, tmp_path, datagen):
    datagen.save_image(tmp_path / "trainA" / "a.png", 8, 8)
    os.makedirs(tmp_path / "trainB")
    (tmp_path / "trainB" / "notes.txt").write_text("x")
    _one_line_error(
        lambda: resolve_data(_cfg(cfg, model="cyclegan", data=str(tmp_path))), "trainB", "no images"
    )


def test_domain_of_only_corrupt_images(cfg, tmp_path, datagen):
    datagen.save_image(tmp_path / "trainA" / "a.png", 8, 8)
    os.makedirs(tmp_path / "trainB")
    (tmp_path / "trainB" / "b.png").write_text("not a png")
    c = _cfg(cfg, model="cyclegan", data=str(tmp_path), batch_size=1)
    with pytest.warns(UserWarning, match="b.png"):
        _one_line_error(lambda: resolve_data(c), "trainB", "no readable images")


def test_corrupt_image_skipped_or_strict(cfg, unpaired_dir):
    bad = os.path.join(unpaired_dir, "trainA", "zzz.jpg")
    with open(bad, "w") as f:
        f.write("not a jpeg")
    c = _cfg(cfg, model="cyclegan", data=unpaired_dir, image_size=16, batch_size=2)
    with pytest.warns(UserWarning, match="zzz.jpg") as record:
        spec = resolve_data(c)
    assert len(record) == 1 and len(spec.sources["A"]) == 5 and bad not in spec.sources["A"].paths
    _one_line_error(lambda: resolve_data(_cfg(c, strict=True)), bad, "--strict")


@pytest.mark.parametrize("batch_size", [0, 21])
def test_batch_size_must_fit_the_dataset(cfg, idx_dir, batch_size):
    _one_line_error(
        lambda: resolve_data(_cfg(cfg, data=idx_dir, batch_size=batch_size)), "--batch-size", "20 images"
    )


def test_batch_size_larger_than_unpaired_domains(cfg, unpaired_dir):
    c = _cfg(cfg, model="cyclegan", data=unpaired_dir, image_size=16, batch_size=6)
    _one_line_error(lambda: resolve_data(c), "--batch-size 6", "5 images")  # the larger domain has 5


@pytest.mark.parametrize(
    "model,data,words",
    [
        ("cyclegan", "fashion-mnist", ["two domains"]),
        ("dcgan", "fashion-unpaired", ["cyclegan"]),
        ("dcgan", "mnist", ["--data mnist", "no such directory"]),
    ],
)
def test_wrong_data_for_model(cfg, model, data, words):
    _one_line_error(lambda: resolve_data(_cfg(cfg, model=model, data=data)), *words)


@pytest.mark.parametrize("domains", ["7,7", "7", "a,b", "3,10"])
def test_bad_domains(cfg, domains):
    _one_line_error(
        lambda: resolve_data(_cfg(cfg, model="cyclegan", domains=domains)), f"--domains {domains}"
    )


def test_load_size_below_image_size(cfg, unpaired_dir):
    c = _cfg(cfg, model="cyclegan", data=unpaired_dir, image_size=32, load_size=16)
    _one_line_error(lambda: resolve_data(c), "--load-size 16", "--image-size 32")


def test_cgan_needs_labels(cfg, tmp_path, datagen):
    for i in range(4):
        datagen.save_image(tmp_path / "flat" / f"{i}.png", 8, 8)
        datagen.save_image(tmp_path / "classes" / ("cat" if i % 2 else "dog") / f"{i}.png", 8, 8)
    _one_line_error(
        lambda: resolve_data(_cfg(cfg, model="cgan", data=str(tmp_path / "flat"))), "class labels"
    )
    spec = resolve_data(_cfg(cfg, model="cgan", data=str(tmp_path / "classes"), batch_size=2))
    assert spec.num_classes == 2 and spec.sources["real"].labels.tolist() == [
        0,
        0,
        1,
        1,
    ]  # cat/1 cat/3 dog/0 dog/2


def test_image_folder_spec(cfg, unpaired_dir):
    spec = resolve_data(_cfg(cfg, data=unpaired_dir))
    source = spec.sources["real"]
    assert (spec.kind, spec.channels, spec.image_size, spec.flip, spec.crop_range) == (
        "folder",
        3,
        64,
        False,
        0,
    )
    assert isinstance(source, FolderSource) and len(source) == 12 and not spec.in_memory


def test_unpaired_folder_spec(cfg, unpaired_dir):
    spec = resolve_data(_cfg(cfg, model="cyclegan", data=unpaired_dir))
    assert (spec.kind, spec.image_size, spec.flip, spec.crop_range) == ("unpaired", 256, True, 286 - 256)
    assert [len(s) for s in spec.sources.values()] == [5, 3] and spec.num_images == 5
    test = resolve_data(_cfg(cfg, model="cyclegan", data=unpaired_dir, batch_size=2), "test")
    assert all(os.sep + "test" in p for s in test.sources.values() for p in s.paths)


def test_fashion_unpaired_picks_two_classes(cfg, tmp_path, monkeypatch, datagen):
    monkeypatch.setenv("FASTGAN_DATA", datagen.make_idx_dir(tmp_path / "fm", n=40))
    spec = resolve_data(_cfg(cfg, model="cyclegan", domains="7,9", image_size=32))
    a, b = spec.sources["A"], spec.sources["B"]
    assert isinstance(a, TensorSource) and spec.in_memory
    assert spec.name == "fashion-unpaired(sneaker,ankle-boot)" and spec.channels == 3
    assert len(a) == len(b) == 4  # labels cycle 0..9 over 40 images
    images, labels = load_idx(str(tmp_path / "fm"))
    assert torch.equal(a.images, images[labels == 7]) and torch.equal(b.images, images[labels == 9])


def test_folder_counts_and_skip_reasons(cfg, unpaired_dir):
    """loader.info's "counts" and "skipped": what the trainer's start-up line reports."""
    train_a = os.path.join(unpaired_dir, "trainA")
    for name in (".DS_Store", "notes.txt"):
        with open(os.path.join(train_a, name), "w") as f:
            f.write("x")
    open(os.path.join(unpaired_dir, "trainB", "empty.jpg"), "w").close()  # 0 bytes
    c = _cfg(cfg, model="cyclegan", data=unpaired_dir, image_size=16, batch_size=2)
    with pytest.warns(UserWarning, match="empty.jpg"):
        spec = resolve_data(c)
    assert spec.counts == {"trainA": 5, "trainB": 3}
    assert spec.skipped == {"non-image": 2, "unreadable": 1}


def test_grey_folders_are_said_and_read_as_one_channel(cfg, tmp_path, datagen):
    for domain in ("trainA", "trainB"):
        for i in range(2):
            datagen.save_image(tmp_path / domain / f"{i}.png", 20, 20, mode="L", seed=i)
    c = _cfg(cfg, model="cyclegan", data=str(tmp_path), image_size=16, batch_size=1)
    with pytest.warns(UserWarning, match=r"every image in trainA/ and trainB/ is grey.*--channels 1"):
        assert resolve_data(_cfg(c, channels=3)).channels == 3
    spec = resolve_data(_cfg(c, channels=1))
    assert spec.channels == 1 and spec.sources["A"].load(0, None).shape == (1, 16, 16)


@pytest.mark.parametrize("mode", ["crop", "scale_width_and_crop", "none", "scale_width"])
def test_preprocess_modes_on_folders(cfg, tmp_path, datagen, mode):
    sizes = [(16, 16)] * 3 if mode in ("none", "scale_width") else [(20, 31), (37, 16), (16, 16)]
    for domain in ("trainA", "trainB"):
        for i, size in enumerate(sizes):
            datagen.save_image(tmp_path / domain / f"{i}.png", *size, seed=i)
    c = _cfg(cfg, model="cyclegan", data=str(tmp_path), image_size=16, load_size=16, batch_size=3, preprocess=mode)
    spec = resolve_data(c)
    assert spec.preprocess == mode and spec.crop_range == (0 if mode in ("none", "scale_width") else 2**16 - 1)
    from fastgan.data import build_loader

    batch = next(build_loader(c, "cpu").epoch(0))
    assert batch["A"].shape == (3, 3, 16, 16)
    datagen.save_image(tmp_path / "trainB" / "small.png", 12, 40)
    if mode == "scale_width_and_crop":  # scales every width to --load-size, heights to at least --image-size
        assert len(resolve_data(c).sources["B"]) == 4
    else:  # too small to crop, or not square: named at start
        words = ["small.png"] + (["scale_width_and_crop"] if mode == "scale_width" else [])
        _one_line_error(lambda: resolve_data(c), *words)


def test_preprocess_and_flip_on_in_memory_sets(cfg):
    c = _cfg(cfg, model="cyclegan", data="synthetic", image_size=16, batch_size=2)
    _one_line_error(lambda: resolve_data(_cfg(c, preprocess="crop")), "--preprocess crop", "synthetic")
    _one_line_error(lambda: resolve_data(_cfg(c, preprocess="squash")), "--preprocess squash")
    _one_line_error(lambda: resolve_data(_cfg(c, channels=2)), "--channels 2")
    assert resolve_data(c).flip and not resolve_data(_cfg(c, flip=False)).flip


def test_sixteen_bit_and_cmyk_images_train_as_their_eight_bit_versions(cfg, tmp_path):
    """The torch loader's batches of a 16-bit grey PNG and a CMYK TIFF equal those of their 8-bit RGB versions."""
    import numpy as np
    from PIL import Image

    from fastgan.data import build_loader

    gradient = np.tile(np.arange(0, 256, 16, dtype=np.uint8), (16, 1))  # 16x16, every 16th level
    rgb = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    for domain, special, plain in (("A", Image.fromarray(gradient.astype(np.uint16) * 257), gradient),
                                   ("B", Image.fromarray(rgb).convert("CMYK"), None)):
        os.makedirs(tmp_path / f"train{domain}")
        special.save(tmp_path / f"train{domain}" / ("0.png" if domain == "A" else "0.tif"))
        twin = Image.fromarray(plain).convert("RGB") if plain is not None else special.convert("RGB")
        twin.save(tmp_path / f"train{domain}" / "1.png")
    c = _cfg(cfg, model="cyclegan", data=str(tmp_path), image_size=16, batch_size=2, preprocess="none", flip=False)
    batch = next(build_loader(c, "cpu").epoch(0))
    for domain in ("A", "B"):
        torch.testing.assert_close(batch[domain][0], batch[domain][1], rtol=0, atol=0)
    assert abs(float(batch["A"].mean()) - (gradient.mean() / 127.5 - 1)) < 1 / 127.5
