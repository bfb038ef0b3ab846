"""accelerate(model): put fastgan's fused layers into someone else's model, in place.

GAN code (pytorch-CycleGAN-and-pix2pix, PyTorch-GAN, pytorch/examples' DCGAN) builds its networks from
``nn.Sequential`` runs such as ``ReflectionPad2d, Conv2d, InstanceNorm2d, ReLU``. :func:`accelerate` walks
any module, changes it in place and returns it:

===============================================  =================================================
pattern (adjacent in one Sequential)             becomes
===============================================  =================================================
``ReflectionPad2d, Conv2d``                      ``Identity, ReflectPadConv2d``
``InstanceNorm2d, ReLU | LeakyReLU``             ``InstanceNormAct(act=...), Identity``
``BatchNorm2d, ReLU | LeakyReLU``                ``BatchNorm2dAct(act=...), Identity``
``InstanceNorm2d(track_running_stats=True),``    ``InstanceNormTrackedAct(act=...), Identity``
``ReLU | LeakyReLU``
``Conv2d`` (bias or not) ``, LeakyReLU``         ``Conv2dLeakyReLU, Identity``
``Conv2d, Tanh``                                 ``Conv2dTanh, Identity``
``ReflectionPad2d, Conv2d, Tanh``                ``Identity, Conv2dTanh`` (reflect padding), ``Identity``
``ConvTranspose2d, Tanh``                        ``ConvTranspose2dTanh, Identity``
``InstanceNorm2d`` (anything else after)         ``InstanceNormAct(act="none")``
``Conv2d(padding_mode="reflect")``               ``ReflectPadConv2d``
``LeakyReLU`` (not in place)                     ``fastgan.nn.LeakyReLU``
a module whose forward is ``x + body(x)``,       the same module, its residual add done by the last
``body`` a Sequential ending in InstanceNorm2d   InstanceNormAct (``residual=x``) in its pass
``InstanceNormAct, Identity.., ReflectPadConv2d  the norm writes the convolution's reflection pad
| Conv2dTanh`` (reflect), all made above         (``pad_output``; the convolution ``input_padded``)
===============================================  =================================================

Outside a Sequential (a plain attribute of a module) only the single-module rewrites apply. Pairs change
what single Sequential indices return (an Identity at one, the pair's result at the other): for code that
reads them, ``keep_sequential_outputs=True`` applies only the single-module rewrites (and residual blocks),
``exclude=`` leaves named submodules alone, and by default a Sequential whose owner visibly reads its indices
is left unfused with one warning (see ``_attrs_read_beyond_call``).

What stays identical: outputs and every gradient (the fused layers do the same arithmetic, up to summation
order); state_dict keys (the fused layer sits at the index of the module that held the parameters and the
module it absorbed becomes ``nn.Identity`` at its own index), so checkpoints load both ways; the
``nn.Parameter`` and buffer objects themselves (device, dtype, an optimiser built before the call);
training mode; running-statistics updates; unbatched [C, H, W] input wherever the replaced module took it;
the output memory layout (an InstanceNorm2d's is contiguous, so its replacement's is too); forward,
backward and state_dict hooks on a replaced module (moved to its replacement); ``isinstance(m, nn.Conv2d)``
and nn.Conv2d's attributes on the fused convolutions (a ReflectPadConv2d is the Conv2d with
``padding_mode="reflect"`` and ``padding`` the pad's); class, attributes and hooks of a residual block;
``torch.compile``, ``torch.export``, pickle and deepcopy; ``torch.jit.script``, which compiles each fastgan
layer's plain-PyTorch computation (TorchScript cannot call the Triton launchers) and turns residual blocks
back into their own class (their own forward, on the accelerated body).

Left alone, each for a reason:
- ``nn.LeakyReLU(inplace=True)`` on its own: code may read its input afterwards (pix2pix's U-Net
  concatenates the tensor its ``LeakyReLU(0.2, True)`` overwrote), and torch's in-place op already keeps only
  its output for backward. Inside a fused pair the input is private to the pair, so it is fused there.
- A lone ``BatchNorm2d``: cuDNN's is as fast as a fused one without an activation to save.
- ``InstanceNorm2d(track_running_stats=True)`` without an activation after it: in eval mode it is a
  per-channel affine map, as fast in torch as fused without an activation to save.
- Subclasses of the torch modules (their forward may differ), modules with extra parameters or buffers
  (spectral or weight norm), and a LeakyReLU with a negative slope (its backward cannot work from the output).
- Pairs the fused layers cannot express: non-uniform reflection padding; a Conv2d with its own padding,
  groups, dilation, non-square kernels or strides after a pad, or kernel/stride outside what the fused
  convolution takes (:data:`REFLECT_CONV_KERNELS`, :data:`REFLECT_CONV_STRIDES`).
- Pairs whose hooks would see the tensor between the two modules (a forward or backward hook on the first,
  any hook on the second): left unfused, with one warning naming them.
- Global hooks (``nn.modules.module.register_module_forward_hook``) fire for the modules that run, which
  differ after fusion.

Fusions deliberately not done:
- Leaving out the bias of a convolution before an InstanceNorm (``norm_follows``, fastgan.nn.layers._NormFollows,
  which fastgan's own models declare): the bias parameter would get no gradient (None), and in other people's
  training code that is a change, not a saving: DistributedDataParallel (without find_unused_parameters) fails
  on a parameter that received no gradient, and loops that read every ``p.grad`` (clipping, logging) meet
  None. Declare it on the layers where the training code is known to take it.
- Convolution + InstanceNorm: cuDNN's convolutions are closed kernels; normalising needs statistics over
  the whole convolution output, so the norm would have to run as a second pass anyway (or the convolution be
  rewritten outside cuDNN, which loses more than the saved pass).
- Upsample + convolution: cuDNN has no convolution that reads an upsampled input on the fly, so fusing
  them means writing our own convolution and giving up cuDNN's tuned kernels to save one write and one read
  of the upsampled map.
- BatchNorm1d + ReLU/LeakyReLU (MLP GANs), Linear + Tanh, LeakyReLU(inplace) + Conv2d (U-Net down blocks):
  by the step ledger's count a fused layer issued more kernels (BatchNorm1d: judged when batch_norm_act still
  finished its statistics in small ATen ops; it now runs two kernels each way, so that verdict is open again)
  or the same kernels and bytes; see docs/kernels-and-accelerate.md.
"""

