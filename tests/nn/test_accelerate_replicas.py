"""accelerate() on replicas of other people's GAN networks, in train and eval mode, against the originals.

The replicas follow the architectures of pytorch-CycleGAN-and-pix2pix (ResNet and U-Net generators with
instance or batch norm, dropout and in-place activations; NLayer and Pixel discriminators), PyTorch-GAN
(CycleGAN's residual generator with upsample + conv; DCGAN with BatchNorm2d(C, 0.8)) and pytorch/examples'
DCGAN 64x64, written here from their structure. For each: outputs, the input gradient and every parameter
gradient (float64), running statistics, state_dict keys, unbatched input, output layout for channels_last
input, torch.jit.script, hooks, conv attributes and a class-name based initialiser.
"""

import copy
import functools
import warnings

import pytest
import torch
from torch import nn

from fastgan import accelerate
from fastgan.nn import (
    BatchNorm2dAct,
    Conv2dLeakyReLU,
    Conv2dTanh,
    ConvTranspose2dTanh,
    InstanceNormAct,
    InstanceNormTrackedAct,
    LeakyReLU,
    ReflectPadConv2d,
)

TOL = 1e-10  # relative, float64: the rewrites change no arithmetic beyond summation order

INSTANCE = functools.partial(nn.InstanceNorm2d, affine=False, track_running_stats=False)
BATCH = functools.partial(nn.BatchNorm2d, affine=True, track_running_stats=True)


# pytorch-CycleGAN-and-pix2pix ------------------------------------------------------------------------
class ResnetBlock(nn.Module):
    def __init__(self, dim, norm_layer, use_dropout, use_bias):
        super().__init__()
        block = [nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3, padding=0, bias=use_bias), norm_layer(dim),
                 nn.ReLU(True)]
        if use_dropout:
            block += [nn.Dropout(0.5)]
        block += [nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3, padding=0, bias=use_bias), norm_layer(dim)]
        self.conv_block = nn.Sequential(*block)

    def forward(self, x):
        out = x + self.conv_block(x)
        return out


class ResnetGenerator(nn.Module):
    def __init__(self, input_nc=3, output_nc=3, ngf=4, norm_layer=INSTANCE, use_dropout=False, n_blocks=2):
        super().__init__()
        use_bias = norm_layer.func is nn.InstanceNorm2d
        model = [nn.ReflectionPad2d(3), nn.Conv2d(input_nc, ngf, 7, padding=0, bias=use_bias), norm_layer(ngf),
                 nn.ReLU(True)]
        for i in range(2):  # downsampling
            mult = 2**i
            model += [nn.Conv2d(ngf * mult, ngf * mult * 2, 3, stride=2, padding=1, bias=use_bias),
                      norm_layer(ngf * mult * 2), nn.ReLU(True)]
        for _ in range(n_blocks):
            model += [ResnetBlock(ngf * 4, norm_layer, use_dropout, use_bias)]
        for i in range(2):  # upsampling
            mult = 2 ** (2 - i)
            model += [nn.ConvTranspose2d(ngf * mult, ngf * mult // 2, 3, stride=2, padding=1, output_padding=1,
                                         bias=use_bias), norm_layer(ngf * mult // 2), nn.ReLU(True)]
        model += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, output_nc, 7, padding=0), nn.Tanh()]
        self.model = nn.Sequential(*model)

    def forward(self, x):
        return self.model(x)


class UnetSkipConnectionBlock(nn.Module):
    def __init__(self, outer_nc, inner_nc, input_nc=None, submodule=None, outermost=False, innermost=False,
                 norm_layer=BATCH, use_dropout=False):
        super().__init__()
        self.outermost = outermost
        use_bias = norm_layer.func is nn.InstanceNorm2d
        input_nc = outer_nc if input_nc is None else input_nc
        downconv = nn.Conv2d(input_nc, inner_nc, 4, stride=2, padding=1, bias=use_bias)
        downrelu = nn.LeakyReLU(0.2, True)  # overwrites the block's input, which forward concatenates
        downnorm = norm_layer(inner_nc)
        uprelu = nn.ReLU(True)
        upnorm = norm_layer(outer_nc)
        if outermost:
            upconv = nn.ConvTranspose2d(inner_nc * 2, outer_nc, 4, stride=2, padding=1)
            model = [downconv, submodule, uprelu, upconv, nn.Tanh()]
        elif innermost:
            upconv = nn.ConvTranspose2d(inner_nc, outer_nc, 4, stride=2, padding=1, bias=use_bias)
            model = [downrelu, downconv, uprelu, upconv, upnorm]
        else:
            upconv = nn.ConvTranspose2d(inner_nc * 2, outer_nc, 4, stride=2, padding=1, bias=use_bias)
            model = [downrelu, downconv, downnorm, submodule, uprelu, upconv, upnorm]
            if use_dropout:
                model += [nn.Dropout(0.5)]
        self.model = nn.Sequential(*model)

    def forward(self, x):
        if self.outermost:
            return self.model(x)
        return torch.cat([x, self.model(x)], 1)


