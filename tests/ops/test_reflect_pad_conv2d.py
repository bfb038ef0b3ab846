"""reflect_pad_conv2d: the compiled extension (fastgan._C) against the float64 F.pad + F.conv2d reference.

On CPU the extension is reached with impl="cuda" (its C++ CPU kernel); under impl="auto" CPU tensors take
the reference. Tests of the extension skip, saying why, when it is not built.
"""

import contextlib
import subprocess
import sys

import pytest
import torch

import fastgan.ops
from fastgan.ops import _dispatch, reflect_pad_conv2d, reflect_pad_conv2d_ref

rpc = sys.modules["fastgan.ops.reflect_pad_conv2d"]
needs_ext = pytest.mark.skipif(rpc._EXT_ERROR is not None, reason=f"fastgan._C not built: {rpc._EXT_ERROR}")
OP = "reflect_pad_conv2d"


@pytest.fixture(autouse=True, scope="module")
def _one_cpu_thread():
    """These tensors are tiny: with intra-op threads on a loaded 2-core CI machine, OpenMP spin-waiting
    makes each convolution ~100x slower than single-threaded."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@contextlib.contextmanager
def _poisoned():
    """Every at::empty (outputs, the pad workspace, dx) comes back filled with NaN, so an element a
    kernel forgets to write fails the comparison. Only around the extension: on CUDA the reference's
    reflection_pad2d_backward refuses to run in deterministic mode."""
    old = torch.are_deterministic_algorithms_enabled(), torch.utils.deterministic.fill_uninitialized_memory
    torch.use_deterministic_algorithms(True)
    torch.utils.deterministic.fill_uninitialized_memory = True
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(old[0])
        torch.utils.deterministic.fill_uninitialized_memory = old[1]


@pytest.fixture
def poisoned_empty():
    with _poisoned():
        yield


def _inputs(n, c_in, c_out, k, h, w, bias, dtype=torch.float32, device="cpu", channels_last=False):
    x = torch.randn(n, c_in, h, w, dtype=dtype, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    weight = torch.randn(c_out, c_in, k, k, dtype=dtype, device=device) / (c_in * k * k) ** 0.5
    b = torch.randn(c_out, dtype=dtype, device=device) if bias else None
    return x, weight, b


def _run(fn, x, weight, bias, grad_out, **kw):
    """Output and the gradients of every input, all detached."""
    leaves = [t.detach().clone().requires_grad_(True) if t is not None else None for t in (x, weight, bias)]
    y = fn(*leaves, **kw)
    y.backward(grad_out)
    return [y.detach()] + [t.grad for t in leaves if t is not None]


def _reference64(x, weight, bias, grad_out, padding, stride):
    as64 = [t.double() if t is not None else None for t in (x, weight, bias)]
    return _run(reflect_pad_conv2d_ref, *as64, grad_out.double(), padding=padding, stride=stride)


# Every kernel size the CycleGAN/ResNet generators use plus an even one, both strides, padding 0-3, on an
# odd-sized input (9x11) so the top/bottom and left/right reflections differ.
@needs_ext
@pytest.mark.parametrize("k", [1, 3, 4, 7])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("padding", [0, 1, 2, 3])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_matches_float64_reference(k, stride, padding, channels_last, bias, poisoned_empty):
    x, weight, b = _inputs(2, 3, 5, k, 9, 11, bias, channels_last=channels_last)
    y_shape = reflect_pad_conv2d_ref(x, weight, b, padding, stride).shape
    grad_out = torch.randn(y_shape)
    got = _run(reflect_pad_conv2d, x, weight, b, grad_out, padding=padding, stride=stride, impl="cuda")
    assert fastgan.ops.last_impl(OP) == "cuda"
    want = _reference64(x, weight, b, grad_out, padding, stride)
    for name, g, r in zip(["y", "dx", "dweight", "dbias"], got, want):
        assert g.dtype == torch.float32, name
        torch.testing.assert_close(g.double(), r, rtol=1e-4, atol=1e-4,
                                   msg=lambda m, name=name: f"{name}: {m}")
    if channels_last:  # the output and dx keep x's layout
        assert got[0].is_contiguous(memory_format=torch.channels_last)
        assert got[1].is_contiguous(memory_format=torch.channels_last)


# Shapes at the edge of the reflection: 1-pixel-wide after padding 0, padding = size - 1, 1x1 spatial,
# channels that are not a multiple of any vector width, and a non-contiguous (sliced) input.
@needs_ext
@pytest.mark.parametrize(
    "n, c_in, c_out, k, h, w, padding, stride",
    [
        (1, 1, 1, 1, 1, 1, 0, 1),  # minimal
        (1, 2, 3, 3, 2, 5, 1, 1),  # padding = H - 1
        (3, 7, 2, 7, 4, 4, 3, 2),  # padding = size - 1 with the largest kernel
        (2, 13, 6, 4, 5, 3, 2, 2),  # even kernel, odd channels, W < H
    ],
)
def test_edge_shapes(n, c_in, c_out, k, h, w, padding, stride, poisoned_empty):
    x, weight, b = _inputs(n, c_in, c_out, k, h, w, True, dtype=torch.float64)
    grad_out = torch.randn(reflect_pad_conv2d_ref(x, weight, b, padding, stride).shape, dtype=torch.float64)
    got = _run(reflect_pad_conv2d, x, weight, b, grad_out, padding=padding, stride=stride, impl="cuda")
    want = _reference64(x, weight, b, grad_out, padding, stride)
    for g, r in zip(got, want):
        torch.testing.assert_close(g, r, rtol=1e-12, atol=1e-12)


@needs_ext
def test_non_contiguous_input():
    x = torch.randn(2, 4, 12, 10, dtype=torch.float64)[:, ::2, 1:, ::2]  # [2, 2, 11, 5], strided
    weight = torch.randn(3, 2, 3, 3, dtype=torch.float64)
    grad_out = torch.randn(2, 3, 11, 5, dtype=torch.float64)
    got = _run(reflect_pad_conv2d, x, weight, None, grad_out, padding=1, impl="cuda")
    want = _reference64(x, weight, None, grad_out, 1, 1)
    for g, r in zip(got, want):
        torch.testing.assert_close(g, r, rtol=1e-12, atol=1e-12)


@needs_ext
@pytest.mark.parametrize("k, padding, stride", [(3, 1, 1), (4, 2, 2), (7, 3, 1)])
def test_gradcheck_float64(k, padding, stride):
    x, weight, b = (t.requires_grad_(True) for t in _inputs(1, 2, 2, k, 5, 6, True, dtype=torch.float64))
    for fn, kw in [(reflect_pad_conv2d, {"impl": "cuda"}), (reflect_pad_conv2d_ref, {})]:
        assert torch.autograd.gradcheck(lambda *a, fn=fn, kw=kw: fn(*a, padding=padding, stride=stride, **kw),
                                        (x, weight, b), fast_mode=True)


@needs_ext
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("mask", [(True, True, True), (True, False, False), (False, True, True),
                                  (False, False, True)])
def test_meta_kernels_match_real(channels_last, mask):
    x, weight, _ = _inputs(2, 3, 4, 3, 7, 6, False, channels_last=channels_last)
    real = torch.ops.fastgan.reflect_pad_conv2d(x, weight, None, 2, 2)
    fake = torch.ops.fastgan.reflect_pad_conv2d(x.to("meta"), weight.to("meta"), None, 2, 2)
    assert (fake.shape, fake.stride(), fake.dtype) == (real.shape, real.stride(), real.dtype)
    grad_out = torch.randn_like(real)
    real_grads = torch.ops.fastgan.reflect_pad_conv2d_backward(grad_out, x, weight, 2, 2, list(mask))
    fake_grads = torch.ops.fastgan.reflect_pad_conv2d_backward(
        grad_out.to("meta"), x.to("meta"), weight.to("meta"), 2, 2, list(mask))
    for wanted, r, f in zip(mask, real_grads, fake_grads):
        assert (r is None) == (f is None) == (not wanted)
        if wanted:
            assert (f.shape, f.stride(), f.dtype) == (r.shape, r.stride(), r.dtype)


@needs_ext
def test_opcheck_and_compile():
    """torch.library.opcheck: schema, fake tensors, autograd registration, AOT dispatch; then a full-graph
    torch.compile (aot_eager, so no codegen) of forward + backward."""
    x, weight, b = _inputs(2, 3, 4, 3, 7, 6, True)
    x.requires_grad_(True)
    weight.requires_grad_(True)
    torch.library.opcheck(torch.ops.fastgan.reflect_pad_conv2d.default, (x, weight, b, 2, 2))

    def step(x, w, b):
        return reflect_pad_conv2d(x, w, b, 1, 2, impl="cuda").square().sum()

    compiled = torch.compile(step, backend="aot_eager", fullgraph=True)
    got = torch.autograd.grad(compiled(x, weight, b), (x, weight))
    want = torch.autograd.grad(step(x, weight, b), (x, weight))
    for g, r in zip(got, want):
        torch.testing.assert_close(g, r)


# The op's autograd is registered in C++: a caller that never imports fastgan.ops (torch.ops users, the
# CMake library through torch.ops.load_library) gets the same gradients. Subprocesses, so the import order
# is real. The script checks every gradient against F.pad + F.conv2d in float64, double backward included.
_GRAD_SCRIPT = """
import sys
import torch
{load}
assert "fastgan.ops" not in sys.modules, "the test must not import fastgan.ops"
import torch.nn.functional as F
torch.manual_seed(0)
x = torch.randn(2, 5, 13, 11, dtype=torch.float64, requires_grad=True)
w = torch.randn(6, 5, 3, 3, dtype=torch.float64, requires_grad=True)
b = torch.randn(6, dtype=torch.float64, requires_grad=True)
y = torch.ops.fastgan.reflect_pad_conv2d(x, w, b, 1, 1)
g = torch.randn_like(y)
got = torch.autograd.grad((y * g).sum(), (x, w, b), create_graph=True)
penalty = sum(t.square().sum() for t in got[:2])  # double backward, as a gradient penalty takes it
got2 = torch.autograd.grad(penalty, (x, w))
yr = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), w, b)
want = torch.autograd.grad((yr * g).sum(), (x, w, b), create_graph=True)
want2 = torch.autograd.grad(sum(t.square().sum() for t in want[:2]), (x, w))
torch.testing.assert_close(y, yr, rtol=1e-12, atol=1e-12)
for name, a, r in zip(["x", "w", "b", "x (double)", "w (double)"], got + got2, want + want2):
    torch.testing.assert_close(a, r, rtol=1e-12, atol=1e-12, msg=lambda m, name=name: name + ": " + m)
