import gzip
import os

import numpy as np
import pytest
import torch

from fastgan.data.idx import find_idx_files, is_idx_dir, load_idx, read_idx
from fastgan.errors import UserError

FASHION_DIR = "/usr/share/datasets/fashion-mnist"


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("height,width", [(28, 28), (7, 5)])  # MNIST; odd non-square
def test_read_round_trip(tmp_path, datagen, gz, height, width):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (6, height, width)).astype(np.uint8)
    labels = np.array([3, 1, 4, 1, 5, 9], dtype=np.uint8)
    ext = ".gz" if gz else ""
    datagen.write_idx(tmp_path / f"train-images-idx3-ubyte{ext}", images)
    datagen.write_idx(tmp_path / f"train-labels-idx1-ubyte{ext}", labels)
    x, y = load_idx(str(tmp_path), "train")
    assert x.dtype == torch.uint8 and x.shape == (6, 1, height, width)
    assert y.dtype == torch.int64 and y.tolist() == labels.tolist()
    np.testing.assert_array_equal(x[:, 0].numpy(), images)


def test_split_test_reads_t10k(tmp_path, datagen):
    root = datagen.make_idx_dir(tmp_path, n=20)
    assert load_idx(root, "train")[0].shape[0] == 20
    assert load_idx(root, "test")[0].shape[0] == 10


@pytest.mark.parametrize(
    "images_name,labels_name",
    [
        ("train-images.idx3-ubyte", "train-labels.idx1-ubyte"),  # mirror spelling
        ("emnist-letters-train-images-idx3-ubyte.gz", "emnist-letters-train-labels-idx1-ubyte.gz"),  # EMNIST
    ],
)
def test_other_spellings(tmp_path, datagen, images_name, labels_name):
    datagen.write_idx(tmp_path / images_name, np.zeros((2, 4, 4)))
    datagen.write_idx(tmp_path / labels_name, np.array([1, 26]))
    assert is_idx_dir(str(tmp_path))
    assert find_idx_files(str(tmp_path)) == (str(tmp_path / images_name), str(tmp_path / labels_name))


def test_plain_file_preferred_to_gz(tmp_path, datagen):
    datagen.make_idx_dir(tmp_path, gz=True)
    datagen.make_idx_dir(tmp_path, gz=False)
    images, labels = find_idx_files(str(tmp_path))
    assert not images.endswith(".gz") and not labels.endswith(".gz")


def _expect_error(path, *words):
    with pytest.raises(UserError) as e:
        read_idx(str(path), 3)
    message = str(e.value)
    assert str(path) in message and "\n" not in message
    for word in words:
        assert word in message
    return message


def test_wrong_magic(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    _expect_error(path, "magic")


def test_wrong_data_type(tmp_path, datagen):
    path = datagen.write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((2, 3, 3)), dtype_code=0x0D)
    _expect_error(path, "0x0d")


def test_labels_file_as_images(tmp_path, datagen):
    path = datagen.write_idx(tmp_path / "train-labels-idx1-ubyte", np.arange(4))
    _expect_error(path, "1 dimensions", "expected 3")


@pytest.mark.parametrize("gz", [False, True])
def test_truncated(tmp_path, datagen, gz):
    path = tmp_path / "full"
    datagen.write_idx(path, np.ones((10, 28, 28)))
    data = path.read_bytes()[:-100]
    cut = tmp_path / ("train-images-idx3-ubyte" + (".gz" if gz else ""))
    cut.write_bytes(gzip.compress(data)[:-1] if gz else data)
    # A cut .gz stream fails in gzip itself, before the IDX size check.
    _expect_error(cut, "cannot read" if gz else "truncated")


def test_truncated_header(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(bytes([0, 0, 8, 3, 0, 0]))
    _expect_error(path, "truncated")


def test_trailing_bytes(tmp_path, datagen):
    path = tmp_path / "train-images-idx3-ubyte"
    datagen.write_idx(path, np.ones((2, 4, 4)))
    path.write_bytes(path.read_bytes() + b"junk")
    _expect_error(path, "4 bytes after")


def test_label_count_mismatch(tmp_path, datagen):
    datagen.write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((5, 4, 4)))
    labels = datagen.write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(4))
    with pytest.raises(UserError, match="4 labels for 5 images") as e:
        load_idx(str(tmp_path))
    assert labels in str(e.value)


def test_missing_labels(tmp_path, datagen):
    datagen.write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((5, 4, 4)))
    with pytest.raises(UserError, match="no labels file train-labels-idx1-ubyte"):
        load_idx(str(tmp_path))


def test_missing_split(tmp_path, datagen):
    datagen.write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((5, 4, 4)))
    with pytest.raises(UserError, match="no test IDX images"):
        load_idx(str(tmp_path), "test")


def test_several_sets(tmp_path, datagen):
    for name in ("balanced", "letters"):
        datagen.write_idx(tmp_path / f"emnist-{name}-train-images-idx3-ubyte", np.zeros((2, 4, 4)))
    with pytest.raises(UserError, match="several train IDX sets"):
        find_idx_files(str(tmp_path))


@pytest.mark.skipif(not os.path.isdir(FASHION_DIR), reason="dataset-fashion-mnist not installed")
def test_real_fashion_mnist():
    images, labels = load_idx(FASHION_DIR, "train")
    assert images.shape == (60000, 1, 28, 28) and images.dtype == torch.uint8
    assert torch.bincount(labels).tolist() == [6000] * 10
    # The first training image is an ankle boot (class 9) in the published files.
    assert labels[0] == 9 and 0.1 < images.float().mean() / 255 < 0.5
    test_images, test_labels = load_idx(FASHION_DIR, "test")
    assert test_images.shape == (10000, 1, 28, 28) and torch.bincount(test_labels).tolist() == [1000] * 10


def test_unchanged_files_are_read_once(tmp_path, datagen):
    root = datagen.make_idx_dir(tmp_path, n=20)
    first = load_idx(root)
    assert load_idx(root)[0] is first[0]
    datagen.make_idx_dir(tmp_path, n=30)  # rewritten: read again
    assert load_idx(root)[0].shape[0] == 30
