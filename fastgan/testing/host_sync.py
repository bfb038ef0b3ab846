"""Recording the ops that make the host wait for the GPU, with the fastgan line that caused each.

A training step that never waits for the GPU lets the host queue the next step while the GPU works, and is
the only kind a CUDA graph can capture. On CUDA, torch.cuda.set_sync_debug_mode("error") finds the waits;
without a GPU, :class:`HostSyncRecorder` finds them by op, from a rule per op:

- a value read on the host: ``aten._local_scalar_dense`` (``.item()``, ``float(t)``, ``int(t)``,
  ``bool(t)``, ``if t:``), ``aten.equal``;
- an output whose shape depends on the data: ``nonzero``, ``masked_select``, ``unique*``, ``bincount``,
  ``repeat_interleave`` without ``output_size``, indexing with a boolean mask (the ops torch tags
  ``dynamic_output_shape`` or ``data_dependent_output``);
- a device-to-host copy: ``_to_copy``/``copy_`` from a device tensor into a CPU one, and at the Python
  level ``.cpu()``, ``.numpy()``, ``.tolist()`` of a device tensor;
- with ``host_to_device=True`` (for code captured in a CUDA graph, where a copy from pageable host
  memory is an error): tensors made from host data (``torch.tensor(...)``) or copied from the host.

Which tensors are device tensors: those whose device type is in ``device_types``. On fake or real CUDA
tensors that is {"cuda"} and CPU tensors are the host's, exactly as on a GPU. On a CPU stand-in run (a
training step needs a real backward, which fake CUDA tensors cannot run) it is {"cpu"}: every tensor stands
for a device tensor, so ``.cpu()``, ``.numpy()`` and ``.tolist()`` count, while ``.to(device)`` and copies
between two CPU tensors do not (in the CUDA run they mostly move data to or within the GPU).

Usage::

    with HostSyncRecorder() as syncs:
        train_step(task, batch, accum)
    assert not syncs.found, syncs.report()
"""

from __future__ import annotations

import traceback
from dataclasses import dataclass
from pathlib import Path

import torch
from torch._subclasses.fake_tensor import DataDependentOutputException
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["HostSync", "HostSyncRecorder"]

_PACKAGE = Path(__file__).resolve().parent.parent  # fastgan/
_TESTING = Path(__file__).resolve().parent  # fastgan/testing/, never the cause
_TORCH = Path(torch.__file__).resolve().parent

_aten = torch.ops.aten
_READS_VALUE = {_aten._local_scalar_dense.default: "reads a value on the host (.item(), float(), int(), bool())",
                _aten.equal.default: "torch.equal returns a host bool"}
_SHAPE_TAGS = (torch.Tag.dynamic_output_shape, torch.Tag.data_dependent_output)
_PYTHON_TO_HOST = {"cpu": ".cpu()", "numpy": ".numpy()", "tolist": ".tolist()", "__array__": "np.asarray()"}


@dataclass(frozen=True)
class HostSync:
    op: str  # e.g. "aten._local_scalar_dense.default" or "Tensor.cpu"
    why: str  # the rule that matched
    where: str  # the line that made the call, e.g. "fastgan/models/cyclegan.py:160 in forward: ..."
    stack: tuple[str, ...]  # every fastgan frame that led there, outermost first

    def __str__(self) -> str:
        return f"{self.op} ({self.why}) at {self.where}"


def _frame(f: traceback.FrameSummary) -> str:
    path = Path(f.filename).resolve()
    try:
        shown = path.relative_to(_PACKAGE.parent)
    except ValueError:
        shown = path
    return f"{shown}:{f.lineno} in {f.name}: {(f.line or '').strip()}"


def _caller() -> tuple[str, tuple[str, ...]]:
    """The line that made the call (the innermost frame outside torch and this package) and every fastgan
    frame that led to it, outermost first."""
    frames = [f for f in traceback.extract_stack()[:-3] if not _is_under(f.filename, _TESTING)]
    ours = tuple(_frame(f) for f in frames if _is_under(f.filename, _PACKAGE))
    outside = [f for f in frames if not _is_under(f.filename, _TORCH)]
    return (_frame(outside[-1]) if outside else "<unknown>"), ours


def _is_under(filename: str, root: Path) -> bool:
    try:
        Path(filename).resolve().relative_to(root)
    except ValueError:
        return False
    return True


def _tensors(args, kwargs):
    flat, _ = torch.utils._pytree.tree_flatten((args, kwargs))
    return [a for a in flat if isinstance(a, torch.Tensor)]