class UnetGenerator(nn.Module):
    def __init__(self, input_nc=3, output_nc=3, num_downs=5, ngf=4, norm_layer=BATCH, use_dropout=False):
        super().__init__()
        block = UnetSkipConnectionBlock(ngf * 8, ngf * 8, innermost=True, norm_layer=norm_layer)
        for _ in range(num_downs - 5):
            block = UnetSkipConnectionBlock(ngf * 8, ngf * 8, submodule=block, norm_layer=norm_layer,
                                            use_dropout=use_dropout)
        block = UnetSkipConnectionBlock(ngf * 4, ngf * 8, submodule=block, norm_layer=norm_layer)
        block = UnetSkipConnectionBlock(ngf * 2, ngf * 4, submodule=block, norm_layer=norm_layer)
        block = UnetSkipConnectionBlock(ngf, ngf * 2, submodule=block, norm_layer=norm_layer)
        self.model = UnetSkipConnectionBlock(output_nc, ngf, input_nc=input_nc, submodule=block, outermost=True,
                                             norm_layer=norm_layer)

    def forward(self, x):
        return self.model(x)


class NLayerDiscriminator(nn.Module):
    def __init__(self, input_nc=3, ndf=4, n_layers=3, norm_layer=BATCH):
        super().__init__()
        use_bias = norm_layer.func is nn.InstanceNorm2d
        sequence = [nn.Conv2d(input_nc, ndf, 4, stride=2, padding=1), nn.LeakyReLU(0.2, True)]
        nf_mult = 1
        for n in range(1, n_layers):
            nf_mult_prev, nf_mult = nf_mult, min(2**n, 8)
            sequence += [nn.Conv2d(ndf * nf_mult_prev, ndf * nf_mult, 4, stride=2, padding=1, bias=use_bias),
                         norm_layer(ndf * nf_mult), nn.LeakyReLU(0.2, True)]
        nf_mult_prev, nf_mult = nf_mult, min(2**n_layers, 8)
        sequence += [nn.Conv2d(ndf * nf_mult_prev, ndf * nf_mult, 4, stride=1, padding=1, bias=use_bias),
                     norm_layer(ndf * nf_mult), nn.LeakyReLU(0.2, True),
                     nn.Conv2d(ndf * nf_mult, 1, 4, stride=1, padding=1)]
        self.model = nn.Sequential(*sequence)

    def forward(self, x):
        return self.model(x)


class PixelDiscriminator(nn.Module):
    def __init__(self, input_nc=3, ndf=4, norm_layer=BATCH):
        super().__init__()
        use_bias = norm_layer.func is nn.InstanceNorm2d
        self.net = nn.Sequential(
            nn.Conv2d(input_nc, ndf, 1, stride=1, padding=0), nn.LeakyReLU(0.2, True),
            nn.Conv2d(ndf, ndf * 2, 1, stride=1, padding=0, bias=use_bias), norm_layer(ndf * 2),
            nn.LeakyReLU(0.2, True), nn.Conv2d(ndf * 2, 1, 1, stride=1, padding=0, bias=use_bias))

    def forward(self, x):
        return self.net(x)


# PyTorch-GAN ------------------------------------------------------------------------------------------
class ResidualBlock(nn.Module):
    def __init__(self, in_features):
        super().__init__()
        self.block = nn.Sequential(
            nn.ReflectionPad2d(1), nn.Conv2d(in_features, in_features, 3), nn.InstanceNorm2d(in_features),
            nn.ReLU(inplace=True),
            nn.ReflectionPad2d(1), nn.Conv2d(in_features, in_features, 3), nn.InstanceNorm2d(in_features))

    def forward(self, x):
        return x + self.block(x)


class GeneratorResNet(nn.Module):
    """CycleGAN generator with nearest-neighbour upsampling + conv instead of transposed convolutions."""

    def __init__(self, channels=3, num_residual_blocks=2, width=4):
        super().__init__()
        out = width
        model = [nn.ReflectionPad2d(channels), nn.Conv2d(channels, out, 7), nn.InstanceNorm2d(out),
                 nn.ReLU(inplace=True)]
        in_features = out
        for _ in range(2):
            out *= 2
            model += [nn.Conv2d(in_features, out, 3, stride=2, padding=1), nn.InstanceNorm2d(out),
                      nn.ReLU(inplace=True)]
            in_features = out
        model += [ResidualBlock(out) for _ in range(num_residual_blocks)]
        for _ in range(2):
            out //= 2
            model += [nn.Upsample(scale_factor=2), nn.Conv2d(in_features, out, 3, stride=1, padding=1),
                      nn.InstanceNorm2d(out), nn.ReLU(inplace=True)]
            in_features = out
        model += [nn.ReflectionPad2d(channels), nn.Conv2d(out, channels, 7), nn.Tanh()]
        self.model = nn.Sequential(*model)

    def forward(self, x):
        return self.model(x)


