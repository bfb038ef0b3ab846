import pytest
import torch

from fastgan.data.synthetic import NUM_CLASSES, synthetic_domain, synthetic_labelled, synthetic_size


def _gen(seed):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("size", [28, 13])  # MNIST shape; odd size
def test_labelled_shape_and_determinism(size):
    images, labels = synthetic_labelled(200, size, _gen(3))
    assert images.shape == (200, 1, size, size) and images.dtype == torch.uint8
    assert labels.dtype == torch.int64 and 0 <= labels.min() and labels.max() < NUM_CLASSES
    again, again_labels = synthetic_labelled(200, size, _gen(3))
    assert torch.equal(images, again) and torch.equal(labels, again_labels)
    other, _ = synthetic_labelled(200, size, _gen(4))
    assert not torch.equal(images, other)


def test_labelled_classes_are_distinguishable():
    images, labels = synthetic_labelled(500, 28, _gen(0))
    coords = torch.arange(28, dtype=torch.float32)
    mass = images[:, 0].float()
    cy = (mass.sum(2) * coords).sum(1) / mass.sum((1, 2))
    cx = (mass.sum(1) * coords).sum(1) / mass.sum((1, 2))
    centres = torch.stack([torch.stack([cy[labels == k].mean(), cx[labels == k].mean()]) for k in range(10)])
    spread = torch.stack([cy[labels == 0].std(), cx[labels == 0].std()]).max()
    gaps = torch.cdist(centres, centres) + torch.eye(10) * 1e9
    assert gaps.min() > 3 * spread  # class means far apart compared with the jitter within a class


def _corner_mean(x):
    return x[:, :, [0, -1]][:, :, :, [0, -1]].float().mean()


@pytest.mark.parametrize("size", [32, 17])
def test_domains_differ(size):
    a = synthetic_domain(16, size, "A", _gen(1))
    b = synthetic_domain(16, size, "B", _gen(1))
    assert a.shape == b.shape == (16, 3, size, size) and a.dtype == torch.uint8
    assert _corner_mean(a) == 0 and _corner_mean(b) == 255  # dark vs light background
    assert (a.float().mean((1, 2, 3)) > 0).all()  # every image has a visible shape
    assert torch.equal(a, synthetic_domain(16, size, "A", _gen(1)))


def test_synthetic_size():
    assert synthetic_size(1, 28, 64) == 2048
    assert synthetic_size(3, 256, 1) == 64
    assert synthetic_size(3, 256, 100) == 200  # at least two batches
