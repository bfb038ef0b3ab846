"""leaky_relu: the Triton path against the float64 reference, outputs and every gradient.

On CPU the kernels run under TRITON_INTERPRET=1 at small shapes; the CUDA cases use the real
PatchGAN / DCGAN shapes and are skipped without a GPU.
"""

import importlib

import pytest
import torch
import torch.nn.functional as F

from fastgan import ops
from fastgan.ops import _triton_util, leaky_relu, leaky_relu_ref

pytest.importorskip("triton")

_ULP = {torch.float32: 2.0**-23, torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}


def _layout(x, layout):
    if layout == "channels_last":
        return x.contiguous(memory_format=torch.channels_last if x.dim() == 4 else torch.channels_last_3d)
    if layout == "permuted":  # dense but neither contiguous nor channels_last
        return x.permute(2, 0, 3, 1).contiguous().permute(1, 3, 0, 2)
    return x


def _check_against_reference(shape, layout, dtype, device, has_bias, slope=0.2):
    x = _layout(torch.randn(shape, dtype=torch.float64).to(device, dtype), layout)
    b = torch.randn(shape[1], dtype=torch.float64).to(device, dtype) if has_bias else None
    dy = torch.randn(shape, dtype=torch.float64).to(device, dtype)
    inputs = [t for t in (x, b) if t is not None]

    def run(fn, cast=None):
        leaves = [(t if cast is None else t.to(cast)).detach().requires_grad_(True) for t in inputs]
        y = fn(leaves[0], leaves[1] if has_bias else None)
        return [y, *torch.autograd.grad(y, leaves, dy.to(y.dtype))]

    got = run(lambda x, b: leaky_relu(x, slope, bias=b, impl="triton"))
    assert ops.last_impl("leaky_relu") == "triton"
    want = run(lambda x, b: leaky_relu_ref(x, slope, bias=b), torch.float64)
    assert got[0].stride() == x.stride() and got[1].stride() == x.stride()
    if dtype != torch.float32:
        torch_own = run(lambda x, b: leaky_relu_ref(x, slope, bias=b))
    for i, (name, g, w) in enumerate(zip(["y", "dx", "dbias"], got, want)):
        assert g.dtype == dtype, name
        err = (g.double() - w).abs().max().item()
        scale = 1 + w.abs().max().item()
        if dtype == torch.float32:
            tol = 1e-5 * scale
        else:
            tol = 2 * (torch_own[i].double() - w).abs().max().item() + 2 * _ULP[dtype] * scale
        assert err <= tol, f"{name}: max error {err:.3g} > {tol:.3g}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("has_bias", [False, True], ids=["", "bias"])
@pytest.mark.parametrize("shape", [
    (2, 3, 5, 7),  # small odd
    (2, 3, 37, 53),  # odd sizes from the issue
])
def test_matches_reference(triton_cpu, shape, layout, dtype, has_bias):
    _check_against_reference(shape, layout, dtype, "cpu", has_bias)


@pytest.mark.parametrize("shape,layout,has_bias", [
    ((4, 6), "contiguous", True),  # linear layer output [N, C]
    ((4, 6), "contiguous", False),
    ((2, 3, 4, 5, 6), "channels_last", True),  # 5-D channels_last_3d
    ((3, 4, 5, 6), "permuted", False),  # any dense layout without a bias
    ((1, 2, 64, 70), "contiguous", True),  # rows split over programs for dbias
    ((1, 70, 3, 4), "channels_last", True),  # channels beyond one block of 64
])
def test_other_shapes_and_layouts(triton_cpu, shape, layout, has_bias):
    _check_against_reference(shape, layout, torch.float32, "cpu", has_bias)


@pytest.mark.parametrize("max_split", [1, 3], ids=["one_piece", "three_pieces"])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_pieces_of_several_tiles(triton_cpu, monkeypatch, max_split, layout):
    """Backward programs that loop over several tiles, the last partial or entirely past the row's end."""
    monkeypatch.setattr(importlib.import_module("fastgan.ops.leaky_relu"), "_MAX_SPLIT", max_split)
    plans = []
    split = _triton_util.split
    monkeypatch.setattr(_triton_util, "split", lambda *args: plans.append(split(*args)) or plans[-1])
    # 13000 positions: 4 tiles of 4096 (contiguous) or 7 of 2048 (channels_last)
    _check_against_reference((1, 2, 100, 130), layout, torch.float32, "cpu", True)
    assert len(plans) == 1 and plans[0][0] <= max_split and plans[0][1] > 1


def test_zero_slope_is_relu(triton_cpu):
    _check_against_reference((2, 3, 5, 7), "contiguous", torch.float32, "cpu", True, slope=0.0)


@pytest.mark.cuda
@pytest.mark.parametrize("shape", [
    (4, 64, 128, 128), (4, 128, 64, 64), (4, 256, 32, 32), (4, 512, 31, 31),  # PatchGAN, 256x256 input
    (64, 128, 16, 16), (64, 256, 8, 8),  # DCGAN discriminator
    (2, 3, 37, 53),  # odd
])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("has_bias", [False, True], ids=["", "bias"])
def test_matches_reference_cuda(shape, layout, dtype, has_bias, poisoned_buffers):
    _check_against_reference(shape, layout, dtype, "cuda", has_bias)


