"""instance_norm_act: the Triton path against the float64 reference, outputs and every gradient.

On CPU the kernels run under TRITON_INTERPRET=1 at small shapes; the CUDA cases use the real
CycleGAN shapes and are skipped without a GPU.
"""

import importlib

import pytest
import torch
import torch.nn.functional as F

from fastgan import ops
from fastgan.ops import _triton_util, instance_norm_act, instance_norm_act_ref
from fastgan.ops.instance_norm_act import centre

pytest.importorskip("triton")

_ULP = {torch.float32: 2.0**-23, torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}


def _grown(shape, by):
    return (*shape[:2], shape[2] + 2 * by, shape[3] + 2 * by)


def _inputs(shape, dtype, device, channels_last, affine, residual, pad=0, margin=0):
    """x, weight, bias, residual (or None) rounded to dtype, and dy; x has a large mean to test the shift. dy
    is shaped like the output (padded by ``pad``), the residual larger than it by ``margin`` on every side."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = (torch.randn(shape, dtype=torch.float64) * 2 + 3).to(device, dtype).contiguous(memory_format=fmt)
    w = torch.randn(shape[1], dtype=torch.float64).to(device, dtype) if affine else None
    b = torch.randn(shape[1], dtype=torch.float64).to(device, dtype) if affine else None
    dy = torch.randn(_grown(shape, pad), dtype=torch.float64).to(device, dtype).contiguous(memory_format=fmt)
    r = None
    if residual:
        r = torch.randn(_grown(shape, pad + margin), dtype=torch.float64).to(device, dtype)
        r = r.contiguous(memory_format=fmt)
    return [x, w, b, r], dy


def _run(fn, tensors, dy, cast=None):
    """fn(x, w, b, r) and the gradients of sum(y * dy) for every tensor given, optionally cast first."""
    leaves = [None if t is None else (t if cast is None else t.to(cast)).detach().requires_grad_(True)
              for t in tensors]
    y = fn(*leaves)
    given = [t for t in leaves if t is not None]
    grads = torch.autograd.grad(y, given, dy.to(y.dtype))
    return y, list(grads)


def _torch_native(act, slope, pad=0):
    """PyTorch's own computation entirely in the input's dtype (the yardstick for bf16/fp16 error)."""
    def fn(x, w, b, r):
        y = F.instance_norm(x, weight=w, bias=b, eps=1e-5)
        y = F.relu(y) if act == "relu" else F.leaky_relu(y, slope) if act == "leaky_relu" else y
        y = F.pad(y, (pad,) * 4, mode="reflect") if pad else y
        return y if r is None else y + centre(r, y.shape)
    return fn


def _check_against_reference(shape, dtype, device, channels_last, affine, act, residual, pad=0, margin=0):
    slope = 0.2
    tensors, dy = _inputs(shape, dtype, device, channels_last, affine, residual, pad, margin)
    y, grads = _run(lambda x, w, b, r: instance_norm_act(x, w, b, act=act, negative_slope=slope, residual=r,
                                                         pad=pad, impl="triton"), tensors, dy)
    assert ops.last_impl("instance_norm_act") == "triton"
    y_ref, grads_ref = _run(lambda x, w, b, r: instance_norm_act_ref(x, w, b, act=act, negative_slope=slope,
                                                                     residual=r, pad=pad), tensors, dy, torch.float64)
    assert y.dtype == dtype and y.shape == _grown(shape, pad)
    assert y.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    if dtype != torch.float32:
        y_pt, grads_pt = _run(_torch_native(act, slope, pad), tensors, dy)
    names = ["y", "dx", "dweight", "dbias", "dresidual"]
    names = [n for n, t in zip(names, [tensors[0], *tensors]) if t is not None]
    for i, (name, got, ref) in enumerate(zip(names, [y, *grads], [y_ref, *grads_ref])):
        assert got.dtype == dtype, name
        err = (got.double() - ref).abs().max().item()
        scale = 1 + ref.abs().max().item()
        if dtype == torch.float32:
            tol = 1e-5 * scale
        else:
            pt = [y_pt, *grads_pt][i]
            tol = 2 * (pt.double() - ref).abs().max().item() + 2 * _ULP[dtype] * scale
        assert err <= tol, f"{name}: max error {err:.3g} > {tol:.3g}"


@pytest.fixture(params=["split", "fused", "rows"])
def norm_path(request, monkeypatch):
    """Runs a test through the split path (a launch per phase), the fused path (both phases in one launch; in the
    interpreter a launch per phase of the same kernel, on the fused path's grid) and the one-launch path (one
    program per row), whatever its shape's number of rows."""
    module = importlib.import_module("fastgan.ops.instance_norm_act")
    monkeypatch.setattr(module, "_ONE_LAUNCH_MIN_ROWS", 1 if request.param == "rows" else 2**62)
    monkeypatch.setattr(module, "_ONE_LAUNCH_STRIDED", request.param == "rows")  # channels_last rows too
    monkeypatch.setattr(module, "_FUSED", request.param == "fused")
    return request.param


