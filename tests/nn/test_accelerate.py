"""accelerate(model): same outputs, gradients and state_dict keys as the unmodified model, the impl vocabulary,
the Triton paths it reaches, residual blocks, hooks, and what it leaves alone (the replicas of whole
third-party networks are in test_accelerate_replicas.py)."""

import copy
import functools

import pytest
import torch
from torch import nn

from fastgan import accelerate
from fastgan.nn import Conv2dLeakyReLU, Conv2dTanh, InstanceNormAct, LeakyReLU, ReflectPadConv2d, set_impl

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
    # 1 stem + 2 per block reflection-padded convs, and the head's with its Tanh; every norm, 7 of them
    # followed by ReLU.
    assert _count(fast, ReflectPadConv2d) == 5
    assert _count(fast, Conv2dTanh, padding_mode="reflect") == 1
    assert _count(fast, InstanceNormAct, act="relu", affine=affine) == 7
    assert _count(fast, InstanceNormAct, act="none", affine=affine) == 2
    assert _count(fast, nn.Identity) == 14  # the 6 absorbed pads, 7 absorbed ReLUs and the Tanh
    assert _count(fast, nn.InstanceNorm2d) == _count(fast, nn.ReLU) == _count(fast, nn.ReflectionPad2d) == 0
    assert _count(fast, nn.Conv2d) == 2  # the stride-2 downsampling convs (zero padding, followed by a norm)
    assert _count(fast, nn.ConvTranspose2d) == 2
    # Each block's first norm writes its second convolution's pad, the last up norm the head's.
    assert _count(fast, InstanceNormAct, pad_output=1) == _count(fast, ReflectPadConv2d, input_padded=True) == 2
    assert _count(fast, InstanceNormAct, pad_output=3) == _count(fast, Conv2dTanh, input_padded=True) == 1


def test_norm_writes_the_pad_only_where_nothing_else_sees_it():
    """No pad in the norm where the Sequential's indices are kept, or where a hook would see the padded tensor;
    the model still computes what it did."""
    g = ResnetGenerator(ngf=4, n_blocks=1).double()
    fast = accelerate(copy.deepcopy(g), keep_sequential_outputs=True)
    assert _count(fast, InstanceNormAct, pad_output=1) == _count(fast, ReflectPadConv2d, input_padded=True) == 0
    hooked = copy.deepcopy(g)
    seen = []
    hooked.model[-3].register_forward_pre_hook(lambda m, args: seen.append(args[0].shape))  # the head's pad
    x = torch.randn(1, 3, 16, 16, dtype=torch.float64)
    with pytest.warns(UserWarning, match="hooks on them"):
        fast = accelerate(hooked)
    assert _count(fast, InstanceNormAct, pad_output=3) == 0 and _count(fast, InstanceNormAct, pad_output=1) == 1
    torch.testing.assert_close(fast(x), g(x))
    assert seen[-1] == (1, 4, 16, 16)  # what it saw before: the last norm's output, unpadded


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
            self.no_bias = nn.Sequential(nn.Conv2d(4, 4, 3, bias=False), nn.LeakyReLU(0.2))  # fused, bias or not
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
    assert [type(m) for m in fast.no_bias] == [Conv2dLeakyReLU, nn.Identity]
    assert fast.no_bias[0].bias is None and fast.no_bias[0].kernel_size == (3, 3)
    assert [type(m) for m in fast.listed[0]] == [InstanceNormAct, nn.Identity]
    assert fast.listed[0][0].act == "leaky_relu" and fast.listed[0][0].negative_slope == 0.3
    structure = repr(fast)
    assert repr(accelerate(fast)) == structure


def test_bad_impl():
    with pytest.raises(ValueError, match="accelerate: unknown impl='bogus'"):
        accelerate(nn.Sequential(nn.LeakyReLU()), impl="bogus")


def test_impl_vocabulary():
    """One vocabulary: "triton" / "cuda" reach the layers with that kind of fast path, the others get "auto";
    set_impl validates when called; a layer refuses an impl none of its ops has."""
    g = accelerate(ResnetGenerator(ngf=4, n_blocks=1), impl="triton")
    impls = {(type(m), m.impl) for m in g.modules() if hasattr(m, "impl")}
    # Conv2dTanh has both kinds (its tanh "triton", its reflect-pad convolution "cuda") and passes each op
    # only the one it has.
    assert impls == {(ReflectPadConv2d, "auto"), (InstanceNormAct, "triton"), (Conv2dTanh, "triton")}
    set_impl(g, "cuda")  # reaches the reflect-pad convs only
    assert {(type(m), m.impl) for m in g.modules() if hasattr(m, "impl")} == \
        {(ReflectPadConv2d, "cuda"), (InstanceNormAct, "triton"), (Conv2dTanh, "cuda")}
    set_impl(g, "fast")
    assert {m.impl for m in g.modules() if hasattr(m, "impl")} == {"fast"}
    with pytest.raises(ValueError, match="set_impl: unknown impl='bogus'"):
        set_impl(g, "bogus")
    with pytest.raises(ValueError, match="InstanceNormAct: impl='cuda'.* no cuda path"):
        InstanceNormAct(4, impl="cuda")
    layer = ReflectPadConv2d(3, 3, 3)
    with pytest.raises(ValueError, match="ReflectPadConv2d: impl='triton'"):
        layer.impl = "triton"
    assert layer.impl == "auto"