class GanDcganGenerator(nn.Module):
    def __init__(self, latent_dim=8, img_size=16, channels=3):
        super().__init__()
        self.init_size = img_size // 4
        self.l1 = nn.Sequential(nn.Linear(latent_dim, 16 * self.init_size**2))
        self.conv_blocks = nn.Sequential(
            nn.BatchNorm2d(16), nn.Upsample(scale_factor=2), nn.Conv2d(16, 16, 3, stride=1, padding=1),
            nn.BatchNorm2d(16, 0.8), nn.LeakyReLU(0.2, inplace=True), nn.Upsample(scale_factor=2),
            nn.Conv2d(16, 8, 3, stride=1, padding=1), nn.BatchNorm2d(8, 0.8), nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(8, channels, 3, stride=1, padding=1), nn.Tanh())

    def forward(self, z):
        out = self.l1(z)
        out = out.view(out.shape[0], 16, self.init_size, self.init_size)
        return self.conv_blocks(out)


class GanDcganDiscriminator(nn.Module):
    def __init__(self, channels=3, img_size=16):
        super().__init__()

        def block(in_filters, out_filters, bn=True):
            layers = [nn.Conv2d(in_filters, out_filters, 3, 2, 1), nn.LeakyReLU(0.2, inplace=True),
                      nn.Dropout2d(0.25)]
            if bn:
                layers.append(nn.BatchNorm2d(out_filters, 0.8))
            return layers

        self.model = nn.Sequential(*block(channels, 4, bn=False), *block(4, 8), *block(8, 16), *block(16, 32))
        self.adv_layer = nn.Sequential(nn.Linear(32 * (img_size // 16) ** 2, 1), nn.Sigmoid())

    def forward(self, img):
        out = self.model(img)
        return self.adv_layer(out.view(out.shape[0], -1))


# pytorch/examples dcgan ---------------------------------------------------------------------------------
class DcganGenerator(nn.Module):
    def __init__(self, nz=8, ngf=4, nc=3):
        super().__init__()
        self.main = nn.Sequential(
            nn.ConvTranspose2d(nz, ngf * 8, 4, 1, 0, bias=False), nn.BatchNorm2d(ngf * 8), nn.ReLU(True),
            nn.ConvTranspose2d(ngf * 8, ngf * 4, 4, 2, 1, bias=False), nn.BatchNorm2d(ngf * 4), nn.ReLU(True),
            nn.ConvTranspose2d(ngf * 4, ngf * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ngf * 2), nn.ReLU(True),
            nn.ConvTranspose2d(ngf * 2, ngf, 4, 2, 1, bias=False), nn.BatchNorm2d(ngf), nn.ReLU(True),
            nn.ConvTranspose2d(ngf, nc, 4, 2, 1, bias=False), nn.Tanh())  # state: nc x 64 x 64

    def forward(self, z):
        return self.main(z)


class DcganDiscriminator(nn.Module):
    def __init__(self, nc=3, ndf=4):
        super().__init__()
        self.main = nn.Sequential(
            nn.Conv2d(nc, ndf, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(ndf, ndf * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ndf * 2), nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(ndf * 2, ndf * 4, 4, 2, 1, bias=False), nn.BatchNorm2d(ndf * 4),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(ndf * 4, ndf * 8, 4, 2, 1, bias=False), nn.BatchNorm2d(ndf * 8),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(ndf * 8, 1, 4, 1, 0, bias=False), nn.Sigmoid())

    def forward(self, x):
        return self.main(x).view(-1, 1).squeeze(1)


class GanMlpGenerator(nn.Module):
    """PyTorch-GAN's gan.py generator: Linear, BatchNorm1d(C, 0.8), LeakyReLU(0.2, inplace) blocks, a
    Linear + Tanh output."""

    def __init__(self, latent_dim=8, img_shape=(1, 4, 4)):
        super().__init__()
        self.img_shape = img_shape

        def block(in_feat, out_feat, normalize=True):
            layers = [nn.Linear(in_feat, out_feat)]
            if normalize:
                layers.append(nn.BatchNorm1d(out_feat, 0.8))
            layers.append(nn.LeakyReLU(0.2, inplace=True))
            return layers

        self.model = nn.Sequential(*block(latent_dim, 16, normalize=False), *block(16, 32), *block(32, 64),
                                   *block(64, 24), nn.Linear(24, 16), nn.Tanh())

    def forward(self, z):
        img = self.model(z)
        return img.view(img.size(0), *self.img_shape)


INSTANCE_TRACKED = functools.partial(nn.InstanceNorm2d, affine=False, track_running_stats=True)
INSTANCE_TRACKED_AFFINE = functools.partial(nn.InstanceNorm2d, affine=True, track_running_stats=True)


# name: (builder, input shape, expected fastgan layer counts, whether the original takes unbatched input)
REPLICAS = {
    "resnet_instance_dropout": (lambda: ResnetGenerator(norm_layer=INSTANCE, use_dropout=True), (2, 3, 20, 20),
                                {ReflectPadConv2d: 5, Conv2dTanh: 1, InstanceNormAct: 9, "residual": 2}, True),
    "resnet_batch": (lambda: ResnetGenerator(norm_layer=BATCH), (3, 3, 16, 16),
                     {ReflectPadConv2d: 5, Conv2dTanh: 1, BatchNorm2dAct: 7, "residual": 0}, False),
    # (dropout sits in the blocks beyond the fifth: num_downs=6 has one)
    "unet_batch_dropout": (lambda: UnetGenerator(norm_layer=BATCH, use_dropout=True, num_downs=6), (2, 3, 64, 64),
                           {BatchNorm2dAct: 0, InstanceNormAct: 0, ConvTranspose2dTanh: 1}, False),
    # (the U-Net concatenates along dim 1, so the original takes no unbatched input, even with instance norm)
    "unet_instance": (lambda: UnetGenerator(norm_layer=INSTANCE), (2, 3, 32, 32),
                      {InstanceNormAct: 7, ConvTranspose2dTanh: 1}, False),
    "nlayer_batch": (lambda: NLayerDiscriminator(norm_layer=BATCH), (3, 3, 32, 32),
                     {Conv2dLeakyReLU: 1, BatchNorm2dAct: 3}, False),
    "nlayer_instance": (lambda: NLayerDiscriminator(norm_layer=INSTANCE, n_layers=2), (2, 3, 19, 19),
                        {Conv2dLeakyReLU: 1, InstanceNormAct: 2}, True),
    "pixel_batch": (lambda: PixelDiscriminator(norm_layer=BATCH), (3, 3, 7, 9),
                    {Conv2dLeakyReLU: 1, BatchNorm2dAct: 1}, False),
    "pytorch_gan_cyclegan": (GeneratorResNet, (2, 3, 16, 16),
                             {ReflectPadConv2d: 5, Conv2dTanh: 1, InstanceNormAct: 9, "residual": 2}, True),
    "pytorch_gan_dcgan_g": (GanDcganGenerator, (4, 8), {BatchNorm2dAct: 2, Conv2dTanh: 1}, False),
    "pytorch_gan_dcgan_d": (GanDcganDiscriminator, (4, 3, 16, 16), {Conv2dLeakyReLU: 4}, False),
    "dcgan_g": (DcganGenerator, (3, 8, 1, 1), {BatchNorm2dAct: 4, ConvTranspose2dTanh: 1}, False),
    "dcgan_d": (DcganDiscriminator, (3, 3, 64, 64), {Conv2dLeakyReLU: 1, BatchNorm2dAct: 3}, False),
    # patterns of issue 24: the older pix2pix instance norm with running statistics (+ ReLU in the ResNet
    # generator, + LeakyReLU in the NLayer discriminator); MLP GANs' BatchNorm1d + LeakyReLU, left alone
    "pytorch_gan_mlp_g": (GanMlpGenerator, (5, 8), {nn.BatchNorm1d: 3, BatchNorm2dAct: 0}, False),
    "resnet_instance_tracked": (lambda: ResnetGenerator(norm_layer=INSTANCE_TRACKED), (2, 3, 16, 16),
                                {ReflectPadConv2d: 5, Conv2dTanh: 1, InstanceNormTrackedAct: 7, "residual": 0}, True),
    "nlayer_instance_tracked_affine": (lambda: NLayerDiscriminator(norm_layer=INSTANCE_TRACKED_AFFINE, n_layers=2),
                                       (2, 3, 19, 19), {Conv2dLeakyReLU: 1, InstanceNormTrackedAct: 2}, True),
}


def _build(name):
    torch.manual_seed(0)
    model = REPLICAS[name][0]().double()
    with torch.no_grad():  # non-trivial norm parameters and running statistics make a wrong mapping visible
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d, nn.InstanceNorm2d)) and m.affine:
                m.weight.normal_(1.0, 0.3)
                m.bias.normal_(0.0, 0.3)
            if isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d, nn.InstanceNorm2d)) and m.track_running_stats:
                m.running_mean.normal_(0.0, 0.3)
                m.running_var.uniform_(0.5, 1.5)
    return model


