"""Layers the models are written against. Each calls a fastgan.ops op, so switching an op's
implementation (``impl=``, one vocabulary: fastgan.ops._dispatch.IMPLS) never touches model code.

Each layer behaves as the torch.nn modules it stands for, with the same parameter and buffer names:
unbatched [C, H, W] input wherever those modules took it, the same output memory layout where noted,
and ``torch.jit.script`` works: a scripted layer runs the plain PyTorch computation of the modules it
replaces (TorchScript cannot call the Python launchers of the fast paths; torch.compile keeps them).
The fused convolutions are ``nn.Conv2d`` subclasses with nn.Conv2d's attributes (``kernel_size`` a
tuple, ``padding_mode``), so ``isinstance(m, nn.Conv2d)`` still finds them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import ops
from ..ops import _dispatch
from ..ops._casts import autocast_to

__all__ = ["BatchNorm2dAct", "Conv2d", "Conv2dLeakyReLU", "Conv2dTanh", "ConvTranspose2d", "ConvTranspose2dTanh",
           "InstanceNormAct", "LeakyReLU",
           "NormThenAct", "ReflectPadConv2d", "samples_independent", "set_impl", "FAST_LAYERS", "REFLECT_CONV_KERNELS",
           "REFLECT_CONV_STRIDES"]
__all__ += ["InstanceNormTrackedAct"]  # for other people's GANs' patterns (accelerate)

_ACTS = ("relu", "leaky_relu", "none")
REFLECT_CONV_KERNELS = range(1, 8)  # square kernel sizes the fused reflect-pad convolution takes
REFLECT_CONV_STRIDES = (1, 2)


class _FastLayer:
    """Mixin for fastgan layers: ``impl`` is validated whenever it is set (constructor, set_impl, or a plain
    assignment), against the vocabulary and against the fast paths this layer's ops have."""

    _ops: tuple[str, ...] = ()  # the fastgan.ops ops the layer calls

    @classmethod
    def supports(cls, impl: str) -> bool:
        """True when ``impl`` means something for this layer: auto, ref, fast, or the kind of fast path
        ("triton" / "cuda") that one of its ops has."""
        _dispatch.check_impl(impl, cls.__name__)
        return impl in ("auto", "ref", "fast") or any(_dispatch.fast_name(op) == impl for op in cls._ops)

    def __setattr__(self, name, value):
        if name == "impl" and not self.supports(value):
            kinds = sorted({_dispatch.fast_name(op) for op in self._ops} - {None})
            raise ValueError(f"{type(self).__name__}: impl={value!r}, but its ops ({', '.join(self._ops)}) have "
                             f"no {value} path; use 'auto', 'ref', 'fast'{''.join(', ' + repr(k) for k in kinds)}")
        super().__setattr__(name, value)


def _op_impl(impl: str, op: str) -> str:
    """The impl a layer with several ops passes to ``op``: a named fast path ("triton", "cuda") only to the op
    that has it, "auto" to the others."""
    return impl if impl in ("auto", "ref", "fast") or _dispatch.fast_name(op) == impl else "auto"


def _act(y: torch.Tensor, act: str, negative_slope: float) -> torch.Tensor:
    """The activations of the fused layers, in plain PyTorch (the scripted path)."""
    if act == "relu":
        return F.relu(y)
    if act == "leaky_relu":
        return F.leaky_relu(y, negative_slope)
    return y


def _check_act(cls: str, act: str) -> None:
    if act not in _ACTS:
        raise ValueError(f"{cls}: act={act!r} is not one of {_ACTS}")


def _norm_state(module: nn.Module, num_features: int, affine: bool, track_running_stats: bool, device,
                dtype) -> None:
    """Registers a norm layer's parameters and buffers under torch's names, as nn.BatchNorm2d and
    nn.InstanceNorm2d do (``weight``/``bias`` when affine; ``running_mean``/``running_var``/
    ``num_batches_tracked`` when tracking), so state_dicts load both ways."""
    factory = dict(device=device, dtype=dtype)
    if affine:
        module.weight = nn.Parameter(torch.ones(num_features, **factory))
        module.bias = nn.Parameter(torch.zeros(num_features, **factory))
    else:
        module.register_parameter("weight", None)
        module.register_parameter("bias", None)
    if track_running_stats:
        module.register_buffer("running_mean", torch.zeros(num_features, **factory))
        module.register_buffer("running_var", torch.ones(num_features, **factory))
        module.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long, device=device))


