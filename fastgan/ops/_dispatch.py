"""The one place that decides which implementation of an op runs.

Rules (../STYLE.md, "One place decides the implementation"):
- One vocabulary everywhere (ops, layers, accelerate, set_impl, ``FASTGAN_IMPL``): :data:`IMPLS`.
- ``impl="ref"`` always runs the plain PyTorch reference.
- ``impl="auto"`` (or ``FASTGAN_IMPL=auto``) picks the op's fast path where it can run. CPU tensors
  use the reference. If a CUDA tensor cannot take the fast path, warn once naming the reason and fall
  back to the reference.
- ``impl="fast"`` asks for the op's own fast path, whichever it is; ``impl="triton"`` / ``impl="cuda"`` name
  one. An explicit fast impl that cannot run raises; it never falls back silently. Naming a fast path an
  op does not have (``reflect_pad_conv2d(x, impl="triton")``) raises too, while ``FASTGAN_IMPL=triton``
  (a setting for a whole program) applies to the ops that have a Triton path and leaves the others on auto.
- With ``TRITON_INTERPRET=1`` an explicit ``impl="triton"`` runs the Triton kernels on CPU tensors.

Each op module registers its fast path with :func:`register`, giving a capability check that
returns ``None`` when the fast path can run on a device, or a one-line reason when it cannot.
Capabilities are tested (is the module importable, is the device CUDA), never version strings.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch

__all__ = ["IMPLS", "check_impl", "fast_name", "register", "resolve", "available", "last_impl", "clear_last",
           "interpret_mode"]

IMPLS = ("auto", "ref", "fast", "triton", "cuda")  # every impl= value fastgan accepts


@dataclass(frozen=True)
class _FastPath:
    name: str  # "triton" or "cuda"
    check: Callable[[torch.device], str | None]  # None when usable on that device, else the reason


_FAST: dict[str, _FastPath] = {}
_LAST: dict[str, str] = {}
_WARNED: set[tuple[str, str]] = set()


def interpret_mode() -> bool:
    """True when Triton kernels are to run on the CPU through Triton's interpreter."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def register(op: str, fast_name: str, check: Callable[[torch.device], str | None]) -> None:
    """Declares the fast implementation ``fast_name`` of ``op`` and how to tell whether it can run."""
    _FAST[op] = _FastPath(fast_name, check)


def check_impl(impl: str, where: str = "impl") -> str:
    """Returns ``impl`` if it is in the vocabulary, else raises ValueError naming ``where``."""
    if impl not in IMPLS:
        raise ValueError(f"{where}: unknown impl={impl!r}; expected one of {', '.join(map(repr, IMPLS))}")
    return impl


def fast_name(op: str) -> str | None:
    """The name of ``op``'s fast path ("triton" or "cuda"), or None if it has none."""
    fast = _FAST.get(op)
    return None if fast is None else fast.name


def _from_env() -> str:
    env = os.environ.get("FASTGAN_IMPL", "auto").strip().lower() or "auto"
    if env not in IMPLS:
        raise ValueError(f"FASTGAN_IMPL={env!r} is not one of {', '.join(IMPLS)}")
    return env


def resolve(op: str, impl: str, device: torch.device) -> str:
    """Returns the implementation that will run ``op`` on ``device``: ``"ref"`` or the fast one's name.

    Raises when an explicitly requested fast path cannot run, or when ``impl`` is unknown.
    """
    check_impl(impl, op)
    fast = _FAST.get(op)
    requested = impl
    if impl == "auto":
        requested = _from_env()
        if requested in ("triton", "cuda") and (fast is None or fast.name != requested):
            requested = "auto"  # FASTGAN_IMPL names one kind of fast path; this op has another (or none)
    if requested == "ref":
        chosen = "ref"
    elif requested == "auto":
        chosen = "ref"
        if fast is not None and device.type != "cpu":  # CPU tensors use the reference under auto
            reason = fast.check(device)
            if reason is None:
                chosen = fast.name
            elif (op, reason) not in _WARNED:
                _WARNED.add((op, reason))
                warnings.warn(f"fastgan: {op} falls back to the reference path: {reason}", stacklevel=3)
    else:  # "fast" (the op's own fast path, so one setting covers ops with different kinds), "triton", "cuda"
        how = f"impl={impl!r}" if impl != "auto" else f"FASTGAN_IMPL={requested!r}"
        if fast is None:
            raise RuntimeError(f"{op}: {how} requested but {op} has no fast path")
        if requested != "fast" and requested != fast.name:
            raise RuntimeError(f"{op}: {how} requested but {op}'s fast path is {fast.name!r} "
                               f"(use impl='fast' or {fast.name!r})")
        reason = fast.check(device)
        if reason is not None:
            raise RuntimeError(f"{op}: impl={fast.name!r} cannot run on {device}: {reason}")
        chosen = fast.name
    _LAST[op] = chosen
    return chosen


def last_impl(op: str) -> str | None:
    """The implementation ``op`` resolved to on its most recent call (for benchmarks and tests)."""
    return _LAST.get(op)


def clear_last() -> None:
    """Forgets the recorded implementations, so a benchmark can name only what its own case resolved to."""
    _LAST.clear()


def available() -> dict[str, list[str]]:
    """Per op, the implementations usable on this machine (on CUDA if present, else on the CPU)."""
    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    out = {}
    for op, fast in sorted(_FAST.items()):
        impls = ["ref"]
        if fast.check(device) is None:
            impls.append(fast.name)
        out[op] = impls
    return out
