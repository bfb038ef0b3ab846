"""fastgan.nn.unfuse_batch_norm_act: BatchNorm2dAct -> NormThenAct(nn.BatchNorm2d), the step before a
SyncBatchNorm converter, with the same Parameters, state_dict keys and results."""

import copy
import pickle

import pytest
import torch
from torch import nn

from fastgan import nn as fnn
from fastgan.models import dcgan


def _dcgan_pair():
    torch.manual_seed(0)
    return nn.ModuleDict({"G": dcgan.Generator(6, 4, 3, 32), "D": dcgan.Discriminator(4, 3, 32)}).double()


def _step(nets, z):
    x = nets["G"](z)
    return x, nets["D"](x)


@pytest.mark.parametrize("train", [True, False])
def test_unfused_computes_the_same(train):
    fused = _dcgan_pair().train(train)
    unfused = copy.deepcopy(fused)
    params = [id(p) for p in unfused.parameters()]
    buffers = [id(b) for b in unfused.buffers()]
    assert fnn.unfuse_batch_norm_act(unfused) is unfused
    assert not [m for m in unfused.modules() if isinstance(m, fnn.BatchNorm2dAct)]
    norms = [m for m in unfused.modules() if isinstance(m, fnn.NormThenAct)]
    assert len(norms) == 3 + 2 and all(type(m.norm) is nn.BatchNorm2d for m in norms)
    assert {m.act for m in norms} == {"relu", "leaky_relu"} and all(m.training == train for m in norms)
    assert [id(p) for p in unfused.parameters()] == params and [id(b) for b in unfused.buffers()] == buffers
    for _ in range(2):  # running statistics move alike in training
        z = torch.randn(5, 6, dtype=torch.float64)
        outs = _step(fused, z)
        unfused_outs = _step(unfused, z)
        for a, b in zip(outs, unfused_outs, strict=True):
            torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-12)
        grads = torch.autograd.grad(outs[1].sum(), list(fused.parameters()))
        unfused_grads = torch.autograd.grad(unfused_outs[1].sum(), list(unfused.parameters()))
        for a, b in zip(grads, unfused_grads, strict=True):
            torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-12)
    for (name, a), (unfused_name, b) in zip(fused.state_dict().items(), unfused.state_dict().items(), strict=True):
        assert unfused_name == name
        torch.testing.assert_close(b, a, rtol=1e-12, atol=0)


def test_checkpoints_load_both_ways_and_through_sync_batch_norm():
    fused = _dcgan_pair()
    unfused = fnn.unfuse_batch_norm_act(copy.deepcopy(fused))
    with torch.no_grad():
        for p in unfused.parameters():
            p.add_(torch.randn_like(p))
    _step(unfused, torch.randn(3, 6, dtype=torch.float64))  # moves the running statistics and counts
    fused.load_state_dict(unfused.state_dict())
    for a, b in zip(fused.state_dict().values(), unfused.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    fresh = fnn.unfuse_batch_norm_act(_dcgan_pair())
    fresh.load_state_dict(fused.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), fused.state_dict().values(),
                                                 strict=True))
    # A converter that swaps BatchNorm modules finds each norm; the keys stay the fused layer's.
    synced = nn.SyncBatchNorm.convert_sync_batchnorm(fnn.unfuse_batch_norm_act(_dcgan_pair()))
    assert sum(type(m) is nn.SyncBatchNorm for m in synced.modules()) == 3 + 2
    assert list(synced.state_dict()) == list(fused.state_dict())
    synced.load_state_dict(fused.state_dict())
    fused.load_state_dict(synced.state_dict())
    # Without the unfusing, the converter would pass the fused layers by.
    assert not [m for m in nn.SyncBatchNorm.convert_sync_batchnorm(_dcgan_pair()).modules()
                if isinstance(m, nn.SyncBatchNorm)]


def test_missing_and_unexpected_keys_are_reported():
    unfused = fnn.unfuse_batch_norm_act(_dcgan_pair())
    state = unfused.state_dict()
    del state["G.net.1.running_var"]
    state["G.net.1.extra"] = torch.zeros(1)
    result = unfused.load_state_dict(state, strict=False)
    assert result.missing_keys == ["G.net.1.norm.running_var"]
    assert result.unexpected_keys == ["G.net.1.norm.extra"]


def test_hooks_move_and_the_module_pickles():
    layer = nn.Sequential(fnn.BatchNorm2dAct(3, act="leaky_relu", negative_slope=0.1, momentum=None,
                                             affine=False, eps=1e-3))
    seen = []
    handle = layer[0].register_forward_hook(lambda m, i, o: seen.append(type(m)))
    fnn.unfuse_batch_norm_act(layer)
    norm = layer[0].norm
    assert (norm.eps, norm.momentum, norm.affine, norm.track_running_stats) == (1e-3, None, False, True)
    x = torch.randn(2, 3, 4, 5)
    layer(x)
    assert seen == [fnn.NormThenAct]
    handle.remove()
    layer(x)
    assert seen == [fnn.NormThenAct]
    copied = pickle.loads(pickle.dumps(layer))
    assert list(copied.state_dict()) == ["0.running_mean", "0.running_var", "0.num_batches_tracked"]
    torch.testing.assert_close(copied(x), layer(x))


def test_a_bare_layer_is_left_alone():
    layer = fnn.BatchNorm2dAct(3)
    assert fnn.unfuse_batch_norm_act(layer) is layer and type(layer) is fnn.BatchNorm2dAct
    assert list(fnn.NormThenAct(nn.BatchNorm2d(3)).state_dict()) == list(layer.state_dict())
