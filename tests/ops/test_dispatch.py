"""The single resolver: auto uses the reference on CPU, explicit fast paths never fall back silently."""

import warnings

import pytest
import torch

from fastgan import ops
from fastgan.ops import _dispatch, instance_norm_act, leaky_relu

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    monkeypatch.delenv("FASTGAN_IMPL", raising=False)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)


@pytest.fixture
def fake_op(monkeypatch):
    """An op whose fast path cannot run on CUDA, isolated from the real registry's warn-once state."""
    monkeypatch.setattr(_dispatch, "_FAST", dict(_dispatch._FAST))
    monkeypatch.setattr(_dispatch, "_WARNED", set())
    _dispatch.register("fake_op", "triton", lambda device: "no GPU kernels for this test")
    return "fake_op"


@pytest.mark.parametrize("interpret", ["0", "1"])
def test_auto_on_cpu_uses_reference(monkeypatch, interpret):
    monkeypatch.setenv("TRITON_INTERPRET", interpret)
    x = torch.randn(1, 2, 3, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # CPU under auto is the rule, not a fallback worth a warning
        instance_norm_act(x)
        leaky_relu(x)
    assert ops.last_impl("instance_norm_act") == "ref"
    assert ops.last_impl("leaky_relu") == "ref"


def test_explicit_triton_that_cannot_run_raises():
    for call in (lambda x: instance_norm_act(x, impl="triton"), lambda x: leaky_relu(x, impl="triton")):
        with pytest.raises(RuntimeError, match="impl='triton' cannot run on cpu: .*TRITON_INTERPRET=1"):
            call(torch.randn(1, 2, 3, 3))


def test_explicit_triton_runs_under_interpreter(monkeypatch):
    pytest.importorskip("triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    leaky_relu(torch.randn(2, 3), impl="triton")
    assert ops.last_impl("leaky_relu") == "triton"


def test_fastgan_impl_env(monkeypatch):
    x = torch.randn(1, 2, 3, 3)
    monkeypatch.setenv("FASTGAN_IMPL", "ref")
    leaky_relu(x)
    assert ops.last_impl("leaky_relu") == "ref"
    monkeypatch.setenv("FASTGAN_IMPL", "triton")  # asks for the fast path, which cannot run on CPU here
    with pytest.raises(RuntimeError, match="cannot run on cpu"):
        leaky_relu(x)
    monkeypatch.setenv("FASTGAN_IMPL", "fastest")
    with pytest.raises(ValueError, match="FASTGAN_IMPL='fastest'"):
        leaky_relu(x)
    monkeypatch.setenv("FASTGAN_IMPL", "triton")
    leaky_relu(x, impl="ref")  # an explicit impl= wins over the environment
    assert ops.last_impl("leaky_relu") == "ref"


def test_fastgan_impl_env_runs_triton_under_interpreter(monkeypatch):
    pytest.importorskip("triton")
    monkeypatch.setenv("FASTGAN_IMPL", "triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    instance_norm_act(torch.randn(1, 2, 3, 3))
    assert ops.last_impl("instance_norm_act") == "triton"


def test_unknown_impl_raises():
    with pytest.raises(ValueError, match="unknown impl='bogus'; expected one of 'auto', 'ref', 'fast', 'triton', "):
        leaky_relu(torch.randn(2, 3), impl="bogus")
    with pytest.raises(ValueError, match="where: unknown impl='Triton'"):
        _dispatch.check_impl("Triton", "where")
    assert all(_dispatch.check_impl(i) == i for i in _dispatch.IMPLS)


def test_naming_a_fast_path_the_op_does_not_have_raises():
    # One vocabulary: "cuda" is a known impl, but leaky_relu's fast path is Triton; explicit never falls back.
    with pytest.raises(RuntimeError, match="impl='cuda' requested but leaky_relu's fast path is 'triton'"):
        leaky_relu(torch.randn(2, 3), impl="cuda")
    assert _dispatch.fast_name("leaky_relu") == "triton"
    assert _dispatch.fast_name("no_such_op") is None


def test_env_naming_one_kind_leaves_other_ops_on_auto(fake_op, monkeypatch):
    # FASTGAN_IMPL=cuda is a program-wide setting: ops whose fast path is Triton stay on auto (the reference
    # on CPU), while an op with a CUDA path is forced onto it (and raises where it cannot run).
    _dispatch.register("cuda_op", "cuda", lambda device: "no extension in this test")
    monkeypatch.setenv("FASTGAN_IMPL", "cuda")
    assert _dispatch.resolve(fake_op, "auto", CPU) == "ref"
    with pytest.raises(RuntimeError, match="impl='cuda' cannot run on cpu: no extension in this test"):
        _dispatch.resolve("cuda_op", "auto", CPU)
    monkeypatch.setenv("FASTGAN_IMPL", "fast")
    with pytest.raises(RuntimeError, match="impl='triton' cannot run on cpu"):
        _dispatch.resolve(fake_op, "auto", CPU)


def test_fast_means_the_ops_own_fast_path(fake_op):
    # "fast" reaches whichever fast path an op has, and raises (never falls back) where it cannot run.
    _dispatch.register("runs_everywhere", "cuda", lambda device: None)
    assert _dispatch.resolve("runs_everywhere", "fast", torch.device("cpu")) == "cuda"
    with pytest.raises(RuntimeError, match="impl='triton' cannot run on cuda: no GPU kernels"):
        _dispatch.resolve(fake_op, "fast", torch.device("cuda"))


def test_fallback_warns_once_naming_the_reason(fake_op):
    cuda = torch.device("cuda")
    with pytest.warns(UserWarning, match="fake_op falls back to the reference path: no GPU kernels for this"):
        assert _dispatch.resolve(fake_op, "auto", cuda) == "ref"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _dispatch.resolve(fake_op, "auto", cuda) == "ref"
    assert ops.last_impl(fake_op) == "ref"
    with pytest.raises(RuntimeError, match="no GPU kernels for this test"):
        _dispatch.resolve(fake_op, "triton", cuda)


def test_available(monkeypatch):
    pytest.importorskip("triton")
    avail = ops.available()
    assert set(avail) >= {"instance_norm_act", "leaky_relu"}
    if not torch.cuda.is_available():
        assert avail["instance_norm_act"] == ["ref"]
        monkeypatch.setenv("TRITON_INTERPRET", "1")
        assert ops.available()["leaky_relu"] == ["ref", "triton"]
    else:
        assert avail["instance_norm_act"] == ["ref", "triton"]