from __future__ import annotations

import ast
import functools
import inspect
import operator
import textwrap
import warnings
from collections.abc import Iterable

import torch
from torch import nn

from ..ops import _dispatch
from .layers import (
    FAST_LAYERS,
    REFLECT_CONV_KERNELS,
    REFLECT_CONV_STRIDES,
    BatchNorm2dAct,
    Conv2dLeakyReLU,
    Conv2dTanh,
    ConvTranspose2dTanh,
    InstanceNormAct,
    InstanceNormTrackedAct,
    LeakyReLU,
    NormThenAct,
    ReflectPadConv2d,
)

__all__ = ["accelerate", "unfuse_batch_norm_act", "REFLECT_CONV_KERNELS", "REFLECT_CONV_STRIDES"]


_RUN_HOOKS = ("_forward_pre_hooks", "_forward_hooks", "_backward_hooks", "_backward_pre_hooks")
# Every per-module hook dict; moving the dict objects keeps the users' RemovableHandles working.
_HOOK_DICTS = ("_forward_pre_hooks", "_forward_pre_hooks_with_kwargs", "_forward_hooks",
               "_forward_hooks_with_kwargs", "_forward_hooks_always_called", "_backward_hooks",
               "_backward_pre_hooks", "_state_dict_hooks", "_state_dict_pre_hooks", "_load_state_dict_pre_hooks",
               "_load_state_dict_post_hooks")


