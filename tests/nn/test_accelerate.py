"""accelerate(model) on models written the way pytorch-CycleGAN-and-pix2pix writes them: same outputs,
same gradients, same state_dict keys as the unmodified model."""

import copy
import functools

import pytest
import torch
from torch import nn

from fastgan import accelerate
from fastgan.nn import Conv2dLeakyReLU, InstanceNormAct, LeakyReLU, ReflectPadConv2d

TOL = 1e-10  # relative, float64: the rewrites change no arithmetic beyond summation order


# pytorch-CycleGAN-and-pix2pix's get_norm_layer("instance")
_INSTANCE_NORM = functools.partial(nn.InstanceNorm2d, affine=False, track_running_stats=False)
_AFFINE_INSTANCE_NORM = functools.partial(nn.InstanceNorm2d, affine=True, track_running_stats=False)


class ResnetBlock(nn.Module):
    def __init__(self, dim, norm_layer, use_dropout=False):
        super().__init__()
        block = [nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3, padding=0, bias=True), norm_layer(dim),
                 nn.ReLU(True)]
        if use_dropout:
            block += [nn.Dropout(0.5)]
        block += [nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3, padding=0, bias=True), norm_layer(dim)]
        self.conv_block = nn.Sequential(*block)

    def forward(self, x):
        return x + self.conv_block(x)


class ResnetGenerator(nn.Module):
    """The structure of pytorch-CycleGAN-and-pix2pix's ResnetGenerator (instance norm, deconv upsampling)."""

    def __init__(self, input_nc=3, output_nc=3, ngf=8, n_blocks=2, norm_layer=None, use_dropout=False):
        super().__init__()
        norm_layer = norm_layer or _INSTANCE_NORM
        model = [nn.ReflectionPad2d(3), nn.Conv2d(input_nc, ngf, 7, padding=0, bias=True), norm_layer(ngf),
                 nn.ReLU(True)]
        n_downsampling = 2
        for i in range(n_downsampling):
            mult = 2**i
            model += [nn.Conv2d(ngf * mult, ngf * mult * 2, 3, stride=2, padding=1, bias=True),
                      norm_layer(ngf * mult * 2), nn.ReLU(True)]
        mult = 2**n_downsampling
        for _ in range(n_blocks):
            model += [ResnetBlock(ngf * mult, norm_layer, use_dropout)]
        for i in range(n_downsampling):
            mult = 2 ** (n_downsampling - i)
            model += [nn.ConvTranspose2d(ngf * mult, ngf * mult // 2, 3, stride=2, padding=1,
                                         output_padding=1, bias=True),
                      norm_layer(ngf * mult // 2), nn.ReLU(True)]
        model += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, output_nc, 7, padding=0), nn.Tanh()]
        self.model = nn.Sequential(*model)

    def forward(self, x):
        return self.model(x)


class NLayerDiscriminator(nn.Module):
    """The structure of pytorch-CycleGAN-and-pix2pix's PatchGAN NLayerDiscriminator (instance norm)."""

    def __init__(self, input_nc=3, ndf=8, n_layers=3, norm_layer=None):
        super().__init__()
        norm_layer = norm_layer or _INSTANCE_NORM
        kw, padw = 4, 1
        sequence = [nn.Conv2d(input_nc, ndf, kw, stride=2, padding=padw), nn.LeakyReLU(0.2, True)]
        nf_mult = 1
        for n in range(1, n_layers):
            nf_mult_prev, nf_mult = nf_mult, min(2**n, 8)
            sequence += [nn.Conv2d(ndf * nf_mult_prev, ndf * nf_mult, kw, stride=2, padding=padw, bias=True),
                         norm_layer(ndf * nf_mult), nn.LeakyReLU(0.2, True)]
        nf_mult_prev, nf_mult = nf_mult, min(2**n_layers, 8)
        sequence += [nn.Conv2d(ndf * nf_mult_prev, ndf * nf_mult, kw, stride=1, padding=padw, bias=True),
                     norm_layer(ndf * nf_mult), nn.LeakyReLU(0.2, True)]
        sequence += [nn.Conv2d(ndf * nf_mult, 1, kw, stride=1, padding=padw)]
        self.model = nn.Sequential(*sequence)

    def forward(self, x):
        return self.model(x)


