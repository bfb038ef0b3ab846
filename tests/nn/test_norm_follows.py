"""A convolution declared ``norm_follows`` leaves out the bias the following InstanceNorm cancels
(fastgan.nn.layers._NormFollows): the same outputs and gradients as torch's conv (bias added) then
InstanceNorm, in float64; its bias gets no gradient (None); impl="ref" is torch's computation."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fastgan import nn as fnn
from fastgan.models.cyclegan import PatchDiscriminator, ResnetGenerator


def _convs():
    return {  # each conv with torch's equivalent (same parameters), and an input shape for it
        "reflect_pad_conv": (lambda: fnn.ReflectPadConv2d(3, 5, 3, padding=1, norm_follows=True),
                             lambda m: nn.Sequential(nn.ReflectionPad2d(1), _plain(nn.Conv2d(3, 5, 3), m))),
        "conv_strided": (lambda: fnn.Conv2d(3, 5, 4, 2, 1, norm_follows=True),
                         lambda m: _plain(nn.Conv2d(3, 5, 4, 2, 1), m)),
        "conv_transpose": (lambda: fnn.ConvTranspose2d(3, 5, 3, 2, 1, output_padding=1, norm_follows=True),
                           lambda m: _plain(nn.ConvTranspose2d(3, 5, 3, 2, 1, output_padding=1), m)),
    }


def _plain(conv: nn.Module, fast: nn.Module) -> nn.Module:
    conv.load_state_dict(fast.state_dict())
    return conv


@pytest.mark.parametrize("shape", [(1, 3, 5, 4),  # minimal: a few pixels per channel
                                   (2, 3, 13, 11)])  # odd sizes, two samples
@pytest.mark.parametrize("affine,act", [(False, "relu"), (True, "leaky_relu"), (False, "none")])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("kind", list(_convs()))
def test_equals_torch_in_float64(kind, shape, affine, act, training):
    torch.manual_seed(0)
    build, reference = _convs()[kind]
    conv = build().double()
    with torch.no_grad():
        conv.bias.normal_(0.0, 3.0)  # a bias far from zero: the norm must cancel it, not find it small
    norm = fnn.InstanceNormAct(5, act=act, affine=affine).double()
    if affine:
        with torch.no_grad():
            norm.weight.normal_(1.0, 0.5)
            norm.bias.normal_(0.0, 0.5)
    ref_conv, ref_norm = reference(conv).double(), copy.deepcopy(norm)
    for m in (conv, norm, ref_conv, ref_norm):
        m.train(training)
    x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_()

    y = norm(conv(x))
    h = F.instance_norm(ref_conv(x_ref), weight=ref_norm.weight, bias=ref_norm.bias, eps=ref_norm.eps)
    want = {"relu": F.relu, "leaky_relu": lambda t: F.leaky_relu(t, 0.2), "none": lambda t: t}[act](h)
    torch.testing.assert_close(y, want, rtol=1e-10, atol=1e-10)

    dy = torch.randn_like(y)
    (y * dy).sum().backward()
    (want * dy).sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(conv.weight.grad, ref_conv.weight.grad if kind != "reflect_pad_conv"
                               else ref_conv[1].weight.grad, rtol=1e-10, atol=1e-10)
    if affine:
        torch.testing.assert_close(norm.weight.grad, ref_norm.weight.grad, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(norm.bias.grad, ref_norm.bias.grad, rtol=1e-10, atol=1e-10)
    assert conv.bias.grad is None  # left out: no gradient, not a computed zero
    torch_bias_grad = (ref_conv if kind != "reflect_pad_conv" else ref_conv[1]).bias.grad
    assert torch_bias_grad.abs().max() < 1e-9  # what it is left out for: torch's bias gradient is zero

    # impl="ref" computes what torch computes, the bias and its (rounding-sized) gradient included.
    conv.weight.grad = x.grad = None
    fnn.set_impl(conv, "ref")
    y_ref_impl = norm(conv(x))
    torch.testing.assert_close(y_ref_impl, want, rtol=1e-10, atol=1e-10)
    (y_ref_impl * dy).sum().backward()
    torch.testing.assert_close(conv.bias.grad, torch_bias_grad, rtol=0, atol=1e-9)


def test_without_norm_follows_the_bias_is_added():
    torch.manual_seed(0)
    conv = fnn.Conv2d(3, 4, 3, padding=1)
    plain = _plain(nn.Conv2d(3, 4, 3, padding=1), conv)
    with torch.no_grad():
        conv.bias.fill_(2.0)
        plain.bias.fill_(2.0)
    x = torch.randn(1, 3, 6, 7)
    assert torch.equal(conv(x), plain(x))
    conv.norm_follows = True
    assert torch.equal(conv(x), F.conv2d(x, conv.weight, None, padding=1))
    assert "norm_follows=True" in repr(conv)


def test_unbatched_and_script():
    torch.manual_seed(0)
    for build, _ in _convs().values():
        conv = build()
        x = torch.randn(3, 8, 6)
        torch.testing.assert_close(conv(x), conv(x.unsqueeze(0)).squeeze(0))
        scripted = torch.jit.script(conv)  # TorchScript runs torch's computation, bias included
        conv.norm_follows = False
        torch.testing.assert_close(scripted(x.unsqueeze(0)), conv(x.unsqueeze(0)), rtol=0, atol=0)


def test_adam_leaves_an_unused_bias_alone():
    """No gradient, so no Adam state and no step: the bias keeps its value (weight decay included), while the
    weight trains; a state_dict from either path loads into the other."""
    torch.manual_seed(0)
    conv, norm = fnn.Conv2d(3, 4, 3, norm_follows=True), fnn.InstanceNormAct(4)
    with torch.no_grad():
        conv.bias.fill_(0.5)
    opt = torch.optim.Adam(conv.parameters(), lr=0.1, weight_decay=0.1)
    weight = conv.weight.detach().clone()
    for _ in range(2):
        opt.zero_grad(set_to_none=True)
        norm(conv(torch.randn(2, 3, 7, 9))).square().mean().backward()
        opt.step()
    assert torch.equal(conv.bias, torch.full((4,), 0.5)) and conv.bias not in opt.state
    assert not torch.equal(conv.weight, weight)
    plain = nn.Conv2d(3, 4, 3)
    plain.load_state_dict(conv.state_dict())
    conv.load_state_dict(plain.state_dict())


@pytest.mark.parametrize("net", ["generator", "discriminator"])
def test_models_declare_it_where_a_norm_follows(net):
    """CycleGAN's networks: every conv whose output goes to an InstanceNormAct leaves its bias out (the fast
    path has no bias gradient for them, and every other gradient is torch's); the others keep theirs."""
    torch.manual_seed(0)
    model = ResnetGenerator(ngf=4, n_blocks=1) if net == "generator" else PatchDiscriminator(ndf=4)
    model.double()
    declared = {name for name, m in model.named_modules() if getattr(m, "norm_follows", False)}
    ref = fnn.set_impl(copy.deepcopy(model), "ref")
    x = torch.randn(1, 3, 20 if net == "generator" else 40, 20 if net == "generator" else 36, dtype=torch.float64)
    y, y_ref = model(x), ref(x)
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
    y.square().sum().backward()
    y_ref.square().sum().backward()
    for (name, p), p_ref in zip(model.named_parameters(), ref.parameters()):
        if name.rsplit(".", 1)[0] in declared and name.endswith("bias"):
            assert p.grad is None and p_ref.grad.abs().max() < 1e-9, name
        else:
            torch.testing.assert_close(p.grad, p_ref.grad, rtol=1e-9, atol=1e-11, msg=name)
    # Generator: c7s1, two downsamplings, two per block, two upsamplings; PatchGAN: the three normed convs.
    assert len(declared) == (1 + 2 + 2 + 2 if net == "generator" else 3)
