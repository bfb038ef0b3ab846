"""The one place that decides which implementation of an op runs.

Rules (../STYLE.md, "One place decides the implementation"):
- ``impl="ref"`` always runs the plain PyTorch reference.
- ``impl="auto"`` (or ``FASTGAN_IMPL=auto``) picks the op's fast path where it can run. CPU tensors
  use the reference. If a CUDA tensor cannot take the fast path, warn once naming the reason and fall
  back to the reference.
- An explicit fast impl (``impl="triton"`` / ``impl="cuda"`` / ``impl="fast"``, the latter meaning the op's
  own fast path, or ``FASTGAN_IMPL=triton|cuda|fast``) that cannot run raises; it never falls back silently.
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

__all__ = ["register", "resolve", "available", "last_impl", "clear_last", "interpret_mode"]


@dataclass(frozen=True)
class _FastPath:
    name: str  # "triton" or "cuda"
    check: Callable[[torch.device], str | None]  # None when usable on that device, else the reason


_FAST: dict[str, _FastPath] = {}
_LAST: dict[str, str] = {}
_WARNED: set[tuple[str, str]] = set()
_ENV_FORCE_FAST = ("triton", "cuda", "fast")


def interpret_mode() -> bool:
    """True when Triton kernels are to run on the CPU through Triton's interpreter."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def register(op: str, fast_name: str, check: Callable[[torch.device], str | None]) -> None:
    """Declares the fast implementation ``fast_name`` of ``op`` and how to tell whether it can run."""
    _FAST[op] = _FastPath(fast_name, check)


def _requested(impl: str) -> str:
    if impl != "auto":
        return impl
    env = os.environ.get("FASTGAN_IMPL", "auto").strip().lower() or "auto"
    if env not in ("auto", "ref", *_ENV_FORCE_FAST):
        raise ValueError(f"FASTGAN_IMPL={env!r} is not one of auto, ref, triton, cuda, fast")
    return env


def resolve(op: str, impl: str, device: torch.device) -> str:
    """Returns the implementation that will run ``op`` on ``device``: ``"ref"`` or the fast one's name.

    Raises when an explicitly requested fast path cannot run, or when ``impl`` is unknown.
    """
    fast = _FAST.get(op)
    fast_name = fast.name if fast is not None else None
    requested = _requested(impl)
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
    elif requested in (fast_name, "fast") or (impl == "auto" and requested in _ENV_FORCE_FAST):
        # An explicit impl= naming this op's fast path (or "fast": whichever fast path the op has, so one
        # setting covers a model mixing Triton and extension layers), or FASTGAN_IMPL asking for fast paths.
        if fast is None:
            raise RuntimeError(f"{op}: FASTGAN_IMPL={requested!r} requested but {op} has no fast path")
        reason = fast.check(device)
        if reason is not None:
            raise RuntimeError(f"{op}: impl={fast.name!r} cannot run on {device}: {reason}")
        chosen = fast.name
    else:
        names = ", ".join(repr(n) for n in ("auto", "ref", "fast", fast_name) if n)
        raise ValueError(f"{op}: unknown impl={impl!r}; expected one of {names}")
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
