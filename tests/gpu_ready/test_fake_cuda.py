"""The CUDA path of every model, traced op by op on fake CUDA tensors (fastgan.testing.fake_cuda): one
training iteration of each GPU run (channels_last, --amp bf16, impl auto), forward and backward of every
phase. Every fused layer takes its fast custom op, bf16 stays bf16, and no op transposes between NCHW and
NHWC beyond the known findings listed here. Each check is shown to catch a planted defect.
"""

import importlib

import pytest
import torch

from fastgan.nn import layers
from fastgan.ops import _dispatch
from fastgan.testing import fake_cuda
from fastgan.testing.specialisations import MODEL_RUNS, run_name
from fastgan.testing.tasks import cpu_standin

RUNS = {run_name(model, overrides): (model, tuple(sorted(overrides.items()))) for model, overrides in MODEL_RUNS}

# Layout changes found by this test and reported (issue 10), as "op in layer" (forward: module; backward:
# autograd node). The test fails on any other one and on one of these disappearing (then delete it).
_DCGAN28 = {
    # The 28x28 generator's nn.Unflatten views a Linear output as NCHW [B, 128, 7, 7]; the transposed conv
    # then takes an NCHW input with NHWC weights (cuDNN transposes it; 7x7 maps, a few microseconds), and
    # the BatchNorm2dAct before it gets an NHWC gradient for its NCHW input.
    "aten.convolution.default in G.net.3",
    # nn.Flatten of the discriminator's NHWC [B, 128, 7, 7] copies it to NCHW for the Linear layer; the
    # gradient comes back NCHW into the BatchNorm2dAct and conv backward.
    "aten.clone.default in D.net.4",
    "fastgan.batch_norm_act_bwd.default in GeneratedBackwardFor_fastgan_batch_norm_act_fwd_defaultBackward",
    "aten.convolution_backward.default in ConvolutionBackward0",
}
_CYCLEGAN = {
    # ImagePool: fastgan.ops.image_pool's one kernel reads the NHWC fakes and indexes the NCHW pool buffer
    # element by element (no copy; it also stores the bf16 fakes as exact fp32 copies inside the kernel). The
    # where/index_copy_ chain it replaced mixed the layouts in three ops and cast in two.
    "fastgan.image_pool.default in pool_A", "fastgan.image_pool.default in pool_B",
    # (The L1 losses' NCHW gradients, copied to NHWC in the tanh backward, are gone: models.base.l1_loss.)
}
KNOWN_LAYOUT = {
    "gan recipe batch": set(),
    "dcgan recipe batch": _DCGAN28,
    "cgan recipe batch": {k.replace(" in G.", " in G.dcgan.").replace(" in D.", " in D.dcgan.") for k in _DCGAN28}
    # The conditional D concatenates the image with expanded label maps: NCHW input to NHWC weights.
    | {"aten.convolution.default in D.dcgan.net.0"},
    "dcgan 64x64 bs128": set(),
    "cyclegan bs1": _CYCLEGAN,
    "cyclegan bs4": _CYCLEGAN,
    # (The L1 loss's NCHW gradient, which also reached the U-Net's skip concatenations' backward as NCHW
    # slices, is gone: models.base.l1_loss.)
    "pix2pix bs1": set(),
}


def test_every_registered_model_is_traced():
    from fastgan.models import REGISTRY

    assert {model for model, _ in MODEL_RUNS} == set(REGISTRY)


KNOWN_DTYPE = {name: set() for name in RUNS}


def _trace(name):
    model, overrides = RUNS[name]
    return fake_cuda.gpu_run_trace(model, overrides, torch.bfloat16)


def _unavailable_on_cuda() -> set[str]:
    """The ops whose fast path this build cannot run on CUDA (fastgan._C built without CUDA, or not at all):
    on a GPU they fall back too, so the trace shows it truthfully."""
    return {op for op, fast in _dispatch._FAST.items() if fast.check(torch.device("cuda")) is not None}