def accelerate(module: nn.Module, impl: str = "auto", *, keep_sequential_outputs: bool | None = None,
               exclude: Iterable[str] = ()) -> nn.Module:
    """Replaces fusable layers of ``module`` with fastgan layers holding the same parameters, in place.

    Args:
        module: any nn.Module; changed in place (nested Sequentials and submodules included; ``module``
            itself is never replaced, so a bare nn.InstanceNorm2d comes back unchanged).
        impl: "auto", "ref", "fast", "triton" or "cuda", set on every new layer that has that path ("triton"
            and "cuda" reach the layers with that kind of fast path; the others get "auto"). Change it later
            with fastgan.nn.set_impl.
        keep_sequential_outputs: True: fuse only inside single modules, never across two modules of a
            Sequential, so every index of every Sequential returns what it did (for code that runs a
            Sequential index by index and keeps intermediate outputs, e.g. CUT's
            ``netG(x, layers, encode_only=True)``). None (default): the same only for the Sequentials whose
            owner's code visibly reads single indices (iterates over, indexes or slices them, lists their
            children; also a Sequential subclass with its own forward), with one warning naming them.
            False: fuse across modules everywhere (nothing reads single indices' outputs).
        exclude: names of submodules (as ``module.named_modules()`` gives them) to leave untouched, with
            everything inside them; a name that is not a submodule raises ValueError.
    Returns:
        ``module`` itself, with the same state_dict keys, device, dtype and training mode.
    """
    _dispatch.check_impl(impl, "accelerate")
    if isinstance(exclude, str):
        exclude = [exclude]  # one name, not its characters
    exclude = set(exclude)
    for name in sorted(exclude):
        try:
            module.get_submodule(name)
        except AttributeError:
            raise ValueError(f"accelerate: exclude names {name!r}, which is not a submodule of the "
                             f"{type(module).__name__} (names are those of named_modules(), e.g. 'model.0')") \
                from None
    walk = _Walk(impl, keep_sequential_outputs, exclude)
    if "" not in exclude:
        walk.run(module, "")
    if walk.blocked:
        warnings.warn("fastgan.accelerate left these pairs unfused because hooks on them would see the tensor "
                      "between the two modules: " + "; ".join(walk.blocked), stacklevel=2)
    if walk.kept:
        warnings.warn("fastgan.accelerate left the layers of these Sequentials unfused because code reads "
                      "their single indices' outputs (iterates over, indexes or slices them), which fusing "
                      "two adjacent layers would change: " + "; ".join(walk.kept) + ". To silence this, pass "
                      "keep_sequential_outputs=True (fuse inside single modules only, everywhere) or False "
                      "(fuse them anyway: nothing uses those outputs)", stacklevel=2)
    return module