@pytest.fixture(params=["split", "fused"])
def phases(request, monkeypatch):
    """Runs a padded-output test through the split and the fused path."""
    monkeypatch.setattr(importlib.import_module("fastgan.ops.instance_norm_act"), "_FUSED", request.param == "fused")
    return request.param


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("affine", [False, True], ids=["plain", "affine"])
@pytest.mark.parametrize("act", ["relu", "leaky_relu", "none"])
@pytest.mark.parametrize("residual", [False, True], ids=["", "residual"])
def test_matches_reference_small(triton_cpu, norm_path, dtype, channels_last, affine, act, residual):
    _check_against_reference((2, 3, 5, 7), dtype, "cpu", channels_last, affine, act, residual)


@pytest.mark.parametrize("shape", [
    (1, 4, 9, 11),  # odd sizes, one sample
    (2, 3, 37, 53),  # odd sizes from the issue
    (1, 2, 48, 48),  # 2304 > one 2048 tile: split over two programs, or two tiles per pass of one program
    (1, 70, 3, 4),  # channels beyond one channels_last block of 64
])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_matches_reference_odd_shapes(triton_cpu, norm_path, shape, dtype, channels_last):
    _check_against_reference(shape, dtype, "cpu", channels_last, True, "relu", True)


# The padded output (pad=: the reflection pad of a following convolution, written by the norm) and a residual
# larger than the output (the centre of a padded block input is added).
@pytest.mark.parametrize("shape, pad, margin", [
    ((2, 3, 5, 7), 1, None),  # a ResNet block's first norm
    ((2, 3, 5, 7), 1, 0),  # its second: residual = the padded block input
    ((2, 3, 5, 7), 0, 1),  # the last block's second: the output is not padded, the residual is
    ((1, 4, 9, 6), 3, None),  # the 7x7 output layer's pad
    ((1, 2, 4, 6), 3, 0),  # pad = H - 1: rows reflected from both sides onto the same source row
    ((2, 3, 2, 3), 1, 2),  # two rows only, a wide margin
    ((1, 70, 3, 4), 2, None),  # channels beyond one channels_last block of 64
])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("act, affine", [("relu", False), ("none", True), ("leaky_relu", True)])
def test_padded_output_matches_reference(triton_cpu, phases, shape, pad, margin, dtype, channels_last, act, affine):
    _check_against_reference(shape, dtype, "cpu", channels_last, affine, act, margin is not None, pad, margin or 0)


@pytest.mark.cuda
@pytest.mark.parametrize("shape, pad, margin", [
    ((2, 256, 64, 64), 1, None), ((2, 256, 64, 64), 1, 0), ((2, 256, 64, 64), 0, 1),  # ResNet blocks
    ((1, 64, 256, 256), 3, None),  # before the 7x7 output layer
])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_padded_output_matches_reference_cuda(shape, pad, margin, dtype, channels_last, poisoned_buffers):
    _check_against_reference(shape, dtype, "cuda", channels_last, False, "relu", margin is not None, pad, margin or 0)