y = torch.ops.fastgan.reflect_pad_conv2d(x, w, None, 1, 1)  # the issue's snippet: x.grad after backward()
y.sum().backward()
x_grad = x.grad.clone(); x.grad = None
F.conv2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), w).sum().backward()
torch.testing.assert_close(x_grad, x.grad, rtol=1e-12, atol=1e-12)
print("ok")
"""


@needs_ext
@pytest.mark.parametrize("load", [
    "import fastgan._C",  # the compiled module alone, without fastgan.ops
    "torch.ops.load_library({path!r})",  # the library file, as the CMake library is loaded; fastgan not imported
], ids=["import_C", "load_library"])
def test_gradient_without_fastgan_ops(load):
    path = sys.modules["fastgan._C"].__file__
    code = _GRAD_SCRIPT.format(load=load.format(path=path))
    if "load_library" in load:
        code = code.replace('"fastgan.ops" not in sys.modules', '"fastgan" not in sys.modules')
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-3000:]


@needs_ext
@pytest.mark.parametrize("padding, stride, bias", [(1, 1, True), (2, 2, False)])
def test_gradgradcheck_float64(padding, stride, bias):
    x, weight, b = _inputs(1, 2, 3, 3, 5, 4, bias, dtype=torch.float64)
    args = [t.requires_grad_(True) for t in (x, weight, b) if t is not None]

    def fn(x, weight, *b):
        return torch.ops.fastgan.reflect_pad_conv2d(x, weight, b[0] if b else None, padding, stride)

    assert torch.autograd.gradgradcheck(fn, args)


@needs_ext
def test_backward_op_opcheck():
    """The backward op has its own Autograd kernel (double backward), checked like the forward."""
    x, weight, _ = _inputs(2, 3, 4, 3, 7, 6, False)
    grad_out = torch.randn(2, 4, 5, 4)  # padding 2, stride 2: (7 + 4 - 3) // 2 + 1, (6 + 4 - 3) // 2 + 1
    for t in (grad_out, x, weight):
        t.requires_grad_(True)
    for mask in ([True, True, True], [True, False, False], [False, True, False]):
        torch.library.opcheck(torch.ops.fastgan.reflect_pad_conv2d_backward.default,
                              (grad_out, x, weight, 2, 2, mask))


def test_dispatch_refuses_a_build_without_autograd(monkeypatch):
    """A library built before the C++ autograd registration would train nothing: impl="cuda" refuses it."""
    monkeypatch.setattr(rpc, "_EXT_ERROR", None)
    monkeypatch.setattr(rpc, "_EXT_HAS_AUTOGRAD", False)
    with pytest.raises(RuntimeError, match="no autograd kernel for reflect_pad_conv2d"):
        _dispatch.resolve(OP, "cuda", torch.device("cpu"))


# Each argument error names the argument.
@needs_ext
@pytest.mark.parametrize(
    "case, match",
    [
        ("padding_ge_height", r"padding=3 must be smaller than the input height and width \(3x8\)"),
        ("negative_padding", "padding must be >= 0"),
        ("dtype_mismatch", "weight has dtype Double but x has Float"),
        ("bias_dtype", "bias has dtype Half but x has Float"),
        ("x_rank", "x must be 4-D"),
        ("weight_rank", "weight must be 4-D"),
        ("bias_shape", r"bias must be \[4\]"),
        ("groups", "groups are unsupported"),
        ("channels", "weight has 2 input channels but x has 3"),
        ("not_square", "kernel must be square, got 3x1"),
        ("kernel_too_big", "kernel size must be 1..7, got 9"),
        ("stride", "stride must be 1 or 2, got 3"),
        ("int_dtype", "x has dtype Int"),
        ("kernel_vs_input", "smaller than the kernel"),
    ],
)
def test_argument_errors(case, match):
    x = torch.randn(1, 3, 3, 8)
    weight = torch.randn(4, 3, 3, 3)
    bias, padding, stride = None, 1, 1
    if case == "padding_ge_height":
        padding = 3
    elif case == "negative_padding":
        padding = -1
    elif case == "dtype_mismatch":
        weight = weight.double()
    elif case == "bias_dtype":
        bias = torch.zeros(4, dtype=torch.half)
    elif case == "x_rank":
        x = x[0]
    elif case == "weight_rank":
        weight = weight[0]
    elif case == "bias_shape":
        bias = torch.zeros(5)
    elif case == "groups":
        x = torch.randn(1, 6, 3, 8)
    elif case == "channels":
        weight = torch.randn(4, 2, 3, 3)
    elif case == "not_square":
        weight = torch.randn(4, 3, 3, 1)
    elif case == "kernel_too_big":
        x, weight, padding = torch.randn(1, 3, 9, 9), torch.randn(4, 3, 9, 9), 4
    elif case == "stride":
        stride = 3
    elif case == "int_dtype":
        x, weight = x.int(), weight.int()
    elif case == "kernel_vs_input":
        x, weight, padding = torch.randn(1, 3, 2, 2), torch.randn(4, 3, 5, 5), 1
    with pytest.raises(ValueError, match=match):
        reflect_pad_conv2d(x, weight, bias, padding, stride, impl="cuda")
    with pytest.raises(ValueError, match=match):  # the Meta kernel checks the same
        torch.ops.fastgan.reflect_pad_conv2d(x.to("meta"), weight.to("meta"),
                                             None if bias is None else bias.to("meta"), padding, stride)


@needs_ext
@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_backward_grad_out_shape_error(device):
    x, weight = torch.randn(2, 3, 7, 6, device=device), torch.randn(4, 3, 3, 3, device=device)
    with pytest.raises(ValueError, match=r"grad_out must be the output's shape \[2, 4, 5, 4\], got \[2, 4, 4, 3\]"):
        torch.ops.fastgan.reflect_pad_conv2d_backward(torch.randn(2, 4, 4, 3, device=device), x, weight, 2, 2,
                                                      [True, True, False])


@needs_ext
def test_device_mismatch_error():
    x, weight = torch.randn(1, 3, 4, 4), torch.randn(2, 3, 3, 3, device="meta")
    with pytest.raises(ValueError, match="weight is on meta but x is on cpu"):
        torch.ops.fastgan.reflect_pad_conv2d(x, weight, None, 1, 1)


def test_dispatch_auto_on_cpu_uses_reference():
    x, weight, b = _inputs(1, 2, 3, 3, 5, 5, True)
    y = reflect_pad_conv2d(x, weight, b)
    assert fastgan.ops.last_impl(OP) == "ref"
    torch.testing.assert_close(y, reflect_pad_conv2d_ref(x, weight, b))
    reflect_pad_conv2d(x, weight, b, impl="ref")
    assert fastgan.ops.last_impl(OP) == "ref"
    # One impl vocabulary: "triton" is a known impl, but not one this op has; the error names its fast path.
    with pytest.raises(RuntimeError, match="fast path is 'cuda'"):
        reflect_pad_conv2d(x, weight, b, impl="triton")


def test_dispatch_without_extension(monkeypatch):
    """A missing extension: impl="cuda" raises naming the reason, impl="auto" on CUDA would warn and fall
    back, and available() lists only the reference."""
    monkeypatch.setattr(rpc, "_EXT_ERROR", "the compiled extension fastgan._C is not importable (test)")
    x, weight, _ = _inputs(1, 2, 3, 3, 5, 5, False)
    with pytest.raises(RuntimeError, match="impl='cuda' cannot run on cpu: the compiled extension"):
        reflect_pad_conv2d(x, weight, impl="cuda")
    assert fastgan.ops.available()[OP] == ["ref"]
    assert _dispatch.resolve(OP, "auto", torch.device("cpu")) == "ref"
    with pytest.warns(UserWarning, match="reflect_pad_conv2d falls back to the reference path"):
        monkeypatch.setattr(_dispatch, "_WARNED", set())
        assert _dispatch.resolve(OP, "auto", torch.device("cuda")) == "ref"


def test_import_without_extension_does_not_crash():
    code = ("import sys; sys.modules['fastgan._C'] = None\n"  # makes `from .. import _C` raise ImportError
            "import fastgan.ops as ops\n"
            "assert ops.available()['reflect_pad_conv2d'] == ['ref'], ops.available()\n"
            "import torch\n"
            "x = torch.randn(1, 2, 4, 4); w = torch.randn(3, 2, 3, 3)\n"
            "ops.reflect_pad_conv2d(x, w)\n"
            "assert ops.last_impl('reflect_pad_conv2d') == 'ref'\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


@needs_ext
def test_extension_reports_its_cpu_kernel():
    assert rpc.extension_check(torch.device("cpu")) is None
    assert "cuda" in fastgan.ops.available()[OP]


# CUDA: the CycleGAN generator's reflection-padded convolutions at 256x256 (c7s1-64 stem, a 3x3 256->256
# residual-block conv at 64x64, the c7s1-3 head), plus odd sizes.
CYCLEGAN_SHAPES = [
    pytest.param(1, 3, 64, 7, 256, 256, 3, id="stem_7x7_3to64_256"),
    pytest.param(4, 256, 256, 3, 64, 64, 1, id="resblock_3x3_256_64"),
    pytest.param(1, 64, 3, 7, 256, 256, 3, id="head_7x7_64to3_256"),
    pytest.param(3, 24, 40, 3, 37, 53, 1, id="odd_37x53"),
]


def _max_err(a, ref):
    return (a.double() - ref).abs().max().item()


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("channels_last", [True, False], ids=["nhwc", "nchw"])
@pytest.mark.parametrize("n, c_in, c_out, k, h, w, padding", CYCLEGAN_SHAPES)
def test_cuda_low_precision(n, c_in, c_out, k, h, w, padding, channels_last, dtype):
    x, weight, b = _inputs(n, c_in, c_out, k, h, w, True, device="cuda", channels_last=channels_last)
    grad_out = torch.randn(reflect_pad_conv2d_ref(x, weight, b, padding).shape, device="cuda")
    low = [t.to(dtype) for t in (x, weight, b)]
    with _poisoned():
        got = _run(reflect_pad_conv2d, *low, grad_out.to(dtype), padding=padding, impl="cuda")
    assert fastgan.ops.last_impl(OP) == "cuda"
    torch_low = _run(reflect_pad_conv2d_ref, *low, grad_out.to(dtype), padding=padding)
    want = _reference64(*low, grad_out.to(dtype), padding, 1)
    for name, g, t, r in zip(["y", "dx", "dweight", "dbias"], got, torch_low, want):
        assert g.dtype == dtype, name
        floor = 1e-3 * r.abs().max().item()
        assert _max_err(g, r) <= 2 * _max_err(t, r) + floor, name


@pytest.mark.cuda
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("channels_last", [True, False], ids=["nhwc", "nchw"])
@pytest.mark.parametrize("n, c_in, c_out, k, h, w, padding", CYCLEGAN_SHAPES[1:])
def test_cuda_fp32(n, c_in, c_out, k, h, w, padding, channels_last, stride):
    x, weight, b = _inputs(n, c_in, c_out, k, h, w, True, device="cuda", channels_last=channels_last)
    grad_out = torch.randn(reflect_pad_conv2d_ref(x, weight, b, padding, stride).shape, device="cuda")
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False), _poisoned():
        got = _run(reflect_pad_conv2d, x, weight, b, grad_out, padding=padding, stride=stride, impl="cuda")
    want = _reference64(x, weight, b, grad_out, padding, stride)
    for g, r in zip(got, want):
        torch.testing.assert_close(g.double(), r, rtol=1e-4, atol=1e-4 * r.abs().max().item())


@pytest.mark.cuda
def test_cuda_backward_is_deterministic_and_graph_capturable():
    x, weight, b = _inputs(2, 64, 64, 3, 33, 31, True, device="cuda", channels_last=True)
    x, weight, b = (t.to(torch.bfloat16).requires_grad_(True) for t in (x, weight, b))
    grad_out = torch.randn(2, 64, 33, 31, device="cuda", dtype=torch.bfloat16)

    def grads():
        y = reflect_pad_conv2d(x, weight, b, 1, impl="cuda")
        return torch.autograd.grad(y, x, grad_out)[0]

    first = grads()
    torch.testing.assert_close(grads(), first, rtol=0, atol=0)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm-up (cuDNN algorithm choice) outside the capture
        grads()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = grads()
    graph.replay()
    torch.cuda.synchronize()
    torch.testing.assert_close(captured, first, rtol=0, atol=0)


def test_dispatch_extension_without_cuda_kernels(monkeypatch):
    """A C++-only build (no CUDA toolkit at build time) refuses an explicit impl="cuda" on a GPU."""
    monkeypatch.setattr(rpc, "_EXT_ERROR", None)
    monkeypatch.setattr(rpc, "_EXT_DEVICE_TYPES", frozenset({"cpu"}))
    with pytest.raises(RuntimeError, match="fastgan._C has no CUDA kernel"):
        _dispatch.resolve(OP, "cuda", torch.device("cuda"))
    assert _dispatch.resolve(OP, "cuda", torch.device("cpu")) == "cuda"