def unfuse_batch_norm_act(module: nn.Module) -> nn.Module:
    """Replaces every BatchNorm2dAct inside ``module`` by a NormThenAct around a plain nn.BatchNorm2d, in place.

    For synchronised BatchNorm (data-parallel training): BatchNorm2dAct is not an nn.BatchNorm2d, so
    ``nn.SyncBatchNorm.convert_sync_batchnorm`` (or any converter that swaps BatchNorm modules) passes it by.
    Call this first, then the converter; it swaps each NormThenAct's ``norm``::

        net = nn.SyncBatchNorm.convert_sync_batchnorm(fastgan.nn.unfuse_batch_norm_act(net))

    The nn.BatchNorm2d holds the same Parameter and buffer objects (an optimiser built before the call keeps
    working) with the same eps, momentum, affine and track_running_stats; state_dict keys do not change, so
    checkpoints load into the fused and the unfused model alike; hooks move to the NormThenAct. The
    activation then runs as its own op (fastgan.ops is not used). ``module`` itself is never replaced (a bare
    BatchNorm2dAct comes back unchanged).
    """
    for name, child in list(module.named_children()):
        if isinstance(child, BatchNorm2dAct):
            with torch.device("meta"):  # the real parameters and buffers are adopted below
                norm = nn.BatchNorm2d(child.num_features, child.eps, child.momentum, child.affine,
                                      child.track_running_stats)
            norm = _adopt(norm, child, ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"])
            new = NormThenAct(norm, child.act, child.negative_slope).train(child.training)
            _move_hooks(child, new)
            setattr(module, name, new)
        else:
            unfuse_batch_norm_act(child)
    return module


class _Walk:
    """One accelerate() pass: the options, and what it left unfused and why (for the warnings)."""

    def __init__(self, impl: str, keep_sequential_outputs: bool | None, exclude: set[str]):
        self.impl, self.keep_sequential_outputs, self.exclude = impl, keep_sequential_outputs, exclude
        self.blocked: list[str] = []  # pairs with hooks inside
        self.kept: list[str] = []  # Sequentials whose single indices are read
        self.made: set[int] = set()  # ids of the layers and placeholders this pass put into the model

    def run(self, module: nn.Module, prefix: str, indices_read: str | None = None) -> None:
        """``indices_read``: where ``module``'s single indices are read (from its owner), else None."""
        if isinstance(module, (*FAST_LAYERS, torch.jit.ScriptModule)):
            return
        fused_across = False  # pairs of this Sequential fused (so a norm may write the next convolution's pad)
        if isinstance(module, nn.Sequential):
            if indices_read is None and type(module).forward is not nn.Sequential.forward:
                indices_read = f"{type(module).__qualname__}.forward"  # its own forward runs its layers
            if self.keep_sequential_outputs is None and indices_read is not None:
                self.kept.append(f"{prefix[:-1] or '(the model)'} (read in {indices_read})")
            elif not self.keep_sequential_outputs:
                _fuse_sequential(module, self.impl, prefix, self.blocked, self.exclude, self.made)
                fused_across = True
        read = _children_indices_read(module)
        for name, child in list(module.named_children()):
            if prefix + name in self.exclude:
                continue
            single = _replace_single(child, self.impl)
            if single is not None:
                _move_hooks(child, single)
                setattr(module, name, single)
                self.made.add(id(single))
            else:
                self.run(child, f"{prefix}{name}.", read.get(name))
        if fused_across:  # after the single-module rewrites, which make reflect-padded convolutions too
            _pad_in_norms(module, self.made)
        _fuse_residual(module)


def _fuse_sequential(seq: nn.Sequential, impl: str, prefix: str, blocked: list[str], exclude=frozenset(),
                     made: set[int] | None = None) -> None:
    names = list(seq._modules)
    i = 0
    while i < len(names) - 1:
        first, second = seq._modules[names[i]], seq._modules[names[i + 1]]
        fused = None if {prefix + names[i], prefix + names[i + 1]} & exclude else _fuse_pair(first, second, impl)
        if fused is None:
            i += 1
            continue
        keep_first, new = fused  # keep_first: the parameters were in ``first``, so the fused layer goes there
        holder, absorbed = (first, second) if keep_first else (second, first)
        # A hook may see only what the fused layer sees: the pair's input (pre-hooks of the first module,
        # when it holds the parameters) and its state.
        seen_inside = [m for m in (absorbed, holder) if _has_run_hooks(m, pre_ok=keep_first and m is holder)]
        if seen_inside or _has_any_hooks(absorbed):
            blocked.append(f"{prefix}{names[i]} + {prefix}{names[i + 1]}")
            i += 1
            continue
        _move_hooks(holder, new)
        placeholder = nn.Identity().train(seq.training)
        pair = (new, placeholder) if keep_first else (placeholder, new)
        seq._modules[names[i]], seq._modules[names[i + 1]] = pair
        if made is not None:
            made.update((id(new), id(placeholder)))
        # A layer made from the second module may absorb the next one too (ReflectionPad2d, Conv2d, Tanh).
        i += 2 if keep_first else 1


def _pad_in_norms(seq: nn.Sequential, made: set[int]) -> None:
    """Where an InstanceNormAct feeds a reflect-padded convolution in ``seq`` (with only placeholders between
    them, all of them made by this accelerate() pass, none with a hook), the norm writes the convolution's pad:
    ``pad_output`` and ``input_padded`` (fastgan.nn.InstanceNormAct). The norm's index then returns the padded
    tensor, as a fused pair's indices return what the pair makes; every value after the convolution is the
    same."""
    layers = list(seq._modules.values())
    for i, norm in enumerate(layers):
        if type(norm) is not InstanceNormAct or id(norm) not in made or norm.pad_output:
            continue
        j = i + 1
        while j < len(layers) and type(layers[j]) is nn.Identity and id(layers[j]) in made:
            j += 1
        conv = layers[j] if j < len(layers) else None
        if id(conv) not in made or getattr(conv, "input_padded", True):
            continue
        if not (type(conv) is ReflectPadConv2d or type(conv) is Conv2dTanh and conv._reflect_fused()):
            continue
        if conv.padding[0] == 0 or any(_has_any_hooks(m) for m in layers[i:j + 1]):
            continue
        norm.pad_output, conv.input_padded = conv.padding[0], True


# Sequentials whose single indices are read ---------------------------------------------------------
# Code such as CUT's ResnetGenerator.forward (``for layer_id, layer in enumerate(self.model): ...
# feats.append(feat)``) keeps the output of single indices; fusing a pair changes those (a ReflectionPad2d
# index becomes an Identity, a norm index returns the activated tensor). Seen conservatively in the owner's
# source: any use of ``self.<sequential>`` other than calling it, reaching one of its plain methods
# (``self.model.parameters()``) or passing it to a function that is not one of Python's iterating builtins
# (``nn.parallel.data_parallel(self.main, x)`` calls it whole) counts as reading its indices. Not seen:
# code in other classes or functions, or a Sequential reached through a dynamic name or another container.
_INDEX_READING_ATTRS = frozenset({"children", "named_children", "modules", "named_modules", "_modules",
                                  "__iter__", "__getitem__", "__len__"})
_ITERATING_BUILTINS = frozenset({"enumerate", "iter", "list", "tuple", "zip", "reversed", "len", "map", "sorted",
                                 "next", "dict", "set", "filter", "any", "all", "sum", "max", "min"})


def _children_indices_read(module: nn.Module) -> dict[str, str]:
    """{child name: "Class.method" that reads its single indices} for ``module``'s Sequential children."""
    sequentials = {name for name, child in module.named_children() if isinstance(child, nn.Sequential)}
    if not sequentials:
        return {}
    read = _attrs_read_beyond_call(type(module))
    return {name: read[name] for name in sequentials if name in read}


@functools.cache
def _attrs_read_beyond_call(cls: type) -> dict[str, str]:
    """{attribute name: "Class.method"} for ``self.<name>`` used other than called, in the methods (but
    __init__) of ``cls`` and of its bases outside torch."""
    found: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if klass is object or klass.__module__.split(".")[0] == "torch":
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except Exception:  # no source (a REPL class, a compiled module) or none Python parses: not seen
            continue
        for fn in ast.walk(tree):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)) or fn.name == "__init__" \
                    or not fn.args.args:
                continue
            me = fn.args.args[0].arg
            parents = {child: node for node in ast.walk(fn) for child in ast.iter_child_nodes(node)}
            for node in ast.walk(fn):
                if not (isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Load)
                        and isinstance(node.value, ast.Name) and node.value.id == me):
                    continue
                parent = parents.get(node)
                called = isinstance(parent, ast.Call) and parent.func is node
                plain_method = isinstance(parent, ast.Attribute) and parent.attr not in _INDEX_READING_ATTRS
                passed_whole = isinstance(parent, ast.Call) and parent.func is not node and not (
                    isinstance(parent.func, ast.Name) and parent.func.id in _ITERATING_BUILTINS)
                if not (called or plain_method or passed_whole):
                    found.setdefault(node.attr, f"{klass.__qualname__}.{fn.name}")
    return found


