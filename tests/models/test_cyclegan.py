import copy
import random

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fastgan import nn as fnn
from fastgan.errors import UserError
from fastgan.models import ArchitectureError, init_weights
from fastgan.models.cyclegan import ImagePool, PatchDiscriminator, ResnetBlock, ResnetGenerator, Upsample2x
from fastgan.ops.reflect_pad_conv2d import reflect_pad_conv2d_ref


# --- ResnetGenerator --------------------------------------------------------------------------------
@pytest.mark.parametrize("n_blocks, upsample, expected", [
    (9, "deconv", 11_378_179),  # the published 9-block generator, 11.378 M
    (9, "resize", 11_378_179),  # nearest + conv3 has the transposed conv's parameter count
    (6, "deconv", 7_837_699),  # the 6-block generator for <= 128^2 images, 7.838 M
])
def test_generator_parameter_count(n_blocks, upsample, expected, n_params):
    assert n_params(ResnetGenerator(n_blocks=n_blocks, upsample=upsample)) == expected


@pytest.mark.parametrize("upsample", ["deconv", "resize"])
@pytest.mark.parametrize("in_channels, out_channels, size", [
    (3, 3, (32, 32)),  # square
    (1, 3, (32, 48)),  # grey to colour, non-square
    (3, 3, (8, 12)),  # minimal: 2x3 at the bottleneck, the least a 3x3 reflect pad and a norm take
])
def test_generator_shape(upsample, in_channels, out_channels, size):
    g = ResnetGenerator(in_channels, out_channels, ngf=8, n_blocks=2, upsample=upsample)
    y = g(torch.randn(2, in_channels, *size))
    assert y.shape == (2, out_channels, *size)
    assert y.abs().max() <= 1


def test_generator_rejects_unknown_upsample():
    with pytest.raises(ArchitectureError, match="upsample='bilinear'") as err:
        ResnetGenerator(upsample="bilinear")
    assert isinstance(err.value, ValueError) and isinstance(err.value, UserError)


def test_resize_upsampling_is_nearest_then_reflect_conv():
    up = Upsample2x(6, 4).double()
    x = torch.randn(2, 6, 5, 7, dtype=torch.float64)
    expected = reflect_pad_conv2d_ref(x.repeat_interleave(2, 2).repeat_interleave(2, 3), up.conv.weight,
                                      up.conv.bias, padding=1)
    torch.testing.assert_close(up(x), expected)
    g = ResnetGenerator(ngf=8, n_blocks=1, upsample="resize")
    assert sum(isinstance(m, Upsample2x) for m in g.modules()) == 2
    assert not any(isinstance(m, nn.ConvTranspose2d) for m in g.modules())