class _NormFollows:
    """Mixin for a convolution whose output may be declared to feed only an InstanceNorm (``norm_follows``).

    A per-channel bias added before a normalisation with per-sample, per-channel statistics (InstanceNorm,
    affine or not, without running statistics: fastgan's InstanceNormAct) is removed again by the mean
    subtraction: the normalised output does not depend on it, and its true gradient is zero. With
    ``norm_follows`` the fast path (any impl but "ref", on any device) leaves the bias out: no bias add after
    the convolution, no bias-gradient reduction in its backward. The parameter stays (same state_dict, an
    optimiser built over it, a checkpoint of either path loads into the other), and its ``.grad`` stays
    None: no launch writes zeros, optimisers skip a parameter without a gradient (no Adam state, no step, no
    weight decay: the value stays what it was, fastgan's init makes it zero), and a CUDA-graph capture sees the
    same set of gradients at every replay. ``impl="ref"`` computes what torch computes (the bias added, its
    gradient reduced: zero up to rounding, which Adam's normalisation may still turn into steps of the
    unused value). Declare it only where the convolution's output goes to the norm and nowhere else (the
    models where they build the pair; accelerate where the pattern is exact): anything else that read the
    output would see it without its bias.
    """

    norm_follows = False  # set per instance by the constructors

    def extra_repr(self):
        return f"{super().extra_repr()}, impl={self.impl}{', norm_follows=True' if self.norm_follows else ''}"

    def _live_bias(self) -> torch.Tensor | None:
        """The bias the fast path adds: None when the following norm cancels it."""
        return None if self.norm_follows and self.impl != "ref" else self.bias


class ReflectPadConv2d(_NormFollows, _FastLayer, nn.Conv2d):
    """Drop-in for ``nn.Sequential(nn.ReflectionPad2d(padding), nn.Conv2d(in, out, k, stride))``.

    An ``nn.Conv2d`` with ``padding_mode="reflect"`` (what that pair computes), square kernel and stride,
    no groups or dilation; the forward goes through fastgan.ops.reflect_pad_conv2d. Parameters are
    nn.Conv2d's (``weight``, ``bias``); use :meth:`from_modules` to take them from a pad + conv pair.
    ``norm_follows``: the output feeds only an InstanceNorm, which cancels the bias (see _NormFollows).
    ``input_padded``: the input comes already reflection-padded by ``padding`` (from an InstanceNormAct built
    with ``pad_output=padding``), so the layer convolves it with no padding of its own.
    """

    _ops = ("reflect_pad_conv2d",)
    samples_independent = True  # see samples_independent()

    def __init__(self, in_channels, out_channels, kernel_size, padding=None, stride=1, bias=True, impl="auto",
                 device=None, dtype=None, norm_follows=False, input_padded=False):
        k = kernel_size if isinstance(kernel_size, int) else kernel_size[0]
        s = stride if isinstance(stride, int) else stride[0]
        p = (k // 2 if padding is None else padding)
        p = p if isinstance(p, int) else p[0]
        if nn.modules.utils._pair(kernel_size) != (k, k) or nn.modules.utils._pair(stride) != (s, s) \
                or (padding is not None and nn.modules.utils._pair(padding) != (p, p)):
            raise ValueError(f"ReflectPadConv2d: kernel_size, stride and padding must be square, got "
                             f"{kernel_size}, {stride}, {padding}")
        super().__init__(in_channels, out_channels, k, stride=s, padding=p, bias=bias, padding_mode="reflect",
                         device=device, dtype=dtype)
        self.impl, self.norm_follows, self.input_padded = impl, norm_follows, bool(input_padded)

    @classmethod
    def from_modules(cls, pad: nn.ReflectionPad2d, conv: nn.Conv2d, impl="auto"):
        """A new layer holding copies of ``conv``'s parameters (accelerate adopts the Parameters instead)."""
        p = pad.padding
        if len(set(p)) != 1 or conv.padding not in ((0, 0), 0) or conv.groups != 1 or conv.dilation != (1, 1) \
                or conv.kernel_size[0] != conv.kernel_size[1] or conv.stride[0] != conv.stride[1]:
            raise ValueError(f"ReflectPadConv2d.from_modules: unsupported pair {pad} + {conv}")
        m = cls(conv.in_channels, conv.out_channels, conv.kernel_size[0], p[0], conv.stride[0],
                bias=conv.bias is not None, impl=impl, device=conv.weight.device, dtype=conv.weight.dtype)
        with torch.no_grad():
            m.weight.copy_(conv.weight)
            if conv.bias is not None:
                m.bias.copy_(conv.bias)
        return m

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting():
            if self.input_padded:
                return F.conv2d(x, self.weight, self.bias, self.stride)
            return self._conv_forward(x, self.weight, self.bias)
        return self._fast_forward(x)

    @torch.jit.unused
    def _fast_forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 3:  # unbatched, as nn.Conv2d takes it
            return self._fast_forward(x.unsqueeze(0)).squeeze(0)
        return ops.reflect_pad_conv2d(x, self.weight, self._live_bias(), 0 if self.input_padded else self.padding[0],
                                      self.stride[0], impl=self.impl)

    def extra_repr(self):
        return f"{super().extra_repr()}{', input_padded=True' if self.input_padded else ''}"


class Conv2d(_NormFollows, _FastLayer, nn.Conv2d):
    """``nn.Conv2d`` (any geometry and padding_mode, same parameters and attributes) that can leave out a bias
    the following InstanceNorm cancels: ``norm_follows`` (see _NormFollows). Without it, nn.Conv2d exactly."""

    samples_independent = True

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1, bias=True,
                 padding_mode="zeros", device=None, dtype=None, impl="auto", norm_follows=False):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                         padding_mode, device=device, dtype=dtype)
        self.impl, self.norm_follows = impl, norm_follows

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting():
            return self._conv_forward(x, self.weight, self.bias)
        return self._fast_forward(x)

    @torch.jit.unused
    def _fast_forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.weight, self._live_bias())


