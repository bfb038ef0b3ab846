"""fastgan.nn layers are drop-in equivalents of the torch.nn modules they replace."""

import warnings

import pytest
import torch
from torch import nn

from fastgan.nn import (
    BatchNorm2dAct,
    Conv2dLeakyReLU,
    Conv2dTanh,
    ConvTranspose2dTanh,
    InstanceNormAct,
    LeakyReLU,
    ReflectPadConv2d,
)
from fastgan.ops import _triton_util, last_impl


def _same_outputs_and_grads(ours, theirs, x, residual=None):
    xa = x.clone().requires_grad_(True)
    xb = x.clone().requires_grad_(True)
    ya = ours(xa) if residual is None else ours(xa, residual)
    yb = theirs(xb) if residual is None else theirs(xb) + residual
    dy = torch.randn_like(ya)
    ga = torch.autograd.grad(ya, [xa, *ours.parameters()], dy)
    gb = torch.autograd.grad(yb, [xb, *theirs.parameters()], dy)
    for a, b in zip([ya, *ga], [yb, *gb]):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("affine", [False, True])
@pytest.mark.parametrize("act", ["relu", "leaky_relu", "none"])
def test_instance_norm_act_matches_torch(affine, act):
    norm = nn.InstanceNorm2d(5, affine=affine)
    if affine:
        nn.init.normal_(norm.weight)
        nn.init.normal_(norm.bias)
    activation = {"relu": nn.ReLU(), "leaky_relu": nn.LeakyReLU(0.2), "none": nn.Identity()}[act]
    ours = InstanceNormAct(5, act=act, affine=affine)
    ours.load_state_dict(norm.state_dict())
    x = torch.randn(2, 5, 6, 7)
    _same_outputs_and_grads(ours, nn.Sequential(norm, activation), x)
    _same_outputs_and_grads(ours, nn.Sequential(norm, activation), x, residual=torch.randn(2, 5, 6, 7))


def test_instance_norm_act_state_dict_keys():
    ours, theirs = InstanceNormAct(4, affine=True), nn.InstanceNorm2d(4, affine=True)
    assert list(ours.state_dict()) == list(theirs.state_dict()) == ["weight", "bias"]
    assert list(InstanceNormAct(4).state_dict()) == list(nn.InstanceNorm2d(4).state_dict()) == []


def test_instance_norm_act_keeps_channels_last():
    x = torch.randn(2, 3, 4, 5).contiguous(memory_format=torch.channels_last)
    assert InstanceNormAct(3)(x).is_contiguous(memory_format=torch.channels_last)


def test_leaky_relu_matches_torch():
    _same_outputs_and_grads(LeakyReLU(0.1), nn.LeakyReLU(0.1), torch.randn(3, 4, 5, 6))


def test_conv2d_leaky_relu_matches_torch():
    conv = nn.Conv2d(3, 6, 4, stride=2, padding=1)
    ours = Conv2dLeakyReLU(3, 6, 4, stride=2, padding=1)
    assert ours.state_dict().keys() == conv.state_dict().keys()
    ours.load_state_dict(conv.state_dict())
    _same_outputs_and_grads(ours, nn.Sequential(conv, nn.LeakyReLU(0.2)), torch.randn(2, 3, 9, 8))


