import pytest
import torch
from torch import nn

from fastgan import nn as fnn
from fastgan.errors import UserError
from fastgan.models import ArchitectureError, dcgan, init_weights


@pytest.mark.parametrize("image_size, channels", [
    (28, 1),  # MNIST family
    (64, 3),  # image folders
    (64, 1),  # grey folders
    (32, 3),  # one stage per doubling: the smallest and the largest
    (256, 3),
])
def test_shapes(image_size, channels):
    g = dcgan.Generator(z_dim=12, ngf=8, channels=channels, image_size=image_size)
    d = dcgan.Discriminator(ndf=8, channels=channels, image_size=image_size)
    x = g(torch.randn(3, 12))
    assert x.shape == (3, channels, image_size, image_size)
    assert x.abs().max() <= 1
    assert d(x).shape == (3,)


def test_radford_parameter_counts_match_pytorch_examples(n_params):
    # pytorch/examples dcgan with nc=3, nz=100, ngf=ndf=64
    assert n_params(dcgan.Generator(100, 64, 3, 64)) == 3_576_704
    assert n_params(dcgan.Discriminator(64, 3, 64)) == 2_765_568


def _pytorch_examples_layout(nz, ngf, ndf, nc):
    g = nn.Sequential(
        nn.ConvTranspose2d(nz, ngf * 8, 4, 1, 0, bias=False), nn.BatchNorm2d(ngf * 8), nn.ReLU(),
        nn.ConvTranspose2d(ngf * 8, ngf * 4, 4, 2, 1, bias=False), nn.BatchNorm2d(ngf * 4), nn.ReLU(),
        nn.ConvTranspose2d(ngf * 4, ngf * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ngf * 2), nn.ReLU(),
        nn.ConvTranspose2d(ngf * 2, ngf, 4, 2, 1, bias=False), nn.BatchNorm2d(ngf), nn.ReLU(),
        nn.ConvTranspose2d(ngf, nc, 4, 2, 1, bias=False), nn.Tanh())
    d = nn.Sequential(
        nn.Conv2d(nc, ndf, 4, 2, 1, bias=False), nn.LeakyReLU(0.2),
        nn.Conv2d(ndf, ndf * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ndf * 2), nn.LeakyReLU(0.2),
        nn.Conv2d(ndf * 2, ndf * 4, 4, 2, 1, bias=False), nn.BatchNorm2d(ndf * 4), nn.LeakyReLU(0.2),
        nn.Conv2d(ndf * 4, ndf * 8, 4, 2, 1, bias=False), nn.BatchNorm2d(ndf * 8), nn.LeakyReLU(0.2),
        nn.Conv2d(ndf * 8, 1, 4, 1, 0, bias=False))
    return g, d


def test_radford_variant_matches_pytorch_examples_layout():
    g, d = dcgan.Generator(10, 4, 3, 64).double(), dcgan.Discriminator(4, 3, 64).double()
    init_weights(g, std=0.3), init_weights(d, std=0.3)
    plain_g, plain_d = (m.double() for m in _pytorch_examples_layout(10, 4, 4, 3))
    for ours, plain in ((g, plain_g), (d, plain_d)):
        with torch.no_grad():
            for p, q in zip(ours.parameters(), plain.parameters(), strict=True):
                q.copy_(p)
    z = torch.randn(4, 10, dtype=torch.float64)
    x = g(z)
    torch.testing.assert_close(x, plain_g(z.view(4, 10, 1, 1)))
    torch.testing.assert_close(d(x), plain_d(x).view(-1))


def test_mnist_variant_layout(n_params):
    g, d = dcgan.Generator(100, 64, 1, 28), dcgan.Discriminator(64, 1, 28)
    # G: linear to (ngf*2) x 7 x 7 (no bias: BatchNorm follows), two transposed convs; D: two convs + linear.
    assert isinstance(g.project, nn.Linear) and g.project.out_features == 128 * 7 * 7
    assert [type(m) for m in g.net if isinstance(m, (nn.ConvTranspose2d, fnn.BatchNorm2dAct))] == \
        [fnn.BatchNorm2dAct, nn.ConvTranspose2d, fnn.BatchNorm2dAct, fnn.ConvTranspose2dTanh]
    assert n_params(g) == 100 * 6272 + 2 * 128 + 128 * 64 * 16 + 2 * 64 + 64 * 16 + 1
    assert n_params(d) == 16 * 64 + 64 + 64 * 128 * 16 + 2 * 128 + 128 * 49 + 1


@pytest.mark.parametrize("image_size", [48, 0, 16, 512])  # not 28 nor a power of two from 32 to 256
def test_rejects_unsupported_image_size(image_size):
    builders = (lambda: dcgan.Generator(100, 8, 1, image_size), lambda: dcgan.Discriminator(8, 1, image_size))
    for build in builders:
        with pytest.raises(ArchitectureError, match=f"dcgan: image_size={image_size} .* 28 .* 64") as err:
            build()
        assert isinstance(err.value, ValueError) and isinstance(err.value, UserError)


@pytest.mark.parametrize("image_size, batch_norms", [(28, 1), (64, 3)])
def test_discriminator_uses_every_fused_layer(check_fused_layers, image_size, batch_norms):
    d = dcgan.Discriminator(8, 3, image_size)
    assert not [m for m in d.modules() if isinstance(m, nn.BatchNorm2d)]
    check_fused_layers(d, torch.randn(2, 3, image_size, image_size),
                       expected={"leaky_relu": 1, "batch_norm_act": batch_norms})


@pytest.mark.parametrize("image_size, batch_norms", [(28, 2), (64, 4)])
def test_generator_uses_every_fused_layer(check_fused_layers, image_size, batch_norms):
    g = dcgan.Generator(12, 8, 3, image_size)
    assert not [m for m in g.modules() if isinstance(m, (nn.BatchNorm2d, nn.ReLU))]
    check_fused_layers(g, torch.randn(2, 12), expected={"batch_norm_act": batch_norms, "tanh": 1})


def test_state_dict_keys_are_those_of_the_unfused_networks():
    # At 64: pytorch/examples' keys (its nn.Sequential is ``main``, ours ``net``), so checkpoints from before
    # the fusion, and from that script, load.
    plain_g, plain_d = _pytorch_examples_layout(10, 4, 4, 3)
    g, d = dcgan.Generator(10, 4, 3, 64), dcgan.Discriminator(4, 3, 64)
    assert list(g.state_dict()) == ["net." + k for k in plain_g.state_dict()]
    g.load_state_dict({"net." + k: v for k, v in plain_g.state_dict().items()})
    # D's first pair was already one Conv2dLeakyReLU: its keys from index 1 on are the unfused ones, shifted.
    plain_d_keys = [k for k in plain_d.state_dict() if not k.startswith("0.")]
    assert list(d.state_dict())[1:] == ["net." + str(int(k.split(".")[0]) - 1) + "." + k.split(".", 1)[1]
                                        for k in plain_d_keys]
    # The 28x28 layout, as it was written with nn.BatchNorm2d and nn.ReLU / LeakyReLU.
    g28, d28 = dcgan.Generator(12, 8, 1, 28), dcgan.Discriminator(8, 1, 28)
    assert [k for k in g28.state_dict() if k.startswith("net.")] == [
        f"net.{i}.{name}" for i, names in ((1, BN), (3, ("weight",)), (4, BN), (6, ("weight", "bias")))
        for name in names]
    assert list(d28.state_dict()) == ["net.0.weight", "net.0.bias", "net.1.weight",
                                      *(f"net.2.{name}" for name in BN), "net.5.weight", "net.5.bias"]


BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