class _Mixed(nn.Module):
    """Every fusion with a Triton path: BatchNorm + ReLU, conv + LeakyReLU (no bias), InstanceNorm + LeakyReLU,
    a lone LeakyReLU and a residual block ending in InstanceNorm."""

    def __init__(self):
        super().__init__()
        self.head = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(True),
                                  nn.Conv2d(4, 4, 3, padding=1, bias=False), nn.LeakyReLU(0.2, True),
                                  nn.Conv2d(4, 4, 3, padding=1), nn.InstanceNorm2d(4, affine=True),
                                  nn.LeakyReLU(0.1))
        self.block = ResnetBlock(4, _INSTANCE_NORM)
        self.act = nn.LeakyReLU(0.3)

    def forward(self, x):
        return self.act(self.block(self.head(x)))


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_triton_paths_through_accelerate(triton_cpu, mode):
    """accelerate(impl="triton") on CPU through Triton's interpreter: the original's outputs, gradients and
    running statistics (float32), with every fused op taking its Triton path."""
    from fastgan import ops
    from fastgan.ops import _dispatch

    torch.manual_seed(0)
    original = _Mixed().train(mode == "train")
    _randomise_affine(original)
    fast = accelerate(copy.deepcopy(original), impl="triton")
    assert hasattr(fast.block, "_fastgan_residual")
    x = torch.randn(3, 3, 6, 7)
    results = []
    for model in (original, fast):
        _dispatch.clear_last()
        xi = x.clone().requires_grad_(True)
        y = model(xi)
        y.backward(torch.randn(y.shape, generator=torch.Generator().manual_seed(1)))
        results.append([y, xi.grad, *(p.grad for p in model.parameters()), *model.buffers()])
    assert {op: ops.last_impl(op) for op in ("batch_norm_act", "instance_norm_act", "leaky_relu")} == \
        dict.fromkeys(("batch_norm_act", "instance_norm_act", "leaky_relu"), "triton")
    for want, got in zip(*results):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_pytorch_cyclegan_generator_through_the_fast_paths(triton_cpu):
    """pytorch-CycleGAN-and-pix2pix's generator accelerated with impl="fast" (the Triton norms through the
    interpreter, writing the convolutions' pads; the extension's CPU convolution): the original's output and every
    gradient (float32)."""
    from fastgan import ops
    from fastgan.ops.reflect_pad_conv2d import extension_check

    if extension_check(torch.device("cpu")) is not None:
        pytest.skip("fastgan._C is not built")
    torch.manual_seed(0)
    original = ResnetGenerator(ngf=4, n_blocks=1)
    fast = accelerate(copy.deepcopy(original), impl="fast")
    assert _count(fast, InstanceNormAct, pad_output=1) == 1 and _count(fast, InstanceNormAct, pad_output=3) == 1
    x = torch.randn(2, 3, 12, 16)
    results = []
    for model in (original, fast):
        xi = x.clone().requires_grad_(True)
        y = model(xi)
        y.backward(torch.randn(y.shape, generator=torch.Generator().manual_seed(1)))
        results.append([y, xi.grad, *(p.grad for p in model.parameters())])
    assert ops.last_impl("instance_norm_act") == "triton" and ops.last_impl("reflect_pad_conv2d") == "cuda"
    for want, got in zip(*results):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_residual_block_recognition():
    """x + body(x) and body(x) + x are fused (same outputs and layouts); other forwards are left alone."""

    class BodyFirst(ResnetBlock):
        def forward(self, x):
            return self.conv_block(x) + x

    class Scaled(ResnetBlock):
        def forward(self, x):
            return x + 0.5 * self.conv_block(x)

    class Branchy(ResnetBlock):
        def forward(self, x):
            if x.sum() > 0:  # data-dependent control flow: fx cannot trace it
                return x + self.conv_block(x)
            return x

    for cls, fused in ((ResnetBlock, True), (BodyFirst, True), (Scaled, False), (Branchy, False)):
        block = cls(4, _INSTANCE_NORM).double()
        fast = accelerate(copy.deepcopy(block))
        assert hasattr(fast, "_fastgan_residual") == fused, cls
        assert isinstance(fast, cls) and type(fast.conv_block[-1]) is InstanceNormAct
        for fmt in (torch.contiguous_format, torch.channels_last):
            x = torch.randn(2, 4, 7, 6, dtype=torch.float64).abs().contiguous(memory_format=fmt)
            want, got = block(x), fast(x)
            assert got.stride() == want.stride(), (cls, fmt)
            torch.testing.assert_close(got, want, rtol=TOL, atol=TOL)
        x3 = torch.randn(4, 7, 6, dtype=torch.float64).abs()  # unbatched
        torch.testing.assert_close(fast(x3), block(x3), rtol=TOL, atol=TOL)
    hooked = ResnetBlock(4, _INSTANCE_NORM)
    hooked.conv_block.register_forward_hook(lambda m, i, o: None)  # would miss the body's own output
    assert not hasattr(accelerate(hooked), "_fastgan_residual")