class ConvTranspose2d(_NormFollows, _FastLayer, nn.ConvTranspose2d):
    """``nn.ConvTranspose2d`` (same parameters, attributes and ``forward(x, output_size=None)``) that can leave
    out a bias the following InstanceNorm cancels: ``norm_follows`` (see _NormFollows)."""

    samples_independent = True

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, output_padding=0, groups=1,
                 bias=True, dilation=1, padding_mode="zeros", device=None, dtype=None, impl="auto",
                 norm_follows=False):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, output_padding, groups, bias,
                         dilation, padding_mode, device=device, dtype=dtype)
        self.impl, self.norm_follows = impl, norm_follows

    def forward(self, x: torch.Tensor, output_size: list[int] | None = None) -> torch.Tensor:
        output_padding = self._output_padding(x, output_size, self.stride, self.padding, self.kernel_size, 2,
                                              self.dilation)
        if torch.jit.is_scripting():
            return F.conv_transpose2d(x, self.weight, self.bias, self.stride, self.padding, output_padding,
                                      self.groups, self.dilation)
        return self._fast_forward(x, output_padding)

    @torch.jit.unused
    def _fast_forward(self, x: torch.Tensor, output_padding: list[int]) -> torch.Tensor:
        return F.conv_transpose2d(x, self.weight, self._live_bias(), self.stride, self.padding, output_padding,
                                  self.groups, self.dilation)


class Conv2dLeakyReLU(_FastLayer, nn.Conv2d):
    """``nn.Conv2d`` then LeakyReLU, with the conv bias (if any) added in the activation's pass.

    An ``nn.Conv2d`` (any padding, padding_mode, stride, groups, dilation) whose forward also applies the
    activation; parameters are nn.Conv2d's. Backward keeps only the output, like an in-place LeakyReLU.
    """

    _ops = ("leaky_relu",)
    samples_independent = True

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, bias=True,
                 negative_slope=0.2, impl="auto", dilation=1, groups=1, padding_mode="zeros", device=None,
                 dtype=None):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                         padding_mode, device=device, dtype=dtype)
        self.negative_slope = negative_slope
        self.impl = impl

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting():
            return F.leaky_relu(self._conv_forward(x, self.weight, self.bias), self.negative_slope)
        return self._fast_forward(x)

    @torch.jit.unused
    def _fast_forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self._conv_forward(x, self.weight, None)
        bias = self.bias
        if bias is not None and bias.dtype != y.dtype:  # autocast: the conv would have cast its bias too
            bias = autocast_to(bias, y.dtype)
        if y.dim() == 3:  # unbatched: the bias goes along dim 0
            return ops.leaky_relu(y.unsqueeze(0), self.negative_slope, bias=bias, impl=self.impl).squeeze(0)
        return ops.leaky_relu(y, self.negative_slope, bias=bias, impl=self.impl)

    def extra_repr(self):
        return f"{super().extra_repr()}, negative_slope={self.negative_slope}, impl={self.impl}"


