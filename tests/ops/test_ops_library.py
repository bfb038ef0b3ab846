"""FASTGAN_OPS_LIBRARY: the CMake library fastgan_ops, loaded with torch.ops.load_library instead of the
extension fastgan._C, serves fastgan.ops.reflect_pad_conv2d exactly as the extension does, forward and every
gradient (the autograd formula attaches either way), on poisoned outputs.

The library comes from $FASTGAN_TEST_OPS_LIBRARY, else build/cmake/ or build/cmake-cuda/ (README's CMake
commands); CI's cmake and cmake-cuda stages run this file against the library they have just built. Both
cannot live in one process (two TORCH_LIBRARY(fastgan) blocks), so the library runs in a child process on
the same inputs.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fastgan.ops import _extension, reflect_pad_conv2d

ROOT = Path(__file__).resolve().parents[2]
rpc = sys.modules["fastgan.ops.reflect_pad_conv2d"]


def _library() -> Path | None:
    given = os.environ.get("FASTGAN_TEST_OPS_LIBRARY")
    if given:
        assert Path(given).is_file(), f"FASTGAN_TEST_OPS_LIBRARY={given}: no such file"
        return Path(given)
    for folder in ("build/cmake", "build/cmake-cuda"):
        if (ROOT / folder / "libfastgan_ops.so").is_file():
            return ROOT / folder / "libfastgan_ops.so"
    return None


LIBRARY = _library()

# (n, c_in, c_out, k, h, w, padding, stride, bias, dtype, channels_last)
CASES = [
    (1, 1, 1, 1, 1, 1, 0, 1, False, torch.float64, False),  # minimal: 1x1 kernel, no padding
    (2, 3, 5, 3, 37, 53, 1, 1, True, torch.float64, False),  # odd sizes, the resnet blocks' 3x3 pad 1
    (1, 3, 4, 7, 20, 18, 3, 1, True, torch.float32, True),  # the generator's 7x7 pad 3 stem, channels_last
    (2, 4, 6, 3, 15, 16, 1, 2, False, torch.float32, False),  # stride 2, no bias
]

CHILD = r"""
import sys, torch
import fastgan.ops
from fastgan.ops import reflect_pad_conv2d
rpc = sys.modules["fastgan.ops.reflect_pad_conv2d"]
assert "fastgan._C" not in sys.modules, "the extension was imported although FASTGAN_OPS_LIBRARY is set"
torch.use_deterministic_algorithms(True)
torch.utils.deterministic.fill_uninitialized_memory = True  # every at::empty is NaN: unwritten elements show
cases = torch.load(sys.argv[1])
out = {"source": rpc._EXT_SOURCE, "devices": sorted(rpc._EXT_DEVICE_TYPES), "results": []}
for x, weight, bias, padding, stride, grad_out in cases:
    leaves = [t.requires_grad_() for t in (x, weight, bias) if t is not None]
    y = reflect_pad_conv2d(x, weight, bias, padding, stride, impl="cuda")
    out["results"].append([y.detach(), *torch.autograd.grad(y, leaves, grad_out)])
torch.save(out, sys.argv[2])
"""


def _cases():
    torch.manual_seed(5)
    made = []
    for n, c_in, c_out, k, h, w, padding, stride, bias, dtype, channels_last in CASES:
        x = torch.randn(n, c_in, h, w, dtype=dtype)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        weight = torch.randn(c_out, c_in, k, k, dtype=dtype)
        b = torch.randn(c_out, dtype=dtype) if bias else None
        h_out, w_out = (h + 2 * padding - k) // stride + 1, (w + 2 * padding - k) // stride + 1
        made.append((x, weight, b, padding, stride, torch.randn(n, c_out, h_out, w_out, dtype=dtype)))
    return made


def _in_extension(cases):
    old = torch.are_deterministic_algorithms_enabled(), torch.utils.deterministic.fill_uninitialized_memory
    torch.use_deterministic_algorithms(True)
    torch.utils.deterministic.fill_uninitialized_memory = True
    try:
        results = []
        for x, weight, bias, padding, stride, grad_out in cases:
            leaves = [t.clone().requires_grad_() for t in (x, weight, bias) if t is not None]
            y = reflect_pad_conv2d(*leaves[:2], leaves[2] if bias is not None else None, padding, stride, impl="cuda")
            assert y.grad_fn is not None
            results.append([y.detach(), *torch.autograd.grad(y, leaves, grad_out)])
        return results
    finally:
        torch.use_deterministic_algorithms(old[0])
        torch.utils.deterministic.fill_uninitialized_memory = old[1]


def test_library_serves_reflect_pad_conv2d_as_the_extension_does(tmp_path):
    if LIBRARY is None:
        pytest.skip("no libfastgan_ops.so in build/cmake or build/cmake-cuda (README's CMake commands build it; "
                    "CI's cmake stages run this file against theirs)")
    if rpc._EXT_SOURCE != "fastgan._C":  # named by FASTGAN_TEST_OPS_LIBRARY (as CI does), the library must be tested
        why = f"the comparison needs fastgan._C in this process: {rpc._EXT_ERROR or rpc._EXT_SOURCE}"
        pytest.fail(why) if os.environ.get("FASTGAN_TEST_OPS_LIBRARY") else pytest.skip(why)
    cases = _cases()
    torch.save(cases, tmp_path / "cases.pt")
    env = dict(os.environ, FASTGAN_OPS_LIBRARY=str(LIBRARY), OMP_NUM_THREADS="1")
    env.pop("FASTGAN_IMPL", None)
    child = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path / "cases.pt"), str(tmp_path / "out.pt")],
                           env=env, capture_output=True, text=True, timeout=120)
    assert child.returncode == 0, child.stderr[-3000:]
    got = torch.load(tmp_path / "out.pt")
    assert got["source"] == f"FASTGAN_OPS_LIBRARY={LIBRARY}"
    assert "cpu" in got["devices"]
    want = _in_extension(cases)
    names = ("y", "dx", "dweight", "dbias")
    for case, library, extension in zip(CASES, got["results"], want):
        assert len(library) == len(extension)
        for name, a, b in zip(names, library, extension):
            assert a.dtype == b.dtype and a.shape == b.shape and a.stride() == b.stride(), (case, name)
            assert not a.isnan().any(), (case, name, "unwritten (NaN) elements from the library")
            assert torch.equal(a, b), (case, name, (a - b).abs().max().item())


def test_a_library_that_does_not_load_is_an_error_naming_the_variable(tmp_path, monkeypatch):
    """An explicit FASTGAN_OPS_LIBRARY never falls back to the extension or the reference. (In this process:
    neither file registers anything, and the cache of the real load is restored afterwards.)"""
    missing = tmp_path / "libfastgan_ops.so"
    not_a_library = tmp_path / "not_a_library.so"
    not_a_library.write_text("not ELF")
    try:
        for path, message in ((missing, "no such file"), (not_a_library, "cannot load it into torch")):
            monkeypatch.setenv(_extension.LIBRARY_ENV, str(path))
            _extension.load.cache_clear()
            with pytest.raises(RuntimeError) as error:
                _extension.load()
            assert str(error.value).startswith(f"{_extension.LIBRARY_ENV}={path}: {message}"), error.value
    finally:
        monkeypatch.undo()  # the environment as it was, then the load it made
        _extension.load.cache_clear()
        assert _extension.load() == (rpc._EXT_SOURCE, rpc._EXT_ERROR)