def _input(name, batched=True):
    shape = REPLICAS[name][1]
    x = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    return x if batched else x[0]


def _step(model, x, seed=3):
    """Output and gradients (input and every parameter) of sum(y * g) for a fixed random g; seeded, so that
    dropout draws the same masks in both models."""
    model.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_(True)
    torch.manual_seed(seed)
    y = model(x)
    g = torch.randn(y.shape, generator=torch.Generator().manual_seed(1), dtype=y.dtype)
    (y * g).sum().backward()
    return y.detach(), {"input": x.grad, **{n: p.grad for n, p in model.named_parameters()}}


def _assert_same(got, want, what):
    torch.testing.assert_close(got, want, rtol=TOL, atol=TOL * (1 + want.abs().max().item()), msg=what)


def _count(model):
    counts = {}
    for m in model.modules():
        counts[type(m)] = counts.get(type(m), 0) + 1
    counts["residual"] = sum(1 for m in model.modules() if hasattr(m, "_fastgan_residual"))
    return counts


@pytest.mark.parametrize("name", list(REPLICAS))
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_outputs_gradients_and_statistics_match(name, mode):
    original = _build(name).train(mode == "train")
    fast = accelerate(copy.deepcopy(original))
    assert list(fast.state_dict()) == list(original.state_dict())
    counts = _count(fast)
    for kind, n in REPLICAS[name][2].items():
        assert counts.get(kind, 0) == n, (kind, counts)
    assert sum(isinstance(m, nn.Conv2d) for m in fast.modules()) == \
        sum(isinstance(m, nn.Conv2d) for m in original.modules())
    x = _input(name)
    for step in range(2):  # the second step normalises with running statistics the first one updated
        (y0, g0), (y1, g1) = _step(original, x, seed=step), _step(fast, x, seed=step)
        _assert_same(y1, y0, "output")
        assert g1.keys() == g0.keys()
        scale = max(g.abs().max().item() for g in g0.values())  # exact zeros (a conv bias before a norm)
        for k in g0:
            torch.testing.assert_close(g1[k], g0[k], rtol=TOL, atol=TOL * scale, msg=k)
        for (k, b0), b1 in zip(original.state_dict().items(), fast.state_dict().values()):
            if b0.dtype == torch.int64:  # num_batches_tracked
                assert torch.equal(b1, b0), k
            else:
                _assert_same(b1, b0, k)


