"""The step ledger: every kernel launch, byte and FLOP of one training iteration as a CUDA run executes it,
counted on the CPU (issue 20).

``python -m fastgan.testing.ledger MODEL [train flags] [--impl auto|ref] [--json FILE] [--top N] [--gpu NAME]``
prints the table (reference path and fastgan's, per category; ``--top N``: the N costliest kernels);
``--markdown`` prints the docs' table of the recipe workloads (:data:`WORKLOADS`) and ``--readme
docs/engine-and-performance.md`` rewrites its generated block.

What is traced: one iteration of ``--device cuda --cuda-graphs`` (fastgan.train.graphs.GraphedTrainStep),
built by the trainer's own code (fastgan.testing.tasks.cpu_standin: resolve_config, build_task,
configure_engine, fused Adam) and run on fake CUDA tensors (fastgan.testing.fake_cuda): the copy of the
batch into the graphs' static inputs, then each phase as the graphs capture it (fastgan.train.steps.run_phase
under the graphs' own autocast: forward, backward, the capturable fused optimiser step, the loss
accumulators), then the learning-rate schedulers' step. Backward runs fake_cuda.run_backward, which does
what the autograd engine does (gradient sums, casts to the expected dtype; here also the copy
AccumulateGrad makes of a gradient whose strides are not its parameter's).

How each traced op becomes kernels:

- fastgan's Triton ops: the custom op's own implementation (its launchers) is run again on meta tensors with
  each Triton kernel launch recorded instead of run, and every ATen call it makes (the ``parts.sum``
  reductions, layout copies) recorded too. The count is the launcher's code itself, so it cannot drift;
  tests/gpu_ready/test_ledger.py checks that this replay makes the same launches as a real run of every op
  under TRITON_INTERPRET=1.
- fastgan's C++/CUDA op (reflect_pad_conv2d): its launcher is C++, so its module declares a replay of it
  (``reflect_pad_conv2d_launches``) next to the Python side; the test checks the ATen calls against the C++
  CPU path and the kernel launches against the .cu file.
- ATen ops: :data:`ATEN_LAUNCHES`, a small table with a reason per entry; every other ATen op that writes a
  tensor is one kernel (TensorIterator and reduction ops launch one kernel per call); views, allocations
  and metadata ops none.

Bytes: per kernel, every tensor it reads plus every tensor it writes, each counted once per kernel at its
storage extent (a broadcast input counts once); a kernel's output that is also its input (in place) is
read and written. A kernel that reads a tensor twice in one launch counts it once: its launcher plans the second
read to come from L2 (instance_norm_act's one-launch and fused paths, where the data re-read fits in half the
L2; larger tensors take the split path's two launches, each counted). A Triton kernel may declare the tensors
a launch touches (``ledger_tensors``), where its arguments say more than it uses. FLOPs: convolutions and
matmuls by ``torch.utils.flop_counter``'s formulas (fastgan's convolution by the same formulas on its padded
input).

The roofline lower bound (:data:`GPUS`) is a model, not a measurement: per kernel the largest of its FLOPs
at the GPU's dense peak for its dtype, its bytes at full memory bandwidth, and a per-launch floor inside a
CUDA graph, summed over the kernels (one stream, so kernels do not overlap).

``ledger_for(model, overrides)`` returns everything as a dict (bench/gpu-check records it next to a
measured step, to compare torch.profiler's kernel count with the ledger's).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib
import json
import os
import pkgutil
import sys
import types
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from unittest import mock

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map

from . import fake_cuda

__all__ = ["ATEN_LAUNCHES", "CATEGORIES", "GPUS", "Gpu", "Kernel", "aten_kernels", "iteration_kernels",
           "ledger_for", "main", "mta_launches", "op_kernels", "summarise", "trace_kernels", "warm_state"]

CATEGORIES = ("convolution", "norm+activation", "pad/fold", "casts", "gradient accumulation", "reductions",
              "optimiser", "losses and pool", "other")


# --- The GPU model: every constant in one place, with its source --------------------------------------
@dataclass(frozen=True)
class Gpu:
    name: str
    peak_flops: dict  # dense FLOP/s by the kernel's compute dtype ("bf16", "fp16", "tf32", "fp32")
    bandwidth: float  # bytes/s of device memory
    launch_s: float  # the least time one kernel takes inside a CUDA graph (launch, ramp-up, tail)
    sources: tuple[str, ...]


GPUS = {
    "h100-sxm": Gpu(
        name="NVIDIA H100 SXM5 80GB",
        peak_flops={"bf16": 989.4e12, "fp16": 989.4e12, "tf32": 494.7e12, "fp32": 66.9e12},
        bandwidth=3.35e12,
        launch_s=1.5e-6,
        sources=(
            "FLOP/s and bandwidth: NVIDIA H100 Tensor Core GPU datasheet (SXM5 column; dense, i.e. half the "
            "'with sparsity' tensor-core figures): BF16/FP16 989.4 TFLOP/s, TF32 494.7, FP32 66.9; HBM3 3.35 TB/s",
            "fp32 convolutions run as TF32 (torch.backends.cudnn.allow_tf32 defaults to True); fp32 matmuls at "
            "FP32 (torch.backends.cuda.matmul.allow_tf32 defaults to False)",
            "launch floor 1.5 us: the low end of issue 20's 1.5-2.5 us per tiny kernel inside a CUDA graph; "
            "an estimate until bench/gpu-check measures it",
        )),
}

# ATen's multi-tensor-apply limits (aten/src/ATen/native/cuda/MultiTensorApply.cuh), which depend on the CUDA
# version torch was built with: 32 KB kernel arguments from CUDA 13 on, 4 KB before.
_MTA_CHUNK = 65536
_MTA_LIMITS = {  # cuda >= 13: (max tensors per launch by depth 1..5, max blocks per launch)
    True: ((770, 448, 336, 252, 210), 2240),
    False: ((110, 64, 48, 36, 30), 320),
}


def _cuda13() -> bool:
    """Whether this torch is a CUDA 13 build (whose multi-tensor-apply limits the ledger then uses)."""
    version = torch.version.cuda or "12"
    return int(version.split(".")[0]) >= 13


@dataclass
class Kernel:
    """One row of the ledger: a kernel (or a group of identical launches) of the traced iteration."""

    op: str  # the traced op: "aten.convolution.default", "fastgan.instance_norm_act_fwd.default"
    kernel: str  # what launches: "cudnn conv (fprop)", "triton _instance_norm_act_stats_kernel", an ATen op
    category: str  # one of CATEGORIES
    phase: str  # "D", "G", or "" outside the phases (input copies, the LR schedule)
    stage: str  # "inputs", "forward", "backward", "optimiser", "losses", "schedule"
    layer: str  # the module (forward) or autograd node (backward) that ran it
    launches: int
    bytes: int  # read + written
    flops: int
    dtype: str  # compute dtype for the FLOP peak: "bf16", "fp16", "tf32", "fp32", "" (no FLOPs)

    def seconds(self, gpu: Gpu) -> float:
        """The modelled lower bound of these launches' time on ``gpu``."""
        compute = self.flops / gpu.peak_flops[self.dtype] if self.flops else 0.0
        per_launch = max(compute, self.bytes / gpu.bandwidth) / max(self.launches, 1)
        return self.launches * max(per_launch, gpu.launch_s)


# --- Bytes and FLOPs of one call ---------------------------------------------------------------------------
def _extent_bytes(t: torch.Tensor) -> int:
    """Bytes of the storage a tensor spans (a broadcast dimension, stride 0, counts once)."""
    if t.numel() == 0:
        return 0
    return (1 + sum((size - 1) * abs(stride) for size, stride in zip(t.shape, t.stride()) if stride)) \
        * t.element_size()


def _tensors(values) -> list[torch.Tensor]:
    flat, _ = tree_flatten(values)
    seen, out = set(), []
    for t in flat:
        if isinstance(t, torch.Tensor) and id(t) not in seen:
            seen.add(id(t))
            out.append(t)
    return out