def test_backward_needs_only_the_output(triton_cpu):
    """Changing x after the forward pass does not change dx: the op saved y, not x."""
    x = torch.randn(2, 3, 4, 5, requires_grad=True)
    y = leaky_relu(x * 1, 0.2, impl="triton")
    (dx,) = torch.autograd.grad(y, x, torch.ones_like(y))
    torch.testing.assert_close(dx, torch.where(x > 0, 1.0, 0.2))


def test_deterministic_bias_gradient(triton_cpu):
    x = torch.randn(1, 2, 64, 70)
    b = torch.randn(2, requires_grad=True)
    dy = torch.randn_like(x)
    grads = [torch.autograd.grad(leaky_relu(x, bias=b, impl="triton"), b, dy)[0] for _ in range(2)]
    assert torch.equal(grads[0], grads[1])


@pytest.mark.parametrize("impl", ["ref", "triton"])
def test_rejects_bad_bias(triton_cpu, impl):
    with pytest.raises(ValueError, match="bias must have shape"):
        leaky_relu(torch.randn(2, 3, 4, 4), bias=torch.zeros(4), impl=impl)


def test_triton_rejects_what_it_cannot_take(triton_cpu):
    with pytest.raises(ValueError, match="x has dtype torch.float64"):
        leaky_relu(torch.randn(2, 3, dtype=torch.float64), impl="triton")
    with pytest.raises(ValueError, match="negative_slope=-0.5"):
        leaky_relu(torch.randn(2, 3), -0.5, impl="triton")
    with pytest.raises(ValueError, match="x with shape .* neither contiguous nor channels_last"):
        leaky_relu(torch.randn(2, 3, 4, 8)[..., ::2], bias=torch.zeros(3), impl="triton")


def test_reference_gradcheck():
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, b: leaky_relu_ref(x, 0.2, bias=b), (x, b))


def test_reference_matches_torch():
    x = torch.randn(2, 3, 4, 5)
    b = torch.randn(3)
    torch.testing.assert_close(leaky_relu_ref(x, 0.1, bias=b), F.leaky_relu(x + b[:, None, None], 0.1))


@pytest.mark.parametrize("impl", ["ref", "triton"])
def test_compile_cpu(triton_cpu, impl):
    """The custom op's fake implementation and autograd trace (aot_eager: no C++ compiler needed)."""
    torch._dynamo.reset()
    conv = torch.nn.Conv2d(3, 4, 3)
    x = torch.randn(2, 3, 7, 6)

    def block(x):
        return leaky_relu(F.conv2d(x, conv.weight), 0.2, bias=conv.bias, impl=impl)

    compiled = torch.compile(block, backend="aot_eager", fullgraph=True)
    y = compiled(x)
    grads = torch.autograd.grad(y.square().sum(), list(conv.parameters()))
    y_eager = block(x)
    grads_eager = torch.autograd.grad(y_eager.square().sum(), list(conv.parameters()))
    for g, w in zip([y, *grads], [y_eager, *grads_eager]):
        torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-5)


@pytest.mark.cuda
def test_compile_cuda():
    torch._dynamo.reset()
    conv = torch.nn.Conv2d(3, 4, 3).cuda()
    x = torch.randn(2, 3, 17, 16, device="cuda").contiguous(memory_format=torch.channels_last)

    def block(x):
        return leaky_relu(F.conv2d(x, conv.weight), 0.2, bias=conv.bias, impl="triton")

    y = torch.compile(block, fullgraph=True)(x)
    torch.testing.assert_close(y, block(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("unit_stride", ["stride_c", "stride_s"], ids=["nhwc", "nchw"])
def test_kernels_compile_for_h100(sm90_ptx, unit_stride):
    block = dict(BLOCK_C=64, BLOCK_S=64) if unit_stride == "stride_c" else dict(BLOCK_C=1, BLOCK_S=4096)
    module = importlib.import_module("fastgan.ops.leaky_relu")
    for k, tiles in ((module._leaky_relu_fwd_kernel, None), (module._leaky_relu_bwd_kernel, 1),
                     (module._leaky_relu_bwd_kernel, 4)):
        constexprs = dict(block, HAS_BIAS=True) | ({} if tiles is None else dict(TILES=tiles))
        ptx = sm90_ptx(k, constexprs, unit_stride, parameter_dtype="bf16")
        # 128-bit loads and stores along the contiguous dim (channels for NHWC), as a copy kernel would issue.
        assert "ld.global.v4" in ptx and "st.global.v4" in ptx, k.__name__


@pytest.mark.cuda
def test_cuda_graph_capture():
    x = torch.randn(4, 64, 32, 32, device="cuda").contiguous(memory_format=torch.channels_last)
    bias = torch.randn(64, device="cuda", requires_grad=True)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        leaky_relu(x, bias=bias, impl="triton").sum().backward()  # warm-up compiles the kernels
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y = leaky_relu(x, bias=bias, impl="triton")
    x.copy_(torch.randn_like(x))
    graph.replay()
    torch.testing.assert_close(y, leaky_relu_ref(x, bias=bias.detach()), atol=1e-6, rtol=1e-6)
