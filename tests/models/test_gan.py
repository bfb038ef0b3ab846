import pytest
import torch

from fastgan.models import ArchitectureError, gan


def test_default_sizes_and_shapes(n_params):
    g, d = gan.Generator(), gan.Discriminator()
    # z=100 -> 256 -> 256 -> 784 and 784 -> 256 -> 256 -> 1
    assert n_params(g) == (100 * 256 + 256) + (256 * 256 + 256) + (256 * 784 + 784)
    assert n_params(d) == (784 * 256 + 256) + (256 * 256 + 256) + (256 + 1)
    x = g(torch.randn(5, 100))
    assert x.shape == (5, 1, 28, 28) and x.abs().max() <= 1
    assert d(x).shape == (5,)
    assert torch.equal(d(x), d(x.flatten(1)))


@pytest.mark.parametrize("hidden, widths", [
    (32, [32, 32]),  # one width for both hidden layers
    ((64, 16, 8), [64, 16, 8]),  # one width per layer
])
def test_configurable_widths_and_shape(hidden, widths):
    g = gan.Generator(z_dim=2, hidden=hidden, out_shape=(3, 5, 7))
    d = gan.Discriminator(in_shape=(3, 5, 7), hidden=hidden)
    linears = [m.out_features for m in g.net if isinstance(m, torch.nn.Linear)]
    assert linears == widths + [3 * 5 * 7]
    assert [m.out_features for m in d.net if isinstance(m, torch.nn.Linear)] == widths + [1]
    assert d(g(torch.randn(4, 2))).shape == (4,)


@pytest.mark.parametrize("hidden", [0, (), (8, -1)])
def test_rejects_bad_widths(hidden):
    with pytest.raises(ArchitectureError, match="hidden"):
        gan.Generator(hidden=hidden)


def test_discriminator_uses_every_fused_layer(check_fused_layers):
    check_fused_layers(gan.Discriminator(hidden=16), torch.randn(3, 1, 28, 28), expected={"leaky_relu": 2})