def _count(module, cls, **attrs):
    return sum(1 for m in module.modules()
               if type(m) is cls and all(getattr(m, k) == v for k, v in attrs.items()))


def _randomise_affine(module):
    # Default affine parameters are ones/zeros; random ones make a wrong mapping visible.
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.InstanceNorm2d) and m.affine:
                m.weight.normal_(1.0, 0.3)
                m.bias.normal_(0.0, 0.3)


def _check_same_training_step(original, x, impl="auto"):
    """accelerate(copy) gives the original's output and every parameter gradient (float64)."""
    fast = accelerate(copy.deepcopy(original), impl=impl)
    assert list(fast.state_dict()) == list(original.state_dict())
    outs, grads = [], []
    for model in (original, fast):
        model.zero_grad(set_to_none=True)
        xi = x.clone().requires_grad_(True)
        y = model(xi)
        # A fixed random cotangent, so every output element contributes its own gradient.
        g = torch.randn(y.shape, generator=torch.Generator().manual_seed(1), dtype=y.dtype)
        (y * g).sum().backward()
        outs.append(y.detach())
        grads.append({"input": xi.grad, **{n: p.grad for n, p in model.named_parameters()}})
    tol = TOL
    torch.testing.assert_close(outs[1], outs[0], rtol=tol, atol=tol * outs[0].abs().max().item())
    assert grads[1].keys() == grads[0].keys()
    # One absolute scale for all gradients: a conv bias right before an instance norm has an exact
    # gradient of zero, which both models give only to rounding error.
    scale = max(ref.abs().max().item() for ref in grads[0].values())
    for name, ref in grads[0].items():
        assert grads[1][name] is not None, name
        torch.testing.assert_close(grads[1][name], ref, rtol=tol, atol=tol * scale, msg=name)
    return fast


@pytest.mark.parametrize("affine", [False, True])
@pytest.mark.parametrize("size", [
    16,  # minimal for 2 downsamplings + reflection pad 3
    23,  # odd: the stride-2 convs and deconvs do not round-trip, output is 24x24
])
def test_resnet_generator_matches(affine, size):
    g = ResnetGenerator(ngf=4, n_blocks=2, norm_layer=_AFFINE_INSTANCE_NORM if affine else None).double()
    _randomise_affine(g)
    x = torch.randn(2, 3, size, size, dtype=torch.float64)
    fast = _check_same_training_step(g, x)
    # 1 stem + 2 per block + 1 head reflection-padded convs; every norm, 7 of them followed by ReLU.
    assert _count(fast, ReflectPadConv2d) == 6
    assert _count(fast, InstanceNormAct, act="relu", affine=affine) == 7
    assert _count(fast, InstanceNormAct, act="none", affine=affine) == 2
    assert _count(fast, nn.Identity) == 13  # the 6 absorbed pads and 7 absorbed ReLUs
    assert _count(fast, nn.InstanceNorm2d) == _count(fast, nn.ReLU) == _count(fast, nn.ReflectionPad2d) == 0
    assert _count(fast, nn.Conv2d) == 2  # the stride-2 downsampling convs (zero padding, followed by a norm)
    assert _count(fast, nn.ConvTranspose2d) == 2


@pytest.mark.parametrize("n_layers,size", [
    (3, 32),  # the 70x70 PatchGAN layout at a small size
    (2, 19),  # odd size, shallower
])
def test_nlayer_discriminator_matches(n_layers, size):
    d = NLayerDiscriminator(ndf=4, n_layers=n_layers).double()
    x = torch.randn(2, 3, size, size, dtype=torch.float64)
    fast = _check_same_training_step(d, x)
    assert _count(fast, Conv2dLeakyReLU) == 1  # the first conv has no norm after it
    assert _count(fast, InstanceNormAct, act="leaky_relu", negative_slope=0.2) == n_layers
    assert _count(fast, nn.Identity) == n_layers + 1
    assert _count(fast, nn.Conv2d) == n_layers + 1  # convs followed by a norm, and the output conv
    assert _count(fast, nn.LeakyReLU) == _count(fast, nn.InstanceNorm2d) == 0


