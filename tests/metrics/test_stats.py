import pytest
import torch

from fastgan.metrics import histogram, histogram_distance, moments


def test_moments_overall_and_per_pixel():
    x = torch.tensor([[[1.0, 2.0]], [[3.0, 6.0]]])  # [2, 1, 2]
    mean, std = moments(x)
    assert mean.dim() == 0 and std.dim() == 0
    torch.testing.assert_close(mean, torch.tensor(3.0))
    torch.testing.assert_close(std, torch.tensor(((4 + 1 + 0 + 9) / 4) ** 0.5))
    mean, std = moments(x, per_pixel=True)
    torch.testing.assert_close(mean, torch.tensor([[2.0, 4.0]]))
    torch.testing.assert_close(std, torch.tensor([[1.0, 2.0]]))


def test_moments_of_a_large_gaussian_sample():
    mean, std = moments((torch.randn(64, 1, 16, 16) * 0.5 + 0.25).bfloat16())
    assert mean.dtype == torch.float32
    assert abs(mean - 0.25) < 0.01 and abs(std - 0.5) < 0.01


def test_histogram_counts_every_value():
    h = histogram(torch.tensor([-5.0, -1.0, 0.1, 0.9, 5.0]), bins=4)
    torch.testing.assert_close(h, torch.tensor([0.4, 0.0, 0.2, 0.4]))


@pytest.mark.parametrize("bins, range_", [(0, (-1.0, 1.0)), (8, (1.0, 1.0))])
def test_histogram_rejects_bad_bins(bins, range_):
    with pytest.raises(ValueError, match="histogram"):
        histogram(torch.zeros(3), bins=bins, range=range_)


def test_histogram_distance_orders_distributions():
    uniform = torch.rand(20000) * 2 - 1
    assert histogram_distance(uniform, uniform) == 0
    assert histogram_distance(uniform, torch.rand(20000) * 2 - 1) < 0.05
    disjoint = histogram_distance(torch.full((10,), -0.9), torch.full((7,), 0.9))
    torch.testing.assert_close(disjoint, torch.tensor(1.0))
    near = histogram_distance(uniform, (torch.rand(20000) * 2 - 1) * 0.9)
    far = histogram_distance(uniform, (torch.rand(20000) * 2 - 1) * 0.3)
    assert 0.05 < near < far
    torch.testing.assert_close(far, torch.tensor(0.7), atol=0.03, rtol=0)