@pytest.mark.filterwarnings("ignore:dropout2d. Received a 3D input")
@pytest.mark.parametrize("name", list(REPLICAS))
def test_unbatched_input_layout_and_script(name):
    original = _build(name).eval()
    fast = accelerate(copy.deepcopy(original))
    if len(REPLICAS[name][1]) == 4:
        if REPLICAS[name][3]:  # unbatched [C, H, W] input: the same result where the original took it
            _assert_same(fast(_input(name, batched=False)), original(_input(name, batched=False)), "unbatched")
        else:  # ... and the same error type where it did not (BatchNorm2d wants 4-D input)
            with pytest.raises((ValueError, RuntimeError)) as want:
                original(_input(name, batched=False))
            with pytest.raises(type(want.value)):
                fast(_input(name, batched=False))
        # channels_last input: the output has the layout the original gives
        x = _input(name).contiguous(memory_format=torch.channels_last)
        y0, y1 = original(x), fast(x)
        assert y1.stride() == y0.stride()
        _assert_same(y1, y0, "channels_last")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.script is deprecated in newer torch ...
        warnings.simplefilter("ignore", DeprecationWarning)  # ... with one warning class or the other
        scripted = torch.jit.script(copy.deepcopy(fast))
    _assert_same(scripted(_input(name)), original(_input(name)), "scripted")


@pytest.mark.parametrize("name", ["resnet_batch", "pytorch_gan_cyclegan", "dcgan_d", "nlayer_batch"])
def test_class_name_initialiser_after_accelerate(name):
    """pix2pix-style init (by class name: Conv, BatchNorm2d) gives the accelerated model the same weights."""

    def init_func(m):
        classname = m.__class__.__name__
        if hasattr(m, "weight") and (classname.find("Conv") != -1 or classname.find("Linear") != -1):
            nn.init.normal_(m.weight.data, 0.0, 0.02)
            if hasattr(m, "bias") and m.bias is not None:
                nn.init.constant_(m.bias.data, 0.1)
        elif classname.find("BatchNorm2d") != -1:
            nn.init.normal_(m.weight.data, 1.0, 0.02)
            nn.init.constant_(m.bias.data, 0.0)

    models = []
    for accelerated in (False, True):
        model = _build(name)
        if accelerated:
            accelerate(model)
        torch.manual_seed(5)
        models.append(model.apply(init_func))
    for (k, v0), v1 in zip(models[0].state_dict().items(), models[1].state_dict().values()):
        assert torch.equal(v1, v0), k
    for k, m0 in models[0].named_modules():  # isinstance(nn.Conv2d) and the conv attributes are kept
        if isinstance(m0, nn.Conv2d):
            m1 = models[1].get_submodule(k)
            assert isinstance(m1, nn.Conv2d)
            for attr in ("in_channels", "out_channels", "kernel_size", "stride", "dilation", "groups"):
                assert getattr(m1, attr) == getattr(m0, attr), (k, attr)


