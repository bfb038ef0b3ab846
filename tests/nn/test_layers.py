"""fastgan.nn layers are drop-in equivalents of the torch.nn modules they replace."""

import pytest
import torch
from torch import nn

from fastgan.nn import Conv2dLeakyReLU, InstanceNormAct, LeakyReLU
from fastgan.ops import _triton_util


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


def test_training_with_triton_kernels_tracks_reference(monkeypatch):
    """Twenty SGD steps of a small conv / instance-norm / LeakyReLU net: the Triton path (interpreted)
    and the reference path reach the same losses."""
    pytest.importorskip("triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    data = torch.randn(4, 3, 6, 6)
    target = torch.randn(4, 4, 4, 4)

    def train(impl):
        torch.manual_seed(1)
        net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), InstanceNormAct(4, affine=True, impl=impl),
                            Conv2dLeakyReLU(4, 4, 3, impl=impl))
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