def _bias_tanh(y: torch.Tensor, bias: torch.Tensor | None, impl: str) -> torch.Tensor:
    if bias is not None and bias.dtype != y.dtype:  # autocast: the conv would have cast its bias too
        bias = autocast_to(bias, y.dtype)
    if y.dim() == 3:  # unbatched: the bias goes along dim 0
        return ops.tanh(y.unsqueeze(0), bias=bias, impl=impl).squeeze(0)
    return ops.tanh(y, bias=bias, impl=impl)


class Conv2dTanh(_FastLayer, nn.Conv2d):
    """``nn.Conv2d`` then Tanh (a generator's output layer), with the conv bias (if any) added in the tanh's pass
    (fastgan.ops.tanh), whose backward also reduces the bias gradient.

    An ``nn.Conv2d`` (any padding, stride, groups, dilation); parameters are nn.Conv2d's. With
    ``padding_mode="reflect"`` and a geometry the fused reflect-pad convolution takes (what ReflectPadConv2d
    takes) the convolution is fastgan.ops.reflect_pad_conv2d, so ``ReflectionPad2d, Conv2d, Tanh`` becomes one
    layer. ``impl`` "triton" reaches the tanh and "cuda" the reflect-pad convolution; the other op gets "auto".
    ``input_padded`` (with that fused geometry only): the input comes already reflection-padded by ``padding``
    (an InstanceNormAct with ``pad_output``), so the convolution pads nothing.
    """

    _ops = ("tanh", "reflect_pad_conv2d")
    samples_independent = True

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, bias=True, impl="auto",
                 dilation=1, groups=1, padding_mode="zeros", device=None, dtype=None, input_padded=False):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                         padding_mode, device=device, dtype=dtype)
        self.impl, self.input_padded = impl, bool(input_padded)
        if self.input_padded and not self._reflect_fused():
            raise ValueError("Conv2dTanh: input_padded needs padding_mode='reflect' with a square kernel of "
                             f"1..7, stride 1 or 2, equal paddings, no groups or dilation; got {self.extra_repr()}")

    def _reflect_fused(self) -> bool:
        k, st, p = self.kernel_size, self.stride, self.padding
        return (self.padding_mode == "reflect" and not isinstance(p, str) and k[0] == k[1] and st[0] == st[1]
                and p[0] == p[1] and self.groups == 1 and self.dilation == (1, 1) and k[0] in REFLECT_CONV_KERNELS
                and st[0] in REFLECT_CONV_STRIDES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting():
            if self.input_padded:
                return torch.tanh(F.conv2d(x, self.weight, self.bias, self.stride))
            return torch.tanh(self._conv_forward(x, self.weight, self.bias))
        return self._fast_forward(x)

    @torch.jit.unused
    def _fast_forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._reflect_fused():
            impl = _op_impl(self.impl, "reflect_pad_conv2d")
            pad = 0 if self.input_padded else self.padding[0]
            if x.dim() == 3:
                y = ops.reflect_pad_conv2d(x.unsqueeze(0), self.weight, None, pad, self.stride[0],
                                           impl=impl).squeeze(0)
            else:
                y = ops.reflect_pad_conv2d(x, self.weight, None, pad, self.stride[0], impl=impl)
        else:
            y = self._conv_forward(x, self.weight, None)
        return _bias_tanh(y, self.bias, _op_impl(self.impl, "tanh"))

    def extra_repr(self):
        return f"{super().extra_repr()}, impl={self.impl}{', input_padded=True' if self.input_padded else ''}"


class ConvTranspose2dTanh(_FastLayer, nn.ConvTranspose2d):
    """``nn.ConvTranspose2d`` then Tanh (the output layer of DCGAN and U-Net generators), with the bias (if any)
    added in the tanh's pass (fastgan.ops.tanh), whose backward also reduces the bias gradient.

    An ``nn.ConvTranspose2d`` (parameters, attributes, ``forward(x, output_size=None)``).
    """

    _ops = ("tanh",)
    samples_independent = True

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, output_padding=0, groups=1,
                 bias=True, dilation=1, impl="auto", device=None, dtype=None):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, output_padding, groups, bias,
                         dilation, device=device, dtype=dtype)
        self.impl = impl

    def forward(self, x: torch.Tensor, output_size: list[int] | None = None) -> torch.Tensor:
        output_padding = self._output_padding(x, output_size, self.stride, self.padding, self.kernel_size, 2,
                                              self.dilation)
        if torch.jit.is_scripting():
            return torch.tanh(F.conv_transpose2d(x, self.weight, self.bias, self.stride, self.padding,
                                                 output_padding, self.groups, self.dilation))
        return self._fast_forward(x, output_padding)

    @torch.jit.unused
    def _fast_forward(self, x: torch.Tensor, output_padding: list[int]) -> torch.Tensor:
        y = F.conv_transpose2d(x, self.weight, None, self.stride, self.padding, output_padding, self.groups,
                               self.dilation)
        return _bias_tanh(y, self.bias, self.impl)

    def extra_repr(self):
        return f"{super().extra_repr()}, impl={self.impl}"


