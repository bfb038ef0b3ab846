"""A network's CUDA path traced op by op without a GPU: which implementation each fastgan layer takes,
which dtypes and memory layouts flow through, and how many ops (a proxy for kernel launches) a forward
issues.

Forward: FakeTensorMode tensors on device "cuda" carry shape, strides, dtype and device but no data, and
run every op through its meta function, so the dispatch decisions a GPU run makes are made here too:
fastgan.ops._dispatch sees device cuda (Triton ops ask only whether triton is importable;
reflect_pad_conv2d asks whether this build of fastgan._C registered a CUDA kernel, so a CPU-only build
shows the fallback a GPU run of it would take), ATen picks its CUDA variants (cudnn_batch_norm, ...), and
:func:`cuda_autocast` switches on the dispatcher's CUDA autocast state that torch.autocast("cuda")
refuses to set without a GPU, so casts happen where a GPU run does them.

Backward: torch's autograd engine asks the CUDA driver for per-device stream state before it runs any
node (GraphTask::stash_current_streams -> hasPrimaryContext: "expects a valid device index"), so
``loss.backward()`` fails on fake CUDA tensors. :func:`run_backward` walks the autograd graph itself
instead: it calls each node's backward in dependency order with the summed gradients of its outputs,
as the engine does, minus the streams; the backward kernels (fastgan's fused backward ops included)
dispatch on fake CUDA tensors like the forward ones. Leaf gradients are returned, not stored in .grad.
"""

from __future__ import annotations

import contextlib
import functools
import warnings
from collections import Counter
from dataclasses import dataclass, field

import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode

from .. import nn as fnn
from ..ops._casts import cast_once

__all__ = ["OpCall", "OpTrace", "TensorSpec", "cuda_autocast", "fake_cuda_mode", "gpu_run_trace",
           "is_fused_layer", "run_backward", "to_device_", "trace_phases"]

_aten = torch.ops.aten
_NO_KERNEL = {_aten._unsafe_view.default, _aten.lift_fresh.default, _aten.empty.memory_format,
              _aten.empty_strided.default, _aten.empty_like.default, _aten.new_empty.default,
              _aten.new_empty_strided.default}


_SLOW_2D = {torch._C._ConvBackend.Slow2d: torch._C._ConvBackend.Cudnn,
            torch._C._ConvBackend.SlowDilated2d: torch._C._ConvBackend.Cudnn,
            torch._C._ConvBackend.SlowTranspose2d: torch._C._ConvBackend.CudnnTranspose}


@contextlib.contextmanager
def fake_cuda_mode():
    """FakeTensorMode (taking real tensors as inputs) with convolutions laid out as cuDNN lays them out.

    The fake convolution asks ATen which backend a GPU would pick and takes that backend's output layout.
    For bf16 and fp16 that choice queries the device's compute capability; with no device it answers
    "no cuDNN", picks the slow NCHW kernels and drops channels_last, which no sm_80 or newer GPU does.
    Here a 2-D convolution on a CUDA tensor that would go to a slow kernel goes to cuDNN, as on those GPUs.
    """
    select = torch._C._select_conv_backend

    def select_as_on_gpu(input, weight, *args, **kwargs):
        backend = select(input, weight, *args, **kwargs)
        if input.device.type == "cuda" and torch.backends.cudnn.enabled and backend in _SLOW_2D:
            return _SLOW_2D[backend]
        return backend

    torch._C._select_conv_backend = select_as_on_gpu
    try:
        with FakeTensorMode(allow_non_fake_inputs=True) as mode:
            yield mode
    finally:
        torch._C._select_conv_backend = select