def test_in_place_same_parameters_device_dtype_and_mode():
    g = ResnetGenerator(ngf=4, n_blocks=1).double().eval()
    params = dict(g.named_parameters())
    opt = torch.optim.Adam(g.parameters(), lr=1e-3)  # built before accelerate: must keep training the model
    before = {k: v.clone() for k, v in g.state_dict().items()}
    assert accelerate(g) is g
    assert dict(g.named_parameters()).keys() == params.keys()
    assert all(p is params[n] for n, p in g.named_parameters())
    assert all(p.dtype == torch.float64 for p in g.parameters())
    assert not any(m.training for m in g.modules())
    g.train()
    g(torch.randn(1, 3, 16, 16, dtype=torch.float64)).square().mean().backward()
    opt.step()
    assert any(not torch.equal(v, before[k]) for k, v in g.state_dict().items())


def test_state_dict_loads_both_ways():
    original = ResnetGenerator(ngf=4, n_blocks=1, norm_layer=_AFFINE_INSTANCE_NORM)
    _randomise_affine(original)
    fast = accelerate(ResnetGenerator(ngf=4, n_blocks=1, norm_layer=_AFFINE_INSTANCE_NORM))
    fast.load_state_dict(original.state_dict())  # strict: same keys, same shapes
    back = ResnetGenerator(ngf=4, n_blocks=1, norm_layer=_AFFINE_INSTANCE_NORM)
    back.load_state_dict(fast.state_dict())
    for k, v in original.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k


def test_impl_idempotence_and_what_is_left_alone():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.norm = nn.InstanceNorm2d(4)  # an attribute, not in a Sequential: fused without an activation
            self.act = nn.LeakyReLU(0.1)
            self.tracked = nn.InstanceNorm2d(4, track_running_stats=True)  # eval would need running stats
            self.padded = nn.Sequential(nn.ReflectionPad2d(1), nn.Conv2d(4, 4, 3, padding=1))  # conv pads too
            self.uneven = nn.Sequential(nn.ReflectionPad2d((1, 1, 2, 2)), nn.Conv2d(4, 4, 3))
            self.no_bias = nn.Sequential(nn.Conv2d(4, 4, 3, bias=False), nn.LeakyReLU(0.2))
            self.listed = nn.ModuleList([nn.Sequential(nn.InstanceNorm2d(4), nn.LeakyReLU(0.3))])

        def forward(self, x):
            x = self.padded(self.tracked(self.act(self.norm(x))))
            return self.listed[0](self.no_bias(self.uneven(x)))

    net = Net().double()
    x = torch.randn(2, 4, 12, 13, dtype=torch.float64)
    fast = _check_same_training_step(net, x, impl="ref")
    assert type(fast.norm) is InstanceNormAct and fast.norm.act == "none" and fast.norm.impl == "ref"
    assert type(fast.act) is LeakyReLU and fast.act.negative_slope == 0.1
    assert type(fast.tracked) is nn.InstanceNorm2d
    assert [type(m) for m in fast.padded] == [nn.ReflectionPad2d, nn.Conv2d]
    assert [type(m) for m in fast.uneven] == [nn.ReflectionPad2d, nn.Conv2d]
    assert [type(m) for m in fast.no_bias] == [nn.Conv2d, LeakyReLU]
    assert [type(m) for m in fast.listed[0]] == [InstanceNormAct, nn.Identity]
    assert fast.listed[0][0].act == "leaky_relu" and fast.listed[0][0].negative_slope == 0.3
    structure = repr(fast)
    assert repr(accelerate(fast)) == structure


def test_bad_impl():
    with pytest.raises(ValueError, match="impl"):
        accelerate(nn.Sequential(nn.LeakyReLU()), impl="fast")
