import copy

import pytest
import torch
from torch import nn

from fastgan import nn as fnn
from fastgan.ops import _dispatch

FUSED = (fnn.ReflectPadConv2d, fnn.InstanceNormAct, fnn.LeakyReLU, fnn.Conv2dLeakyReLU, fnn.BatchNorm2dAct,
         fnn.Conv2dTanh, fnn.ConvTranspose2dTanh)
# Plain layers that would bypass fastgan.ops if a model used them instead of a fused one.
BYPASSES = (nn.ReflectionPad2d, nn.InstanceNorm2d, nn.LeakyReLU, nn.Tanh)


@pytest.fixture
def n_params():
    """Returns the function counting a model's parameters."""
    return lambda model: sum(p.numel() for p in model.parameters())


@pytest.fixture
def check_fused_layers(monkeypatch):
    """Returns check(model, *inputs, expected={op: calls}): every fastgan layer of the model runs in
    forward, set_impl reaches each one (every op call asks for the impl that was set), no plain layer
    bypasses the ops, and impl="ref" gives the same output as the default impl."""

    def check(model, *inputs, expected):
        assert not [m for m in model.modules() if isinstance(m, BYPASSES)]
        calls = []
        real_resolve = _dispatch.resolve

        def recording_resolve(op, impl, device):
            calls.append((op, impl))
            return real_resolve(op, impl, device)

        ran = set()
        fused = [m for m in model.modules() if isinstance(m, FUSED)]
        hooks = [m.register_forward_hook(lambda mod, i, o: ran.add(id(mod))) for m in fused]
        monkeypatch.setattr(_dispatch, "resolve", recording_resolve)

        default_out = model(*inputs)
        for h in hooks:
            h.remove()
        assert ran == {id(m) for m in fused}

        ref_model = fnn.set_impl(copy.deepcopy(model), "ref")
        calls.clear()
        ref_out = ref_model(*inputs)
        counts = {}
        for op, impl in calls:
            assert impl == "ref", f"{op} ran with impl={impl!r} after set_impl(model, 'ref')"
            counts[op] = counts.get(op, 0) + 1
        assert counts == expected
        # On the CPU both impls run the same arithmetic, bit for bit, except for the biases an InstanceNorm
        # cancels (norm_follows), which the default impl leaves out: the same up to rounding with them, and
        # bit for bit once they are added again.
        skipping = [m for m in model.modules() if getattr(m, "norm_follows", False) and m.bias is not None]
        torch.testing.assert_close(ref_out, default_out, rtol=0 if not skipping else 1e-4,
                                   atol=0 if not skipping else 1e-5)
        if skipping:
            adding = copy.deepcopy(model)
            for m in adding.modules():
                if getattr(m, "norm_follows", False):
                    m.norm_follows = False
            torch.testing.assert_close(ref_out, adding(*inputs), rtol=0, atol=0)
        with pytest.raises(ValueError, match="unknown impl"):
            fnn.set_impl(copy.deepcopy(model), "no-such-impl")(*inputs)

    return check
