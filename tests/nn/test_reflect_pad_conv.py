"""fastgan.nn.ReflectPadConv2d is a drop-in for nn.Sequential(nn.ReflectionPad2d, nn.Conv2d)."""

import sys

import pytest
import torch
from torch import nn

import fastgan.ops  # noqa: F401  (loads fastgan.ops.reflect_pad_conv2d)
from fastgan.nn import ReflectPadConv2d

rpc = sys.modules["fastgan.ops.reflect_pad_conv2d"]
IMPLS = ["ref", pytest.param("cuda", marks=pytest.mark.skipif(
    rpc._EXT_ERROR is not None, reason=f"fastgan._C not built: {rpc._EXT_ERROR}"))]


@pytest.fixture
def _one_cpu_thread():
    """Tiny convolutions: intra-op threads only spin-wait on a loaded 2-core CI machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# The CycleGAN generator's stem (7x7, pad 3) and residual-block conv (3x3, pad 1) at small odd sizes,
# plus a stride-2 4x4 with padding 2 and no bias.
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("c_in, c_out, k, padding, stride, bias",
                         [(3, 8, 7, 3, 1, True), (8, 8, 3, 1, 1, True), (5, 4, 4, 2, 2, False)])
def test_matches_pad_then_conv(c_in, c_out, k, padding, stride, bias, channels_last, impl, _one_cpu_thread):
    seq = nn.Sequential(nn.ReflectionPad2d(padding), nn.Conv2d(c_in, c_out, k, stride, bias=bias)).double()
    layer = ReflectPadConv2d.from_modules(seq[0], seq[1], impl=impl)
    assert layer.weight.dtype == torch.float64
    x = torch.randn(2, c_in, 11, 9, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x_seq, x_layer = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    y_seq, y_layer = seq(x_seq), layer(x_layer)
    assert fastgan.ops.last_impl("reflect_pad_conv2d") == impl
    torch.testing.assert_close(y_layer, y_seq, rtol=1e-12, atol=1e-12)
    grad_out = torch.randn_like(y_seq)
    y_seq.backward(grad_out)
    y_layer.backward(grad_out)
    torch.testing.assert_close(x_layer.grad, x_seq.grad, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(layer.weight.grad, seq[1].weight.grad, rtol=1e-12, atol=1e-12)
    if bias:
        torch.testing.assert_close(layer.bias.grad, seq[1].bias.grad, rtol=1e-12, atol=1e-12)


def test_state_dict_loads_conv_weights():
    conv = nn.Conv2d(4, 6, 3)
    layer = ReflectPadConv2d(4, 6, 3)
    layer.load_state_dict(conv.state_dict())
    x = torch.randn(1, 4, 5, 7)
    torch.testing.assert_close(layer(x), conv(nn.functional.pad(x, (1,) * 4, mode="reflect")))


def test_from_modules_rejects_unsupported_pairs():
    with pytest.raises(ValueError, match="unsupported pair"):
        ReflectPadConv2d.from_modules(nn.ReflectionPad2d((1, 1, 2, 2)), nn.Conv2d(3, 3, 3))
    with pytest.raises(ValueError, match="unsupported pair"):
        ReflectPadConv2d.from_modules(nn.ReflectionPad2d(1), nn.Conv2d(4, 4, 3, groups=2))


@pytest.mark.cuda
@pytest.mark.parametrize("impl", ["ref", "cuda"])
def test_bf16_channels_last_on_cuda(impl):
    seq = nn.Sequential(nn.ReflectionPad2d(1), nn.Conv2d(64, 64, 3)).cuda()
    layer = ReflectPadConv2d.from_modules(seq[0], seq[1], impl=impl)
    x = torch.randn(2, 64, 37, 53, device="cuda").contiguous(memory_format=torch.channels_last)
    want = seq.double()(x.double())
    got = layer.to(torch.bfloat16)(x.to(torch.bfloat16))
    assert fastgan.ops.last_impl("reflect_pad_conv2d") == impl
    torch.testing.assert_close(got.double(), want, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("impl", IMPLS)
def test_conv2d_tanh_takes_the_reflect_pad_convolution(impl):
    """Conv2dTanh with reflect padding runs fastgan.ops.reflect_pad_conv2d (its C++ kernel under "cuda" on a
    CPU tensor) without the bias, then the bias in the tanh: torch's reflect-padded conv + tanh in float64."""
    from fastgan import ops
    from fastgan.nn import Conv2dTanh

    layer = Conv2dTanh(4, 3, 7, padding=3, padding_mode="reflect", impl=impl).double()
    conv = nn.Conv2d(4, 3, 7, padding=3, padding_mode="reflect").double()
    conv.load_state_dict(layer.state_dict())
    x = torch.randn(2, 4, 9, 10, dtype=torch.float64)
    y = layer(x)
    assert ops.last_impl("reflect_pad_conv2d") == impl
    torch.testing.assert_close(y, torch.tanh(conv(x)))