def to_device_(module: nn.Module, device: str | torch.device, dtype: torch.dtype | None = None) -> nn.Module:
    """Replaces, in place, every parameter and buffer of ``module`` by an uninitialised tensor on ``device``
    with the same shape and strides (so channels_last stays channels_last) and ``requires_grad``, in
    ``dtype`` for floating parameters when given. Inside fake_cuda_mode, device "cuda" makes fake CUDA
    tensors. (Module.to cannot: it swaps tensors in place, which fake tensors refuse.)"""
    for m in module.modules():
        for name, p in list(m._parameters.items()):
            if p is not None:
                t = torch.empty_strided(p.shape, p.stride(), dtype=dtype or p.dtype, device=device)
                m._parameters[name] = nn.Parameter(t, requires_grad=p.requires_grad)
        for name, b in list(m._buffers.items()):
            if b is not None:
                m._buffers[name] = torch.zeros_like(b, device=device)
    return module


@contextlib.contextmanager
def cuda_autocast(dtype: torch.dtype | None):
    """fastgan.ops.autocast("cuda", dtype) without a GPU (None: no autocast): the dispatcher state
    torch.autocast sets (its weight-cast cache on), and fastgan's own cast cache."""
    if dtype is None:
        yield
        return
    prev_enabled, prev_dtype = torch.is_autocast_enabled("cuda"), torch.get_autocast_dtype("cuda")
    prev_cache = torch.is_autocast_cache_enabled()
    torch.set_autocast_enabled("cuda", True)
    torch.set_autocast_dtype("cuda", dtype)
    torch.set_autocast_cache_enabled(True)
    torch.autocast_increment_nesting()
    try:
        with cast_once():
            yield
    finally:
        if torch.autocast_decrement_nesting() == 0:
            torch.clear_autocast_cache()
        torch.set_autocast_enabled("cuda", prev_enabled)
        torch.set_autocast_dtype("cuda", prev_dtype)
        torch.set_autocast_cache_enabled(prev_cache)


def is_fused_layer(module: nn.Module) -> bool:
    """A fastgan.nn layer: its forward is meant to run one fastgan custom op on a GPU."""
    return type(module).__module__ == fnn.layers.__name__


def _layout(t: torch.Tensor) -> str:
    """"nhwc", "nchw", "either" (size-1 dims make both true) or "strided" for a 4-D tensor."""
    cl, nchw = t.is_contiguous(memory_format=torch.channels_last), t.is_contiguous()
    return "either" if cl and nchw else "nhwc" if cl else "nchw" if nchw else "strided"


@dataclass(frozen=True)
class TensorInfo:
    shape: tuple[int, ...]
    dtype: torch.dtype
    layout: str  # see _layout; "" for tensors that are not 4-D

    @classmethod
    def of(cls, t: torch.Tensor) -> TensorInfo:
        return cls(tuple(t.shape), t.dtype, _layout(t) if t.dim() == 4 else "")

    def __str__(self) -> str:
        dtype = str(self.dtype).removeprefix("torch.")
        return f"{dtype}{list(self.shape)}{'/' + self.layout if self.layout else ''}"


@dataclass(frozen=True)
class TensorSpec:
    """What a replay needs to rebuild a tensor argument: an empty tensor of this shape, strides and dtype."""

    shape: tuple[int, ...]
    stride: tuple[int, ...]
    dtype: torch.dtype

    def empty(self, device="cpu", dtype: torch.dtype | None = None) -> torch.Tensor:
        return torch.empty_strided(self.shape, self.stride, dtype=dtype or self.dtype, device=device)


def _spec(value):
    return TensorSpec(tuple(value.shape), tuple(value.stride()), value.dtype) if isinstance(value, torch.Tensor) \
        else value


@dataclass(frozen=True)
class OpCall:
    op: str  # "aten.convolution.default", "fastgan.instance_norm_act_fwd.default"
    namespace: str
    is_view: bool
    launches: bool  # issues GPU work (returns a tensor; not a view, an allocation or a metadata op)
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]
    layer: str  # qualified name of the innermost module running, "" outside every module
    layer_type: str
    in_fused_layer: str  # qualified name of the enclosing fastgan.nn layer, "" when none
    backward: bool  # recorded during the backward pass (then ``layer`` names the autograd node)
    requires_grad: bool = False  # forward: an input requires grad, so autograd records a backward for it
    args: tuple = ()  # fastgan ops only: (args, kwargs) with TensorSpec for tensors, for replays
    accumulates: bool = False  # backward: the engine summing two gradients of one tensor (run_backward)