def _fuse_pair(first: nn.Module, second: nn.Module, impl: str):
    if type(first) is nn.ReflectionPad2d and _reflect_conv_fusable(first, second):
        return False, _reflect_pad_conv(second, first.padding[0], impl)
    if type(second) is nn.Tanh and (_conv_fusable(first) or type(first) is ReflectPadConv2d):
        return True, _conv_tanh(first, impl)
    if type(second) is nn.Tanh and type(first) is nn.ConvTranspose2d and _plain_state(first, {"weight", "bias"}):
        return True, _conv_transpose_tanh(first, impl)
    act = _activation(second)
    if act is not None and _instance_norm_fusable(first):
        return True, _instance_norm_act(first, *act, impl)
    if act is not None and _batch_norm_fusable(first):
        return True, _batch_norm_act(first, *act, impl)
    if act is not None and _tracked_instance_norm_fusable(first):
        return True, _instance_norm_tracked_act(first, *act, impl)
    if act is not None and act[0] == "leaky_relu" and act[1] >= 0 and _conv_fusable(first):
        return True, _conv_leaky_relu(first, act[1], impl)
    return None


def _replace_single(m: nn.Module, impl: str):
    if _instance_norm_fusable(m):
        return _instance_norm_act(m, "none", 0.2, impl)
    if type(m) is nn.LeakyReLU and not m.inplace and m.negative_slope >= 0:
        return LeakyReLU(m.negative_slope, impl=_impl_for(LeakyReLU, impl)).train(m.training)
    if _conv_fusable(m) and m.padding_mode == "reflect" and _reflect_geometry(m, m.padding):
        return _reflect_pad_conv(m, m.padding[0], impl)
    return None


