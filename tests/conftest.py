import pytest
import torch

# Tiny CPU tensors are far slower with several threads on a shared 2-core machine (seen: 16 s vs 1 s for
# three small CycleGAN steps); one thread keeps the suite's time predictable.
torch.set_num_threads(1)

# torch.jit's table of builtins maps id(fn) to an operator without holding fn (torch.jit._builtins._register_builtin,
# called for each operator torch.ops resolves). When an operator gains an overload (importing
# torch.ao.quantization.fx._decomposed, as the export tests' torch.export and ONNX paths do, adds two overloads to
# quantized_decomposed::quantize_per_tensor and to dequantize_per_tensor), torch resolves it again and frees the
# old object, and its id stays in the table; a later object at that address (seen: a deep-copied Conv2d's
# _reversed_padding_repeated_twice) is then taken for that builtin by torch.jit.script ("builtin cannot be used as
# a value"), depending on where the allocator puts it. Holding every registered function keeps its id its own.
_REGISTERED_BUILTINS = []
_register_builtin = torch.jit._builtins._register_builtin


def _register_builtin_held(fn, op):
    _REGISTERED_BUILTINS.append(fn)
    _register_builtin(fn, op)


torch.jit._builtins._register_builtin = _register_builtin_held


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def poisoned_buffers(monkeypatch):
    """Every buffer the Triton launchers allocate (outputs, statistics, partial sums) starts as NaN, so an
    element a kernel fails to write fails the test."""
    from fastgan.ops import _triton_util

    monkeypatch.setattr(_triton_util, "empty_like",
                        lambda x, dtype=None: torch.full_like(x, float("nan"), dtype=dtype))
    monkeypatch.setattr(_triton_util, "empty",
                        lambda shape, dtype, device: torch.full(shape, float("nan"), dtype=dtype, device=device))
    real_shaped_like = _triton_util.empty_shaped_like
    monkeypatch.setattr(_triton_util, "empty_shaped_like",
                        lambda x, shape: real_shaped_like(x, shape).fill_(float("nan")))


@pytest.fixture
def triton_cpu(monkeypatch, poisoned_buffers):
    """Runs Triton kernels on CPU tensors through the interpreter, with every kernel buffer poisoned."""
    pytest.importorskip("triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