def _infos(values) -> tuple[TensorInfo, ...]:
    flat, _ = torch.utils._pytree.tree_flatten(values)
    return tuple(TensorInfo.of(t) for t in flat if isinstance(t, torch.Tensor))


@dataclass
class OpTrace:
    """The ops dispatched while active (a context manager), each with the module that ran it.

    Args:
        nets: named modules (networks, image pools) whose submodules name the ops (``{"G_A": ..., }``).
    """

    nets: dict[str, nn.Module]
    calls: list[OpCall] = field(default_factory=list)
    in_backward: bool = False
    warnings: list[str] = field(default_factory=list)  # raised while tracing (fallback notices among them)

    def __post_init__(self):
        self._names = {m: f"{net}.{name}" if name else net
                       for net, module in self.nets.items() for name, m in module.named_modules()}
        self._stack: list[nn.Module] = []
        self._node = ""  # the autograd node running, in the backward pass
        self._accumulating = False
        self._handles = []
        self._mode = None

    def __enter__(self) -> OpTrace:
        def pre(module, args):
            self._stack.append(module)

        def post(module, args, output):
            if self._stack and self._stack[-1] is module:
                self._stack.pop()

        self._handles = [nn.modules.module.register_module_forward_pre_hook(pre),
                         nn.modules.module.register_module_forward_hook(post, always_call=True)]
        self._mode = self._recorder()
        self._mode.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._mode.__exit__(*exc)
        for handle in self._handles:
            handle.remove()

    def _recorder(self) -> TorchDispatchMode:
        return _Recorder(self)

    def record(self, func, args, kwargs, out) -> None:
        if func.namespace == "prim":  # prim.device and friends: metadata queries
            return
        if self.in_backward:
            layer, layer_type, fused = self._node, self._node, ""
        else:
            inner = next((m for m in reversed(self._stack) if m in self._names), None)
            outer_fused = next((m for m in reversed(self._stack) if m in self._names and is_fused_layer(m)), None)
            layer, layer_type = self._names.get(inner, ""), type(inner).__name__ if inner is not None else ""
            fused = self._names.get(outer_fused, "")
        replay = torch.utils._pytree.tree_map(_spec, (args, kwargs)) if func.namespace == "fastgan" else ()
        outputs = _infos(out)
        flat, _ = torch.utils._pytree.tree_flatten((args, kwargs))
        requires_grad = any(isinstance(t, torch.Tensor) and t.requires_grad for t in flat)
        self.calls.append(OpCall(
            op=str(func), namespace=func.namespace, is_view=func.is_view,
            launches=not func.is_view and func not in _NO_KERNEL and bool(outputs),
            inputs=_infos((args, kwargs)), outputs=outputs, layer=layer, layer_type=layer_type,
            in_fused_layer=fused, backward=self.in_backward, requires_grad=requires_grad, args=replay,
            accumulates=self._accumulating))

    @contextlib.contextmanager
    def backward_pass(self):
        """Marks the ops recorded inside as backward ops; pass :meth:`on_node` to run_backward."""
        self.in_backward, self._node = True, ""
        try:
            yield
        finally:
            self.in_backward = False

    def on_node(self, node) -> None:
        self._node = type(node).__name__

    @contextlib.contextmanager
    def accumulating(self):
        """Marks the ops recorded inside as gradient accumulation; pass it to run_backward."""
        self._accumulating = True
        try:
            yield
        finally:
            self._accumulating = False

    # --- what the gpu_ready checks ask ---------------------------------------------------------------
    def launches(self, backward: bool = False) -> list[OpCall]:
        return [c for c in self.calls if c.launches and c.backward == backward]

    def op_counts(self, backward: bool = False, requires_grad: bool = False) -> Counter:
        """Launches per op; with ``requires_grad``, only the forward ones that autograd records (a
        generator's forward in the discriminator's phase, its output detached, has no backward)."""
        return Counter(c.op for c in self.launches(backward) if c.requires_grad or not requires_grad)

    def fused_layers_without_fast_op(self) -> list[str]:
        """fastgan.nn layers whose forward ran no fastgan custom op: a fallback to the reference path."""
        ran, seen = set(), {}
        for c in self.calls:
            if c.in_fused_layer and not c.backward:
                seen.setdefault(c.in_fused_layer, c.layer_type)
                if c.namespace == "fastgan":
                    ran.add(c.in_fused_layer)
        names = [name for name in seen if name not in ran]
        return [f"{name} ({seen[name]}): ran {self._ops_in(name)}" for name in names]

    def _ops_in(self, layer: str) -> str:
        ops = [c.op for c in self.calls if c.in_fused_layer == layer and c.launches and not c.backward]
        return ", ".join(dict.fromkeys(ops)) or "nothing"

    def dtype_changes(self, dtype: torch.dtype, backward: bool = False) -> list[str]:
        """Ops that turn a ``dtype`` activation (a floating tensor of 3 or more dims) into an activation of
        another dtype, inside the networks (forward; losses are fp32 on purpose) or anywhere in backward,
        and fastgan ops whose output activation's dtype is not their input's."""
        bad = []
        for c in self.launches(backward):
            if (not backward and not c.layer) or c.layer.startswith("ToCopyBackward"):
                continue  # a cast's backward mirrors a forward cast, which the forward check judged
            takes = any(i.dtype == dtype and len(i.shape) >= 3 for i in c.inputs)
            wrong = [o for o in c.outputs if o.dtype.is_floating_point and len(o.shape) >= 3 and o.dtype != dtype]
            if c.namespace == "fastgan" and c.inputs and c.outputs and c.outputs[0].dtype != c.inputs[0].dtype \
                    and len(c.outputs[0].shape) >= 3:  # an activation (not batch_norm_act_stats' fp32 statistics)
                wrong.append(c.outputs[0])
            elif not takes:
                wrong = []
            if wrong:
                bad.append(f"{c.op} in {c.layer or '<backward>'}: {', '.join(map(str, c.inputs))} -> "
                           f"{', '.join(map(str, wrong))}")
        return bad

    @staticmethod
    def keys(findings: list[str]) -> set[str]:
        """"op in layer" of each finding (shapes dropped), for comparing with a list of known ones."""
        return {f.split(":")[0] for f in findings}

    def layout_changes(self, backward: bool = False) -> list[str]:
        """Ops that transpose between NCHW and NHWC: 4-D inputs in both layouts (a convolution of an NCHW
        activation with NHWC weights, an add of the two), an output in the other layout than the first
        4-D input, or an output in neither layout."""
        bad = []
        for c in self.launches(backward):
            ins = [i.layout for i in c.inputs if i.layout in ("nhwc", "nchw")]
            outs = [o.layout for o in c.outputs if o.layout]
            if len(set(ins)) > 1 or "strided" in outs or (ins and any(o in ("nhwc", "nchw") and o != ins[0]
                                                                      for o in outs)):
                bad.append(f"{c.op} in {c.layer or '<outside the networks>'}: "
                           f"{', '.join(map(str, c.inputs))} -> {', '.join(map(str, c.outputs))}")
        return bad