def _activation(m):
    """(act, negative_slope) of an activation module the fused norms take, else None."""
    if type(m) is nn.ReLU:
        return "relu", 0.2
    if type(m) is nn.LeakyReLU:
        return "leaky_relu", m.negative_slope
    return None


# Exact types throughout: a subclass may have changed forward. Extra parameters or buffers (spectral norm's
# weight_orig / weight_u, weight norm's weight_g / weight_v) mean a forward the fused layers do not compute.
def _plain_state(m: nn.Module, params: set[str], buffers: set[str] = frozenset()) -> bool:
    return ({k for k, v in m._parameters.items() if v is not None} <= params
            and {k for k, v in m._buffers.items() if v is not None} <= buffers
            and not m._non_persistent_buffers_set
            and all(p is None or isinstance(p, nn.Parameter) for p in m._parameters.values()))


def _norm_state(m) -> bool:
    # The fused norms take both affine parameters or neither (not a weight without a bias).
    return _plain_state(m, {"weight", "bias"}, {"running_mean", "running_var", "num_batches_tracked"}) \
        and (m.weight is None) == (m.bias is None)


def _instance_norm_fusable(m) -> bool:
    return type(m) is nn.InstanceNorm2d and not m.track_running_stats and _norm_state(m)


def _batch_norm_fusable(m) -> bool:
    return type(m) is nn.BatchNorm2d and _norm_state(m)


def _tracked_instance_norm_fusable(m) -> bool:
    return type(m) is nn.InstanceNorm2d and m.track_running_stats and _norm_state(m)


def _conv_fusable(m) -> bool:
    return type(m) is nn.Conv2d and _plain_state(m, {"weight", "bias"})


def _reflect_geometry(conv: nn.Conv2d, padding) -> bool:
    return (len(set(padding)) == 1 and conv.groups == 1 and conv.dilation == (1, 1)
            and conv.kernel_size[0] == conv.kernel_size[1] and conv.stride[0] == conv.stride[1]
            and conv.kernel_size[0] in REFLECT_CONV_KERNELS and conv.stride[0] in REFLECT_CONV_STRIDES)


def _reflect_conv_fusable(pad: nn.ReflectionPad2d, conv) -> bool:
    return (_conv_fusable(conv) and conv.padding == (0, 0) and conv.padding_mode == "zeros"
            and _reflect_geometry(conv, pad.padding))