def _bytes(reads, writes) -> int:
    return sum(map(_extent_bytes, _tensors(reads))) + sum(map(_extent_bytes, _tensors(writes)))


_DTYPE = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32", torch.float64: "fp32"}


def _compute_dtype(t: torch.Tensor, convolution: bool) -> str:
    name = _DTYPE.get(t.dtype, "fp32")
    if name == "fp32" and convolution and torch.backends.cudnn.allow_tf32:
        return "tf32"
    return name


def _flops(func, args, kwargs, out) -> int:
    from torch.utils.flop_counter import flop_registry

    counter = flop_registry.get(func._overloadpacket)
    return int(counter(*args, **kwargs, out_val=out)) if counter is not None else 0


# --- ATen ops: how many kernels each launches on CUDA ----------------------------------------------------
def mta_launches(numels: list[int], depth: int, scalar_list: bool = False) -> int:
    """Kernel launches of ATen's multi_tensor_apply over tensors of these sizes with ``depth`` tensor lists:
    a launch each time the per-launch tensor or block (65536-element chunk) capacity fills, and one for the
    rest (MultiTensorApply.cuh's loop, replayed)."""
    max_tensors, max_blocks = _MTA_LIMITS[_cuda13()]
    max_tensors = max_tensors[depth - 1]
    if scalar_list and not _cuda13():
        max_tensors = (96, 64, 48, 36, 30)[depth - 1]
    elif scalar_list:
        max_tensors = (672, 448, 336, 252, 210)[depth - 1]
    launches = tensors = blocks = 0
    for numel in numels:
        if numel == 0:
            continue
        tensors += 1
        chunks = -(-numel // _MTA_CHUNK)
        for chunk in range(chunks):
            blocks += 1
            if (tensors == max_tensors and chunk == chunks - 1) or blocks == max_blocks:
                launches += 1
                blocks = 0
                tensors = 0 if chunk == chunks - 1 else 1
    return launches + (blocks != 0)


def _cudnn_layout_copies(x, weight, *others) -> list[tuple]:
    """The copies ATen makes before a cuDNN convolution: every tensor it hands cuDNN is made contiguous in one
    memory format, channels_last where the input or the weight is (cudnn_conv_suggest_memory_format)."""
    from torch._prims_common import suggest_memory_format

    if weight.dim() != 4:
        return []
    fmt = torch.channels_last if torch.channels_last in (suggest_memory_format(x), suggest_memory_format(weight)) \
        else torch.contiguous_format
    return [("layout copy before cudnn", 1, 2 * _bytes(t, ()), 0, "") for t in (x, weight, *others)
            if not t.is_contiguous(memory_format=fmt)]


def _conv_kernels(func, args, kwargs, out):
    x, weight, bias = args[0], args[1], args[2]
    rows = _cudnn_layout_copies(x, weight)
    rows += [("cudnn conv (fprop)", 1, _bytes((x, weight), out), _flops(func, args, kwargs, out),
              _compute_dtype(x, True))]
    if bias is not None:
        rows.append(("bias add after cudnn", 1, _bytes((out, bias), out), 0, ""))
    return rows


def _conv_backward_kernels(func, args, kwargs, out):
    from torch.utils.flop_counter import conv_backward_flop

    grad_out, x, weight = args[0], args[1], args[2]
    mask = args[10] if len(args) > 10 else kwargs["output_mask"]
    grad_input, grad_weight, grad_bias = out
    dtype = _compute_dtype(grad_out, True)

    def flops(which):
        return conv_backward_flop(*args[:10], [i == which for i in range(3)], out_val=out)

    rows = _cudnn_layout_copies(x, weight, grad_out)
    if mask[0]:
        rows.append(("cudnn conv (dgrad)", 1, _bytes((grad_out, weight), grad_input), flops(0), dtype))
    if mask[1]:
        rows.append(("cudnn conv (wgrad)", 1, _bytes((grad_out, x), grad_weight), flops(1), dtype))
    if mask[2]:
        rows.append(("bias grad (sum over N, H, W)", 1, _bytes(grad_out, grad_bias), 0, ""))
    return rows


def _gemm_kernels(func, args, kwargs, out):
    return [("cublas gemm", 1, _bytes((args, kwargs), out), _flops(func, args, kwargs, out),
             _compute_dtype(args[1] if func._overloadpacket is torch.ops.aten.addmm else args[0], False))]


def _fused_adam_kernels(func, args, kwargs, out):
    params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps = args[:6]
    amsgrad = kwargs.get("amsgrad", args[11] if len(args) > 11 else False)
    lists = [params, grads, exp_avgs, exp_avg_sqs] + ([max_exp_avg_sqs] if amsgrad else [])
    written = [params, exp_avgs, exp_avg_sqs] + ([max_exp_avg_sqs] if amsgrad else [])
    launches = mta_launches([p.numel() for p in params], len(lists))
    return [("fused adam (multi-tensor apply)", launches, _bytes((lists, steps, kwargs), written), 0, "")]


def _foreach_fast_route(func, lists) -> bool:
    """Whether a foreach op takes ATen's multi-tensor fast route on CUDA (ForeachUtils.h,
    check_fast_path_restrictions): every tensor on one device, dense and non-overlapping, the tensors at each
    index of every list of the same sizes and strides, and one dtype throughout (_foreach_copy_: one dtype per
    list, ForeachBinaryOpList.cu). Otherwise the slow route runs the per-tensor op, one kernel per tensor."""
    from ..ops._triton_util import is_dense  # non-overlapping and dense

    tensors = [t for lst in lists for t in lst]
    if len({t.device for t in tensors}) > 1 or not all(is_dense(t) for t in tensors):
        return False
    if any(len({(tuple(t.shape), t.stride()) for t in column}) > 1 for column in zip(*lists)):
        return False
    if func._overloadpacket is _aten._foreach_copy_:
        return all(len({t.dtype for t in lst}) == 1 for lst in lists)
    return len({t.dtype for t in tensors}) == 1


def _foreach_kernels(func, args, kwargs, out):
    lists = [a for a in args if isinstance(a, (list, tuple)) and a and isinstance(a[0], torch.Tensor)]
    in_place = func._schema.name.endswith("_")
    depth = len(lists) + (0 if in_place else 1)
    scalar_list = any(isinstance(a, (list, tuple)) and a and not isinstance(a[0], torch.Tensor) for a in args)
    fast = _foreach_fast_route(func, lists)
    if fast:
        launches = mta_launches([t.numel() for t in lists[0]], min(depth, 5), scalar_list)
    else:  # the slow route: the op on each tensor
        launches = sum(1 for t in lists[0] if t.numel())
    written = lists[0] if in_place else out
    reads = lists[1:] if func._overloadpacket.__name__ == "_foreach_copy_" else lists  # its destination is not read
    route = "multi-tensor apply" if fast else "slow route: one kernel per tensor"
    return [(f"{func._overloadpacket.__name__} ({route})", launches, _bytes(reads, written), 0, "")]


def _batch_norm_kernels(func, args, kwargs, out):
    training = args[5] if len(args) > 5 else kwargs.get("training", False)
    if not training:
        return [("batch norm (running statistics)", 1, _bytes(args, out[0]), 0, "")]
    x, y = args[0], out[0]
    stats = [t for t in out[1:] if t.numel()]
    return [("batch norm statistics (reduction)", 1, _bytes(x, stats), 0, ""),
            ("batch norm invstd / running-statistics update", 1, _bytes((stats, args[3:5]), stats), 0, ""),
            ("batch norm normalise", 1, _bytes((x, args[1:3], stats), y), 0, "")]


def _batch_norm_backward_kernels(func, args, kwargs, out):
    training = args[7] if len(args) > 7 else kwargs.get("train", False)  # (grad_out, input, weight, running_mean,
    grad_out, x = args[0], args[1]  # running_var, save_mean, save_invstd, train, eps, output_mask)
    grads = [t for t in out if t is not None]
    if not training:
        return [("batch norm backward (running statistics)", 1, _bytes((grad_out, args[2]), grads), 0, "")]
    return [("batch norm backward reduce", 1, _bytes((grad_out, x), grads[1:]), 0, ""),
            ("batch norm backward elementwise", 1, _bytes((grad_out, x), grads[:1]), 0, "")]


def _loss_kernels(func, args, kwargs, out):
    reduction = args[2] if len(args) > 2 else kwargs.get("reduction", 1)  # 0 none, 1 mean, 2 sum
    name = str(func).removesuffix(".default")
    pointwise = (f"{name} (pointwise)", 1, _bytes(args[:2], out if reduction == 0 else args[0]), 0, "")
    if reduction == 0:
        return [pointwise]
    return [pointwise, (f"{name} (reduction)", 1, _bytes(args[0], out), 0, "")]


def _bce_with_logits_kernels(func, args, kwargs, out):
    x = args[0]
    names = ("self", "target", "weight", "pos_weight", "reduction")  # the schema's arguments
    given = dict(zip(names, args)) | kwargs
    reduction = given.get("reduction", 1)
    size = _bytes(x, ())
    rows = [("log_sigmoid", 1, 2 * size, 0, "")]
    if given.get("pos_weight") is not None:  # (pos_weight - 1).mul(target).add_(1), log_sigmoid_input.mul_(...)
        rows += [(step, 1, 3 * size, 0, "") for step in ("pos_weight - 1", "* target", "+ 1", "log_sigmoid *=")]
    rows += [("1 - target", 1, 2 * size, 0, ""), ("(1 - target) * input", 1, 3 * size, 0, ""),
             ("- log_sigmoid", 1, 3 * size, 0, "")]
    if given.get("weight") is not None:
        rows.append(("* weight", 1, 3 * size, 0, ""))
    if reduction != 0:
        rows.append(("reduction", 1, size + _bytes(out, ()), 0, ""))
    return [(f"binary_cross_entropy_with_logits: {name}", *rest) for name, *rest in rows]


_aten = torch.ops.aten

# op overload packet -> (kernels(func, args, kwargs, out) -> [(kernel, launches, bytes, flops, dtype)], reason)
ATEN_LAUNCHES: dict = {
    _aten.convolution: (_conv_kernels, "a 2-D convolution on CUDA runs in cuDNN (fake_cuda_mode picks cuDNN as an "
                        "sm_80+ GPU does): one implicit-GEMM kernel (a lower bound: cuDNN may add a split-K "
                        "reduction or a layout transform), and ATen adds a bias with a separate add_ after "
                        "cudnn_convolution (Convolution.cpp, _convolution); before it, a copy of the input or "
                        "weight that is not contiguous in the format cuDNN is given (channels_last where either "
                        "is: cudnn_conv_suggest_memory_format)"),
    _aten.convolution_backward: (_conv_backward_kernels, "cuDNN's backward data (dgrad) and backward filter "
                                 "(wgrad) are one kernel each (lower bound, as above); the bias gradient is a "
                                 "sum of grad_output over N, H, W, one reduction kernel; each only where "
                                 "output_mask asks for it; layout copies as for the forward, grad_output too"),
    _aten.mm: (_gemm_kernels, "one cuBLAS GEMM"),
    _aten.addmm: (_gemm_kernels, "one cuBLAS(Lt) GEMM with the 1-D bias in its epilogue (a Linear layer)"),
    _aten.bmm: (_gemm_kernels, "one cuBLAS batched GEMM"),
    _aten._fused_adam_: (_fused_adam_kernels, "torch.optim.Adam(fused=True): multi_tensor_apply_for_fused_optimizer "
                         "over params, grads, exp_avg, exp_avg_sq (+ max_exp_avg_sq): one launch per fill of "
                         "the per-launch tensor or 65536-element-chunk capacity (mta_launches)"),
    _aten._fused_adamw_: (_fused_adam_kernels, "as _fused_adam_"),
    _aten.mse_loss: (_loss_kernels, "ATen's mse_loss (Loss.cpp): the squared differences in one TensorIterator "
                     "kernel, then apply_loss_reduction's mean or sum, a second (reduction) kernel"),
    _aten.binary_cross_entropy_with_logits: (_bce_with_logits_kernels, "ATen's binary_cross_entropy_with_logits "
                                             "(Loss.cpp): log_sigmoid(input), (pos_weight's 4 steps,) 1 - target, "
                                             "its product with input, minus the log_sigmoid, (times weight,) then "
                                             "apply_loss_reduction: one kernel each"),
    _aten.native_batch_norm: (_batch_norm_kernels, "ATen's CUDA batch norm (Normalization.cu, batch_norm_cuda_out; "
                              "the reference InstanceNorm2d runs it on [1, N*C, H, W]): in training a statistics "
                              "reduction, the invstd / running-statistics update, and the normalising pass; with "
                              "running statistics the normalising pass only"),
    _aten.native_batch_norm_backward: (_batch_norm_backward_kernels, "ATen's CUDA batch-norm backward "
                                       "(batch_norm_backward_cuda): in training a reduction (sums of dy and dy * "
                                       "xhat, the weight and bias gradients) and an elementwise pass for dx; with "
                                       "running statistics one elementwise pass"),
}
_FOREACH_REASON = ("torch._foreach_* ops and GradScaler's _amp_foreach_non_finite_check_and_unscale_: "
                   "multi_tensor_apply with depth = tensor lists (+1 for an out-of-place result), launches by "
                   "mta_launches, where the fast route's conditions hold (_foreach_fast_route); else one kernel "
                   "per tensor")
_DEFAULT_REASON = ("any other ATen op that writes a tensor: one kernel (TensorIterator and reduction ops launch "
                   "one kernel per call)")
_NO_KERNEL_REASON = "views, allocations (empty*), detach/alias and metadata queries: no kernel"
_WRITE_ONLY_FIRST = {"copy_", "fill_", "zero_", "uniform_", "normal_", "random_", "bernoulli_", "index_copy_",
                     "index_fill_", "masked_fill_"}  # the first argument is written, not read (index_copy_:
# its other rows are neither read nor written; counting the whole destination is an upper bound)


def _launches_kernel(func, args, kwargs, out) -> bool:
    """Whether an ATen call issues GPU work: not a view, an allocation or a metadata query; writes a tensor."""
    if func._overloadpacket in (_aten.to, _aten.contiguous):  # composites seen undecomposed: a copy or self
        return out is not args[0]
    if func.is_view or func in fake_cuda._NO_KERNEL or func.namespace == "prim":
        return False
    if func in (_aten.detach.default, _aten.alias.default, _aten.lift_fresh_copy.default):
        return func is _aten.lift_fresh_copy.default
    writes_arg = any(a.alias_info is not None and a.alias_info.is_write for a in func._schema.arguments)
    return writes_arg or bool(_tensors(out))


def aten_kernels(func, args, kwargs, out) -> list[tuple[str, int, int, int, str]]:
    """The kernels one ATen call launches on CUDA: [(kernel, launches, bytes, flops, dtype)] (see ATEN_LAUNCHES)."""
    if not _launches_kernel(func, args, kwargs, out):
        return []
    entry = ATEN_LAUNCHES.get(func._overloadpacket)
    if entry is not None:
        return entry[0](func, args, kwargs, out)
    name = func._schema.name.split("::")[1]
    if name.startswith(("_foreach_", "_amp_foreach_")):
        return _foreach_kernels(func, args, kwargs, out)
    written = [a for a, spec in zip(args, func._schema.arguments)
               if spec.alias_info is not None and spec.alias_info.is_write]
    reads = list(args[1:] if name in _WRITE_ONLY_FIRST else args) + list(kwargs.values())
    return [(str(func).removesuffix(".default"), 1, _bytes(reads, (out, written)), _flops(func, args, kwargs, out),
             _compute_dtype(args[0], False) if _flops(func, args, kwargs, out) else "")]


# --- Categories ---------------------------------------------------------------------------------------------
_CONV = {"convolution", "convolution_backward", "mm", "addmm", "bmm", "cudnn_convolution"}
_NORM_ACT = {"native_batch_norm", "cudnn_batch_norm", "_native_batch_norm_legit", "_native_batch_norm_legit_functional",
             "_native_batch_norm_legit_no_training", "native_batch_norm_backward", "cudnn_batch_norm_backward",
             "batch_norm_backward", "relu", "relu_", "leaky_relu", "leaky_relu_", "tanh", "threshold_backward",
             "leaky_relu_backward", "tanh_backward", "native_layer_norm", "native_layer_norm_backward",
             "_batch_norm_with_update", "_batch_norm_no_update", "batch_norm_stats", "batch_norm_elemt",
             "batch_norm_gather_stats_with_counts", "batch_norm_backward_reduce", "batch_norm_backward_elemt"}
_PAD_KERNELS = ("reflect_pad_kernel", "reflect_fold_kernel")  # fastgan._C's (reflect_pad_conv2d_cuda.cu)
_PAD = {"reflection_pad2d", "reflection_pad2d_backward", "constant_pad_nd", "replication_pad2d",
        "replication_pad2d_backward"}
_REDUCTIONS = {"sum", "mean", "amax", "var_mean", "var", "sum_to_size"}
# Autograd nodes of the losses (their backward runs in the losses' category).
_LOSS_NODES = ("AbsBackward", "SgnBackward", "MseLossBackward", "BinaryCrossEntropyWithLogitsBackward",
               "L1LossBackward", "MeanBackward")
_OP_CATEGORY = {"fastgan.instance_norm_act": "norm+activation", "fastgan.batch_norm_act": "norm+activation",
                "fastgan.leaky_relu": "norm+activation", "fastgan.tanh": "norm+activation",
                "fastgan.mean_loss": "losses and pool", "fastgan.image_pool": "losses and pool",
                "fastgan.loss_sum": "losses and pool"}


_NORM_LAYERS = ("BatchNorm", "InstanceNorm", "GlobalBatchNorm", "ReLU", "LeakyReLU", "Tanh")
_COPIES = {"copy_", "clone", "contiguous", "_to_copy"}


def _category(op: str, kernel: str, *, stage: str, layer: str, layer_type: str, in_nets: bool, accumulates: bool,
              cast: bool) -> str:
    """The ledger category of one kernel of traced op ``op`` (see CATEGORIES), in this order: the optimiser's
    and the schedule's work, the engine's gradient sums, dtype casts, convolutions (with their bias add and
    bias gradient), pads and folds, normalisation and activation (kernels of fastgan's norm/act ops other
    than their partial-sum reductions and layout copies; ATen's; ops inside a norm or activation layer),
    the losses and image pools (forward outside the networks, backward of the losses' nodes), reductions,
    and the rest (layout copies among them)."""
    if stage in ("optimiser", "schedule"):
        return "optimiser"
    if accumulates:
        return "gradient accumulation"
    if cast:
        return "casts"
    name = kernel.split(".")[1] if kernel.startswith("aten.") else ""
    if kernel.startswith(("cudnn conv", "cublas", "bias add after cudnn", "bias grad")) or name in _CONV:
        return "convolution"
    if kernel in _PAD_KERNELS or name in _PAD:
        return "pad/fold"
    own = next((c for prefix, c in _OP_CATEGORY.items() if op.startswith(prefix)), None)
    if kernel.startswith(("triton ", "batch norm")) or name in _NORM_ACT:
        return own or "norm+activation"
    if name in _REDUCTIONS:
        return "reductions"
    if name in _COPIES:
        return "other"
    if own is not None or (stage == "forward" and layer_type.startswith(_NORM_LAYERS)):
        return "norm+activation"
    if stage == "losses" or (stage == "forward" and not in_nets) or (
            stage == "backward" and layer.startswith(_LOSS_NODES)):
        return "losses and pool"
    return "other"


def _is_cast(func, args, out) -> bool:
    name = func._schema.name.split("::")[1]
    if name == "_foreach_copy_":  # fastgan.ops._casts: a network's parameters (or their gradients) in one copy
        return bool(args[0]) and args[0][0].dtype != args[1][0].dtype
    if name not in ("_to_copy", "copy_", "to"):
        return False
    source = args[1] if name == "copy_" else args[0]
    target = args[0] if name == "copy_" else next(iter(_tensors(out)), None)
    return target is not None and source.dtype != target.dtype


# --- fastgan's own ops: replays of their launchers on meta tensors ----------------------------------------
class _Calls(TorchDispatchMode):
    """Records each ATen call (with its kernels) and each launch of a fastgan kernel made while active.

    ``nested``: a fastgan custom op's own calls are recorded by a nested _Calls inside it (they are what its
    implementation runs), and the op itself as one entry ("op", name, inner calls)."""

    def __init__(self, costs: bool = True):
        super().__init__()
        # ("aten", name, kernels, cast) | ("kernel", name, bytes) | ("op", name, inner entries, (args, kwargs) specs)
        self.entries: list[tuple] = []
        self.costs = costs
        self._launching = 0

    def __torch_dispatch__(self, func, types_, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self._launching:
            return func(*args, **kwargs)
        if func.namespace == "fastgan":
            # Straight to the op's kernel for its device: calling func would enter its autograd layer again and
            # come back here. The kernel's own ATen calls and launches are recorded by ``inner``.
            device = next(t.device for t in _tensors((args, kwargs)))
            keys = torch._C.DispatchKeySet(getattr(torch._C.DispatchKey, device.type.upper()))
            inner = _Calls(self.costs)
            with _active(inner):
                out = func.redispatch(keys, *args, **kwargs)
            self.entries.append(("op", str(func), inner.entries, tree_map(fake_cuda._spec, (args, kwargs))))
            return out
        out = func(*args, **kwargs)
        if _launches_kernel(func, args, kwargs, out):
            kernels = aten_kernels(func, args, kwargs, out) if self.costs else []
            self.entries.append(("aten", str(func), kernels, _is_cast(func, args, out)))
        return out

    def kernel(self, name: str, *tensors) -> None:
        """A launch of fastgan's own kernel ``name`` touching ``tensors`` (each read or written once)."""
        self.entries.append(("kernel", name, _bytes(tensors, ())))


_ACTIVE: list[_Calls] = []  # the _Calls that a Triton launch is recorded into (the innermost)


@contextlib.contextmanager
def _recording(calls: _Calls, run_triton: bool):
    """``calls`` active, with each Triton kernel launch recorded into the innermost active _Calls (and run only
    when ``run_triton``: the real interpreted launches of the CPU check)."""
    from ..ops import _triton_util

    getitem = _triton_util.kernel.__getitem__

    def record(self, args, kwargs):
        # Every tensor argument, read or written once in whole; or what the kernel declares it touches
        # (``ledger_tensors``: image_pool reads and writes one slot of its pool per image).
        touched = getattr(self, "ledger_tensors", None)
        tensors = touched(*args, **kwargs) if touched else [a for a in args if isinstance(a, torch.Tensor)]
        _ACTIVE[-1].kernel(f"triton {self.fn.__name__}", *tensors)

    def launch(self, grid):
        def run(*args, **kwargs):
            target = _ACTIVE[-1]
            record(self, args, kwargs)
            if run_triton:
                target._launching += 1
                try:
                    getitem(self, grid)(*args, **kwargs)
                finally:
                    target._launching -= 1
        return run

    def phases(self, grid, *args, cooperative, **kwargs):
        # A GPU runs both phases in one launch (kernel.run_phases): recorded as that one, run as the interpreter
        # runs it (a launch per phase).
        target = _ACTIVE[-1]
        record(self, args, dict(kwargs, PHASE=0))
        if run_triton:
            target._launching += 1
            try:
                for phase in (1, 2):
                    getitem(self, grid)(*args, **kwargs, PHASE=phase)
            finally:
                target._launching -= 1

    with mock.patch.object(_triton_util.kernel, "__getitem__", launch), \
            mock.patch.object(_triton_util.kernel, "run_phases", phases), _active(calls):
        yield calls


@contextlib.contextmanager
def _active(calls: _Calls):
    _ACTIVE.append(calls)
    try:
        with calls:
            yield calls
    finally:
        _ACTIVE.pop()


def _implementation(op: str) -> Callable:
    """The Python function behind a fastgan custom op (``"fastgan::instance_norm_act_fwd"``): its launchers."""
    from torch._library.custom_ops import OPDEFS

    return OPDEFS[op]._init_fn


@functools.cache
def extension_launches() -> dict[str, Callable]:
    """The declared replays of the C++ ops' launchers: ``EXTENSION_LAUNCHES`` of every fastgan/ops module."""
    from .. import ops

    found = {}
    for info in pkgutil.iter_modules(ops.__path__):
        found |= getattr(importlib.import_module(f"{ops.__name__}.{info.name}"), "EXTENSION_LAUNCHES", {})
    return found


def replay_op(op: str, args: tuple, kwargs: dict, calls: _Calls) -> None:
    """Runs fastgan op ``op`` ("fastgan::name") on meta tensors as its CUDA launcher would, into ``calls``."""
    replay = extension_launches().get(op)
    if replay is not None:
        replay(*args, kernel=calls.kernel, **kwargs)
        return
    _implementation(op)(*args, **kwargs)


_REPLAYS: dict[str, list[tuple]] = {}  # op_kernels' results by op and argument specs (same shapes, same launches)


def op_kernels(op: str, args: tuple, kwargs: dict) -> list[tuple]:
    """The calls fastgan op ``op`` ("fastgan::name", arguments as tensors of any device or TensorSpec) makes
    on CUDA: [("aten", name, kernels, cast) | ("kernel", name, bytes)], from its launcher run on fake CUDA
    tensors (its Triton launches recorded, not run)."""
    def spec(value):
        return fake_cuda._spec(value) if isinstance(value, torch.Tensor) else value

    key = repr((op, tree_map(spec, (args, kwargs))))
    if key not in _REPLAYS:
        _REPLAYS[key] = _op_kernels(op, args, kwargs)
    return _REPLAYS[key]


def _op_kernels(op: str, args: tuple, kwargs: dict) -> list[tuple]:
    from ..ops import _triton_util

    def fake(value):  # on fake CUDA tensors, so that ATen's calls inside take the layouts they take on a GPU
        if isinstance(value, (fake_cuda.TensorSpec, torch.Tensor)):
            value = fake_cuda._spec(value)
            return torch.empty_strided(value.shape, value.stride, dtype=value.dtype, device="cuda")
        return value

    calls = _Calls()
    with fake_cuda.fake_cuda_mode(), warnings.catch_warnings(), \
            mock.patch.object(_triton_util, "device_guard", lambda x: contextlib.nullcontext()):
        warnings.simplefilter("ignore")
        args, kwargs = tree_map(fake, (args, kwargs))
        with _recording(calls, run_triton=False):
            replay_op(op, args, kwargs, calls)
    return calls.entries


# --- The traced iteration ----------------------------------------------------------------------------------
# In-place ops with no outputs and no meta kernel (fake tensors cannot run them): recorded, not run.
_NO_META = {_aten._fused_adam_.default, _aten._fused_adam_.tensor_lr, _aten._fused_adamw_.default,
            _aten._fused_adamw_.tensor_lr}


class _SkipNoMeta(TorchDispatchMode):
    def __init__(self, trace=None):
        super().__init__()
        self.trace = trace

    def __torch_dispatch__(self, func, types_, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _NO_META:
            if self.trace is not None:
                self.trace.record(func, args, kwargs, None)
            return None
        out = func(*args, **kwargs)
        if self.trace is not None:
            self.trace.record(func, args, kwargs, out)
        return out


class _LedgerTrace(fake_cuda.OpTrace):
    """An OpTrace that also keeps each ATen call's kernels (bytes need the strides, known only here) and the
    phase and stage it ran in."""

    def __post_init__(self):
        super().__post_init__()
        self.extra: dict[int, dict] = {}
        self.phase = ""
        self.stage = "inputs"

    def _recorder(self) -> TorchDispatchMode:
        return _SkipNoMeta(self)

    def record(self, func, args, kwargs, out) -> None:
        before = len(self.calls)
        super().record(func, args, kwargs, out)
        if len(self.calls) == before:
            return
        kernels = [] if func.namespace == "fastgan" else aten_kernels(func, args, kwargs, out)
        launches = func.namespace == "fastgan" or bool(kernels)
        self.extra[before] = dict(phase=self.phase, stage=self.stage, kernels=kernels, launches=launches,
                                  cast=func.namespace != "fastgan" and launches and _is_cast(func, args, out))


def _graph_autocast(task) -> Callable[[], contextlib.AbstractContextManager]:
    """The autocast the CUDA graphs run each phase under (GraphedTrainStep._autocast), as a fake-CUDA context:
    the dtype and weight-cast cache it asks fastgan.ops.autocast or torch.autocast for, taken from a call of
    it with both intercepted."""
    from .. import ops
    from ..train.graphs import GraphedTrainStep

    seen = {}

    def ops_autocast(device_type, dtype):
        seen.update(dtype=dtype, cache=True)
        return contextlib.nullcontext()

    def torch_autocast(device_type, dtype=None, enabled=True, cache_enabled=None):
        seen.update(dtype=dtype if enabled else None, cache=cache_enabled is not False)
        return contextlib.nullcontext()

    with mock.patch.object(torch, "autocast", torch_autocast), \
            mock.patch.object(ops, "autocast", ops_autocast) if hasattr(ops, "autocast") else contextlib.nullcontext():
        GraphedTrainStep._autocast(types.SimpleNamespace(task=task))
    if not seen and task.amp_dtype is not None:
        raise RuntimeError("ledger: GraphedTrainStep._autocast calls neither fastgan.ops.autocast nor torch.autocast; "
                           "update fastgan.testing.ledger._graph_autocast to trace what it does")

    @contextlib.contextmanager
    def autocast():
        with fake_cuda.cuda_autocast(seen.get("dtype")):
            cache = torch.is_autocast_cache_enabled()
            torch.set_autocast_cache_enabled(seen.get("cache", True))
            try:
                yield
            finally:
                torch.set_autocast_cache_enabled(cache)

    return autocast


def _to_fake_cuda(task) -> None:
    """The task's networks, state and optimisers on fake CUDA tensors (the optimisers' groups re-pointed at
    the new parameters), optimisers capturable with device learning rates as the graphs make them, and their
    state created as warm-up leaves it (outside the trace)."""
    from ..train.graphs import make_capturable

    old = {name: list(net.parameters()) for name, net in task.nets.items()}
    for module in (*task.nets.values(), *task.state.values()):
        fake_cuda.to_device_(module, "cuda")
    new = {id(p): q for name, net in task.nets.items() for p, q in zip(old[name], net.parameters())}
    for optimizer in task.optimizers.values():
        for group in optimizer.param_groups:
            group["params"] = [new[id(p)] for p in group["params"]]
        make_capturable(optimizer, torch.device("cuda"))
        warm_state(optimizer)


def warm_state(optimizer: torch.optim.Optimizer) -> None:
    """Creates an optimiser's state on fake CUDA tensors, as warm-up leaves it before the graphs capture a step
    (a step on zero gradients, untraced; the gradients are then set to None)."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            p.grad = torch.zeros_like(p)
    with warnings.catch_warnings(), _SkipNoMeta():
        warnings.simplefilter("ignore")
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def trace_kernels(prepare: Callable[[], Callable[[], torch.Tensor | None]], nets: dict | None = None,
                  stage: str = "forward", backward: bool = False) -> list[Kernel]:
    """The kernels of one call on fake CUDA tensors: ``prepare()`` runs first, untraced, inside fake_cuda_mode
    after ``nets`` are moved to fake CUDA tensors, and returns the function to trace (it makes its inputs with
    device="cuda"); with ``backward`` the backward of its result (a scalar) is traced too. For small cases
    (tests, one layer); a training iteration is :func:`iteration_kernels`."""
    nets = nets or {}
    with fake_cuda.fake_cuda_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for net in nets.values():
            fake_cuda.to_device_(net, "cuda")
        fn = prepare()
        trace = _LedgerTrace(nets)
        trace.stage = stage
        with trace:
            out = fn()
            if backward:
                trace.stage = "backward"
                with trace.backward_pass():
                    fake_cuda.run_backward(out, trace.on_node, trace.accumulating)
    return _rows(trace, set(nets))


def iteration_kernels(setup) -> tuple[list[Kernel], list[str]]:
    """The kernels of one --cuda-graphs iteration of ``setup`` (fastgan.testing.tasks.cpu_standin, tiny=False),
    and the warnings raised while tracing. The task is spent afterwards."""
    from ..train.steps import run_phase, set_trainable

    task, batch = setup.task, setup.batch()
    with fake_cuda.fake_cuda_mode(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _to_fake_cuda(task)
        autocast = _graph_autocast(task)
        given = {k: torch.empty_strided(v.shape, v.stride(), dtype=v.dtype, device="cuda") for k, v in batch.items()}
        trace = _LedgerTrace({**task.nets, **task.state})

        def backward(loss, gradient=None, retain_graph=None, create_graph=False, inputs=None):
            trace.stage = "backward"
            with trace.backward_pass():
                leaves = fake_cuda.run_backward(loss, trace.on_node, trace.accumulating)
                trace.on_node(types.SimpleNamespace())  # AccumulateGrad's copies, if any: no node of the model
                trace._node = "AccumulateGrad"
                for p, grad in leaves.items():
                    if grad.stride() != p.stride():  # AccumulateGrad keeps the parameter's layout (a copy)
                        grad = torch.empty_strided(p.shape, p.stride(), dtype=p.dtype, device=p.device).copy_(grad)
                    p.grad = grad if p.grad is None else p.grad + grad
            trace.stage = "optimiser"

        with trace, mock.patch.object(torch.Tensor, "backward", backward):
            static = {k: torch.empty_like(v) for k, v in given.items()}
            for key, value in given.items():  # GraphedTrainStep.__call__: the batch into the static inputs
                static[key].copy_(value, non_blocking=True)
            for phase in task.phases:
                set_trainable(task, phase)
                for _ in range(phase.repeats):
                    task.optimizers[phase.optimizer].zero_grad(set_to_none=True)
                    trace.phase, trace.stage = phase.name, "forward"
                    losses = run_phase(task, phase, static, autocast)
                    trace.stage = "losses"
                    # GraphedTrainStep._capture: the fp32 loss accumulators, one _foreach_add_ per phase
                    torch._foreach_add_([torch.empty((), dtype=torch.float32, device="cuda") for _ in losses],
                                        [value.detach() for value in losses.values()])
            set_trainable(task, None)
            trace.phase, trace.stage = "", "schedule"
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                for scheduler in task.schedulers.values():  # fastgan.train.loop: once per iteration
                    scheduler.step()
    return _rows(trace, set(task.nets)), [str(w.message) for w in caught]


def _rows(trace: _LedgerTrace, nets: set[str]) -> list[Kernel]:
    """The traced calls as kernel rows: an ATen call by the ATen table, a fastgan op by its launcher's replay."""
    _REPLAYS.clear()  # replays are shared within one trace only: the launchers' code may differ between traces
    rows = []
    for i, call in enumerate(trace.calls):
        extra = trace.extra.get(i)
        if extra is None or not extra["launches"]:
            continue
        stage = extra["stage"] if not call.backward else "backward"
        where = dict(stage=stage, layer=call.layer, layer_type=call.layer_type, accumulates=call.accumulates,
                     in_nets=call.layer.split(".")[0] in nets)
        if call.namespace == "fastgan":
            args, kwargs = call.args
            entries = _flatten(op_kernels(call.op.rsplit(".", 1)[0].replace(".", "::", 1), args, kwargs))
        else:
            entries = [("aten", call.op, extra["kernels"], extra["cast"])]
        for entry in entries:
            kernels = [(entry[1], 1, entry[2], 0, "")] if entry[0] == "kernel" else entry[2]
            cast = entry[0] == "aten" and entry[3]
            for kernel, launches, nbytes, flops, dtype in kernels:
                rows.append(Kernel(op=call.op, kernel=kernel, phase=extra["phase"], stage=stage, layer=call.layer,
                                   category=_category(call.op, kernel, cast=cast, **where), launches=launches,
                                   bytes=nbytes, flops=flops, dtype=dtype))
    return rows


def _flatten(entries):
    for entry in entries:
        if entry[0] == "op":
            yield from _flatten(entry[2])
        else:
            yield entry


# --- The ledger of a workload ------------------------------------------------------------------------------
_NOT_TRACED = ("model", "data", "device", "loader", "workers", "out", "resume", "cuda_graphs", "dry_run",
               "tensorboard", "sample_every", "save_every", "log_every", "eval_every", "iters")


def _setup(model: str, overrides: dict):
    from .tasks import cpu_standin

    overrides = {k: v for k, v in overrides.items() if k not in _NOT_TRACED}
    amp = overrides.pop("amp", False)
    amp_dtype = overrides.pop("amp_dtype", "bf16")
    return cpu_standin(model, amp_dtype if amp else None, tiny=False, **overrides)


_OUTSIDE_GRAPHS = ("inputs", "schedule")


def summarise(rows: list[Kernel], gpu: Gpu) -> dict:
    """Totals over ``rows``, per category and overall, with the modelled lower bound on ``gpu`` in seconds."""
    def total(selected):
        selected = list(selected)
        return dict(launches=sum(r.launches for r in selected), bytes=sum(r.bytes for r in selected),
                    flops=sum(r.flops for r in selected), seconds=sum(r.seconds(gpu) for r in selected))

    out = {"total": total(rows), "categories": {c: total(r for r in rows if r.category == c) for c in CATEGORIES}}
    out["total"]["non_convolution_bytes"] = out["total"]["bytes"] - out["categories"]["convolution"]["bytes"]
    # What the CUDA graphs replay (a profiler of the replays sees these): not the batch copy into the static inputs
    # nor the LR schedule, which run between the replays.
    out["total"]["graph_launches"] = sum(r.launches for r in rows if r.stage not in _OUTSIDE_GRAPHS)
    return out


_SHOWN = ("batch_size", "image_size", "amp", "amp_dtype", "channels_last")  # resolved, in the output


def ledger_for(model: str, overrides: dict | None = None, impls: tuple[str, ...] = ("ref", "auto"),
               gpu: str = "h100-sxm", kernels: bool = False) -> dict:
    """The ledger of one training iteration of ``model`` as a --device cuda --cuda-graphs run executes it.

    Args:
        model: a registered model name.
        overrides: TrainConfig fields, as the trainer's flags set them (``{"batch_size": 1, "amp": True}``);
            the model's recipe fills the rest. Data, device and output fields are ignored (synthetic data of
            the configured size; CUDA).
        impls: the --impl values to trace ("ref", the plain PyTorch reference path; "auto", fastgan's).
        gpu: a key of GPUS for the modelled lower bound.
        kernels: also return every kernel row.
    Returns:
        {"model", "overrides", "resolved" (batch and image size, amp, layout), "gpu", "modelled": "...",
        "constants", "aten_table", "impls": {impl: {"total": {launches, graph_launches (those inside the CUDA
        graphs), bytes, flops, seconds, non_convolution_bytes}, "categories": {...}, "warnings": [...],
        "kernels": [...] if asked}}}. Counts are per iteration (every phase, forward, backward, optimiser).
    """
    from ..train.graphs import memory_format

    if gpu not in GPUS:
        raise ValueError(f"ledger: unknown gpu {gpu!r}; choose from {', '.join(GPUS)}")
    overrides = dict(overrides or {})
    out = {"model": model, "overrides": overrides, "gpu": GPUS[gpu].name,
           "modelled": "modelled, not measured: counts from a fake-CUDA trace, times a roofline lower bound",
           "constants": dataclasses.asdict(GPUS[gpu]) | {"mta_limits_cuda13": _cuda13()},
           "aten_table": aten_table(), "impls": {}}
    for impl in impls:
        setup = _setup(model, overrides | {"impl": impl})
        out["resolved"] = {name: getattr(setup.cfg, name) for name in _SHOWN}
        out["resolved"]["channels_last"] = memory_format(setup.cfg, torch.device("cuda")) is torch.channels_last
        rows, caught = iteration_kernels(setup)
        entry = summarise(rows, GPUS[gpu]) | {"warnings": sorted(set(caught))}
        if kernels:
            entry["kernels"] = [dataclasses.asdict(r) for r in rows]
        out["impls"][impl] = entry
    return out


def aten_table() -> dict[str, str]:
    """The ATen launch table, op -> reason, as printed and written to --json."""
    table = {str(op): reason for op, (_, reason) in ATEN_LAUNCHES.items()}
    return table | {"_foreach_*": _FOREACH_REASON, "*": _DEFAULT_REASON, "views": _NO_KERNEL_REASON,
                    "fastgan Triton ops": "the custom op's implementation run on fake CUDA tensors: each Triton "
                                          "launch one kernel, its ATen calls by this table",
                    "fastgan C++ ops": "the module's EXTENSION_LAUNCHES replay of the C++ launcher: each named "
                                       "kernel one launch, its ATen calls by this table"}


# --- The recipe workloads, their figures before the diet, and the CI budgets --------------------------------
WORKLOADS = {  # docs/engine-and-performance.md's table and the budget tests: (model, TrainConfig fields)
    "CycleGAN 256² bs1": ("cyclegan", {"batch_size": 1, "amp": True}),
    "CycleGAN 256² bs4": ("cyclegan", {"batch_size": 4, "amp": True}),
    "pix2pix 256² bs1": ("pix2pix", {"batch_size": 1, "amp": True}),
    "DCGAN 64² bs128": ("dcgan", {"image_size": 64, "batch_size": 128, "amp": True}),
}

# The ledger of each workload (--impl auto) at commit BASELINE_COMMIT, before issue 20's diet: the "before"
# column of the docs' table, and the reference of the CycleGAN byte budget.
BASELINE_COMMIT = "4817622"
BASELINE = {
    "CycleGAN 256² bs1": {"launches": 3513, "bytes": 12186597780, "flops": 1879217012736,
                          "seconds": 0.0073395, "non_convolution_bytes": 7962244784},
    "CycleGAN 256² bs4": {"launches": 3585, "bytes": 39692817192, "flops": 7516868050944,
                          "seconds": 0.0188559, "non_convolution_bytes": 24289136084},
    "pix2pix 256² bs1": {"launches": 465, "bytes": 3195379968, "flops": 86940057600,
                         "seconds": 0.0014301, "non_convolution_bytes": 2689550454},
    "DCGAN 64² bs128": {"launches": 512, "bytes": 2231636660, "flops": 312567922688,
                        "seconds": 0.0013563, "non_convolution_bytes": 1430621876},
}

# Regression guards (tests/gpu_ready/test_ledger.py): the step may not launch more kernels or move more
# non-convolution bytes than this; lower them when a change cuts either.
GUARDS = {  # measured at e340817 + batch_norm_act's two launches per direction and the U-Net's norms fused
    "pix2pix 256² bs1": {"launches": 319, "non_convolution_bytes": 2611311536},
    "DCGAN 64² bs128": {"launches": 169, "non_convolution_bytes": 1365076552},
    # the norms writing the convolutions' reflection pads, the fused losses and image pool, G_A called once, each
    # InstanceNorm direction in one launch (the fused path) where what it reads again fits in half the L2
    "CycleGAN 256² bs1": {"launches": 569, "non_convolution_bytes": 3762837786},
    "CycleGAN 256² bs4": {"launches": 625, "non_convolution_bytes": 14121998882},
}

def markdown_table(workloads=WORKLOADS, gpu: str = "h100-sxm") -> str:
    """The docs' table (docs/engine-and-performance.md): each workload's ledger before the diet (BASELINE) and
    now, --impl auto."""
    lines = [f"| workload (--amp, --cuda-graphs) | launches | MB moved | of which not convolution | GFLOP | "
             f"lower bound on {GPUS[gpu].name.split(' ', 1)[1].rsplit(' ', 1)[0]} |",
             "|---|---|---|---|---|---|"]

    def cell(before, now, scale=1.0, fmt="{:.0f}"):
        b = "–" if before is None else fmt.format(before * scale)
        return f"{b} → {fmt.format(now * scale)}"

    for name, (model, overrides) in workloads.items():
        now = ledger_for(model, overrides, impls=("auto",), gpu=gpu)["impls"]["auto"]["total"]
        before = BASELINE.get(name, {})
        lines.append(f"| {name} | {cell(before.get('launches'), now['launches'])} | "
                     f"{cell(before.get('bytes'), now['bytes'], 1e-6)} | "
                     f"{cell(before.get('non_convolution_bytes'), now['non_convolution_bytes'], 1e-6)} | "
                     f"{cell(before.get('flops'), now['flops'], 1e-9)} | "
                     f"{cell(before.get('seconds'), now['seconds'], 1e3, '{:.2f}')} ms |")
    return "\n".join(lines)


# --- Printing -----------------------------------------------------------------------------------------------
_IMPL_NAME = {"ref": "reference (--impl ref)", "auto": "fastgan (--impl auto)"}


def format_table(ledger: dict) -> str:
    impls = list(ledger["impls"])
    header = f"{'category':<22}" + "".join(f" | {_IMPL_NAME.get(i, i):^38}" for i in impls)
    sub = f"{'':<22}" + "".join(f" | {'launches':>8} {'MB':>9} {'GFLOP':>9} {'us':>9}" for _ in impls)
    r = ledger["resolved"]
    sizes = (f"batch {r['batch_size']}, {r['image_size']}x{r['image_size']}, "
             f"{'autocast ' + r['amp_dtype'] if r['amp'] else 'fp32'}, {'NHWC' if r['channels_last'] else 'NCHW'}")
    lines = [f"{ledger['model']} {_describe(ledger['overrides'])} ({sizes}): one training iteration (--cuda-graphs)",
             header, sub, "-" * len(sub)]

    def cells(t):
        return f" | {t['launches']:>8} {t['bytes'] / 1e6:>9.1f} {t['flops'] / 1e9:>9.1f} {t['seconds'] * 1e6:>9.0f}"

    for c in CATEGORIES:
        lines.append(f"{c:<22}" + "".join(cells(ledger["impls"][i]["categories"][c]) for i in impls))
    lines.append("-" * len(sub))
    lines.append(f"{'total':<22}" + "".join(cells(ledger["impls"][i]["total"]) for i in impls))
    lines.append(f"{'non-convolution MB':<22}" + "".join(
        f" | {ledger['impls'][i]['total']['non_convolution_bytes'] / 1e6:>38.1f}" for i in impls))
    lines.append(f"us: a roofline lower bound on an {ledger['gpu']}. Every figure is modelled, not measured "
                 "(the constants and every kernel: --json).")
    for i in impls:
        for w in ledger["impls"][i]["warnings"]:
            if "falls back" in w:
                lines.append(f"note ({i}): {w}")
    return "\n".join(lines)


def top_kernels(rows: list[dict], gpu: Gpu, n: int) -> str:
    """The ``n`` kernels (grouped by kernel, traced op and stage) with the largest modelled time, as lines."""
    groups: dict[tuple, list] = {}
    for r in rows:
        groups.setdefault((r["category"], r["stage"], r["kernel"], r["op"]), []).append(r)
    totals = []
    for key, members in groups.items():
        seconds = sum(Kernel(**m).seconds(gpu) for m in members)
        totals.append((seconds, sum(m["launches"] for m in members), sum(m["bytes"] for m in members), key))
    lines = [f"{'us':>8} {'launches':>8} {'MB':>9}  category / stage / kernel (traced op)"]
    for seconds, launches, nbytes, (category, stage, kernel, op) in sorted(totals, reverse=True)[:n]:
        shown = kernel if op.removeprefix("aten.").removesuffix(".default") == kernel.removeprefix("aten.") \
            else f"{kernel} ({op.removesuffix('.default')})"
        lines.append(f"{seconds * 1e6:>8.0f} {launches:>8} {nbytes / 1e6:>9.1f}  {category} / {stage} / {shown}")
    return "\n".join(lines)


def _describe(overrides: dict) -> str:
    return " ".join(f"--{k.replace('_', '-')}" + ("" if v is True else f" {v}") for k, v in overrides.items()
                    if v is not False) or "(recipe)"


# --- Command line -------------------------------------------------------------------------------------------
PROG = "fastgan.testing.ledger"


def _overrides(argv: list[str]) -> tuple[str, dict]:
    """MODEL and the TrainConfig fields the trainer's flags set (fastgan.train's own parser)."""
    from ..models import get_model
    from ..train.__main__ import build_parser
    from ..train.config import TrainConfig

    parser = build_parser()  # the trainer's own flags; its errors name this command
    for p in (parser, *parser._subparsers._group_actions[0].choices.values()):
        p.name, p.prog = PROG, p.prog.replace("fastgan.train", PROG)
    given = vars(parser.parse_args(argv))
    cfg = TrainConfig(**{k: v for k, v in given.items() if k in TrainConfig.__dataclass_fields__})
    defaults = TrainConfig(model=cfg.model)
    recipe = get_model(cfg.model).defaults()
    given = {}
    for f in dataclasses.fields(TrainConfig):
        value = getattr(cfg, f.name)
        if f.name != "model" and value != recipe.get(f.name, getattr(defaults, f.name)):
            given[f.name] = value
    return cfg.model, given


README_BEGIN = "<!-- ledger: generated by python -m fastgan.testing.ledger --readme FILE - do not edit by hand -->"
README_END = "<!-- /ledger -->"


def readme_block(gpu: str = "h100-sxm") -> str:
    """The generated block of docs/engine-and-performance.md (between README_BEGIN and README_END)."""
    import subprocess
    import textwrap

    try:  # the code measured: the checkout's commit
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True,
                              cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        head = "this checkout"
    text = (f"**Modelled, not measured**: each recipe workload's training iteration (`--amp --cuda-graphs`, every "
            f"phase's forward, backward and fused Adam step) from `python -m fastgan.testing.ledger`, before issue "
            f"20's diet (commit {BASELINE_COMMIT}) → at commit {head}. The lower bound is a roofline on an "
            f"{GPUS[gpu].name} (per kernel the largest of its FLOPs at the dense tensor-core peak, its bytes at "
            f"{GPUS[gpu].bandwidth / 1e12:.2f} TB/s and {GPUS[gpu].launch_s * 1e6:.1f} µs per launch in a CUDA "
            f"graph), not a prediction.")
    return "\n".join([README_BEGIN, textwrap.fill(text, 115), "", markdown_table(gpu=gpu), README_END])


def write_readme(path: str, gpu: str = "h100-sxm") -> None:
    """Rewrites the ledger block of ``path`` in place (atomically); the file must hold the two markers."""
    from ..errors import UserError

    try:
        text = open(path, encoding="utf-8").read()
    except OSError as e:
        raise UserError(f"--readme {path}: cannot read it ({e.strerror})") from None
    if text.count(README_BEGIN) != 1 or text.count(README_END) != 1:
        raise UserError(f"--readme {path}: needs exactly one '{README_BEGIN}' ... '{README_END}' block")
    head, rest = text.split(README_BEGIN)
    tail = rest.split(README_END, 1)[1]
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(head + readme_block(gpu) + tail)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    from ..train.cli import OneLineParser, fail, run

    parser = OneLineParser(PROG, description=__doc__.split("\n\n")[0], add_help=False)
    parser.add_argument("--json", metavar="FILE", help="also write everything (every kernel included) to FILE")
    parser.add_argument("--gpu", default="h100-sxm", choices=sorted(GPUS), help="GPU of the modelled lower bound")
    parser.add_argument("--impl", choices=("auto", "ref"), help="trace one path only (default: both)")
    parser.add_argument("--top", type=int, default=0, metavar="N",
                        help="also list the N kernels (by kernel, op and stage) with the largest modelled time")
    parser.add_argument("--markdown", action="store_true", help="print the docs' table of the recipe workloads")
    parser.add_argument("--aten-table", action="store_true",
                        help="print how each ATen op is counted (the table and its reasons) and the GPU constants")
    parser.add_argument("--readme", metavar="FILE",
                        help="rewrite the ledger block of FILE (docs/engine-and-performance.md)")
    parser.add_argument("-h", "--help", action="store_true")
    args, rest = parser.parse_known_args(argv)
    if args.aten_table:
        for op, reason in aten_table().items():
            print(f"{op}: {reason}")
        gpu = GPUS[args.gpu]
        print(f"\n{gpu.name}: dense FLOP/s {gpu.peak_flops}, {gpu.bandwidth:.3g} B/s, {gpu.launch_s * 1e6} us per "
              f"launch; multi-tensor-apply limits of CUDA {'13+' if _cuda13() else '< 13'}")
        print("\n".join(f"  source: {source}" for source in gpu.sources))
        return 0
    if args.markdown or args.readme:
        if rest:
            fail(PROG, f"--markdown and --readme take no model or train flags (got {' '.join(rest)})")
        if args.readme:
            return run(PROG, write_readme, args.readme, args.gpu) or 0
        print(markdown_table(gpu=args.gpu))
        return 0
    if args.help:
        print(__doc__)
        return 0
    if not rest:
        fail(PROG, "give a MODEL and its train flags, e.g. cyclegan --batch-size 1 --amp (--help says more)")
    model, overrides = _overrides(rest)
    impls = (args.impl,) if args.impl else ("ref", "auto")
    overrides.pop("impl", None)
    if args.json:
        parent = os.path.dirname(os.path.abspath(args.json))
        if not os.path.isdir(parent):
            fail(PROG, f"--json {args.json}: directory {parent} does not exist")
    if args.top < 0:
        fail(PROG, f"--top {args.top}: must not be negative")
    ledger = ledger_for(model, overrides, impls, args.gpu, kernels=bool(args.json or args.top))
    print(format_table(ledger))
    for impl in impls if args.top else ():
        print(f"\n{_IMPL_NAME[impl]}: the {args.top} largest")
        print(top_kernels(ledger["impls"][impl]["kernels"], GPUS[args.gpu], args.top))
    if args.json:
        tmp = f"{args.json}.tmp{os.getpid()}"
        with open(tmp, "w") as f:
            json.dump(ledger, f, indent=1, default=str)
        os.replace(tmp, args.json)  # atomic: an existing file is never left half-written
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