def run_backward(loss: torch.Tensor, on_node=None, accumulating=None) -> dict[torch.Tensor, torch.Tensor]:
    """``loss.backward()`` without the autograd engine (which needs a CUDA driver for CUDA tensors): each
    node's backward in dependency order, its gradients reduced and cast to what the next node expects.

    Returns the gradient of each leaf tensor that requires grad; ``on_node(node)`` is called before each
    autograd node runs, and the sum of two gradients of one tensor (the engine's InputBuffer::accumulate)
    runs inside ``accumulating()`` when given. Hooks and retain_grad are not run.
    """
    root = loss.grad_fn
    if root is None:
        raise ValueError("run_backward: the loss does not require grad")
    pending: dict = {}  # node -> number of edges into it not yet processed
    stack, seen = [root], {root}
    while stack:
        node = stack.pop()
        for child, _ in node.next_functions:
            if child is not None:
                pending[child] = pending.get(child, 0) + 1
                if child not in seen:
                    seen.add(child)
                    stack.append(child)
    grads: dict = {root: {0: torch.ones_like(loss)}}
    leaves: dict[torch.Tensor, torch.Tensor] = {}
    ready = [root]
    while ready:
        node = ready.pop()
        given = grads.pop(node, {})
        if type(node).__name__ == "AccumulateGrad":
            if 0 in given:
                leaves[node.variable] = given[0]
            continue
        if on_node is not None:
            on_node(node)
        args = [given.get(i) for i in range(len(node._input_metadata))]
        # C++ nodes are called; Python autograd.Function nodes (custom ops' autograd) expose apply().
        outs = node.apply(*args) if hasattr(node, "_forward_cls") else node(*args)
        outs = (outs,) if isinstance(outs, torch.Tensor) or outs is None else outs
        for (child, slot), grad in zip(node.next_functions, outs):
            if child is None:
                continue
            if grad is not None:
                grad = _as_expected(grad, child._input_metadata[slot])
                into = grads.setdefault(child, {})
                if slot not in into:
                    into[slot] = grad
                else:
                    with accumulating() if accumulating is not None else contextlib.nullcontext():
                        into[slot] = into[slot] + grad
            pending[child] -= 1
            if pending[child] == 0:
                ready.append(child)
    return leaves