def _has_run_hooks(m: nn.Module, pre_ok: bool) -> bool:
    return any(getattr(m, d) for d in _RUN_HOOKS if not (pre_ok and d == "_forward_pre_hooks"))


def _has_any_hooks(m: nn.Module) -> bool:
    return any(getattr(m, d) for d in _HOOK_DICTS)


def _move_hooks(old: nn.Module, new: nn.Module) -> None:
    """Gives ``new`` the hook dicts of ``old`` (same objects, so removing a handle still works)."""
    for d in _HOOK_DICTS:
        setattr(new, d, getattr(old, d))
    new._is_full_backward_hook = old._is_full_backward_hook


def _impl_for(cls, impl: str) -> str:
    return impl if cls.supports(impl) else "auto"


def _adopt(new: nn.Module, old: nn.Module, names) -> nn.Module:
    """Gives ``new`` the Parameter and buffer objects of ``old`` (same storage, device, dtype) and its mode."""
    for name in names:
        setattr(new, name, getattr(old, name))
    return new.train(old.training)


def _reflect_pad_conv(conv: nn.Conv2d, padding: int, impl: str) -> ReflectPadConv2d:
    with torch.device("meta"):  # no throw-away allocation; the real parameters are adopted below
        new = ReflectPadConv2d(conv.in_channels, conv.out_channels, conv.kernel_size, padding, conv.stride,
                               bias=conv.bias is not None, impl=_impl_for(ReflectPadConv2d, impl))
    return _adopt(new, conv, ["weight", "bias"])


def _instance_norm_act(norm: nn.InstanceNorm2d, act: str, slope: float, impl: str) -> InstanceNormAct:
    with torch.device("meta"):
        new = InstanceNormAct(norm.num_features, act=act, negative_slope=slope, eps=norm.eps, affine=norm.affine,
                              impl=_impl_for(InstanceNormAct, impl), contiguous_output=True)
    return _adopt(new, norm, ["weight", "bias"])


