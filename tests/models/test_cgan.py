import pytest
import torch
from torch import nn

from fastgan.models import ArchitectureError, cgan, dcgan


@pytest.mark.parametrize("image_size, channels", [(28, 1), (64, 3)])
def test_shapes(image_size, channels):
    g = cgan.Generator(z_dim=12, num_classes=10, ngf=8, channels=channels, image_size=image_size)
    d = cgan.Discriminator(ndf=8, num_classes=10, channels=channels, image_size=image_size)
    labels = torch.tensor([0, 3, 9])
    x = g(torch.randn(3, 12), labels)
    assert x.shape == (3, channels, image_size, image_size)
    assert x.abs().max() <= 1
    assert d(x, labels).shape == (3,)


def test_generator_output_depends_on_the_label():
    g = cgan.Generator(12, 10, 8, 1, 28).eval()
    z = torch.randn(1, 12).expand(10, 12)
    x = g(z, torch.arange(10))
    assert (x[1:] - x[:1]).abs().amax((1, 2, 3)).min() > 1e-3


def test_discriminator_sees_one_hot_label_maps(n_params):
    d = cgan.Discriminator(8, 4, 1, 28).eval()
    # The conditioning lives in the first conv's extra input channels: one per class.
    assert d.dcgan.net[0].weight.shape[1] == 1 + 4
    assert n_params(d) == n_params(dcgan.Discriminator(8, 1 + 4, 28))
    x = torch.randn(1, 1, 28, 28).expand(4, 1, 28, 28)
    labels = torch.arange(4)
    logits = d(x, labels)
    assert logits.unique().numel() == 4
    one_hot = torch.eye(4).view(4, 4, 1, 1).expand(4, 4, 28, 28)
    torch.testing.assert_close(logits, d.dcgan(torch.cat([x, one_hot], 1)))


@pytest.mark.parametrize("image_size", [48, 512])  # the DCGAN backbones take 28 and powers of two 32-256
def test_rejects_unsupported_image_size(image_size):
    with pytest.raises(ArchitectureError, match=f"cgan: image_size={image_size}"):
        cgan.Generator(100, 10, 8, 1, image_size)
    with pytest.raises(ArchitectureError, match=f"cgan: image_size={image_size}"):
        cgan.Discriminator(8, 10, 1, image_size)


@pytest.mark.parametrize("image_size, batch_norms", [(28, 1), (64, 3)])
def test_discriminator_uses_every_fused_layer(check_fused_layers, image_size, batch_norms):
    d = cgan.Discriminator(8, 10, 3, image_size)
    assert not [m for m in d.modules() if isinstance(m, nn.BatchNorm2d)]
    check_fused_layers(d, torch.randn(2, 3, image_size, image_size), torch.tensor([1, 7]),
                       expected={"leaky_relu": 1, "batch_norm_act": batch_norms})


@pytest.mark.parametrize("image_size, batch_norms", [(28, 2), (64, 4)])
def test_generator_uses_every_fused_layer(check_fused_layers, image_size, batch_norms):
    g = cgan.Generator(12, 10, 8, 3, image_size)
    assert not [m for m in g.modules() if isinstance(m, (nn.BatchNorm2d, nn.ReLU))]
    check_fused_layers(g, torch.randn(2, 12), torch.tensor([1, 7]),
                       expected={"batch_norm_act": batch_norms, "tanh": 1})