def _as_expected(grad: torch.Tensor, expected) -> torch.Tensor:
    """What the engine's validate_outputs does to a gradient: sum over broadcast dims, cast the dtype."""
    if tuple(grad.shape) != tuple(expected.shape):
        grad = grad.sum_to_size(expected.shape)
    if grad.dtype != expected.dtype:
        grad = grad.to(expected.dtype)
    return grad


def trace_phases(task, batch: dict, *, autocast: torch.dtype | None = None, backward: bool = False,
                 nets: list[str] | None = None) -> OpTrace:
    """Every phase's loss of ``task`` (and its backward) traced on fake CUDA tensors.

    Call inside fake_cuda_mode. Converts the task's networks and state to fake CUDA tensors in place (the
    task is spent afterwards).

    Args:
        task: a fastgan.train.steps.Task built on the CPU with the GPU run's sizes and memory format.
        batch: a batch of the GPU run's shapes, dtypes and layouts (values are never read).
        autocast: the CUDA autocast dtype, None for none (--amp --amp-dtype).
        backward: also run the backward of each phase's total loss.
    """
    from ..train.steps import set_trainable

    for module in (*task.nets.values(), *task.state.values()):
        to_device_(module, "cuda")
    inputs = {k: torch.empty_strided(v.shape, v.stride(), dtype=v.dtype, device="cuda") for k, v in batch.items()}
    trace = OpTrace({**task.nets, **task.state})
    with trace:
        for phase in task.phases:
            set_trainable(task, phase)
            with cuda_autocast(autocast):
                losses = phase.loss(inputs)
            if backward:
                with trace.backward_pass():
                    run_backward(losses["total"], trace.on_node, trace.accumulating)
    set_trainable(task, None)
    return trace


@functools.cache
def gpu_run_trace(model: str, overrides: tuple = (), autocast: torch.dtype | None = torch.bfloat16,
                  channels_last: bool = True) -> OpTrace:
    """The trace of one training iteration of a GPU run of ``model`` (forward and backward of every
    phase), cached per arguments. ``overrides``: TrainConfig fields as sorted (name, value) pairs."""
    from .tasks import cpu_standin

    amp = {None: None, torch.bfloat16: "bf16", torch.float16: "fp16"}[autocast]
    setup = cpu_standin(model, amp, tiny=False, channels_last=channels_last, **dict(overrides))
    with fake_cuda_mode(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trace = trace_phases(setup.task, setup.batch(), autocast=autocast, backward=True)
    trace.warnings = [str(w.message) for w in caught]
    return trace


class _Recorder(TorchDispatchMode):
    def __init__(self, trace: OpTrace):
        super().__init__()
        self.trace = trace

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        self.trace.record(func, args, kwargs, out)
        return out
