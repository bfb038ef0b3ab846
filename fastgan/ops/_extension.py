"""The compiled ops (csrc/): the Python extension fastgan._C, or the CMake library fastgan_ops named by
``FASTGAN_OPS_LIBRARY``.

Both are built from the same csrc/ sources, and loading either runs the same registrations
(csrc/register.cpp: the ``torch.ops.fastgan.*`` schemas and their CPU, CUDA, Meta and Autograd kernels);
the op modules add the public functions on top of whichever was loaded.

``FASTGAN_OPS_LIBRARY=/path/to/libfastgan_ops.so`` loads that library with ``torch.ops.load_library``
instead of importing fastgan._C. It is for a machine whose extension lacks the CUDA kernels because no CUDA
compiler was there to build them: a library built elsewhere for the same torch release (bench/prebuilt-ops
builds one for the GPU machines' torch 2.11 / CUDA 13, sm_80 and sm_90) brings them. The variable is an
explicit choice, so it wins over the extension (both cannot be loaded: a second ``TORCH_LIBRARY(fastgan)``
in one process is an error), and a library that does not load raises instead of falling back.
"""

from __future__ import annotations

import functools
import os

import torch

__all__ = ["LIBRARY_ENV", "load"]

LIBRARY_ENV = "FASTGAN_OPS_LIBRARY"


@functools.cache
def load() -> tuple[str | None, str | None]:
    """Loads the compiled ops once per process: ``(what was loaded, None)`` or ``(None, why nothing was)``.

    Raises:
        RuntimeError: ``FASTGAN_OPS_LIBRARY`` names a file that is missing or does not load (e.g. a library
            built for another torch release: torch's C++ API holds within one release only).
    """
    path = os.environ.get(LIBRARY_ENV, "").strip()
    if path:
        if not os.path.isfile(path):
            raise RuntimeError(f"{LIBRARY_ENV}={path}: no such file (a libfastgan_ops.so built by CMake or "
                               "bench/prebuilt-ops); unset it to use the extension fastgan._C")
        try:
            torch.ops.load_library(path)
        except (OSError, RuntimeError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise RuntimeError(f"{LIBRARY_ENV}={path}: cannot load it into torch {torch.__version__} ({first}); "
                               "it must be built for this torch release (bench/prebuilt-ops, or README's CMake "
                               "commands)") from e
        return f"{LIBRARY_ENV}={path}", None
    try:
        from .. import _C  # noqa: F401  (importing it registers torch.ops.fastgan.*)
    except ImportError as e:  # a pure-Python install (FASTGAN_NO_EXT=1) or an unbuilt checkout
        return None, (f"the compiled extension fastgan._C is not importable ({e}); build it with "
                      f"`pip install --no-build-isolation -e .`, or set {LIBRARY_ENV} to a prebuilt "
                      "libfastgan_ops.so")
    return "fastgan._C", None