@pytest.mark.parametrize("name", RUNS)
def test_every_fused_layer_takes_its_fast_op(name):
    trace = _trace(name)
    unavailable = _unavailable_on_cuda()
    for missing in trace.fused_layers_without_fast_op():
        layer_type = missing.split("(")[1].split(")")[0]
        assert set(getattr(layers, layer_type)._ops) <= unavailable, missing
    fallbacks = [w for w in trace.warnings if "falls back" in w]
    assert all(any(w.startswith(f"fastgan: {op} ") for op in unavailable) for w in fallbacks), fallbacks
    assert any(c.namespace == "fastgan" for c in trace.calls)


# Forward ops whose backward launches nothing, so has no op: loss_sum hands every loss the incoming gradient;
# batch_norm_act_stats runs without autograd (batch_norm_act_fwd's backward differentiates through it).
NO_BACKWARD_OP = {"fastgan.loss_sum.default", "fastgan.batch_norm_act_stats.default"}


@pytest.mark.parametrize("name", RUNS)
def test_backward_runs_the_fused_backward_ops(name):
    trace = _trace(name)
    forward = {op: n for op, n in trace.op_counts(requires_grad=True).items()
               if op.startswith("fastgan.") and op not in NO_BACKWARD_OP}
    backward = {op: n for op, n in trace.op_counts(backward=True).items() if op.startswith("fastgan.")}
    expected = {(op.replace("_fwd.", "_bwd.") if "_fwd." in op else op.replace(".default", "_backward.default")): n
                for op, n in forward.items()}
    assert backward == expected


@pytest.mark.parametrize("name", RUNS)
def test_bf16_stays_bf16(name):
    trace = _trace(name)
    found = trace.keys(trace.dtype_changes(torch.bfloat16)) | trace.keys(trace.dtype_changes(torch.bfloat16, True))
    assert found == KNOWN_DTYPE[name], trace.dtype_changes(torch.bfloat16)


@pytest.mark.parametrize("name", RUNS)
def test_no_hidden_layout_change(name):
    trace = _trace(name)
    if trace.fused_layers_without_fast_op():
        pytest.skip(f"this build lacks {', '.join(sorted(_unavailable_on_cuda()))} on CUDA: the reference "
                    "path's layouts are not a GPU build's")
    changes = trace.layout_changes() + trace.layout_changes(backward=True)
    assert trace.keys(changes) == KNOWN_LAYOUT[name], "\n".join(changes)


def test_cyclegan_generator_op_count_reference_vs_fused(capsys):
    """Ops per forward of the CycleGAN 256x256 generator (9 blocks, batch 1, bf16 autocast): a proxy for
    kernel launches."""
    setup = cpu_standin("cyclegan", "bf16", tiny=False, batch_size=1)
    G = setup.task.nets["G_A"]
    counts = {}
    with fake_cuda.fake_cuda_mode():
        fake_cuda.to_device_(G, "cuda")
        x = torch.empty(1, 3, 256, 256, device="cuda", memory_format=torch.channels_last)
        for impl in ("ref", "auto"):
            layers.set_impl(G, impl)
            with fake_cuda.OpTrace({"G_A": G}) as trace, fake_cuda.cuda_autocast(torch.bfloat16):
                G(x)
            counts[impl] = trace.op_counts()
    with capsys.disabled():
        for impl, ops in counts.items():
            print(f"\nCycleGAN 256x256 G forward, impl={impl}: {sum(ops.values())} ops "
                  + ", ".join(f"{op.removesuffix('.default')} {n}" for op, n in ops.most_common()))
    assert sum(counts["auto"].values()) < sum(counts["ref"].values())
    assert counts["auto"]["fastgan.instance_norm_act_fwd.default"] == 3 + 2 * 9 + 2  # down, blocks, up
    assert not any(op.startswith("fastgan.") for op in counts["ref"])


# --- the checks catch what they are for ------------------------------------------------------------
def _tiny_trace(backward=False):
    setup = cpu_standin("cyclegan", "bf16")
    with fake_cuda.fake_cuda_mode():
        return fake_cuda.trace_phases(setup.task, setup.batch(), autocast=torch.bfloat16, backward=backward)