def test_hooks_keep_firing():
    """Hooks on a replaced module move to its replacement; hooks that would see the tensor inside a pair
    leave that pair unfused (with a warning naming it). Either way they see what they saw before."""
    seen = {"original": [], "fast": []}

    def build_with_hooks(key):
        model = _build("pytorch_gan_cyclegan").train()
        inside = model.model[2]  # the stem's InstanceNorm2d: its output is the inside of the IN + ReLU pair
        inside.register_forward_hook(lambda m, i, o: seen[key].append(o.clone()))
        lone = model.model[10].block[6]  # a residual block's last norm: replaced alone
        lone.register_forward_pre_hook(lambda m, i: seen[key].append(i[0].clone()))
        return model

    original = build_with_hooks("original")
    fast = build_with_hooks("fast")
    with pytest.warns(UserWarning, match=r"left these pairs unfused .*: model\.2 \+ model\.3"):
        accelerate(fast)
    # the pair stays apart; the norm alone is still replaced, its hook moved along
    assert type(fast.model[2]) is InstanceNormAct and fast.model[2].act == "none" and type(fast.model[3]) is nn.ReLU
    assert type(fast.model[10].block[6]) is InstanceNormAct
    _step(original, _input("pytorch_gan_cyclegan"))
    _step(fast, _input("pytorch_gan_cyclegan"))
    assert len(seen["fast"]) == len(seen["original"]) == 2
    for got, want in zip(seen["fast"], seen["original"]):
        _assert_same(got, want, "hooked tensor")


def test_in_place_leaky_relu_kept_where_its_input_is_reused():
    """pix2pix's U-Net block concatenates the input its LeakyReLU(0.2, True) overwrote: that module stays."""
    block = UnetSkipConnectionBlock(4, 8, innermost=True, norm_layer=INSTANCE).double()
    fast = accelerate(copy.deepcopy(block))
    assert type(fast.model[0]) is nn.LeakyReLU and fast.model[0].inplace
    x = torch.randn(2, 4, 8, 8, dtype=torch.float64)
    _assert_same(fast(x.clone()), block(x.clone()), "output")
    assert not any(isinstance(m, LeakyReLU) for m in fast.modules())


@pytest.mark.parametrize("name,head", [
    ("dcgan_g", "main.12"),  # ConvTranspose2d(bias=False), Tanh
    ("unet_instance", "model.model.3"),  # U-Net outermost: ConvTranspose2d (bias), Tanh
    ("pytorch_gan_cyclegan", "model.21"),  # ReflectionPad2d, Conv2d(7x7, bias), Tanh
    ("pytorch_gan_dcgan_g", "conv_blocks.9"),  # Conv2d(3x3, padding 1, bias), Tanh
])
def test_generator_heads_through_triton(triton_cpu, name, head):
    """The fused output layers (conv without its bias, then the Triton bias + tanh) on the interpreter: the
    original's output and every gradient in float32, train mode."""
    from fastgan import ops
    from fastgan.ops import _dispatch

    original = _build(name).float().train()
    fast = accelerate(copy.deepcopy(original), impl="triton")
    assert isinstance(fast.get_submodule(head), (Conv2dTanh, ConvTranspose2dTanh))
    x = _input(name).float()
    _dispatch.clear_last()
    (y0, g0), (y1, g1) = _step(original, x), _step(fast, x)
    assert ops.last_impl("tanh") == "triton"
    torch.testing.assert_close(y1, y0, atol=1e-5, rtol=1e-5)
    for k in g0:
        torch.testing.assert_close(g1[k], g0[k], atol=1e-4 * (1 + g0[k].abs().max().item()), rtol=1e-4, msg=k)


# Code that reads single indices of a Sequential ----------------------------------------------------------
class CutResnetGenerator(nn.Module):
    """contrastive-unpaired-translation's ResnetGenerator (no_antialias, no_antialias_up, instance norm): its
    forward runs ``self.model`` index by index for the PatchNCE features (``layers``, ``encode_only``)."""

    def __init__(self, input_nc=3, output_nc=3, ngf=4, n_blocks=2):
        super().__init__()
        model = [nn.ReflectionPad2d(3), nn.Conv2d(input_nc, ngf, 7, padding=0, bias=True), INSTANCE(ngf),
                 nn.ReLU(True)]
        for i in range(2):  # downsampling
            mult = 2**i
            model += [nn.Conv2d(ngf * mult, ngf * mult * 2, 3, stride=2, padding=1, bias=True),
                      INSTANCE(ngf * mult * 2), nn.ReLU(True)]
        model += [ResnetBlock(ngf * 4, INSTANCE, False, True) for _ in range(n_blocks)]
        for i in range(2):  # upsampling
            mult = 2 ** (2 - i)
            model += [nn.ConvTranspose2d(ngf * mult, ngf * mult // 2, 3, stride=2, padding=1, output_padding=1,
                                         bias=True), INSTANCE(ngf * mult // 2), nn.ReLU(True)]
        model += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, output_nc, 7, padding=0), nn.Tanh()]
        self.model = nn.Sequential(*model)

    def forward(self, input, layers=(), encode_only=False):
        layers = list(layers)
        if -1 in layers:
            layers.append(len(self.model))
        if len(layers) > 0:
            feat = input
            feats = []
            for layer_id, layer in enumerate(self.model):
                feat = layer(feat)
                if layer_id in layers:
                    feats.append(feat)
                if layer_id == layers[-1] and encode_only:
                    return feats  # return intermediate features alone; stop in the last layers
            return feat, feats
        return self.model(input)


