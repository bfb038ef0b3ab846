"""Autocast for custom ops (fastgan/ops/_casts.py): each parameter cast once per region, as autocast's own
cache does for ATen's convolutions, and never a stale or gradient-less copy."""

from __future__ import annotations

import contextlib

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from fastgan import nn as fnn
from fastgan import ops
from fastgan.ops import _casts
from fastgan.ops.reflect_pad_conv2d import extension_check
from fastgan.testing.tasks import cpu_standin, graphed_standin

BF16 = torch.bfloat16


class _Casts(TorchDispatchMode):
    """Counts the dtype casts of each source tensor (by storage) dispatched while active, one by one or in
    multi-tensor copies (``multi``: how many of those)."""

    def __init__(self):
        super().__init__()
        self.sources: list[int] = []
        self.multi = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._to_copy.default:
            self.sources.append(args[0].untyped_storage().data_ptr())
        elif func is torch.ops.aten._foreach_copy_.default:
            self.multi += 1
            self.sources += [t.untyped_storage().data_ptr() for dst, t in zip(args[0], args[1])
                             if dst.dtype != t.dtype]
        return func(*args, **(kwargs or {}))


def test_a_parameter_is_cast_once_per_region_and_recast_after_an_update():
    w = torch.nn.Parameter(torch.randn(4, 4))
    activation = torch.randn(4, 4, requires_grad=True) * 2  # not a leaf: cast at every use, as autocast does
    with ops.autocast("cpu", BF16):
        first = _casts.autocast_to(w, BF16)
        assert _casts.autocast_to(w, BF16) is first
        assert _casts.autocast_to(activation, BF16) is not _casts.autocast_to(activation, BF16)
        with torch.no_grad():
            w.add_(1.0)  # an in-place update inside the region: the old copy is stale
            assert _casts.autocast_to(w, BF16) is not first  # and a no-grad copy is kept apart
        again = _casts.autocast_to(w, BF16)
        assert again is not first and again.grad_fn is not None
        torch.testing.assert_close(again.float(), w.detach().to(BF16).float())
    with ops.autocast("cpu", BF16):
        assert _casts.autocast_to(w, BF16) is not again  # a new region casts afresh
    assert _casts.autocast_to(w, BF16) is not _casts.autocast_to(w, BF16)  # outside any region: every use


@pytest.mark.skipif(extension_check(torch.device("cpu")) is not None, reason="fastgan._C has no CPU kernel")
def test_reflect_pad_conv2d_casts_its_weights_once_and_their_gradients_add_up():
    """Three uses of one layer under autocast: one cast of weight and bias, and the gradients those of the
    reference path (F.pad + F.conv2d, whose casts autocast caches)."""
    torch.manual_seed(0)
    layer = fnn.ReflectPadConv2d(3, 3, 3, impl="cuda")
    x = torch.randn(1, 3, 9, 7)
    grads, outputs = {}, {}
    for impl in ("cuda", "ref"):
        layer.impl = impl
        layer.zero_grad(set_to_none=True)
        with _Casts() as casts, ops.autocast("cpu", BF16):
            y = layer(layer(layer(x).float()))  # the middle one through a bf16 input
        (y.float() ** 2).sum().backward()
        outputs[impl], grads[impl] = y.float(), (layer.weight.grad.clone(), layer.bias.grad.clone())
        parameters = {p.untyped_storage().data_ptr() for p in layer.parameters()}
        assert sorted(s for s in casts.sources if s in parameters) == sorted(parameters)
    torch.testing.assert_close(outputs["cuda"], outputs["ref"], rtol=2e-2, atol=2e-2)
    for fast, ref in zip(grads["cuda"], grads["ref"]):
        torch.testing.assert_close(fast, ref, rtol=3e-2, atol=3e-2 * ref.abs().max().item())


def test_a_graphed_phase_casts_each_parameter_once():
    """The --cuda-graphs stand-in: inside each captured phase every trained parameter is cast once (the G
    phase applies each generator twice), in one multi-tensor copy per network."""
    setup = cpu_standin("cyclegan", "bf16")
    task = setup.task
    recorders = []

    def on_capture():
        recorders.append(_Casts())
        return recorders[-1]

    graphed_standin(task, setup.batch(), on_capture=on_capture)
    for phase, casts in zip(task.phases, recorders):
        trained = [p for name in phase.trains for p in task.nets[name].parameters()]
        storages = {p.untyped_storage().data_ptr() for p in trained}
        counted = [s for s in casts.sources if s in storages]
        assert len(counted) == len(set(counted)) == len(storages), phase.name
        # One forward copy per network run, one gradient copy per trained one (G phase: D_A and D_B frozen).
        assert casts.multi == {"G": 4 + 2, "D": 2 + 2}[phase.name]


def test_full_precision_is_untouched():
    x = torch.randn(2, 3)
    with ops.autocast("cpu", None):
        assert not torch.is_autocast_enabled("cpu")
        assert F.linear(x, torch.randn(3, 3)).dtype == torch.float32


def test_cast_modules_once_is_autocasts_cache_bit_for_bit():
    """One multi-tensor copy per network instead of one cast per parameter: the same outputs and gradients as
    autocast's own cache, bit for bit; norm parameters stay fp32; the parameters are back after the region;
    a frozen network's copies carry no autograd."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), fnn.InstanceNormAct(4, affine=True),
                              torch.nn.ConvTranspose2d(4, 4, 2, 2), torch.nn.Flatten(), torch.nn.LazyLinear(5))
    frozen = torch.nn.Conv2d(3, 3, 1).requires_grad_(False)
    x = torch.randn(2, 3, 6, 6)
    net(x)  # materialises the lazy layer
    params = list(net.parameters())
    results = {}
    for once in (False, True):
        net.zero_grad(set_to_none=True)
        with _Casts() as casts:
            with ops.autocast("cpu", BF16), \
                    (_casts.cast_modules_once([net, frozen]) if once else contextlib.nullcontext()):
                y = net(frozen(x)) + net(x)
                if once:
                    assert net[1].weight.dtype == torch.float32 and net[0].weight.dtype == BF16
                    assert not frozen.weight.requires_grad and frozen.weight.grad_fn is None
            y.float().square().sum().backward()
        results[once] = (y, [p.grad for p in params], casts)
    assert list(net.parameters()) == params and all(type(p) is torch.nn.Parameter for p in params)
    assert torch.equal(results[True][0], results[False][0])
    for fast, ref in zip(results[True][1], results[False][1]):
        assert torch.equal(fast, ref)
    assert results[True][2].multi == 3  # net and frozen forward, net's gradients


def test_copies_made_without_grad_are_not_reused_with_grad():
    net = torch.nn.Conv2d(3, 3, 1)
    x = torch.randn(1, 3, 4, 4)
    with ops.autocast("cpu", BF16), _casts.cast_modules_once([net]):
        with torch.no_grad():
            net(x)
        y = net(x)
        assert net.weight.grad_fn is not None
    y.float().sum().backward()
    assert net.weight.grad is not None and type(net.weight) is torch.nn.Parameter