def test_a_forced_reference_fallback_is_caught(monkeypatch):
    """The dispatcher's capability check says no for instance_norm_act, as for a GPU it cannot use."""
    fast = _dispatch._FAST["instance_norm_act"]
    monkeypatch.setitem(_dispatch._FAST, "instance_norm_act", type(fast)(fast.name, lambda device: "planted"))
    with pytest.warns(UserWarning, match="falls back to the reference path: planted"):
        trace = _tiny_trace()
    missing = [m for m in trace.fused_layers_without_fast_op() if "(InstanceNormAct)" in m]
    assert any(m.startswith("G_A.net.1 (InstanceNormAct)") for m in missing)
    assert len(missing) == sum(isinstance(m, layers.InstanceNormAct) for net in trace.nets.values()
                               for m in net.modules())


def test_a_layout_copy_is_caught(monkeypatch):
    forward = layers.InstanceNormAct.forward
    monkeypatch.setattr(layers.InstanceNormAct, "forward", lambda self, x, *a, **k: forward(self, x.contiguous(),
                                                                                            *a, **k))
    trace = _tiny_trace()
    keys = trace.keys(trace.layout_changes())
    assert {"aten.clone.default in G_A.net.1", "aten.clone.default in G_B.net.1"} & set(keys)


def test_a_dtype_change_is_caught(monkeypatch):
    forward = layers.InstanceNormAct.forward
    monkeypatch.setattr(layers.InstanceNormAct, "forward", lambda self, *a, **k: forward(self, *a, **k).float())
    trace = _tiny_trace()
    keys = trace.keys(trace.dtype_changes(torch.bfloat16))
    assert {"aten._to_copy.default in G_A.net.1", "aten._to_copy.default in G_B.net.1"} & set(keys)


def test_a_backward_fallback_is_caught(monkeypatch):
    """A fused op whose backward is not the fused one: the counts of forward and backward ops differ."""
    module = importlib.import_module("fastgan.ops.instance_norm_act")
    monkeypatch.setattr(module, "_bwd_op", lambda dy, x, *args: (torch.empty_like(x), None, None))
    trace = _tiny_trace(backward=True)
    forward = trace.op_counts()["fastgan.instance_norm_act_fwd.default"]
    assert forward and trace.op_counts(backward=True)["fastgan.instance_norm_act_bwd.default"] == 0


def test_run_backward_matches_autograd():
    """The engine-free backward used on fake CUDA tensors gives autograd's gradients on real ones."""
    setup = cpu_standin("cyclegan")
    task, batch = setup.task, setup.batch()
    phase = task.phases[0]
    params = [p for name in phase.trains for p in task.nets[name].parameters()]
    torch.manual_seed(0)
    leaves = fake_cuda.run_backward(phase.loss(batch)["total"])
    torch.manual_seed(0)
    phase.loss(batch)["total"].backward()
    # The biases an InstanceNorm cancels (norm_follows) get no gradient from either.
    cancelled = {id(m.bias) for name in phase.trains for m in task.nets[name].modules()
                 if getattr(m, "norm_follows", False) and m.bias is not None}
    assert cancelled and {id(p) for p in params if p.grad is None} == cancelled
    used = [p for p in params if p.grad is not None]
    assert set(leaves) >= set(used) and not any(id(p) in cancelled for p in leaves)
    for p in used:
        torch.testing.assert_close(leaves[p], p.grad)


def test_reflect_pad_conv2d_follows_autocast():
    """Autocast casts no custom op's inputs: under --amp a bf16 activation met fp32 weights in
    fastgan._C's reflect_pad_conv2d, which raised (found by the CycleGAN trace above); the op now applies
    conv2d's autocast policy itself."""
    module = importlib.import_module("fastgan.ops.reflect_pad_conv2d")
    if module.extension_check(torch.device("cuda")) is not None:
        pytest.skip(module.extension_check(torch.device("cuda")))
    with fake_cuda.fake_cuda_mode():
        x = torch.empty(1, 8, 16, 16, device="cuda", dtype=torch.bfloat16)
        weight, bias = torch.empty(8, 8, 3, 3, device="cuda"), torch.empty(8, device="cuda")
        with fake_cuda.cuda_autocast(torch.bfloat16):
            y = module.reflect_pad_conv2d(x, weight, bias, 1, impl="cuda")
    assert y.dtype == torch.bfloat16
