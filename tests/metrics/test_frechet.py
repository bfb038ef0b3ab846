import torch

from fastgan.metrics import (
    RandomFeatures,
    feature_statistics,
    frechet_distance,
    frechet_distance_from_statistics,
)


def test_closed_form_for_diagonal_gaussians():
    # For commuting covariances d^2 = |mu1 - mu2|^2 + sum (sqrt(s1) - sqrt(s2))^2.
    mu1, mu2 = torch.tensor([0.0, 1.0, 2.0]), torch.tensor([1.0, 1.0, 0.0])
    s1, s2 = torch.tensor([1.0, 4.0, 0.25]), torch.tensor([4.0, 1.0, 0.25])
    expected = torch.tensor(1.0 + 4.0 + 1.0 + 1.0, dtype=torch.float64)
    d = frechet_distance_from_statistics(mu1, torch.diag(s1), mu2, torch.diag(s2))
    torch.testing.assert_close(d, expected)


def test_rotation_invariance_with_full_covariances():
    a = torch.randn(5, 5, dtype=torch.float64)
    sigma1, sigma2 = a @ a.T + torch.eye(5), torch.diag(torch.rand(5, dtype=torch.float64) + 0.5)
    mu1, mu2 = torch.randn(5, dtype=torch.float64), torch.randn(5, dtype=torch.float64)
    q, _ = torch.linalg.qr(torch.randn(5, 5, dtype=torch.float64))
    d = frechet_distance_from_statistics(mu1, sigma1, mu2, sigma2)
    d_rotated = frechet_distance_from_statistics(q @ mu1, q @ sigma1 @ q.T, q @ mu2, q @ sigma2 @ q.T)
    torch.testing.assert_close(d, d_rotated)
    assert frechet_distance_from_statistics(mu1, sigma1, mu1, sigma1) < 1e-9
    assert d > 0


def test_feature_statistics_match_numpy_conventions():
    f = torch.randn(50, 3, dtype=torch.float64)
    mu, sigma = feature_statistics(f)
    centred = f - f.mean(0)
    torch.testing.assert_close(mu, f.mean(0))
    torch.testing.assert_close(sigma, centred.T @ centred / 49)


def test_random_features_are_fixed_by_the_seed():
    x = torch.rand(4, 3, 20, 20) * 2 - 1
    torch.manual_seed(123)  # the global RNG plays no part
    f1 = RandomFeatures(feature_dim=16, seed=3)(x)
    f2 = RandomFeatures(feature_dim=16, seed=3)(x)
    assert f1.shape == (4, 16)
    torch.testing.assert_close(f1, f2, rtol=0, atol=0)
    assert not torch.allclose(RandomFeatures(feature_dim=16, seed=4)(x), f1)
    # grey images count as their three-channel repeat
    grey = x[:, :1]
    torch.testing.assert_close(RandomFeatures(16, 3)(grey), RandomFeatures(16, 3)(grey.expand(-1, 3, -1, -1)))


def test_frechet_distance_ranks_image_sets():
    def blobs(n, width):
        yy, xx = torch.meshgrid(torch.arange(28.0), torch.arange(28.0), indexing="ij")
        centre = torch.rand(n, 2, 1, 1) * 10 + 9
        r2 = (yy - centre[:, :1]) ** 2 + (xx - centre[:, 1:]) ** 2  # [n, 1, 28, 28]
        return torch.exp(-r2 / (2 * width**2)) * 2 - 1

    real, real_again = blobs(200, 3.0), blobs(200, 3.0)
    close, far = blobs(200, 3.5), torch.rand(200, 1, 28, 28) * 2 - 1
    d_same = frechet_distance(real, real_again, batch_size=64)
    d_close, d_far = frechet_distance(real, close), frechet_distance(real, far)
    assert d_same.dtype == torch.float64 and d_same.dim() == 0
    assert d_same < d_close < d_far
    assert d_far > 10 * d_same