class HostSyncRecorder:
    """Context manager recording host synchronisations (see the module docstring); ``found`` lists them.

    Args:
        device_types: device types whose tensors stand for GPU tensors: {"cuda"} (the default) on fake or
            real CUDA tensors, {"cpu"} on a CPU stand-in run.
        host_to_device: also record copies from host data to the device (illegal in CUDA graph capture).
    """

    def __init__(self, device_types: set[str] | None = None, host_to_device: bool = False):
        self.device_types = frozenset(device_types or {"cuda"})
        self.stand_in = "cpu" in self.device_types
        self.host_to_device = host_to_device
        self.found: list[HostSync] = []
        self._modes = ()

    def __enter__(self) -> HostSyncRecorder:
        self._modes = (_PythonLevel(self), _DispatchLevel(self))
        for mode in self._modes:
            mode.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        for mode in reversed(self._modes):
            mode.__exit__(*exc)

    def report(self) -> str:
        lines = [f"{len(self.found)} host synchronisation(s):"]
        for sync in self.found:
            lines.append(f"  {sync}")
            lines += [f"      via {frame}" for frame in sync.stack if frame != sync.where]
        return "\n".join(lines)

    def _record(self, op: str, why: str) -> None:
        where, stack = _caller()
        self.found.append(HostSync(op, why, where, stack))

    def _on_device(self, t: torch.Tensor) -> bool:
        return t.device.type in self.device_types

    # --- the rules -------------------------------------------------------------------------------
    def check_dispatch(self, func, args, kwargs) -> None:
        tensors = _tensors(args, kwargs)
        on_device = any(self._on_device(t) for t in tensors)
        if func in _READS_VALUE:
            if on_device:
                self._record(str(func), _READS_VALUE[func])
            return
        if func is _aten.index.Tensor:
            masks = [t for t in _tensors(args[1:], {}) if t.dtype in (torch.bool, torch.uint8)]
            if masks and on_device:
                self._record(str(func), "indexing with a boolean mask has a data-dependent shape")
            return
        if func is _aten.repeat_interleave.Tensor:
            if kwargs.get("output_size") is None and on_device:
                self._record(str(func), "repeat_interleave without output_size has a data-dependent shape")
            return
        if any(tag in func.tags for tag in _SHAPE_TAGS) and func is not _aten.one_hot.default:
            if on_device:
                self._record(str(func), "its output shape depends on the data")
            return
        if func is _aten._to_copy.default and tensors:
            target = kwargs.get("device")
            src = tensors[0]
            if target is not None and torch.device(target).type == "cpu" and src.device.type != "cpu" \
                    and self._on_device(src):
                self._record(str(func), "device-to-host copy")
            elif self.host_to_device and target is not None and torch.device(target).type != "cpu" \
                    and src.device.type == "cpu" and not self.stand_in:
                self._record(str(func), "host-to-device copy inside captured code")
            return
        if func in (_aten.copy_.default, _aten.copy.default) and len(tensors) >= 2:
            dst, src = args[0], args[1]
            if dst.device.type == "cpu" and src.device.type != "cpu" and self._on_device(src):
                self._record(str(func), "device-to-host copy")
            elif self.host_to_device and src.device.type == "cpu" and dst.device.type != "cpu":
                self._record(str(func), "host-to-device copy inside captured code")
            return
        if self.host_to_device and func is _aten.lift_fresh.default:
            self._record(str(func), "a tensor made from host data (torch.tensor) inside captured code")

    def check_python(self, func, args, kwargs) -> None:
        name = getattr(func, "__name__", "")
        if not args or not isinstance(args[0], torch.Tensor) or not self._on_device(args[0]):
            return
        if name in _PYTHON_TO_HOST and self.stand_in:
            # On real or fake CUDA tensors these dispatch a _to_copy (or fail), which the dispatch rule sees.
            self._record(f"Tensor.{name}", f"device-to-host copy ({_PYTHON_TO_HOST[name]})")


class _DispatchLevel(TorchDispatchMode):
    def __init__(self, recorder: HostSyncRecorder):
        super().__init__()
        self.recorder = recorder

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        self.recorder.check_dispatch(func, args, kwargs)
        try:
            return func(*args, **kwargs)
        except DataDependentOutputException:
            # A fake tensor has no value to read: the sync is recorded, so let the traced code go on.
            return 0


class _PythonLevel(TorchFunctionMode):
    def __init__(self, recorder: HostSyncRecorder):
        super().__init__()
        self.recorder = recorder

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        self.recorder.check_python(func, args, kwargs)
        return func(*args, **kwargs)