class Pix2pixHDNLayerDiscriminator(nn.Module):
    """pix2pixHD's NLayerDiscriminator with getIntermFeat: one Sequential per stage, each called whole, all
    stage outputs kept (for the feature-matching loss)."""

    def __init__(self, input_nc=3, ndf=4, n_layers=2):
        super().__init__()
        self.n_layers = n_layers
        sequence = [[nn.Conv2d(input_nc, ndf, 4, stride=2, padding=2), nn.LeakyReLU(0.2, True)]]
        nf = ndf
        for _ in range(1, n_layers):
            nf_prev, nf = nf, min(nf * 2, 512)
            sequence += [[nn.Conv2d(nf_prev, nf, 4, stride=2, padding=2), INSTANCE(nf), nn.LeakyReLU(0.2, True)]]
        nf_prev, nf = nf, min(nf * 2, 512)
        sequence += [[nn.Conv2d(nf_prev, nf, 4, stride=1, padding=2), INSTANCE(nf), nn.LeakyReLU(0.2, True)]]
        sequence += [[nn.Conv2d(nf, 1, 4, stride=1, padding=2)]]
        for n in range(len(sequence)):
            setattr(self, "model" + str(n), nn.Sequential(*sequence[n]))

    def forward(self, input):
        res = [input]
        for n in range(self.n_layers + 2):
            model = getattr(self, "model" + str(n))
            res.append(model(res[-1]))
        return res[1:]


CUT_LAYERS = [0, 4, 8, 12, 16]  # CUT's --nce_layers default: the pad, both downsampling convs, ...


def _features_and_grads(model, x, **kw):
    """The features (any nesting) and the gradients of sum(feature * fixed noise) for the input and every parameter."""
    model.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_(True)
    feats = torch.utils._pytree.tree_leaves(model(x, **kw))
    gen = torch.Generator().manual_seed(1)
    sum((f * torch.randn(f.shape, generator=gen, dtype=f.dtype)).sum() for f in feats).backward()
    return [f.detach() for f in feats], {"input": x.grad, **{n: p.grad for n, p in model.named_parameters()}}


def _assert_features_kept(original, fast, x, **kw):
    (f0, g0), (f1, g1) = _features_and_grads(original, x, **kw), _features_and_grads(fast, x, **kw)
    assert [f.shape for f in f1] == [f.shape for f in f0]
    for i, (a, b) in enumerate(zip(f1, f0)):
        _assert_same(a, b, f"feature {i}")
    assert g1.keys() == g0.keys()
    scale = max(g.abs().max().item() for g in g0.values() if g is not None)
    for k in g0:  # (None for the layers after the last feature under encode_only)
        assert (g1[k] is None) == (g0[k] is None), k
        if g0[k] is not None:
            torch.testing.assert_close(g1[k], g0[k], rtol=TOL, atol=TOL * scale, msg=k)


def _cut():
    torch.manual_seed(0)
    return CutResnetGenerator().double()


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_cut_features_with_keep_sequential_outputs(mode):
    original = _cut().train(mode == "train")
    fast = copy.deepcopy(original)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said explicitly: no warning
        accelerate(fast, keep_sequential_outputs=True)
    # only single-module rewrites: no Identity placeholders anywhere, the blocks' residual add still fused
    assert not any(type(m) is nn.Identity for m in fast.modules())
    assert sum(type(m) is InstanceNormAct for m in fast.modules()) == 9
    assert _count(fast)["residual"] == 2
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    _assert_features_kept(original, fast, x, layers=CUT_LAYERS, encode_only=True)
    _assert_same(fast(x), original(x), "output")


def test_cut_indices_read_in_forward_are_detected():
    original = _cut()
    fast = copy.deepcopy(original)
    with pytest.warns(UserWarning, match=r"left the layers of these Sequentials unfused .*: model "
                                         r"\(read in CutResnetGenerator\.forward\)") as record:
        accelerate(fast)
    assert len([w for w in record if "Sequentials unfused" in str(w.message)]) == 1
    assert type(fast.model[0]) is nn.ReflectionPad2d and type(fast.model[3]) is nn.ReLU
    # ... while the residual blocks' bodies, called whole by ResnetBlock.forward, are fused
    assert type(fast.model[10].conv_block[1]) is ReflectPadConv2d and _count(fast)["residual"] == 2
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    _assert_features_kept(original, fast, x, layers=CUT_LAYERS, encode_only=True)
    _assert_features_kept(original, fast, x, layers=[4, 12])  # (output, features)


def test_cut_fused_anyway_when_told():
    """keep_sequential_outputs=False fuses the Sequential CUT reads: the issue's changed feature 0."""
    fast = copy.deepcopy(_cut())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        accelerate(fast, keep_sequential_outputs=False)
    assert type(fast.model[0]) is nn.Identity
    x = torch.randn(1, 3, 16, 16, dtype=torch.float64)
    assert fast(x, layers=[0], encode_only=True)[0].shape == (1, 3, 16, 16)  # the pad's output was 22x22