class InstanceNormAct(_FastLayer, nn.Module):
    """Drop-in for ``nn.InstanceNorm2d(C, eps, affine=...)`` followed by ReLU / LeakyReLU / nothing.

    Same state_dict keys as nn.InstanceNorm2d (``weight``, ``bias`` when affine; no running stats).
    ``forward(x, residual=None)`` adds ``residual`` after the activation in the same pass. Takes [N, C, H, W]
    or unbatched [C, H, W]. The output keeps x's memory layout (channels_last stays channels_last) unless
    ``contiguous_output``: then it is contiguous, as nn.InstanceNorm2d's always is (accelerate sets it).

    ``pad_output=p``: the output is reflection-padded by p on each side in the same pass, for a following
    reflect-padded convolution built with ``input_padded=True`` (ReflectPadConv2d, Conv2dTanh), which then pads
    nothing; the backward folds the padded gradient in the norm's own passes. A residual is then shaped like the
    padded output, or larger by the same margin on every side (a padded block input: its centre is added).
    """

    _ops = ("instance_norm_act",)
    samples_independent = True  # statistics per sample, no running ones

    def __init__(self, num_features, act="relu", negative_slope=0.2, eps=1e-5, affine=False, impl="auto",
                 contiguous_output=False, device=None, dtype=None, pad_output=0):
        super().__init__()
        _check_act("InstanceNormAct", act)
        if isinstance(pad_output, bool) or not isinstance(pad_output, int) or pad_output < 0:
            raise ValueError(f"InstanceNormAct: pad_output={pad_output!r} must be an int >= 0")
        self.num_features, self.act, self.negative_slope, self.eps = num_features, act, negative_slope, eps
        self.affine, self.contiguous_output, self.pad_output = affine, contiguous_output, pad_output
        self.impl = impl
        _norm_state(self, num_features, affine, False, device, dtype)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        if torch.jit.is_scripting():
            unbatched = x.dim() == 3  # as nn.InstanceNorm2d: a [C, H, W] input is one sample
            y = F.instance_norm(x.unsqueeze(0) if unbatched else x, None, None, self.weight, self.bias, True, 0.0,
                                self.eps)
            y = _act(y, self.act, self.negative_slope)
            if self.pad_output > 0:
                y = F.pad(y, [self.pad_output] * 4, mode="reflect")
            y = y.squeeze(0) if unbatched else y
            if residual is None:
                return y
            m = (residual.shape[-1] - y.shape[-1]) // 2  # a larger (padded) residual: its centre
            return y + residual[..., m:residual.shape[-2] - m, m:residual.shape[-1] - m]
        return self._fast_forward(x, residual)

    @torch.jit.unused
    def _fast_forward(self, x: torch.Tensor, residual: torch.Tensor | None) -> torch.Tensor:
        if x.dim() == 3:  # unbatched, as nn.InstanceNorm2d takes it
            r = None if residual is None else residual.unsqueeze(0)
            return self._fast_forward(x.unsqueeze(0), r).squeeze(0)
        y = ops.instance_norm_act(x, self.weight, self.bias, act=self.act, negative_slope=self.negative_slope,
                                  eps=self.eps, residual=residual, pad=self.pad_output, impl=self.impl)
        return y.contiguous() if self.contiguous_output and residual is None else y

    def extra_repr(self):
        pad = f", pad_output={self.pad_output}" if self.pad_output else ""
        return f"{self.num_features}, act={self.act}, eps={self.eps}, affine={self.affine}{pad}, impl={self.impl}"