def _batch_norm_act(norm: nn.BatchNorm2d, act: str, slope: float, impl: str) -> BatchNorm2dAct:
    with torch.device("meta"):
        new = BatchNorm2dAct(norm.num_features, act=act, negative_slope=slope, eps=norm.eps,
                             momentum=norm.momentum, affine=norm.affine,
                             track_running_stats=norm.track_running_stats, impl=_impl_for(BatchNorm2dAct, impl))
    return _adopt(new, norm, ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"])


def _instance_norm_tracked_act(norm: nn.InstanceNorm2d, act: str, slope: float, impl: str) -> InstanceNormTrackedAct:
    with torch.device("meta"):
        new = InstanceNormTrackedAct(norm.num_features, act=act, negative_slope=slope, eps=norm.eps,
                                     momentum=norm.momentum, affine=norm.affine,
                                     impl=_impl_for(InstanceNormTrackedAct, impl))
    return _adopt(new, norm, ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"])


def _conv_tanh(conv: nn.Conv2d, impl: str) -> Conv2dTanh:
    with torch.device("meta"):
        new = Conv2dTanh(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                         bias=conv.bias is not None, impl=_impl_for(Conv2dTanh, impl), dilation=conv.dilation,
                         groups=conv.groups, padding_mode=conv.padding_mode)
    return _adopt(new, conv, ["weight", "bias"])


def _conv_transpose_tanh(conv: nn.ConvTranspose2d, impl: str) -> ConvTranspose2dTanh:
    with torch.device("meta"):
        new = ConvTranspose2dTanh(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                                  conv.output_padding, conv.groups, bias=conv.bias is not None,
                                  dilation=conv.dilation, impl=_impl_for(ConvTranspose2dTanh, impl))
    return _adopt(new, conv, ["weight", "bias"])


def _conv_leaky_relu(conv: nn.Conv2d, slope: float, impl: str) -> Conv2dLeakyReLU:
    with torch.device("meta"):
        new = Conv2dLeakyReLU(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                              bias=conv.bias is not None, negative_slope=slope,
                              impl=_impl_for(Conv2dLeakyReLU, impl), dilation=conv.dilation, groups=conv.groups,
                              padding_mode=conv.padding_mode)
    return _adopt(new, conv, ["weight", "bias"])


# Residual blocks ----------------------------------------------------------------------------------
# A module whose forward is exactly ``x + self.<body>(x)`` (or ``self.<body>(x) + x``), found with torch.fx,
# keeps its object, class (through a subclass), attributes, hooks and state_dict; only its forward changes
# so that the body's last InstanceNormAct adds x in its own pass.


class _AllLeaves(torch.fx.Tracer):
    def is_leaf_module(self, m, module_qualified_name):
        return True


def _fuse_residual(module: nn.Module) -> None:
    if isinstance(module, (_ResidualForward, nn.Sequential, nn.ModuleList, nn.ModuleDict, *FAST_LAYERS)) \
            or type(module).__module__.startswith("torch."):
        return
    bodies = {name for name, m in module.named_children() if _residual_body(m)}
    if not bodies:
        return
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            graph = _AllLeaves().trace(module)
    except Exception:  # forwards fx cannot trace are not the pattern
        return
    nodes = list(graph.nodes)
    if [n.op for n in nodes] != ["placeholder", "call_module", "call_function", "output"]:
        return
    x, body, add, out = nodes
    if body.target not in bodies or body.args != (x,) or body.kwargs or out.args != (add,) or add.kwargs \
            or add.target not in (operator.add, torch.add) or add.args not in ((x, body), (body, x)):
        return
    module._fastgan_residual = (body.target, add.args[0] is x)
    module.__class__ = _residual_class(type(module))


def _residual_body(m: nn.Module) -> bool:
    """A hook-free Sequential ending in a hook-free InstanceNormAct without activation, made by accelerate."""
    if type(m) is not nn.Sequential or len(m) < 2 or _has_any_hooks(m):
        return False
    last = m[-1]
    return type(last) is InstanceNormAct and last.act == "none" and last.contiguous_output and not _has_any_hooks(last)


class _ResidualForward:
    """Put before a residual block's class: ``x + body(x)`` with the add in the body's last norm."""

    def forward(self, x):
        name, x_first = self._fastgan_residual
        layers = list(self._modules[name])
        h = x
        for layer in layers[:-1]:
            h = layer(h)
        norm = layers[-1]
        if not (isinstance(x, torch.Tensor) and isinstance(h, torch.Tensor) and h.shape == x.shape
                and h.dtype == x.dtype):
            y = norm(h)  # broadcasting or type promotion in the add: leave it to torch
            return x + y if x_first else y + x
        y = norm(h, residual=x)
        # The layout torch's add gives: the first operand's, the norm's output being contiguous.
        if x_first and not x.is_contiguous():
            like = torch.empty_like(x, device="meta") + torch.empty(x.shape, device="meta", dtype=x.dtype)
            strides = like.stride()
        else:
            strides = torch.empty(x.shape, device="meta").stride()
        return y if y.stride() == strides else torch.empty_strided(y.shape, strides, dtype=y.dtype,
                                                                    device=y.device).copy_(y)

    def __reduce_ex__(self, protocol):
        # Pickle by the block's own class, which is importable where this dynamic subclass is not.
        return _rebuild_residual, (type(self).__bases__[1],), self.__getstate__()

    def __prepare_scriptable__(self):
        # torch.jit.script compiles the block's own forward (x + body(x)), still right on the accelerated body.
        self.__class__ = type(self).__bases__[1]
        return self


@functools.cache
def _residual_class(cls: type) -> type:
    return type(cls.__name__, (_ResidualForward, cls), {"__qualname__": cls.__qualname__,
                                                        "__module__": cls.__module__})


def _rebuild_residual(cls: type) -> nn.Module:
    return object.__new__(_residual_class(cls))
