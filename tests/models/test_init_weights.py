import pytest
import torch
from torch import nn

from fastgan import nn as fnn
from fastgan.models import cgan, cyclegan, dcgan, init_weights

CONV_LINEAR = (nn.Conv2d, nn.ConvTranspose2d, nn.Linear, fnn.ReflectPadConv2d, fnn.Conv2dLeakyReLU)


def _by_role(model):
    convs, norms, biases = [], [], []
    for m in model.modules():
        if isinstance(m, CONV_LINEAR):
            convs.append(m.weight)
        elif isinstance(m, (nn.BatchNorm2d, fnn.InstanceNormAct, fnn.BatchNorm2dAct)) and m.weight is not None:
            norms.append(m.weight)
        else:
            continue
        if m.bias is not None:
            biases.append(m.bias)
    return convs, norms, biases


@pytest.mark.parametrize("std", [0.02, 0.1])
def test_init_statistics(std):
    model = nn.ModuleList([cyclegan.ResnetGenerator(ngf=16, n_blocks=1), cyclegan.PatchDiscriminator(ndf=16),
                           dcgan.Generator(100, 16, 3, 64), fnn.InstanceNormAct(256, affine=True)])
    assert init_weights(model, std=std) is model
    convs, norms, biases = _by_role(model)
    # every conv kind is reached, including the fused ones that are not nn.Conv2d subclasses
    kinds = {type(m) for m in model.modules()}
    assert {fnn.ReflectPadConv2d, fnn.Conv2dLeakyReLU, nn.ConvTranspose2d, nn.Conv2d, fnn.BatchNorm2dAct} <= kinds
    conv_values = torch.cat([w.flatten() for w in convs])
    norm_values = torch.cat([w.flatten() for w in norms])
    assert abs(conv_values.mean()) < std / 50 and abs(conv_values.std() / std - 1) < 0.02
    assert abs(norm_values.mean() - 1) < std / 5 and abs(norm_values.std() / std - 1) < 0.1
    for w in convs:  # each tensor individually, so no layer is left at PyTorch's default
        assert abs(w.std() / std - 1) < 0.5
    assert biases and all(torch.equal(b, torch.zeros_like(b)) for b in biases)


def test_embedding_keeps_unit_scale():
    g = init_weights(cgan.Generator(100, 10, 8, 1, 28))
    assert 0.5 < g.label_embedding.weight.std() < 2