class BatchNorm2dAct(_FastLayer, nn.Module):
    """Drop-in for ``nn.BatchNorm2d(C, eps, momentum, affine, track_running_stats)`` followed by ReLU /
    LeakyReLU / nothing, in one normalise-and-activate pass (fastgan.ops.batch_norm_act).

    The same parameters, buffers, state_dict keys and running-statistics semantics as nn.BatchNorm2d
    (``momentum=None`` for a cumulative average, ``num_batches_tracked``, batch statistics in eval mode
    when running stats are not tracked), and the same output layout (x's). Named after BatchNorm2d so that
    class-name based initialisers (``classname.find("BatchNorm2d")``, as GAN code often has) still find it;
    it is not an nn.BatchNorm2d subclass, so that module converters such as
    ``nn.SyncBatchNorm.convert_sync_batchnorm`` cannot swap it for a norm without the activation. To
    synchronise its statistics across processes, :func:`fastgan.nn.unfuse_batch_norm_act` first turns it
    into a :class:`NormThenAct` around a plain nn.BatchNorm2d (same Parameters, same state_dict keys), which
    such converters then find.
    """

    _ops = ("batch_norm_act",)
    samples_independent = False  # statistics over the batch
    _version = 2  # nn.BatchNorm2d's state_dict version (checkpoints before it lack num_batches_tracked)

    def __init__(self, num_features, act="relu", negative_slope=0.2, eps=1e-5, momentum=0.1, affine=True,
                 track_running_stats=True, impl="auto", device=None, dtype=None):
        super().__init__()
        _check_act("BatchNorm2dAct", act)
        self.num_features, self.act, self.negative_slope, self.eps = num_features, act, negative_slope, eps
        self.momentum, self.affine, self.track_running_stats = momentum, affine, track_running_stats
        self.impl = impl
        _norm_state(self, num_features, affine, track_running_stats, device, dtype)
        if not track_running_stats:  # as nn.BatchNorm2d: the attributes exist, as None
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)
            self.register_buffer("num_batches_tracked", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise ValueError(f"expected 4D input (got {x.dim()}D input)")  # nn.BatchNorm2d's message
        # nn.BatchNorm2d's bookkeeping, so momentum=None and num_batches_tracked behave alike; the op adds one to
        # num_batches_tracked (``count``) itself, in its statistics pass rather than in a launch of its own.
        exponential_average_factor = 0.0 if self.momentum is None else self.momentum
        count: torch.Tensor | None = None
        if self.training and self.track_running_stats:
            if self.num_batches_tracked is not None:
                count = self.num_batches_tracked
                if self.momentum is None:  # sync: a cumulative average needs the count on the host
                    exponential_average_factor = 1.0 / (float(self.num_batches_tracked) + 1.0)
                else:
                    exponential_average_factor = self.momentum
        bn_training = self.training or (self.running_mean is None and self.running_var is None)
        running_mean = self.running_mean if not self.training or self.track_running_stats else None
        running_var = self.running_var if not self.training or self.track_running_stats else None
        if torch.jit.is_scripting():
            if count is not None:
                count.add_(1)
            y = F.batch_norm(x, running_mean, running_var, self.weight, self.bias, bn_training,
                             exponential_average_factor, self.eps)
            return _act(y, self.act, self.negative_slope)
        return self._fast_forward(x, running_mean, running_var, bn_training, exponential_average_factor, count)

    @torch.jit.unused
    def _fast_forward(self, x: torch.Tensor, running_mean: torch.Tensor | None, running_var: torch.Tensor | None,
                      training: bool, momentum: float, count: torch.Tensor | None) -> torch.Tensor:
        return ops.batch_norm_act(x, running_mean, running_var, self.weight, self.bias, training, momentum,
                                  self.eps, act=self.act, negative_slope=self.negative_slope,
                                  num_batches_tracked=count, impl=self.impl)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        version = local_metadata.get("version", None)
        key = prefix + "num_batches_tracked"
        if (version is None or version < 2) and self.track_running_stats and key not in state_dict:
            # As nn.BatchNorm2d: checkpoints from before num_batches_tracked existed load with a count of 0.
            state_dict[key] = self.num_batches_tracked if self.num_batches_tracked is not None \
                and self.num_batches_tracked.device != torch.device("meta") else torch.tensor(0, dtype=torch.long)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def extra_repr(self):
        return (f"{self.num_features}, act={self.act}, eps={self.eps}, momentum={self.momentum}, "
                f"affine={self.affine}, track_running_stats={self.track_running_stats}, impl={self.impl}")


class NormThenAct(nn.Module):
    """``act(norm(x))``: a norm module (nn.BatchNorm2d, nn.SyncBatchNorm, ...) then ReLU / LeakyReLU / nothing,
    with the norm's state_dict keys at this module's own level (no ``norm.`` in them).

    What :func:`fastgan.nn.unfuse_batch_norm_act` turns a BatchNorm2dAct into, so that a converter that swaps
    BatchNorm modules (``nn.SyncBatchNorm.convert_sync_batchnorm``) finds ``self.norm`` while checkpoints
    load into the fused layer and back: the state_dict of a NormThenAct is that of the BatchNorm2dAct it
    replaced.
    """

    samples_independent = True  # its own step is the activation; its norm child answers for itself

    def __init__(self, norm: nn.Module, act="relu", negative_slope=0.2):
        super().__init__()
        _check_act("NormThenAct", act)
        self.norm, self.act, self.negative_slope = norm, act, negative_slope

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _act(self.norm(x), self.act, self.negative_slope)

    def state_dict(self, *args, destination=None, prefix="", keep_vars=False):
        out = super().state_dict(*args, destination=destination, prefix=prefix, keep_vars=keep_vars)
        inner = prefix + "norm."
        # The norm's entries were added last (this module has no state of its own), so re-adding them in
        # order keeps the dict's order.
        for key in [k for k in out if k.startswith(inner)]:
            out[prefix + key[len(inner):]] = out.pop(key)
        metadata = getattr(out, "_metadata", None)
        if metadata is not None and inner[:-1] in metadata:  # the norm's version, for loading into either layer
            metadata[prefix[:-1]] = metadata.pop(inner[:-1])
        return out

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        # Module.load_state_dict hands the norm the entries under prefix + "norm." after this call.
        for key in [k for k in state_dict if k.startswith(prefix) and "." not in k[len(prefix):]]:
            state_dict[prefix + "norm." + key[len(prefix):]] = state_dict.pop(key)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def extra_repr(self):
        return f"act={self.act}, negative_slope={self.negative_slope}"


class LeakyReLU(_FastLayer, nn.Module):
    """Drop-in for ``nn.LeakyReLU(negative_slope, inplace)``; backward needs only the output.

    ``inplace=True`` keeps nn.LeakyReLU's semantics (x itself is overwritten, so code that reads x
    afterwards sees the activation) by running torch's in-place op, which already keeps only the output.
    """

    _ops = ("leaky_relu",)
    samples_independent = True

    def __init__(self, negative_slope=0.2, inplace=False, impl="auto"):
        super().__init__()
        self.negative_slope, self.inplace = negative_slope, inplace
        self.impl = impl

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting() or self.inplace:
            return F.leaky_relu(x, self.negative_slope, self.inplace)
        return self._fast_forward(x)

    @torch.jit.unused
    def _fast_forward(self, x: torch.Tensor) -> torch.Tensor:
        return ops.leaky_relu(x, self.negative_slope, impl=self.impl)

    def extra_repr(self):
        inplace = ", inplace=True" if self.inplace else ""
        return f"negative_slope={self.negative_slope}{inplace}, impl={self.impl}"


# Layers for patterns of other people's GANs that accelerate() fuses (issue 24) ----------------------------
class InstanceNormTrackedAct(_FastLayer, nn.Module):
    """Drop-in for ``nn.InstanceNorm2d(C, eps, momentum, affine, track_running_stats=True)`` followed by ReLU /
    LeakyReLU / nothing (the older pix2pix/CycleGAN ``get_norm_layer("instance")``).

    Train mode normalises each sample with its own statistics (fastgan.ops.instance_norm_act) and updates the
    running statistics as nn.InstanceNorm2d does: ``momentum`` times the batch mean of each sample's mean and
    unbiased variance (``momentum=None`` there means no update; ``num_batches_tracked`` is kept and, as
    there, not counted). Eval mode normalises with the running statistics, per channel: batch norm's eval
    arithmetic (fastgan.ops.batch_norm_act). The same parameters, buffers and state_dict keys as
    nn.InstanceNorm2d; [N, C, H, W] or unbatched [C, H, W] input; the output is contiguous, as
    nn.InstanceNorm2d's is.
    """

    _ops = ("instance_norm_act", "batch_norm_act")
    samples_independent = False  # the running statistics are updated from the whole batch

    def __init__(self, num_features, act="relu", negative_slope=0.2, eps=1e-5, momentum=0.1, affine=False,
                 impl="auto", device=None, dtype=None):
        super().__init__()
        _check_act("InstanceNormTrackedAct", act)
        self.num_features, self.act, self.negative_slope, self.eps = num_features, act, negative_slope, eps
        self.momentum, self.affine, self.track_running_stats = momentum, affine, True
        self.impl = impl
        _norm_state(self, num_features, affine, True, device, dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() not in (3, 4):
            raise ValueError(f"expected 3D or 4D input (got {x.dim()}D input)")  # nn.InstanceNorm2d's message
        momentum = self.momentum if self.momentum is not None else 0.0
        if torch.jit.is_scripting():
            return _act(F.instance_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                                        self.training, momentum, self.eps), self.act, self.negative_slope)
        return self._fast_forward(x, momentum)

    @torch.jit.unused
    def _fast_forward(self, x: torch.Tensor, momentum: float) -> torch.Tensor:
        if x.dim() == 3:  # unbatched: one sample
            return self._fast_forward(x.unsqueeze(0), momentum).squeeze(0)
        if not self.training:
            y = ops.batch_norm_act(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0,
                                   self.eps, act=self.act, negative_slope=self.negative_slope,
                                   impl=_op_impl(self.impl, "batch_norm_act"))
            return y.contiguous()
        if x.shape[2] * x.shape[3] == 1:  # F.instance_norm's check and message
            raise ValueError(f"Expected more than 1 spatial element when training, got input size {x.shape}")
        # nn.InstanceNorm2d's update, the batch mean of the per-sample statistics; one extra read of x, as
        # fastgan.ops.instance_norm_act does not return its statistics (torch's own path reads x for it too).
        with torch.no_grad():
            var, mean = torch.var_mean(x.to(self.running_mean.dtype), dim=(2, 3), correction=1)
            torch._foreach_lerp_([self.running_mean, self.running_var], [mean.mean(0), var.mean(0)], momentum)
        y = ops.instance_norm_act(x, self.weight, self.bias, act=self.act, negative_slope=self.negative_slope,
                                  eps=self.eps, impl=_op_impl(self.impl, "instance_norm_act"))
        return y.contiguous()

    def extra_repr(self):
        return (f"{self.num_features}, act={self.act}, eps={self.eps}, momentum={self.momentum}, "
                f"affine={self.affine}, track_running_stats=True, impl={self.impl}")


FAST_LAYERS = (ReflectPadConv2d, Conv2d, ConvTranspose2d, Conv2dLeakyReLU, Conv2dTanh, ConvTranspose2dTanh,
               InstanceNormAct, BatchNorm2dAct,
               LeakyReLU, InstanceNormTrackedAct)


def set_impl(module: nn.Module, impl: str) -> nn.Module:
    """Sets ``impl`` on the fastgan layers inside ``module`` and returns it.

    "auto", "ref" and "fast" (each layer's own fast path, raising where it cannot run) apply to every
    fastgan layer; "triton" and "cuda" to the layers that have that kind of fast path (the others keep
    their setting). An unknown value raises here, not at the next forward.
    """
    _dispatch.check_impl(impl, "set_impl")
    for m in module.modules():
        if isinstance(m, FAST_LAYERS) and m.supports(impl):
            m.impl = impl
    return module


# torch layers that compute each sample alone, with no state the batch updates (matched by exact type: a
# subclass may override forward, and declares samples_independent itself).
_PER_SAMPLE_TORCH = frozenset({
    nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d, nn.Linear,
    nn.Identity, nn.Sequential, nn.ModuleList, nn.ModuleDict, nn.ReLU, nn.LeakyReLU, nn.Tanh, nn.Sigmoid,
    nn.ReflectionPad2d, nn.ReplicationPad2d, nn.ZeroPad2d, nn.ConstantPad2d, nn.Upsample, nn.Flatten, nn.Unflatten,
    nn.GroupNorm, nn.LayerNorm,
})


def samples_independent(module: nn.Module) -> bool:
    """True when one call of ``module`` on a concatenation of batches computes, sample for sample, what
    separate calls compute: outputs and gradients, with no buffer the batch updates and no random draw (whose
    stream a bigger call would change). Then independent applications of one network may share a call
    (fastgan.models.base.apply_batched).

    Each module says it for its own forward: a class attribute ``samples_independent`` (fastgan's layers and
    the models' networks declare it; BatchNorm2dAct declares False), else one of the torch layers known to
    compute per sample (convolutions, linear, activations, padding, containers; InstanceNorm without running
    statistics). Anything else (batch norm, dropout, an unknown layer) makes the whole network False.
    """
    for m in module.modules():
        declared = getattr(type(m), "samples_independent", None)
        if declared is not None:
            if not declared:
                return False
        elif not (type(m) in _PER_SAMPLE_TORCH or (type(m) in (nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)
                                                   and not m.track_running_stats)):
            return False
    return True