def test_residual_block_pickle_deepcopy_compile():
    import pickle

    g = accelerate(ResnetGenerator(ngf=4, n_blocks=1))
    x = torch.randn(1, 3, 16, 16)
    want = g(x)
    for copied in (pickle.loads(pickle.dumps(g)), copy.deepcopy(g)):
        assert type(copied.model[10]) is type(g.model[10]) and copied.model[10]._fastgan_residual
        torch.testing.assert_close(copied(x), want)
    block = g.model[10]  # compiling one block keeps the test short
    h = torch.randn(1, 16, 4, 4)
    torch._dynamo.reset()
    torch.testing.assert_close(torch.compile(block, backend="aot_eager", fullgraph=True)(h), block(h))


def test_hooks_move_with_the_module():
    calls = []
    seq = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Tanh(), nn.LeakyReLU(0.1), nn.InstanceNorm2d(4))
    handles = [seq[2].register_forward_hook(lambda m, i, o: calls.append("fwd")),
               seq[2].register_full_backward_hook(lambda m, gi, go: calls.append("bwd")),
               seq[3].register_forward_pre_hook(lambda m, i: calls.append("pre"))]
    accelerate(seq)
    assert type(seq[2]) is LeakyReLU and type(seq[3]) is InstanceNormAct
    seq(torch.randn(2, 3, 6, 6, requires_grad=True)).sum().backward()
    assert calls == ["fwd", "pre", "bwd"]
    for h in handles:
        h.remove()  # the handles still point at the moved hook dicts
    calls.clear()
    seq(torch.randn(2, 3, 6, 6, requires_grad=True)).sum().backward()
    assert calls == []


def test_left_alone_in_place_spectral_norm_negative_slope():
    seq = nn.Sequential(
        nn.LeakyReLU(0.2, inplace=True),  # its input may be read again by the caller
        nn.utils.spectral_norm(nn.Conv2d(3, 4, 3)), nn.LeakyReLU(0.2),  # the conv's weight is computed
        nn.LeakyReLU(-0.5),  # a negative slope: backward cannot work from the output
    )
    fast = accelerate(copy.deepcopy(seq))
    assert [type(m) for m in fast] == [nn.LeakyReLU, nn.Conv2d, LeakyReLU, nn.LeakyReLU]
    x = torch.randn(2, 3, 6, 6)
    torch.testing.assert_close(fast.eval()(x.clone()), seq.eval()(x.clone()))
    x = torch.randn(2, 3, 6, 6)
    y = accelerate(nn.Sequential(nn.LeakyReLU(0.2, inplace=True)))(x)
    assert y is x  # in place, as before


def test_norm_with_weight_but_no_bias_left_alone():
    try:
        norm = nn.InstanceNorm2d(4, affine=True, bias=False)
    except TypeError:
        pytest.skip("this torch's norms have no bias= argument")
    seq = nn.Sequential(norm, nn.ReLU())
    assert [type(m) for m in accelerate(seq)] == [nn.InstanceNorm2d, nn.ReLU]


def test_export():
    """torch.export of an accelerated model (every fusion, training mode with its running-stat updates)."""
    torch.manual_seed(0)
    fast = accelerate(_Mixed())
    x = torch.randn(2, 3, 6, 7)
    exported = torch.export.export(copy.deepcopy(fast), (x,)).module()
    torch.testing.assert_close(exported(x), fast(x))
    torch.testing.assert_close(list(exported.buffers()), list(fast.buffers()))
