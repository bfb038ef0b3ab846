"""Autocast for fastgan's custom ops: each parameter cast to the autocast dtype once per region, not per use.

torch.autocast casts the inputs of ATen's convolutions itself and, with ``cache_enabled`` (its default),
keeps the low-precision copy of a leaf tensor that requires grad (a parameter) for the rest of the
outermost autocast region: a weight used three times is cast once, and its gradient is cast back to fp32
once. Custom ops get no casts from autocast, so fastgan's layers and ops cast for themselves with
:func:`autocast_to`, which follows the same rule through a cache of its own that :func:`cast_once` opens.
``fastgan.ops.autocast`` opens both together; the training step runs each phase's forward inside it.
The training step goes further with :func:`cast_modules_once`: each network's convolution and linear
parameters are cast in one multi-tensor copy when the network is first called in the phase (and their
gradients back in another), so the per-parameter casts of both caches find nothing left to cast: a few
launches per network instead of one per parameter each way.

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
import functools

import torch

__all__ = ["autocast", "autocast_to", "cast_modules_once", "cast_once"]

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


# Modules whose parameters autocast casts to its lower dtype where they are used (its cast policy for
# convolutions and matmuls; fastgan's convolution layers subclass these and follow the same policy). Norm
# layers' affine parameters are left alone: autocast leaves them fp32.
_CAST_BY_AUTOCAST = (torch.nn.modules.conv._ConvNd, torch.nn.Linear)


class _CastParameters(torch.autograd.Function):
    """Parameters to ``dtype`` in one multi-tensor copy (multi_tensor_apply: one launch per chunk of tensors, not
    one per tensor), and their gradients back to the parameters' dtype in another. ``dtype`` is a class
    attribute (:func:`_cast_parameters`), so that every input of the Function is a tensor."""

    dtype: torch.dtype

    @classmethod
    def forward(cls, ctx, *params):
        ctx.set_materialize_grads(False)
        ctx.dtypes = [p.dtype for p in params]
        out = [torch.empty_like(p, dtype=cls.dtype) for p in params]  # the parameters' strides: the fast path's rule
        torch._foreach_copy_(out, list(params))
        return tuple(out)

    @staticmethod
    def backward(ctx, *grads):
        given = [i for i, g in enumerate(grads) if g is not None]
        back = [torch.empty_like(grads[i], dtype=ctx.dtypes[i]) for i in given]
        if given:
            torch._foreach_copy_(back, [grads[i] for i in given])
        result = [None] * len(grads)
        for i, g in zip(given, back):
            result[i] = g
        return tuple(result)


@functools.cache
def _cast_parameters(dtype: torch.dtype) -> type[_CastParameters]:
    return type(f"_CastParametersTo{str(dtype).removeprefix('torch.')}", (_CastParameters,), {"dtype": dtype})


@contextlib.contextmanager
def cast_modules_once(modules):
    """Within: the first call of each of ``modules`` casts all parameters that autocast would cast (those of
    its convolution and linear layers, on a device where autocast is on with its cache) to autocast's dtype
    in one multi-tensor copy, and the module runs on those copies until the region ends; their gradients go
    back in one multi-tensor copy too. What autocast's weight cache computes, bit for bit, in a few launches
    instead of one per parameter each way.

    The copies live only inside the region, so this module's reasoning about autocast's cache holds for them
    too: open it around one phase's forward, inside the captured region under CUDA graphs. The parameters
    are back in place when the region closes, before backward and the optimiser's step.
    """
    swapped: list[tuple[dict, str, torch.Tensor]] = []  # (module._parameters, name, the parameter)
    done: list = []  # [module, grad mode of its copies]

    def target(p: torch.Tensor) -> torch.dtype | None:
        device = p.device.type
        if not (p.is_floating_point() and torch.is_autocast_enabled(device) and torch.is_autocast_cache_enabled()):
            return None
        dtype = torch.get_autocast_dtype(device)
        return dtype if dtype != p.dtype else None

    def cast(module, args):
        if torch.compiler.is_compiling():
            return
        seen = next((entry for entry in done if entry[0] is module), None)
        if seen is not None and (seen[1] or not torch.is_grad_enabled()):
            return
        if seen is not None:  # copies made without grad, now called with it: their gradients would be lost
            restore([entry for entry in swapped if any(entry[0] is m._parameters for m in module.modules())])
        done.append([module, torch.is_grad_enabled()])
        slots = [(m._parameters, name) for m in module.modules() if isinstance(m, _CAST_BY_AUTOCAST)
                 for name, p in m._parameters.items() if p is not None and target(p) is not None]
        unique = {id(params[name]): params[name] for params, name in slots}
        copies = {}
        for dtype in dict.fromkeys(target(p) for p in unique.values()):
            group = [p for p in unique.values() if target(p) == dtype]
            copies.update(zip(map(id, group), _cast_parameters(dtype).apply(*group)))
        for params, name in slots:
            swapped.append((params, name, params[name]))
            params[name] = copies[id(params[name])]

    def restore(entries):
        for params, name, parameter in reversed(entries):
            params[name] = parameter
        for entry in entries:
            swapped.remove(entry)

    # No hooks without autocast, nor on a module compiled whole (nn.Module.compile: its hooks run inside the
    # compiled call, where the casts are the compiled graph's own).
    on = torch._C._is_any_autocast_enabled()
    handles = [m.register_forward_pre_hook(cast) for m in modules
               if on and getattr(m, "_compiled_call_impl", None) is None]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
        restore(list(swapped))