def test_layers_run_the_triton_kernels(monkeypatch):
    """The layers' impl reaches the ops: the same results through the Triton interpreter."""
    pytest.importorskip("triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(_triton_util, "empty_like", lambda x, dtype=None: torch.full_like(x, float("nan")))
    norm = nn.InstanceNorm2d(3, affine=True)
    nn.init.normal_(norm.weight)
    ours = InstanceNormAct(3, act="leaky_relu", affine=True, impl="triton")
    ours.load_state_dict(norm.state_dict())
    _same_outputs_and_grads(ours, nn.Sequential(norm, nn.LeakyReLU(0.2)), torch.randn(2, 3, 5, 4))
    conv = nn.Conv2d(3, 4, 3)
    fused = Conv2dLeakyReLU(3, 4, 3, impl="triton")
    fused.load_state_dict(conv.state_dict())
    _same_outputs_and_grads(fused, nn.Sequential(conv, nn.LeakyReLU(0.2)), torch.randn(2, 3, 6, 5))
    deconv = nn.ConvTranspose2d(3, 4, 4, 2, 1)
    fused = ConvTranspose2dTanh(3, 4, 4, 2, 1, impl="triton")
    fused.load_state_dict(deconv.state_dict())
    _same_outputs_and_grads(fused, nn.Sequential(deconv, nn.Tanh()), torch.randn(2, 3, 6, 5))


def test_training_with_triton_kernels_tracks_reference(monkeypatch):
    """Twenty SGD steps of a small conv / instance-norm / LeakyReLU / transposed conv + Tanh net: the Triton
    path (interpreted) and the reference path reach the same losses."""
    pytest.importorskip("triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    data = torch.randn(4, 3, 6, 6)
    target = torch.rand(4, 2, 6, 6) * 2 - 1

    def train(impl):
        torch.manual_seed(1)
        net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), InstanceNormAct(4, affine=True, impl=impl),
                            Conv2dLeakyReLU(4, 4, 3, impl=impl), ConvTranspose2dTanh(4, 2, 3, impl=impl))
        opt = torch.optim.SGD(net.parameters(), lr=0.1)
        losses = []
        for _ in range(20):
            loss = (net(data) - target).square().mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.detach())
        return torch.stack(losses)

    fast, ref = train("triton"), train("ref")
    assert fast[-1] < 0.9 * fast[0]  # it learns
    torch.testing.assert_close(fast, ref, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("momentum,track,affine", [
    (0.1, True, True),  # nn.BatchNorm2d's defaults
    (None, True, True),  # cumulative average: the factor comes from num_batches_tracked
    (0.3, False, False),  # no running statistics: batch statistics in eval mode too
])
@pytest.mark.parametrize("act", ["relu", "leaky_relu"])
def test_batch_norm_act_matches_torch_over_steps(momentum, track, affine, act):
    """Three training steps then eval: outputs, gradients, running statistics and num_batches_tracked."""
    norm = nn.BatchNorm2d(5, eps=0.8, momentum=momentum, affine=affine, track_running_stats=track).double()
    if affine:
        nn.init.normal_(norm.weight)
        nn.init.normal_(norm.bias)
    ours = BatchNorm2dAct(5, act=act, negative_slope=0.1, eps=0.8, momentum=momentum, affine=affine,
                          track_running_stats=track).double()
    assert list(ours.state_dict()) == list(norm.state_dict())
    ours.load_state_dict(norm.state_dict())
    activation = nn.ReLU() if act == "relu" else nn.LeakyReLU(0.1)
    theirs = nn.Sequential(norm, activation)
    for step in range(4):
        training = step < 3
        ours.train(training)
        theirs.train(training)
        _same_outputs_and_grads(ours, theirs, torch.randn(3, 5, 4, 6, dtype=torch.float64) * 2 + step)
        for k, v in norm.state_dict().items():
            torch.testing.assert_close(ours.state_dict()[k], v, rtol=1e-12, atol=1e-12, msg=k)


@pytest.mark.parametrize("momentum", [0.1, None])
def test_batch_norm_act_triton_counts_batches(triton_cpu, momentum):
    """The Triton path adds one to num_batches_tracked in its statistics pass (no add_ of its own), and with
    momentum=None the cumulative-average factor it is given matches nn.BatchNorm2d's over several steps."""
    norm = nn.BatchNorm2d(5, momentum=momentum)
    ours = BatchNorm2dAct(5, act="none", momentum=momentum, impl="triton")
    ours.load_state_dict(norm.state_dict())
    for step in range(3):
        x = torch.randn(3, 5, 4, 6) * 2 + step
        torch.testing.assert_close(ours(x), norm(x), atol=1e-5, rtol=1e-5)
        assert last_impl("batch_norm_act") == "triton"
    for k, v in norm.state_dict().items():
        torch.testing.assert_close(ours.state_dict()[k], v, rtol=1e-5, atol=1e-5, msg=k)
    assert ours.num_batches_tracked.item() == 3


def test_batch_norm_act_loads_checkpoints_without_num_batches_tracked():
    state = nn.BatchNorm2d(3).state_dict()
    del state["num_batches_tracked"]
    state._metadata = {"": {"version": 1}}
    ours = BatchNorm2dAct(3)
    ours.load_state_dict(state)  # strict, as nn.BatchNorm2d loads its own version-1 checkpoints
    assert ours.num_batches_tracked.item() == 0


def test_batch_norm_act_rejects_unbatched_like_batch_norm():
    x = torch.randn(3, 4, 4)
    with pytest.raises(ValueError, match=r"expected 4D input \(got 3D input\)"):
        nn.BatchNorm2d(3)(x)
    with pytest.raises(ValueError, match=r"expected 4D input \(got 3D input\)"):
        BatchNorm2dAct(3)(x)


def test_fused_convolutions_are_conv2d():
    """isinstance(m, nn.Conv2d), nn.Conv2d's attributes, and the computation of the equivalent nn.Conv2d."""
    rpc = ReflectPadConv2d(3, 4, 7, padding=3, stride=2)
    assert isinstance(rpc, nn.Conv2d)
    assert (rpc.kernel_size, rpc.stride, rpc.padding, rpc.padding_mode) == ((7, 7), (2, 2), (3, 3), "reflect")
    conv = nn.Conv2d(3, 4, 7, stride=2, padding=3, padding_mode="reflect")
    conv.load_state_dict(rpc.state_dict())
    x = torch.randn(2, 3, 11, 9)
    torch.testing.assert_close(rpc(x), conv(x))
    fused = Conv2dLeakyReLU(3, 4, (3, 5), stride=(1, 2), padding=(1, 2), negative_slope=0.1, dilation=2,
                            padding_mode="circular")
    assert isinstance(fused, nn.Conv2d) and fused.kernel_size == (3, 5) and fused.dilation == (2, 2)
    conv = nn.Conv2d(3, 4, (3, 5), stride=(1, 2), padding=(1, 2), dilation=2, padding_mode="circular")
    conv.load_state_dict(fused.state_dict())
    torch.testing.assert_close(fused(x), nn.functional.leaky_relu(conv(x), 0.1))
    with pytest.raises(ValueError, match="must be square"):
        ReflectPadConv2d(3, 4, (3, 5))


@pytest.mark.parametrize("build", [
    lambda: ReflectPadConv2d(3, 4, 3),
    lambda: Conv2dLeakyReLU(3, 4, 3, padding=1),
    lambda: InstanceNormAct(3, act="leaky_relu", affine=True),
    lambda: LeakyReLU(0.1),
    lambda: Conv2dTanh(3, 4, 7, padding=3, padding_mode="reflect"),
    lambda: Conv2dTanh(3, 4, 3, padding=1),
    lambda: ConvTranspose2dTanh(3, 4, 4, 2, 1),
], ids=["reflect_pad_conv", "conv_leaky_relu", "instance_norm_act", "leaky_relu", "reflect_conv_tanh", "conv_tanh",
        "conv_transpose_tanh"])
def test_unbatched_input_and_script(build):
    """[C, H, W] input gives the batched result's first sample; torch.jit.script runs the same computation."""
    layer = build()
    x = torch.randn(2, 3, 7, 6)
    want = layer(x)
    torch.testing.assert_close(layer(x[0]), want[0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.script is deprecated in newer torch ...
        warnings.simplefilter("ignore", DeprecationWarning)  # ... with one warning class or the other
        scripted = torch.jit.script(layer)
    torch.testing.assert_close(scripted(x), want)
    torch.testing.assert_close(scripted(x[0]), want[0])


@pytest.mark.parametrize("build,torch_conv", [
    (lambda: Conv2dTanh(3, 4, 7, padding=3, padding_mode="reflect"),  # the fused reflect-pad convolution
     lambda: nn.Conv2d(3, 4, 7, padding=3, padding_mode="reflect")),
    (lambda: Conv2dTanh(3, 4, (3, 5), stride=(2, 1), padding=(1, 2), dilation=2, bias=False),
     lambda: nn.Conv2d(3, 4, (3, 5), stride=(2, 1), padding=(1, 2), dilation=2, bias=False)),
    (lambda: ConvTranspose2dTanh(3, 4, 4, 2, 1), lambda: nn.ConvTranspose2d(3, 4, 4, 2, 1)),
    (lambda: ConvTranspose2dTanh(3, 4, 3, 2, 1, output_padding=1, bias=False),
     lambda: nn.ConvTranspose2d(3, 4, 3, 2, 1, output_padding=1, bias=False)),
], ids=["reflect", "conv_no_bias", "conv_transpose", "conv_transpose_no_bias"])
def test_conv_tanh_matches_torch(build, torch_conv):
    """The conv + tanh layers are their torch conv (attributes, state_dict) followed by torch.tanh, in float64."""
    ours, theirs = build().double(), torch_conv().double()
    assert isinstance(ours, type(theirs)) and list(ours.state_dict()) == list(theirs.state_dict())
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(2, 3, 11, 9, dtype=torch.float64)
    _same_outputs_and_grads(ours, nn.Sequential(theirs, nn.Tanh()), x)


@pytest.mark.parametrize("build,torch_conv", [
    (lambda: Conv2dLeakyReLU(3, 4, 3), lambda: nn.Conv2d(3, 4, 3)),
    (lambda: Conv2dTanh(3, 4, 3), lambda: nn.Conv2d(3, 4, 3)),
    (lambda: Conv2dTanh(3, 4, 3, padding=1, padding_mode="reflect"),
     lambda: nn.Conv2d(3, 4, 3, padding=1, padding_mode="reflect")),
    (lambda: ConvTranspose2dTanh(3, 4, 4, 2, 1), lambda: nn.ConvTranspose2d(3, 4, 4, 2, 1)),
], ids=["conv_leaky_relu", "conv_tanh", "reflect_conv_tanh", "conv_transpose_tanh"])
def test_fused_convolutions_under_autocast(build, torch_conv):
    """Under autocast the fused conv layers return the dtype the torch conv returns (its bias is cast with it),
    and their parameters get gradients in their own dtype."""
    ours, theirs = build(), torch_conv()
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(2, 3, 8, 7)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, want = ours(x), theirs(x)
    assert y.dtype == want.dtype == torch.bfloat16
    y.float().sum().backward()
    assert ours.bias.grad.dtype == torch.float32


def test_conv_transpose_tanh_output_size():
    layer = ConvTranspose2dTanh(3, 4, 3, 2, 1)
    x = torch.randn(2, 3, 5, 5)
    y = layer(x, output_size=[10, 10])
    assert y.shape == (2, 4, 10, 10)
    torch.testing.assert_close(y, torch.tanh(nn.ConvTranspose2d.forward(layer, x, output_size=[10, 10])))


def test_instance_norm_act_unbatched_residual_and_contiguous_output():
    norm = InstanceNormAct(3, act="none", contiguous_output=True)
    x, r = torch.randn(3, 5, 4), torch.randn(3, 5, 4)
    torch.testing.assert_close(norm(x, r), nn.InstanceNorm2d(3)(x) + r)
    x = torch.randn(2, 3, 4, 5).contiguous(memory_format=torch.channels_last)
    assert norm(x).is_contiguous()  # as nn.InstanceNorm2d's output is


def test_leaky_relu_in_place():
    x = torch.randn(4, 5)
    y = LeakyReLU(0.1, inplace=True)(x)
    assert y is x and (x >= -0.1 * x.abs().max()).all() and (x < 0).any()


def test_impl_validated_when_set():
    with pytest.raises(ValueError, match="unknown impl='bogus'"):
        LeakyReLU(impl="bogus")
    with pytest.raises(ValueError, match="BatchNorm2dAct: impl='cuda'"):
        BatchNorm2dAct(3, impl="cuda")
    layer = Conv2dLeakyReLU(3, 4, 3)
    layer.impl = "triton"
    with pytest.raises(ValueError, match="Conv2dLeakyReLU: impl='cuda'"):
        layer.impl = "cuda"
    assert layer.impl == "triton"


# --- a reflection pad written by the norm before the convolution (pad_output / input_padded) ----------------
def _norm_then_conv(pad, fused, impl, conv=ReflectPadConv2d, **conv_options):
    """InstanceNormAct then a reflect-padded 3-in convolution with pad ``pad``: the pad written by the norm
    (``fused``) or by the convolution."""
    norm = InstanceNormAct(3, act="leaky_relu", affine=True, impl=impl, pad_output=pad if fused else 0)
    if conv is Conv2dTanh:
        layer = Conv2dTanh(3, 4, 2 * pad + 1, padding=pad, padding_mode="reflect", impl=impl, input_padded=fused)
    else:
        layer = ReflectPadConv2d(3, 4, 2 * pad + 1, pad, impl=impl, input_padded=fused, **conv_options)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in (*norm.parameters(), *layer.parameters()):
            p.copy_(torch.randn_like(p))
    return nn.Sequential(norm, layer).double()


@pytest.mark.parametrize("impl", ["ref", "fast"])
@pytest.mark.parametrize("conv, pad, stride", [(ReflectPadConv2d, 1, 1), (ReflectPadConv2d, 2, 2),
                                               (Conv2dTanh, 3, 1)], ids=["3x3", "5x5_stride2", "tanh_7x7"])
def test_norm_padding_for_the_next_convolution_is_the_same_network(monkeypatch, impl, conv, pad, stride):
    """InstanceNormAct(pad_output=p) + a convolution with input_padded computes what the norm + the
    convolution padding its own input computes: outputs and every gradient in float64 (the Triton norm and the
    extension's convolution on the CPU)."""
    if impl == "fast":
        pytest.importorskip("triton")
        monkeypatch.setenv("TRITON_INTERPRET", "1")
        from fastgan.ops.reflect_pad_conv2d import extension_check
        if extension_check(torch.device("cpu")) is not None:
            pytest.skip("fastgan._C is not built")
    options = {} if conv is Conv2dTanh else {"stride": stride}
    fused = _norm_then_conv(pad, True, impl, conv, **options)
    plain = _norm_then_conv(pad, False, "ref", conv, **options)
    x = torch.randn(2, 3, 7, 9, dtype=torch.float64)
    if impl == "fast":  # the Triton path runs fp32: compare it with the float64 reference at fp32 accuracy
        fused = fused.float()
        xa = x.float().requires_grad_(True)
    else:
        xa = x.clone().requires_grad_(True)
    xb = x.clone().requires_grad_(True)
    ya, yb = fused(xa), plain(xb)
    assert fused[0](xa).shape == (2, 3, 7 + 2 * pad, 9 + 2 * pad)
    dy = torch.randn_like(yb)
    ga = torch.autograd.grad(ya, [xa, *fused.parameters()], dy.to(ya.dtype))
    gb = torch.autograd.grad(yb, [xb, *plain.parameters()], dy)
    tol = 1e-4 if impl == "fast" else 1e-10
    for a, b in zip([ya, *ga], [yb, *gb]):
        torch.testing.assert_close(a.double(), b, atol=tol, rtol=tol)


def test_padded_norm_and_convolutions_unbatched_and_scripted():
    """[C, H, W] input and torch.jit.script for the layers with pad_output / input_padded."""
    for layer, x in ((InstanceNormAct(3, pad_output=2), torch.randn(2, 3, 5, 6)),
                     (ReflectPadConv2d(3, 4, 3, input_padded=True), torch.randn(2, 3, 7, 6)),
                     (Conv2dTanh(3, 4, 7, padding=3, padding_mode="reflect", input_padded=True),
                      torch.randn(2, 3, 9, 8))):
        want = layer(x)
        torch.testing.assert_close(layer(x[0]), want[0])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            scripted = torch.jit.script(layer)
        torch.testing.assert_close(scripted(x), want)
        torch.testing.assert_close(scripted(x[0]), want[0])
    norm = InstanceNormAct(3, act="none", pad_output=1)
    x, r = torch.randn(2, 3, 5, 6), torch.randn(2, 3, 9, 10)  # a residual padded by 2: its centre is added
    want = nn.functional.pad(nn.InstanceNorm2d(3)(x), (1,) * 4, mode="reflect") + r[:, :, 1:-1, 1:-1]
    torch.testing.assert_close(norm(x, r), want)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.testing.assert_close(torch.jit.script(norm)(x, r), want)
    assert "pad_output=1" in repr(norm) and "input_padded=True" in repr(ReflectPadConv2d(3, 4, 3, input_padded=True))


def test_bad_padding_options_are_rejected():
    with pytest.raises(ValueError, match="pad_output"):
        InstanceNormAct(3, pad_output=-1)
    with pytest.raises(ValueError, match="input_padded needs padding_mode='reflect'"):
        Conv2dTanh(3, 4, 3, padding=1, input_padded=True)
    with pytest.raises(ValueError, match="pad="):  # a pad the input is too small to reflect
        InstanceNormAct(3, pad_output=4)(torch.randn(1, 3, 4, 4))