def _plain_resnet_generator(ngf, n_blocks, in_c=3, out_c=3):
    """The authors' ResnetGenerator layout (InstanceNorm, use_bias=True) in plain torch.nn layers, with
    parameters in the same order as fastgan's."""
    def block(c):
        return [nn.ReflectionPad2d(1), nn.Conv2d(c, c, 3), nn.InstanceNorm2d(c), nn.ReLU(),
                nn.ReflectionPad2d(1), nn.Conv2d(c, c, 3), nn.InstanceNorm2d(c)]

    class Residual(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.body = nn.Sequential(*block(c))

        def forward(self, x):
            return x + self.body(x)

    layers = [nn.ReflectionPad2d(3), nn.Conv2d(in_c, ngf, 7), nn.InstanceNorm2d(ngf), nn.ReLU(),
              nn.Conv2d(ngf, ngf * 2, 3, 2, 1), nn.InstanceNorm2d(ngf * 2), nn.ReLU(),
              nn.Conv2d(ngf * 2, ngf * 4, 3, 2, 1), nn.InstanceNorm2d(ngf * 4), nn.ReLU()]
    layers += [Residual(ngf * 4) for _ in range(n_blocks)]
    layers += [nn.ConvTranspose2d(ngf * 4, ngf * 2, 3, 2, 1, output_padding=1), nn.InstanceNorm2d(ngf * 2),
               nn.ReLU(), nn.ConvTranspose2d(ngf * 2, ngf, 3, 2, 1, output_padding=1), nn.InstanceNorm2d(ngf),
               nn.ReLU(), nn.ReflectionPad2d(3), nn.Conv2d(ngf, out_c, 7), nn.Tanh()]
    return nn.Sequential(*layers)


def _copy_parameters(src, dst):
    src_params, dst_params = list(src.parameters()), list(dst.parameters())
    assert [p.shape for p in src_params] == [p.shape for p in dst_params]
    with torch.no_grad():
        for s, d in zip(src_params, dst_params):
            d.copy_(s)


def test_generator_matches_plain_torch_layout():
    g = init_weights(ResnetGenerator(ngf=4, n_blocks=2).double(), std=0.3)
    plain = _plain_resnet_generator(4, 2).double()
    _copy_parameters(g, plain)
    x = torch.randn(2, 3, 20, 28, dtype=torch.float64)
    torch.testing.assert_close(g(x), plain(x))


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("n_blocks, upsample", [(2, "deconv"), (1, "resize"), (0, "deconv")])
def test_generator_fast_path_matches_plain_torch(monkeypatch, channels_last, n_blocks, upsample):
    """The fast path (Triton norms under the interpreter, the extension's CPU convolution), whose norms write the
    next convolution's reflection pad and fold its gradient, against the plain torch generator in float64:
    the output and every parameter's gradient."""
    pytest.importorskip("triton")
    from fastgan.ops.reflect_pad_conv2d import extension_check

    if extension_check(torch.device("cpu")) is not None:
        pytest.skip("fastgan._C is not built")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    g = init_weights(ResnetGenerator(ngf=4, n_blocks=n_blocks, upsample=upsample), std=0.3)
    fnn.set_impl(g, "fast")
    if upsample == "deconv":
        plain = _plain_resnet_generator(4, n_blocks).double()
        _copy_parameters(g, plain)
    else:  # no plain torch layout to copy into: the same generator on the reference path
        plain = fnn.set_impl(copy.deepcopy(g).double(), "ref")
    g = g.to(memory_format=fmt)
    x = torch.randn(2, 3, 12, 16, dtype=torch.float64)
    y = g(x.float().contiguous(memory_format=fmt))
    want = plain(x)
    dy = torch.randn_like(want)
    grads = torch.autograd.grad(y, list(g.parameters()), dy.float(), allow_unused=True)
    grads_want = torch.autograd.grad(want, list(plain.parameters()), dy, allow_unused=True)
    torch.testing.assert_close(y.double(), want, atol=1e-4, rtol=1e-4)
    for (name, _), got, ref in zip(g.named_parameters(), grads, grads_want):
        if got is None:  # a bias before an InstanceNorm, left out by the fast path (norm_follows)
            assert name.endswith("bias") and ref.abs().max() < 1e-8, name
            continue
        torch.testing.assert_close(got.double(), ref, atol=1e-3, rtol=1e-3, msg=name)


def test_resnet_block_adds_its_input():
    block = ResnetBlock(4).double()
    x = torch.randn(1, 4, 6, 6, dtype=torch.float64)
    h = F.relu(F.instance_norm(reflect_pad_conv2d_ref(x, block.conv1.weight, block.conv1.bias)))
    expected = x + F.instance_norm(reflect_pad_conv2d_ref(h, block.conv2.weight, block.conv2.bias))
    torch.testing.assert_close(block(x), expected)


@pytest.mark.parametrize("upsample, rpc_calls", [("deconv", 6), ("resize", 8)])
def test_generator_uses_every_fused_layer(check_fused_layers, upsample, rpc_calls):
    g = ResnetGenerator(ngf=4, n_blocks=2, upsample=upsample)
    # reflect convs: c7s1 + 2 per block + final c7s1 (+ 2 resize upsamplers); norms: 3 + 2 per block + 2;
    # the final c7s1's bias and Tanh.
    check_fused_layers(g, torch.randn(1, 3, 16, 16),
                       expected={"reflect_pad_conv2d": rpc_calls, "instance_norm_act": 9, "tanh": 1})


def test_channels_last_under_bf16_autocast():
    g = ResnetGenerator(ngf=8, n_blocks=1).to(memory_format=torch.channels_last)
    d = PatchDiscriminator(ndf=8).to(memory_format=torch.channels_last)
    pool = ImagePool(2, (3, 32, 32)).to(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 32, 32).to(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fake = g(x)
        logits = d(pool(fake.detach()))
        g_logits = d(fake)
    assert fake.dtype == torch.bfloat16 and fake.is_contiguous(memory_format=torch.channels_last)
    assert logits.shape == (2, 1, 2, 2)
    g_logits.float().mean().backward()
    assert g.net[0].weight.grad.abs().sum() > 0


# --- PatchDiscriminator ------------------------------------------------------------------------------
def test_patch_discriminator_parameter_count(n_params):
    assert n_params(PatchDiscriminator()) == 2_764_737  # the published 70x70 PatchGAN, 2.765 M


@pytest.mark.parametrize("size, out", [
    (256, 30),  # the paper's 256^2 crops
    (64, 6),  # small
    (35, 2),  # odd
])
def test_patch_discriminator_shape(size, out):
    assert PatchDiscriminator(ndf=4)(torch.randn(2, 3, size, size)).shape == (2, 1, out, out)


def test_patch_discriminator_receptive_field_is_70():
    # From the conv geometry: InstanceNorm's global statistics would make a gradient probe see everything.
    convs = [m for m in PatchDiscriminator().modules() if isinstance(m, nn.Conv2d)]  # fused convs are Conv2d too
    field = 1
    for conv in reversed(convs):
        field = (field - 1) * conv.stride[0] + conv.kernel_size[0]
    assert len(convs) == 5 and field == 70


def test_patch_discriminator_matches_plain_torch_layout():
    d = init_weights(PatchDiscriminator(ndf=4).double(), std=0.3)
    plain = nn.Sequential(
        nn.Conv2d(3, 4, 4, 2, 1), nn.LeakyReLU(0.2),
        nn.Conv2d(4, 8, 4, 2, 1), nn.InstanceNorm2d(8), nn.LeakyReLU(0.2),
        nn.Conv2d(8, 16, 4, 2, 1), nn.InstanceNorm2d(16), nn.LeakyReLU(0.2),
        nn.Conv2d(16, 32, 4, 1, 1), nn.InstanceNorm2d(32), nn.LeakyReLU(0.2),
        nn.Conv2d(32, 1, 4, 1, 1)).double()
    _copy_parameters(d, plain)
    x = torch.randn(2, 3, 48, 40, dtype=torch.float64)
    torch.testing.assert_close(d(x), plain(x))


def test_patch_discriminator_uses_every_fused_layer(check_fused_layers):
    check_fused_layers(PatchDiscriminator(ndf=4), torch.randn(2, 3, 32, 32),
                       expected={"leaky_relu": 1, "instance_norm_act": 3})


# --- ImagePool ---------------------------------------------------------------------------------------
def _ids(n, start=0):
    """Images [n, 1, 2, 2] whose every value is their id, so identities survive the pool."""
    return torch.arange(start, start + n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 1, 2, 2).clone()


def test_pool_size_zero_returns_input():
    x = torch.randn(4, 3, 8, 8)
    assert ImagePool(0, (3, 8, 8))(x) is x


def test_pool_returns_inputs_while_filling():
    pool = ImagePool(10, (1, 2, 2))
    for start in (0, 4):
        x = _ids(4, start)
        assert torch.equal(pool(x), x)
    assert pool.count.dim() == 0 and pool.count == 8
    assert torch.equal(pool.images[:8], _ids(8))
    x = _ids(4, 8)  # fills the last 2 slots, then the pool is full for the other 2 images
    out = pool(x)
    assert pool.count == 10
    assert torch.equal(out[:2], x[:2])


def test_pool_swaps_about_half_and_loses_no_image():
    pool = ImagePool(50, (1, 2, 2))
    returned, swapped, n = [], 0, 2000
    torch.manual_seed(1)
    for start in range(0, 50 + n, 4):
        x = _ids(4, start)
        out = pool(x)
        returned.append(out)
        if start >= 52:  # every image of the batch met a full pool
            swapped += (out[:, 0, 0, 0] != x[:, 0, 0, 0]).sum().item()
    assert abs(swapped / (n - 4) - 0.5) < 0.05  # binomial sd 0.011
    # No image is lost or duplicated: each is returned or kept exactly once, except the first 50,
    # which were both returned and stored while the pool filled.
    seen = torch.cat(returned + [pool.images])[:, 0, 0, 0]
    expected = torch.cat([torch.arange(50 + n + 2), torch.arange(50)]).float()
    assert torch.equal(seen.sort().values, expected.sort().values)
    # Stored images are drawn from all slots, not a few.
    assert (pool.images[:, 0, 0, 0] >= 50).sum() > 40


def test_pool_state_dict_round_trip():
    pool = ImagePool(6, (1, 2, 2))
    for start in range(0, 16, 4):
        pool(_ids(4, start))
    state = pool.state_dict()
    assert set(state) == {"images", "count"}
    restored = ImagePool(6, (1, 2, 2))
    restored.load_state_dict(state)
    torch.manual_seed(5)
    expected = pool(_ids(4, 100))
    torch.manual_seed(5)
    torch.testing.assert_close(restored(_ids(4, 100)), expected, rtol=0, atol=0)
    torch.testing.assert_close(restored.images, pool.images, rtol=0, atol=0)


def test_pool_uses_only_the_torch_rng():
    outputs = []
    for python_seed in (1, 2):
        random.seed(python_seed)
        torch.manual_seed(0)
        pool = ImagePool(2, (1, 2, 2))
        outputs.append(torch.cat([pool(_ids(2, s)) for s in range(0, 40, 2)]))
    assert torch.equal(outputs[0], outputs[1])


def test_pool_keeps_input_dtype_and_checks_shape():
    pool = ImagePool(3, (1, 2, 2))
    for _ in range(3):
        assert pool(_ids(2).bfloat16()).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="ImagePool"):
        pool(torch.zeros(2, 3, 2, 2))


@pytest.mark.cuda
def test_pool_never_syncs_and_replays_in_a_cuda_graph():
    pool = ImagePool(4, (3, 8, 8)).cuda()
    x = torch.randn(2, 3, 8, 8, device="cuda")
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            pool(x)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        pool(x)  # warm-up outside capture
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = pool(x)
    swapped = 0
    for i in range(200):
        x.copy_(torch.full_like(x, float(i + 10)))
        graph.replay()
        swapped += (out[:, 0, 0, 0] != i + 10).sum().item()
    assert pool.count.item() == 4
    assert 120 < swapped < 280  # about half of 400


@pytest.mark.cuda
@pytest.mark.parametrize("build, impl, ops", [
    # Triton norms and the CUDA reflect conv together
    (lambda: ResnetGenerator(ngf=16, n_blocks=2), "auto", ("instance_norm_act", "reflect_pad_conv2d")),
    # every fused layer of D has a Triton path
    (lambda: PatchDiscriminator(ndf=16), "triton", ("instance_norm_act", "leaky_relu")),
])
def test_fast_paths_match_reference_on_cuda(build, impl, ops):
    import copy

    from fastgan.nn import set_impl
    from fastgan.ops import _dispatch

    fast_model = set_impl(build().cuda(), impl)
    ref_model = set_impl(copy.deepcopy(fast_model), "ref")
    x = torch.randn(2, 3, 64, 64, device="cuda")
    outputs = []
    for model in (fast_model, ref_model):
        y = model(x)
        if model is fast_model:
            ran = {op: _dispatch.last_impl(op) for op in ops}
            assert "ref" not in ran.values(), ran
        (y.square().mean()).backward()
        outputs.append((y, [p.grad for p in model.parameters()]))
    (y_fast, g_fast), (y_ref, g_ref) = outputs
    torch.testing.assert_close(y_fast, y_ref, rtol=1e-3, atol=1e-3)
    for a, b in zip(g_fast, g_ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4)


# --- batched phases ---------------------------------------------------------------------------------
def _phase_runs(monkeypatch, batched: bool, iterations: int = 3):
    """Losses, every gradient and the pools of ``iterations`` G + D phases of a tiny CycleGAN in float64,
    with the independent applications batched (the default) or forced apart; same weights, data and RNG."""
    from fastgan import nn as fnn
    from fastgan.models import cyclegan
    from fastgan.testing.tasks import cpu_standin

    torch.manual_seed(0)
    setup = cpu_standin("cyclegan", None, channels_last=False)
    task = setup.task
    for module in (*task.nets.values(), *task.state.values()):
        module.double()
    if not batched:
        monkeypatch.setattr(cyclegan.fnn, "samples_independent", lambda net: False)
    phases = cyclegan.Model().phases(setup.cfg, task.nets, task.state, dict(setup.loader.info))
    monkeypatch.setattr(cyclegan.fnn, "samples_independent", fnn.samples_independent)
    batches = [{k: v.double() for k, v in setup.batch(epoch).items()} for epoch in range(iterations)]
    torch.manual_seed(11)
    runs = []
    for batch in batches:
        for phase in phases:
            params = [p for name in phase.trains for p in task.nets[name].parameters()]
            losses = phase.loss(batch)
            # allow_unused: the biases an InstanceNorm cancels (norm_follows) are left out, their gradients None
            grads = torch.autograd.grad(losses["total"], params, allow_unused=True)
            pools = {f"{name}.{k}": b.clone() for name in ("pool_A", "pool_B")
                     for k, b in task.state[name].state_dict().items()}
            runs.append((phase.name, {k: v.detach() for k, v in losses.items()}, grads, pools))
    weights = [p.detach().clone() for net in task.nets.values() for p in net.parameters()]
    return runs, weights, torch.rand(4)


def test_batched_phases_equal_separate_calls_in_float64(monkeypatch):
    """G_A(real_A), G_A(real_B) and G_A(fake_A) as one batch-3 call, G_B(real_B) with G_B(real_A) as one batch-2
    call, D's real and fake halves as one: every loss, every gradient, the image pools and the RNG stream as with
    separate calls."""
    batched, weights, next_draws = _phase_runs(monkeypatch, batched=True)
    separate, same_weights, next_draws_ref = _phase_runs(monkeypatch, batched=False)
    for a, b in zip(weights, same_weights):
        assert torch.equal(a, b)  # the same initial networks (the seed), so the comparison means something
    assert len(batched) == len(separate) == 6
    # The adversarial losses are fp32 by design (base.adversarial_loss), so what passes through them agrees to
    # fp32 rounding (an ulp where float64 logits that agree to 1e-16 round apart); the rest to float64's.
    for (name, losses, grads, pools), (_, losses_ref, grads_ref, pools_ref) in zip(batched, separate):
        assert losses.keys() == losses_ref.keys() and ("idt_A" in losses or name == "D")
        for key in losses:
            torch.testing.assert_close(losses[key], losses_ref[key], rtol=1e-6, atol=1e-9, msg=f"{name}/{key}")
        assert [g is None for g in grads] == [g is None for g in grads_ref]
        for g, g_ref in zip(grads, grads_ref):
            if g is not None:
                torch.testing.assert_close(g, g_ref, rtol=1e-6, atol=1e-9)
                assert g.abs().max() > 0
        for key in pools:
            assert torch.equal(pools[key], pools_ref[key]), key
    assert torch.equal(next_draws, next_draws_ref)  # the pools drew the same random numbers, no more


def test_batched_call_count(monkeypatch):
    """Three generator calls per G phase instead of six (G_A once), one call per discriminator in the D phase."""
    from fastgan.models import cyclegan
    from fastgan.testing.tasks import cpu_standin

    setup = cpu_standin("cyclegan", None)
    task = setup.task
    calls = {name: [] for name in task.nets}
    for name, net in task.nets.items():
        net.register_forward_pre_hook(lambda m, args, name=name: calls[name].append(args[0].shape[0]))
    phases = cyclegan.Model().phases(setup.cfg, task.nets, task.state, dict(setup.loader.info))
    batch = setup.batch()
    n = batch["A"].shape[0]
    for phase in phases:
        phase.loss(batch)
    assert calls == {"G_A": [3 * n], "G_B": [2 * n, n], "D_A": [n, 2 * n], "D_B": [n, 2 * n]}


def test_samples_independent_is_declared_by_the_layers():
    from fastgan import nn as fnn

    assert fnn.samples_independent(ResnetGenerator(ngf=4, n_blocks=1))
    assert fnn.samples_independent(ResnetGenerator(ngf=4, n_blocks=1, upsample="resize"))
    assert fnn.samples_independent(PatchDiscriminator(ndf=4, norm="instance"))
    assert not fnn.samples_independent(PatchDiscriminator(ndf=4, norm="batch"))  # batch statistics
    assert not fnn.samples_independent(nn.Sequential(nn.Conv2d(3, 3, 1), nn.Dropout()))  # random draws
    assert not fnn.samples_independent(nn.Sequential(nn.InstanceNorm2d(3, track_running_stats=True)))
    assert fnn.samples_independent(nn.Sequential(nn.InstanceNorm2d(3), nn.ReLU()))
    assert not fnn.samples_independent(nn.Sequential(fnn.BatchNorm2dAct(3)))

    class Undeclared(nn.Module):  # its forward could do anything with the batch
        def forward(self, x):
            return x - x.mean(0)

    assert not fnn.samples_independent(nn.Sequential(Undeclared()))


@pytest.mark.parametrize("shape", [(1, 3, 256, 256), (2, 3, 37, 53)])  # the recipe's; odd sizes
def test_l1_loss_is_f_l1_loss_with_a_gradient_in_the_outputs_layout(shape):
    from fastgan.models.base import l1_loss

    torch.manual_seed(0)
    for fmt in (torch.channels_last, torch.contiguous_format):
        out = torch.randn(shape, dtype=torch.bfloat16).to(memory_format=fmt).requires_grad_()
        target = torch.randn(shape).to(memory_format=fmt)
        loss = l1_loss(out, target)
        assert torch.equal(loss, F.l1_loss(out.float(), target.float()))  # bit for bit
        loss.backward()
        expected = torch.autograd.grad(F.l1_loss(out.float(), target.float()), out)[0]
        assert torch.equal(out.grad, expected) and out.grad.is_contiguous(memory_format=fmt)