def test_padded_output_several_tiles_and_pieces(triton_cpu, phases, monkeypatch):
    """Padded rows longer than one tile, in pieces that end mid-row: both grids (x's positions for the statistics
    and the backward, the padded output's for the forward's second pass)."""
    module = importlib.import_module("fastgan.ops.instance_norm_act")
    monkeypatch.setattr(module, "_MAX_SPLIT", 3)
    for channels_last in (False, True):
        _check_against_reference((1, 2, 61, 67), torch.float32, "cpu", channels_last, True, "relu", True, 3, 0)


def test_padded_output_any_residual_and_gradient_strides(triton_cpu):
    """The padded-output kernels read the residual and the incoming gradient through their own strides: NCHW ones
    for a channels_last x (no layout copy) give the reference."""
    x = torch.randn(2, 3, 6, 5).contiguous(memory_format=torch.channels_last).requires_grad_(True)
    r = torch.randn(2, 3, 8, 7, dtype=torch.float64, requires_grad=True)
    y = instance_norm_act(x, residual=r.float(), pad=1, impl="triton")
    y_ref = instance_norm_act_ref(x.double(), residual=r, pad=1)
    torch.testing.assert_close(y.double(), y_ref, atol=1e-5, rtol=1e-5)
    dy = torch.randn(2, 3, 8, 7, dtype=torch.float64)
    dx, dr = torch.autograd.grad(y, [x, r], dy.float())
    dx_ref, dr_ref = torch.autograd.grad(y_ref, [x, r], dy)
    torch.testing.assert_close(dx, dx_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(dr, dr_ref, atol=1e-6, rtol=1e-6)  # dy itself, rounded to fp32 and back


@pytest.mark.cuda
@pytest.mark.parametrize("shape", [
    (1, 64, 256, 256), (4, 64, 256, 256),  # CycleGAN generator, first block
    (1, 128, 128, 128), (4, 128, 128, 128),  # downsampled
    (1, 256, 64, 64), (4, 256, 64, 64),  # residual blocks
    (4, 128, 64, 64), (4, 512, 31, 31),  # PatchGAN-like
    (2, 3, 37, 53),  # odd
])  # rows (N * C) on both sides of _ONE_LAUNCH_MIN_ROWS: both paths
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("act,affine,residual", [("relu", False, False), ("none", True, True),
                                                 ("leaky_relu", True, False)])
def test_matches_reference_cuda(shape, dtype, channels_last, act, affine, residual, poisoned_buffers):
    _check_against_reference(shape, dtype, "cuda", channels_last, affine, act, residual)


@pytest.mark.parametrize("max_split", [1, 3], ids=["one_piece", "three_pieces"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_pieces_of_several_tiles(triton_cpu, phases, monkeypatch, max_split, channels_last):
    """Programs that loop over several tiles, the last tile partial or entirely past the end of the row."""
    module = importlib.import_module("fastgan.ops.instance_norm_act")
    monkeypatch.setattr(module, "_MAX_SPLIT", max_split)
    shape = (1, 2, 70, 90)  # 6300 positions: 4 tiles of 2048 (NCHW) or 7 of 1024 (NHWC)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    plan = module._plan(torch.empty(shape).contiguous(memory_format=fmt))
    assert plan["blocks"]["TILES"] > 1 and plan["split"] <= max_split
    _check_against_reference(shape, torch.float32, "cpu", channels_last, True, "leaky_relu", True)


@pytest.mark.parametrize("n,c_blocks,s,block_s,max_split", [
    (1, 1, 1, 2048, 1024),  # one element
    (1, 1, 6300, 2048, 3),  # capped split: 4 tiles in 3 pieces
    (4, 64, 65536, 2048, 1024),  # CycleGAN 4 x 64 x 256 x 256, NCHW
    (1, 1, 65536, 32, 1024),  # channels_last, one channel block
    (16, 256, 961, 2048, 1024),  # many rows: one piece each
])
def test_split_covers_each_row_once(n, c_blocks, s, block_s, max_split):
    split, tiles = _triton_util.split(n, c_blocks, s, block_s, max_split)
    assert tiles & (tiles - 1) == 0  # a power of two
    assert 1 <= split <= max_split
    assert (split - 1) * tiles * block_s < s <= split * tiles * block_s  # no empty piece, nothing left out


@pytest.mark.parametrize("shape", [(0, 3, 4, 5), (2, 0, 4, 5)], ids=["no_samples", "no_channels"])
@pytest.mark.parametrize("pad", [0, 1])
def test_empty_input(triton_cpu, norm_path, shape, pad):
    """No samples or no channels: an empty output of the right shape, and an empty gradient."""
    x = torch.randn(shape, requires_grad=True)
    y = instance_norm_act(x, pad=pad, impl="triton")
    assert y.shape == _grown(shape, pad)
    y.sum().backward()
    assert x.grad.shape == x.shape


def test_mixed_layouts_and_dtypes(triton_cpu, norm_path):
    """A residual in another layout and an NCHW dy for a channels_last x still give the reference."""
    x = torch.randn(2, 3, 6, 5).contiguous(memory_format=torch.channels_last).requires_grad_(True)
    r = torch.randn(2, 3, 6, 5, dtype=torch.float64)
    y = instance_norm_act(x, residual=r.float(), impl="triton")
    y_ref = instance_norm_act_ref(x.double(), residual=r)
    torch.testing.assert_close(y.double(), y_ref, atol=1e-5, rtol=1e-5)
    dy = torch.randn(2, 3, 6, 5)
    (dx,) = torch.autograd.grad(y, x, dy)
    (dx_ref,) = torch.autograd.grad(instance_norm_act_ref(x.double()), x, dy.double())
    torch.testing.assert_close(dx, dx_ref.float(), atol=1e-5, rtol=1e-5)


def test_deterministic(triton_cpu, norm_path):
    tensors, dy = _inputs((2, 3, 48, 48), torch.float32, "cpu", True, True, False)

    def grads():
        return _run(lambda x, w, b, r: instance_norm_act(x, w, b, impl="triton"), tensors, dy)[1]

    for a, b in zip(grads(), grads()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("impl", ["ref", "triton"])
def test_rejects_bad_input(triton_cpu, impl):
    with pytest.raises(ValueError, match="more than one spatial element"):
        instance_norm_act(torch.randn(1, 1, 1, 1), impl=impl)
    with pytest.raises(ValueError, match="x must be 4-D"):
        instance_norm_act(torch.randn(2, 3, 4), impl=impl)
    with pytest.raises(ValueError, match="weight must have shape"):
        instance_norm_act(torch.randn(1, 3, 4, 4), torch.ones(4), torch.zeros(3), impl=impl)
    with pytest.raises(ValueError, match="both"):
        instance_norm_act(torch.randn(1, 3, 4, 4), torch.ones(3), impl=impl)
    with pytest.raises(ValueError, match="act="):
        instance_norm_act(torch.randn(1, 3, 4, 4), act="gelu", impl=impl)
    with pytest.raises(ValueError, match="residual shape"):
        instance_norm_act(torch.randn(1, 3, 4, 4), residual=torch.randn(1, 3, 4, 5), impl=impl)
    with pytest.raises(ValueError, match="residual shape"):  # larger by an odd margin
        instance_norm_act(torch.randn(1, 3, 4, 4), residual=torch.randn(1, 3, 5, 5), impl=impl)
    with pytest.raises(ValueError, match="residual shape"):  # smaller than the padded output
        instance_norm_act(torch.randn(1, 3, 4, 4), residual=torch.randn(1, 3, 4, 4), pad=1, impl=impl)
    for pad in (-1, 4, 1.0, True, "1"):
        with pytest.raises(ValueError, match="pad="):
            instance_norm_act(torch.randn(1, 3, 4, 6), pad=pad, impl=impl)


def test_triton_rejects_what_it_cannot_take(triton_cpu):
    with pytest.raises(ValueError, match="x has dtype torch.float64"):
        instance_norm_act(torch.randn(1, 3, 4, 4, dtype=torch.float64), impl="triton")
    with pytest.raises(ValueError, match="x with shape .* neither contiguous nor channels_last"):
        instance_norm_act(torch.randn(1, 3, 4, 8)[..., ::2], impl="triton")


def test_reference_gradcheck():
    x = torch.randn(2, 2, 3, 4, dtype=torch.float64, requires_grad=True)
    w = torch.randn(2, dtype=torch.float64, requires_grad=True)
    b = torch.randn(2, dtype=torch.float64, requires_grad=True)
    r = torch.randn(2, 2, 3, 4, dtype=torch.float64, requires_grad=True)
    for act in ("relu", "leaky_relu", "none"):
        def fn(x, w, b, r, act=act):
            return instance_norm_act_ref(x, w, b, act=act, residual=r)

        assert torch.autograd.gradcheck(fn, (x, w, b, r), fast_mode=True)


def test_reference_matches_torch_modules():
    x = torch.randn(2, 3, 6, 7, dtype=torch.float64)
    norm = torch.nn.InstanceNorm2d(3, affine=True).double()
    torch.nn.init.normal_(norm.weight)
    torch.nn.init.normal_(norm.bias)
    torch.testing.assert_close(instance_norm_act_ref(x, norm.weight, norm.bias, act="leaky_relu"),
                               F.leaky_relu(norm(x), 0.2))


class _Block(torch.nn.Module):
    def __init__(self, impl):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.weight = torch.nn.Parameter(torch.randn(4))
        self.bias = torch.nn.Parameter(torch.randn(4))
        self.impl = impl

    def forward(self, x):
        h = self.conv(x)
        return instance_norm_act(h, self.weight, self.bias, act="leaky_relu", residual=h, impl=self.impl)


class _PaddedBlock(_Block):
    """The norm writing the next convolution's reflection pad; the residual a padded tensor whose centre is added."""

    def __init__(self, impl):
        super().__init__(impl)
        self.conv2 = torch.nn.Conv2d(4, 4, 3)

    def forward(self, x):
        h = self.conv(x)
        r = F.pad(h, (2,) * 4, mode="reflect")
        y = instance_norm_act(h, self.weight, self.bias, act="relu", residual=r, pad=1, impl=self.impl)
        return self.conv2(y)


def _compile_matches_eager(block, x, **compile_kwargs):
    compiled = torch.compile(block, fullgraph=True, **compile_kwargs)
    y = compiled(x)
    y.square().sum().backward()
    got = [y.detach()] + [p.grad.clone() for p in block.parameters()]
    block.zero_grad()
    y = block(x)
    y.square().sum().backward()
    want = [y.detach()] + [p.grad.clone() for p in block.parameters()]
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("block", [_Block, _PaddedBlock], ids=["plain", "padded"])
@pytest.mark.parametrize("impl", ["ref", "triton"])
def test_compile_cpu(triton_cpu, impl, block):
    """The custom op's fake implementation and autograd trace (aot_eager: no C++ compiler needed)."""
    torch._dynamo.reset()
    _compile_matches_eager(block(impl), torch.randn(2, 3, 5, 6), backend="aot_eager")


@pytest.mark.cuda
def test_compile_cuda():
    torch._dynamo.reset()
    x = torch.randn(2, 3, 32, 32, device="cuda").contiguous(memory_format=torch.channels_last)
    _compile_matches_eager(_Block("triton").cuda(), x)
    assert ops.last_impl("instance_norm_act") == "triton"


@pytest.mark.cuda
def test_cuda_graph_capture():
    x = torch.randn(2, 8, 32, 32, device="cuda", requires_grad=True)
    w = torch.randn(8, device="cuda", requires_grad=True)
    b = torch.randn(8, device="cuda", requires_grad=True)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        instance_norm_act(x, w, b, impl="triton").sum().backward()  # warm-up compiles the kernels
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y = instance_norm_act(x, w, b, impl="triton")
    x.data.copy_(torch.randn_like(x))
    graph.replay()
    y_ref = instance_norm_act_ref(x.detach(), w.detach(), b.detach())
    torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5)


@pytest.mark.cuda
@pytest.mark.parametrize("pad", [0, 1])
def test_fused_path_in_a_cuda_graph(pad):
    """The fused path's cooperative launches at a residual block's shape (bf16, channels_last, batch 1: each row's
    32 pieces meet at a barrier), forward and backward captured in a CUDA graph and replayed on new inputs: every
    launch leaves its barrier counters at zero, so every replay gives the reference again."""
    module = importlib.import_module("fastgan.ops.instance_norm_act")
    x = torch.randn(1, 256, 64, 64, device="cuda", dtype=torch.bfloat16)
    x = x.contiguous(memory_format=torch.channels_last).requires_grad_()
    plan = module._plan(x, rows_ok=pad == 0)
    assert plan["path"] == "fused" and plan["split"] > 1
    dy = torch.randn(_grown(tuple(x.shape), pad), device="cuda", dtype=torch.bfloat16)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):  # warm-up: compiles the kernels, zeroes the counters
            torch.autograd.grad(instance_norm_act(x, pad=pad, impl="triton"), x, dy)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y = instance_norm_act(x, pad=pad, impl="triton")
        dx, = torch.autograd.grad(y, x, dy)
    for _ in range(3):
        with torch.no_grad():
            x.copy_(torch.randn_like(x))
            dy.copy_(torch.randn_like(dy))
        graph.replay()
        x64 = x.detach().double().requires_grad_()
        y64 = instance_norm_act_ref(x64, pad=pad)
        dx64, = torch.autograd.grad(y64, x64, dy.double())
        torch.testing.assert_close(y.double(), y64, atol=3e-2, rtol=2e-2)
        torch.testing.assert_close(dx.double(), dx64, atol=3e-2, rtol=2e-2)
    assert not _triton_util.ticket_counter(x, 2 * 16).any()


@pytest.mark.parametrize("tiles", [1, 4])
@pytest.mark.parametrize("unit_stride", ["stride_c", "stride_s"], ids=["nhwc", "nchw"])
def test_kernels_compile_for_h100(sm90_ptx, unit_stride, tiles):
    block = dict(BLOCK_C=64, BLOCK_S=32) if unit_stride == "stride_c" else dict(BLOCK_C=1, BLOCK_S=2048)
    block["TILES"] = tiles
    module = importlib.import_module("fastgan.ops.instance_norm_act")
    fwd = dict(block, TILES_OUT=tiles, BLOCK_SPLIT=32, HAS_AFFINE=True, HAS_RESIDUAL=True, ACT=1, PADDED=False)
    bwd = dict(block, BLOCK_SPLIT=32, HAS_AFFINE=True, ACT=1, FOLD=False)
    ptx = {f"{name} phase {phase}": sm90_ptx(k, dict(options, PHASE=phase), unit_stride)
           for name, k, options in (("fwd", module._instance_norm_act_fwd_kernel, fwd),
                                    ("bwd", module._instance_norm_act_bwd_kernel, bwd))
           for phase in (0, 1, 2)}
    # The padded output's kernels (pad > 0): the normalise phase over the padded plane and the folding backward.
    padded = {f"{name} phase {phase}": sm90_ptx(k, dict(options, PHASE=phase), unit_stride)
              for name, k, options in (("fwd", module._instance_norm_act_fwd_kernel, dict(fwd, PADDED=True)),
                                       ("bwd", module._instance_norm_act_bwd_kernel, dict(bwd, FOLD=True)))
              for phase in (0, 2)}
    row = dict(BLOCK_S=2048, TILES=tiles)
    rows = {  # the one-launch kernels: one channel per program, so 128-bit accesses only in NCHW
        "row_fwd": sm90_ptx(module._instance_norm_act_row_fwd_kernel,
                            dict(row, HAS_AFFINE=True, HAS_RESIDUAL=True, ACT=2), unit_stride),
        "row_bwd": sm90_ptx(module._instance_norm_act_row_bwd_kernel, dict(row, HAS_AFFINE=True, ACT=1),
                            unit_stride),
    }
    if unit_stride == "stride_s":
        for name, code in rows.items():
            assert "ld.global.v4" in code, name
        assert "st.global.v4" in rows["row_fwd"] and "st.global.v4" in rows["row_bwd"]
    # 128-bit loads and stores along the contiguous dim (channels for NHWC), as a copy kernel would issue;
    # phase 1 stores only per-channel partial sums.
    for name, code in ptx.items():
        assert "ld.global.v4" in code, name
        if not name.endswith("phase 1"):
            assert "st.global.v4" in code, name
    # Phase 0's barrier (_triton_util.group_barrier): a release add, acquire loads until the row has arrived, and
    # the pieces' sums read from L2 after it (.cg: never a line this SM's L1 kept from before the others stored).
    for name, code in {**ptx, **padded}.items():
        barrier = ("atom.global.gpu.release.add" in code, "ld.global.gpu.acquire" in code)
        assert barrier == ((True, True) if name.endswith("phase 0") else (False, False)), name
        if not name.endswith("phase 1"):
            assert "ld.global.cg" in code, name


@pytest.mark.parametrize("rows", [64, 256], ids=["few_rows", "many_rows"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("affine", [False, True], ids=["plain", "affine"])
@pytest.mark.parametrize("fused", [False, True], ids=["split", "fused"])
def test_launches_per_direction(monkeypatch, fused, affine, channels_last, rows):
    """One kernel per direction: from _ONE_LAUNCH_MIN_ROWS rows on where rows are contiguous (NCHW; see
    _ONE_LAUNCH_STRIDED) one program per row, otherwise the fused path (phase 0, a cooperative launch where
    rows have several pieces). Two with the fused path off, the pieces' partial sums summed by the phase that
    reads them (no separate sum launch). A non-affine norm computes no weight or bias gradient at all."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from fastgan.testing.specialisations import record_launches

    class AtenLaunches(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            aten = torch.ops.aten
            if not func.is_view and func not in (aten.empty.memory_format, aten.new_empty.default,
                                                 aten.empty_strided.default, aten.empty_like.default):
                self.ops.append(str(func))
            return func(*args, **(kwargs or {}))

    module = importlib.import_module("fastgan.ops.instance_norm_act")
    monkeypatch.setattr(module, "_FUSED", fused)
    assert (rows >= module._ONE_LAUNCH_MIN_ROWS) == (rows == 256)
    x = torch.empty(1, rows, 32, 32)
    x = x.contiguous(memory_format=torch.channels_last) if channels_last else x
    w, b = (torch.ones(rows), torch.zeros(rows)) if affine else (None, None)
    stats = torch.zeros(1, rows)
    runs = {"forward": lambda: module._instance_norm_act_fwd(x, w, b, None, "relu", 0.2, 1e-5, 0),
            "backward": lambda: module._instance_norm_act_bwd(x, x, w, b, stats, stats, "relu", 0.2, 0)}
    one_program_per_row = rows == 256 and not channels_last
    for direction, run in runs.items():
        launches = []
        with record_launches(launches), AtenLaunches() as aten:
            run()
        assert len(launches) == (1 if one_program_per_row or fused else 2), direction
        if fused and not one_program_per_row:
            launch, = launches
            assert launch.kwargs["PHASE"] == 0
            assert launch.kwargs["launch_cooperative_grid"] == (launch.grid[0] > 1)
        # The weight and bias gradients of an affine norm: one fixed-order sum each.
        assert aten.ops == (["aten.sum.dim_IntList"] * 2 if affine and direction == "backward" else []), direction


# (shape, bf16, backward pad or None for the forward) -> (path, BLOCK_C) on the model H100 (132 SMs, 50 MiB L2)
@pytest.mark.parametrize("shape, pad, expected", [
    ((1, 256, 64, 64), None, ("fused", 16)),  # a CycleGAN residual block at batch 1: narrow blocks, more rows
    ((3, 256, 64, 64), 1, ("fused", 32)),  # at batch 3, the backward of a padded output: x and dy fit
    ((3, 64, 256, 256), None, ("fused", 16)),  # G_A's first norm at batch 3: 25 MB fits half the L2
    ((3, 64, 256, 256), 1, ("split", 64)),  # ...its backward (x and dy, 51 MB) does not
    ((12, 64, 256, 256), None, ("split", 64)),  # batch 12 (CycleGAN bs4) forward: 101 MB
    ((1024, 64, 8, 8), None, ("fused", 64)),  # 1024 rows, more than run at once: one piece each, no barrier
])
def test_fused_plan(shape, pad, expected):
    module = importlib.import_module("fastgan.ops.instance_norm_act")
    x = torch.empty(shape, dtype=torch.bfloat16).contiguous(memory_format=torch.channels_last)
    carried = None if pad is None else 2 + 2 * (shape[2] + 2 * pad) * (shape[3] + 2 * pad) / (shape[2] * shape[3])
    plan = module._plan(x, rows_ok=pad is None, backward_pad=pad, carried=carried)
    assert (plan["path"], plan["blocks"]["BLOCK_C"]) == expected
    programs = plan["grid"][0] * plan["grid"][1] * plan["grid"][2]
    if plan["path"] == "fused" and plan["split"] > 1:  # every program of the grid running at once
        assert programs <= _triton_util.MODEL_SMS * _triton_util.COOPERATIVE_PROGRAMS_PER_SM
    if plan["path"] == "fused" and shape[0] == 1024:
        assert plan["split"] == 1 and programs == 1024


def test_fused_path_without_a_barrier(triton_cpu, monkeypatch):
    """More rows than programs run at once (a one-SM GPU here): one piece per row, the phases in one program with
    no barrier, and no cooperative launch."""
    module = importlib.import_module("fastgan.ops.instance_norm_act")
    monkeypatch.setattr(_triton_util, "device_limits", lambda x: (1, 2**40))
    for shape, channels_last in (((2, 3, 48, 48), False), ((3, 70, 12, 12), True)):  # 6 rows, 4 programs
        x = torch.empty(shape).contiguous(memory_format=torch.channels_last if channels_last else
                                          torch.contiguous_format)
        plan = module._plan(x)
        assert plan["path"] == "fused" and plan["split"] == 1 and plan["blocks"]["TILES"] > 1
        _check_against_reference(shape, torch.float32, "cpu", channels_last, True, "leaky_relu", True)
        _check_against_reference(shape, torch.float32, "cpu", channels_last, False, "relu", False, 1)


def test_pieces_not_a_power_of_two(triton_cpu, phases):
    """Six pieces per row on the split path (eleven on the fused one, whose fp32 tiles are half as long): the
    consuming phase reads a block of eight (sixteen) partial sums, two (five) of them masked off."""
    module = importlib.import_module("fastgan.ops.instance_norm_act")
    shape = (1, 2, 97, 107)  # 10379 positions: six NCHW tiles of 2048 (eleven of 1024), one piece each
    plan = module._plan(torch.empty(shape))
    assert plan["path"] == phases
    assert (plan["split"], plan["sums"]["BLOCK_SPLIT"]) == ((6, 8) if phases == "split" else (11, 16))
    _check_against_reference(shape, torch.float32, "cpu", False, False, "relu", True)
