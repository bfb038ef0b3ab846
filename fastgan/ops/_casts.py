"""Autocast for fastgan's custom ops: each parameter cast to the autocast dtype once per region, not per use.

torch.autocast casts the inputs of ATen's convolutions itself and, with ``cache_enabled`` (its default),
keeps the low-precision copy of a leaf tensor that requires grad (a parameter) for the rest of the
outermost autocast region: a weight used three times is cast once, and its gradient is cast back to fp32
once. Custom ops get no casts from autocast, so fastgan's layers and ops cast for themselves with
:func:`autocast_to`, which follows the same rule through a cache of its own that :func:`cast_once` opens.
``fastgan.ops.autocast`` opens both together; the training step runs each phase's forward inside it.

Why a region-long cache is right, eager and inside a CUDA graph: the region is one phase's forward,
opened and closed by the same code (``run_phase``), and the optimiser changes the fp32 weights only after
it has closed. Eager, the next phase opens a fresh region and casts the updated weights. Captured, the
region and its cache live entirely inside the capture: the one cast kernel per weight is recorded in the
graph and its later uses read that kernel's output, so every replay casts the weights as they are at that
replay (after the previous replay's optimiser step), and no cached tensor outlives the capture to be read
eagerly (what makes torch.cuda.make_graphed_callables refuse the cache: there the autocast region is
opened outside the captured callables and outlives them). A weight changed in place inside a region
(its version counter moves) is cast again, and a cast made with grad disabled is never handed to code
that runs with grad enabled.
"""

from __future__ import annotations

import contextlib
import contextvars

import torch

__all__ = ["autocast", "autocast_to", "cast_once"]

# (id(tensor), dtype, grad enabled) -> (tensor, its version when cast, the cast); None outside cast_once.
_cache: contextvars.ContextVar[dict | None] = contextvars.ContextVar("fastgan_cast_cache", default=None)


@contextlib.contextmanager
def cast_once():
    """Within: :func:`autocast_to` casts each parameter once (nested regions share the outermost's cache)."""
    if _cache.get() is not None:
        yield
        return
    token = _cache.set({})
    try:
        yield
    finally:
        _cache.reset(token)


def autocast_to(t: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """``t.to(dtype)``; inside :func:`cast_once`, a parameter (a leaf that requires grad) is cast once and
    the same copy returned for its later uses, as autocast's own cache does for ATen's ops."""
    if t is None or t.dtype == dtype:
        return t
    if torch.compiler.is_compiling():  # traced once into the compiled graph, where duplicate casts are merged
        return t.to(dtype)
    cache = _cache.get()
    if cache is None or not (t.is_leaf and t.requires_grad) or not torch.is_autocast_cache_enabled():
        return t.to(dtype)
    key = (id(t), dtype, torch.is_grad_enabled())
    hit = cache.get(key)
    if hit is not None and hit[0] is t and hit[1] == t._version:
        return hit[2]
    cast = t.to(dtype)
    cache[key] = (t, t._version, cast)  # holds t, so its id cannot be reused while cached
    return cast


@contextlib.contextmanager
def autocast(device_type: str, dtype: torch.dtype | None):
    """``torch.autocast(device_type, dtype)`` with its weight-cast cache, plus :func:`cast_once` for
    fastgan's ops; ``dtype`` None: neither (full precision)."""
    if dtype is None:
        yield
        return
    with torch.autocast(device_type, dtype=dtype, cache_enabled=True), cast_once():
        yield