def test_exclude_leaves_submodules_untouched():
    original = _cut()
    fast = copy.deepcopy(original)
    accelerate(fast, keep_sequential_outputs=False, exclude=["model.10", "model.18"])
    assert type(fast.model[10].conv_block[0]) is nn.ReflectionPad2d  # nothing inside model.10 changed
    assert type(fast.model[10].conv_block[6]) is nn.InstanceNorm2d and _count(fast)["residual"] == 1
    assert type(fast.model[18]) is nn.ReflectionPad2d and type(fast.model[19]) is Conv2dTanh  # no pad fusion
    assert type(fast.model[11].conv_block[0]) is nn.Identity
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    _assert_same(fast(x), original(x), "output")
    with pytest.raises(ValueError, match=r"exclude names 'model\.99', which is not a submodule"):
        accelerate(copy.deepcopy(original), exclude=["model.99"])


def test_pix2pixhd_intermediate_features_kept_and_fused():
    """pix2pixHD's getIntermFeat discriminator calls each stage's Sequential whole: fused, no warning, the
    same features and gradients in train and eval mode."""
    torch.manual_seed(0)
    original = Pix2pixHDNLayerDiscriminator().double()
    fast = copy.deepcopy(original)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        accelerate(fast)
    assert type(fast.model0[0]) is Conv2dLeakyReLU and type(fast.model1[1]) is InstanceNormAct
    x = torch.randn(2, 3, 20, 20, dtype=torch.float64)
    for mode in (True, False):
        original.train(mode)
        fast.train(mode)
        _assert_features_kept(original, fast, x)


class _SlicesIts(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.ReflectionPad2d(1), nn.Conv2d(2, 2, 3), nn.InstanceNorm2d(2), nn.ReLU())
        self.head = nn.Sequential(nn.ReflectionPad2d(1), nn.Conv2d(2, 2, 3), nn.Tanh())

    def forward(self, x):
        return self.head(x), self.features(x)

    def features(self, x):  # another method than forward, and a slice
        return self.body[:3](x)


class _PassesItWhole(nn.Module):
    def __init__(self):
        super().__init__()
        self.main = nn.Sequential(nn.ReflectionPad2d(1), nn.Conv2d(2, 2, 3), nn.InstanceNorm2d(2), nn.ReLU())

    def forward(self, x):  # pytorch/examples' DCGAN form: data_parallel calls the Sequential whole
        if x.is_cuda and torch.cuda.device_count() > 1:
            return nn.parallel.data_parallel(self.main, x, range(2))
        return self.main.forward(x) + self.main(x)


class _KeepsEachOutput(nn.Sequential):
    def forward(self, x):
        outs = []
        for layer in self:
            x = layer(x)
            outs.append(x)
        return outs


@pytest.mark.parametrize("build, kept, fused", [
    (_SlicesIts, {"body": "_SlicesIts.features"}, ["head"]),
    (_PassesItWhole, {}, ["main"]),
    (lambda: nn.Sequential(_KeepsEachOutput(nn.ReflectionPad2d(1), nn.Conv2d(2, 2, 3))),
     {"0": "_KeepsEachOutput.forward"}, []),
])
def test_detection_of_single_index_reads(build, kept, fused):
    torch.manual_seed(0)
    original = build().double()
    fast = copy.deepcopy(original)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        accelerate(fast)
    messages = [str(w.message) for w in record if "Sequentials unfused" in str(w.message)]
    assert len(messages) == (1 if kept else 0)
    for name, where in kept.items():
        assert f"{name} (read in {where})" in messages[0]
        assert type(fast.get_submodule(name)[0]) is nn.ReflectionPad2d
    for name in fused:
        assert type(fast.get_submodule(name)[0]) is nn.Identity
    x = torch.randn(1, 2, 6, 5, dtype=torch.float64)
    for a, b in zip(torch.utils._pytree.tree_leaves(fast(x)), torch.utils._pytree.tree_leaves(original(x))):
        _assert_same(a, b, "output")


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_tracked_instance_norm_through_triton(triton_cpu, mode):
    """InstanceNormTrackedAct on its Triton kernels (interpreter): the original's output, every gradient and
    the running statistics in float32, two steps."""
    from fastgan import ops
    from fastgan.ops import _dispatch

    name = "nlayer_instance_tracked_affine"
    original = _build(name).float().train(mode == "train")
    fast = accelerate(copy.deepcopy(original), impl="triton")
    op = "instance_norm_act" if mode == "train" else "batch_norm_act"  # eval: the running statistics
    x = _input(name).float()
    for step in range(2):
        _dispatch.clear_last()
        (y0, g0), (y1, g1) = _step(original, x, seed=step), _step(fast, x, seed=step)
        assert ops.last_impl(op) == "triton"
        torch.testing.assert_close(y1, y0, atol=1e-5, rtol=1e-5)
        for k in g0:
            torch.testing.assert_close(g1[k], g0[k], atol=1e-4 * (1 + g0[k].abs().max().item()), rtol=1e-4, msg=k)
        for (k, b0), b1 in zip(original.state_dict().items(), fast.state_dict().values()):
            torch.testing.assert_close(b1, b0, atol=1e-5, rtol=1e-5, msg=k)
