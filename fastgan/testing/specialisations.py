"""Every Triton kernel specialisation fastgan launches, compiled ahead of time for sm_80 and sm_90 without
a GPU and measured with ``ptxas -v``.

Where the launches come from (nothing is typed by hand):
- the models: each GPU run of :data:`MODEL_RUNS` (CycleGAN 256x256 at batch 1 and 4, DCGAN 64x64 at
  batch 128, the MNIST-family models at their recipe batch) is traced on fake CUDA tensors, forward and
  backward of every phase, channels_last and NCHW (fastgan.testing.fake_cuda); each call of a Triton
  custom op (``fastgan.<op>_fwd``/``_bwd``) is then replayed on empty CPU tensors of the same shapes,
  strides and dtypes (bf16 activations also as fp16 and fp32, the --amp-dtype and full-precision runs)
  through the op's own launcher, whose ``kernel[grid](...)`` launches are recorded instead of run;
- the public ops: :data:`PUBLIC_CASES` calls each public op with every combination of its
  code-changing options (act, affine, residual, bias; a loss's kind and target) in both layouts and three
  dtypes, forward and backward, through the same recorder.
Each recorded launch becomes a specialisation the way Triton's JIT makes one at a real launch (its
binder: argument types, divisibility by 16, constexprs); identical ones are compiled once per target.

``python -m fastgan.testing.specialisations`` prints the table: kernel, specialisation, registers,
spills, shared memory and whether global loads/stores are 128 bits wide.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from unittest import mock

import torch

from ..ops import _dispatch, _triton_util

__all__ = ["MODEL_RUNS", "PUBLIC_CASES", "TARGETS", "Compiled", "Launch", "Specialisation", "check",
           "compile_all", "model_calls", "model_launches", "pairwise_cover", "plan", "public_launches",
           "ptxas_path", "record_launches", "specialise", "table"]

TARGETS = {"sm_80": 80, "sm_90": 90}  # A100, H100/H200
MAX_REGISTERS = 255  # per thread: more do not exist, ptxas spills instead
MAX_SHARED = {"sm_80": 163 * 1024, "sm_90": 227 * 1024}  # dynamic shared memory per block
# Shared memory per SM (CUDA C Programming Guide, compute capabilities 8.0 and 9.0), of which each resident block
# also takes 1 KB for the system; registers per SM: _triton_util.SM_REGISTERS.
SM_SHARED = {"sm_80": 164 * 1024, "sm_90": 228 * 1024}

# What a GPU run of each registered model trains on (the recipe's batch unless given). The CycleGAN
# generator repeats one residual block shape n_blocks times, so one block makes the same distinct launches
# as nine.
MODEL_RUNS = (
    ("gan", {}),
    ("dcgan", {}),
    ("cgan", {}),
    ("dcgan", {"image_size": 64, "batch_size": 128}),
    ("cyclegan", {"batch_size": 1, "n_blocks": 1}),
    ("cyclegan", {"batch_size": 4, "n_blocks": 1}),
    ("pix2pix", {"batch_size": 1}),
)
DTYPES = (torch.float32, torch.bfloat16, torch.float16)


# --- recording launches ---------------------------------------------------------------------------
@dataclass
class Launch:
    kernel: object  # the fastgan.ops._triton_util.kernel launched
    grid: tuple
    args: tuple
    kwargs: dict
    origin: str  # which run or public case made it
    primary: bool = False  # launched by a model's main GPU configuration (--amp bf16, channels_last)


@contextlib.contextmanager
def record_launches(into: list, origin: str = "", primary: bool = False):
    """Within: every ``kernel[grid](...)`` of fastgan's Triton ops is appended to ``into`` as a Launch and
    not run. TRITON_INTERPRET=1 is set so that the Triton paths accept CPU tensors."""

    def launcher(self, grid):
        return lambda *args, **kwargs: into.append(Launch(self, grid, tuple(map(_stand_in, args)), kwargs, origin,
                                                          primary))

    def phases(self, grid, *args, cooperative, **kwargs):  # the one launch a GPU makes (kernel.run_phases)
        options = _triton_util.phase_zero_options(cooperative, kwargs.get("num_warps", 4))
        launcher(self, grid)(*args, **kwargs, **options)

    with mock.patch.object(_triton_util.kernel, "__getitem__", launcher), \
            mock.patch.object(_triton_util.kernel, "run_phases", phases), \
            mock.patch.dict(os.environ, {"TRITON_INTERPRET": "1"}):
        yield into


def _stand_in(value):
    """A tensor argument as Triton's binder sees it (its dtype, and whether its address is a multiple of 16), in
    one element: the recorded launches of every model run would otherwise keep gigabytes of (untouched) buffers
    mapped, and a process that large cannot fork (compile_all's workers, the tests' data loaders)."""
    if not isinstance(value, torch.Tensor):
        return value
    base = torch.empty(16 // value.element_size() + 1, dtype=value.dtype)
    offset = (value.data_ptr() - base.data_ptr()) % 16 // value.element_size()
    return base[offset:offset + 1]


def _triton_ops() -> tuple[str, ...]:
    return tuple(op for op, fast in _dispatch._FAST.items() if fast.name == "triton")


def _is_triton_op(op: str) -> bool:
    name = op.split(".")[1] if op.startswith("fastgan.") else ""
    return any(name.startswith(t) for t in _triton_ops())


def _contiguous_strides(shape) -> tuple[int, ...]:
    strides, step = [], 1
    for size in reversed(shape):
        strides.append(step)
        step *= max(size, 1)
    return tuple(reversed(strides))


def _replay(call, dtype: torch.dtype | None, channels_last: bool) -> None:
    """Calls a recorded fastgan custom op again on empty CPU tensors: bf16 ones as ``dtype``, and 4-D ones
    NCHW unless ``channels_last`` (a --no-channels-last run passes the same shapes contiguous)."""
    from .fake_cuda import TensorSpec

    def build(value):
        if not isinstance(value, TensorSpec):
            return value
        stride = value.stride if channels_last or len(value.shape) != 4 else _contiguous_strides(value.shape)
        cast = dtype if dtype is not None and value.dtype == torch.bfloat16 else value.dtype
        return torch.empty_strided(value.shape, stride, dtype=cast)

    args, kwargs = torch.utils._pytree.tree_map(build, call.args)
    _, name, overload = call.op.split(".")
    getattr(getattr(torch.ops.fastgan, name), overload)(*args, **kwargs)


@functools.cache
def model_calls(model: str, overrides: tuple) -> tuple:
    """The distinct Triton custom-op calls of one GPU run, channels_last with bf16 autocast: forward and
    backward of every phase, traced on fake CUDA tensors (cached: tests reuse the trace)."""
    from . import fake_cuda

    trace = fake_cuda.gpu_run_trace(model, overrides, torch.bfloat16)
    unique = {}
    for call in trace.calls:
        if _is_triton_op(call.op):
            unique.setdefault(repr((call.op, call.args)), call)
    return tuple(unique.values())


def run_name(model: str, overrides: dict) -> str:
    """E.g. "cyclegan bs4", "dcgan 64x64 bs128", "gan recipe batch"."""
    size = f"{overrides['image_size']}x{overrides['image_size']} " if "image_size" in overrides else ""
    batch = f"bs{overrides['batch_size']}" if "batch_size" in overrides else "recipe batch"
    return f"{model} {size}{batch}"


def model_launches(runs=MODEL_RUNS, dtypes=DTYPES, layouts=(True, False)) -> list[Launch]:
    """The launches of every model run in every dtype and layout (True: channels_last)."""
    launches: list[Launch] = []
    for model, overrides in runs:
        calls = model_calls(model, tuple(sorted(overrides.items())))
        for channels_last in layouts:
            for dtype in dtypes:
                origin = (f"{run_name(model, overrides)} {'nhwc' if channels_last else 'nchw'} "
                          f"{str(dtype).removeprefix('torch.')}")
                primary = channels_last and dtype is torch.bfloat16
                with record_launches(launches, origin, primary), torch.no_grad():
                    for call in calls:
                        _replay(call, dtype, channels_last)
    return launches


# --- public ops: every option that changes the compiled code ----------------------------------------
def _instance_norm_act_cases():
    ops = importlib.import_module("fastgan.ops")
    for act in ("relu", "leaky_relu", "none"):
        for affine in (False, True):
            for residual in (False, True):
                def case(x, act=act, affine=affine, residual=residual):
                    c = x.shape[1]
                    w = torch.ones(c, requires_grad=True) if affine else None
                    b = torch.zeros(c, requires_grad=True) if affine else None
                    r = torch.empty_like(x).requires_grad_() if residual else None
                    return ops.instance_norm_act(x, w, b, act=act, residual=r, impl="triton")
                yield f"act={act} affine={affine} residual={residual}", case
    # The padded output (a following convolution's reflection pad): alone, with a residual of its shape (a ResNet
    # block's second norm), and unpadded with a padded residual (the last block's); the pad and the residual's
    # margin are run-time arguments, so one of each covers the specialisations.
    for pad, margin in ((1, None), (1, 0), (0, 1)):
        def case(x, pad=pad, margin=margin):
            r = None
            if margin is not None:
                shape = (*x.shape[:2], x.shape[2] + 2 * (pad + margin), x.shape[3] + 2 * (pad + margin))
                r = torch.empty(shape, dtype=x.dtype, memory_format=_layout(x)).requires_grad_()
            return ops.instance_norm_act(x, act="relu" if margin is None else "none", residual=r, pad=pad,
                                         impl="triton")
        yield f"pad={pad} residual_margin={margin}", case


def _layout(x):
    cl = x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    return torch.channels_last if cl else torch.contiguous_format


def _leaky_relu_cases():
    ops = importlib.import_module("fastgan.ops")
    for bias in (False, True):
        def case(x, bias=bias):
            b = torch.zeros(x.shape[1], requires_grad=True) if bias else None
            return ops.leaky_relu(x, 0.2, bias=b, impl="triton")
        yield f"bias={bias}", case


def _tanh_cases():
    ops = importlib.import_module("fastgan.ops")
    for bias in (False, True):
        def case(x, bias=bias):
            b = torch.zeros(x.shape[1], requires_grad=True) if bias else None
            return ops.tanh(x, bias=b, impl="triton")
        yield f"bias={bias}", case


def _mean_loss_cases():
    module = importlib.import_module("fastgan.ops.mean_loss")
    for kind in module.KINDS:
        for target in ("label", "tensor", "tensor with grad"):
            def case(x, kind=kind, target=target):
                t = 1.0 if target == "label" else torch.zeros_like(x, requires_grad=target == "tensor with grad")
                return module.mean_loss(x, t, kind, weight=0.5, impl="triton")
            yield f"kind={kind} target={target}", case


def _batch_norm_act_cases():
    ops = importlib.import_module("fastgan.ops")
    for act in ("relu", "leaky_relu", "none"):
        for affine in (False, True):
            # training with running statistics (and num_batches_tracked), training without, eval
            for training, track in ((True, True), (True, False), (False, True)):
                def case(x, act=act, affine=affine, training=training, track=track):
                    c = x.shape[1]
                    w = torch.ones(c, requires_grad=True) if affine else None
                    b = torch.zeros(c, requires_grad=True) if affine else None
                    stats = (torch.zeros(c), torch.ones(c)) if track else (None, None)
                    count = torch.zeros((), dtype=torch.long) if track else None
                    return ops.batch_norm_act(x, *stats, w, b, training=training, act=act,
                                              num_batches_tracked=count, impl="triton")
                yield f"act={act} affine={affine} training={training} track={track}", case


# Public op -> (its option cases, the shapes they run at): a real GAN shape and an odd one (37x53, C=3)
# whose sizes are not multiples of 16. instance_norm_act has one more, with enough rows (N * C) for its
# one-launch kernels (instance_norm_act._ONE_LAUNCH_MIN_ROWS), so their affine variants are compiled too.
PUBLIC_CASES = {
    "instance_norm_act": (_instance_norm_act_cases, ((1, 64, 256, 256), (2, 3, 37, 53), (1, 256, 64, 64))),
    "leaky_relu": (_leaky_relu_cases, ((128, 64, 32, 32), (2, 3, 37, 53))),
    "batch_norm_act": (_batch_norm_act_cases, ((128, 128, 16, 16), (2, 3, 37, 53))),
    "tanh": (_tanh_cases, ((128, 3, 64, 64), (2, 3, 37, 53))),
    "mean_loss": (_mean_loss_cases, ((1, 1, 30, 30), (1, 3, 256, 256), (2, 3, 37, 53))),  # logits, an image, odd
}


def public_launches(dtypes=DTYPES) -> list[Launch]:
    """The launches of every public op case, forward and backward, NCHW and NHWC, in every dtype."""
    launches: list[Launch] = []
    for op, (cases, shapes) in PUBLIC_CASES.items():
        if op not in _triton_ops():
            raise RuntimeError(f"PUBLIC_CASES names {op!r}, which is not a Triton op of fastgan.ops")
        for shape in shapes:
            for fmt in (torch.contiguous_format, torch.channels_last):
                for dtype in dtypes:
                    for name, case in cases():
                        x = torch.empty(shape, dtype=dtype, memory_format=fmt).requires_grad_()
                        layout = "nhwc" if fmt is torch.channels_last else "nchw"
                        origin = f"{op} {name} {list(shape)} {layout} {str(dtype).removeprefix('torch.')}"
                        with record_launches(launches, origin):
                            y = case(x)
                            y.backward(torch.empty_like(y))
    return launches


# --- specialisations -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Specialisation:
    kernel: str  # module.function
    signature: tuple[tuple[str, str], ...]  # (argument, Triton type or "constexpr")
    constexprs: tuple[tuple[str, object], ...]  # (argument, value)
    attrs: tuple[tuple[str, str], ...]  # (argument, specialisation such as "tt.divisibility=16")
    options: tuple[tuple[str, object], ...]  # num_warps, num_stages, cooperative (a cooperative launch)

    def describe(self) -> str:
        """The part of the specialisation a reader needs: pointer dtypes, constexprs, num_warps."""
        pointers = "/".join(dict.fromkeys(t[1:] for _, t in self.signature if t.startswith("*")))
        consts = " ".join(f"{k}={v}" for k, v in self.constexprs)
        div = sum(1 for _, a in self.attrs if "divisibility" in a)
        options = dict(self.options)
        cooperative = " cooperative" if options.get("cooperative") else ""
        return f"{pointers} {consts} div16={div} warps={options.get('num_warps')}{cooperative}"


@functools.cache
def _backend(arch: int):
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend

    return make_backend(GPUTarget("cuda", arch, 32))


@functools.cache
def _jit(fn):
    from triton.runtime.jit import JITFunction

    return JITFunction(fn)


@functools.cache
def _binder(fn):
    """Triton's own argument binder for a kernel, the one a launch runs to pick its specialisation."""
    from triton.runtime.jit import create_function_from_signature

    jit = _jit(fn)
    return create_function_from_signature(jit.signature, jit.params, _backend(90))


def specialise(launch: Launch) -> tuple[Specialisation, tuple]:
    """The specialisation Triton's JIT would compile for this launch on a CUDA device, and what
    triton.compile needs for it (ASTSource arguments and options)."""
    fn = _jit(launch.kernel.fn)
    backend = _backend(90)  # the specialisation rules do not depend on the CUDA target
    bound, specialization, options = _binder(launch.kernel.fn)(*launch.args, **launch.kwargs)
    options, signature, constexprs, attrs = fn._pack_args(backend, launch.kwargs, bound, specialization, options)
    names = list(signature)
    spec = Specialisation(
        kernel=f"{launch.kernel.fn.__module__}.{launch.kernel.fn.__name__}",
        signature=tuple(signature.items()),
        constexprs=tuple((names[path[0]], value) for path, value in sorted(constexprs.items())),
        attrs=tuple((names[path[0]], ",".join(f"{a}={v}" for a, v in attr)) for path, attr in sorted(attrs.items())),
        options=(("num_warps", options.num_warps), ("num_stages", options.num_stages),
                 ("cooperative", bool(getattr(options, "launch_cooperative_grid", False)))))
    return spec, (fn, signature, constexprs, attrs, launch.kwargs)


@dataclass
class Compiled:
    spec: Specialisation
    arch: str
    registers: int  # the larger count of CUDA's ptxas and Triton's own
    spill_bytes: int  # spill stores + loads, the larger of the two ptxas
    shared: int  # bytes of (dynamic) shared memory per block
    ld128: bool  # 128-bit global loads (ld.global.v4 of 32-bit or .v2 of 64-bit words)
    st128: bool
    origins: list[str] = field(default_factory=list)
    seconds: float = 0.0  # CPU time of its compilation (ptxas runs included)

    def problems(self) -> list[str]:
        out = []
        if self.spill_bytes:
            out.append(f"spills {self.spill_bytes} bytes")
        if self.registers > MAX_REGISTERS:
            out.append(f"uses {self.registers} registers (> {MAX_REGISTERS})")
        if self.shared > MAX_SHARED[self.arch]:
            out.append(f"needs {self.shared} bytes of shared memory (> {MAX_SHARED[self.arch]})")
        options = dict(self.spec.options)
        if options.get("cooperative"):  # its launcher plans on this many programs per SM running at once
            programs = _triton_util.COOPERATIVE_PROGRAMS_PER_SM
            registers = -(-self.registers // 8) * 8 * 32 * options["num_warps"] * programs  # allocated per warp
            if registers > _triton_util.SM_REGISTERS:
                out.append(f"{programs} cooperative programs per SM need {registers} registers "
                           f"(> {_triton_util.SM_REGISTERS})")
            if (self.shared + 1024) * programs > SM_SHARED[self.arch]:
                out.append(f"{programs} cooperative programs per SM need {(self.shared + 1024) * programs} bytes of "
                           f"shared memory (> {SM_SHARED[self.arch]})")
        return out


def ptxas_path() -> str:
    """CUDA's ptxas: $FASTGAN_PTXAS, /usr/local/cuda/bin/ptxas or ptxas on PATH (else Triton's own)."""
    for candidate in (os.environ.get("FASTGAN_PTXAS"), "/usr/local/cuda/bin/ptxas", shutil.which("ptxas")):
        if candidate and Path(candidate).is_file():
            return candidate
    return triton_ptxas_path()


def triton_ptxas_path() -> str:
    """The ptxas Triton runs when it compiles a kernel at a real launch (the one shipped with it)."""
    from triton.backends.nvidia.compiler import get_ptxas

    return get_ptxas(90).path


_LD128 = re.compile(r"\bld\.global(\.\w+)*\.(v4\.(b32|f32|u32|s32)|v2\.(b64|f64|u64))\b")
_ST128 = re.compile(r"\bst\.global(\.\w+)*\.(v4\.(b32|f32|u32|s32)|v2\.(b64|f64|u64))\b")


def _ptxas(ptx: str, ptxas: str) -> tuple[int, int]:
    """(registers, spill bytes) from ``ptxas -v`` on ``ptx``, for the architecture its .target names."""
    arch = re.search(r"^\.target\s+(\w+)", ptx, re.M).group(1)
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "kernel.ptx"
        src.write_text(ptx)
        done = subprocess.run([ptxas, "-v", f"--gpu-name={arch}", str(src), "-o", str(Path(tmp) / "k.o")],
                              capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{ptxas} failed for {arch}:\n{done.stderr}")
    log = done.stderr + done.stdout
    registers = int(re.search(r"Used (\d+) registers", log).group(1))
    spills = sum(int(n) for n in re.findall(r"(\d+) bytes spill (?:stores|loads)", log))
    return registers, spills


def _compile(job: tuple) -> tuple:
    """Compiles one specialisation for one arch and measures it with CUDA's ptxas and with Triton's own:
    (registers, spill bytes, shared, ld128, st128, cpu seconds)."""
    from triton import compile as triton_compile
    from triton.compiler import ASTSource

    module, name, signature, constexprs, attrs, kwargs, arch = job
    start = time.process_time(), os.times()
    fn = _jit(getattr(importlib.import_module(module), name).fn)
    backend = _backend(TARGETS[arch])
    kernel = triton_compile(ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs),
                            target=backend.target, options=backend.parse_options(kwargs).__dict__)
    ptx = kernel.asm["ptx"]
    (registers, spills), (triton_registers, triton_spills) = (_ptxas(ptx, p) for p in (ptxas_path(),
                                                                                       triton_ptxas_path()))
    end = os.times()
    cpu = time.process_time() - start[0] + end.children_user + end.children_system \
        - start[1].children_user - start[1].children_system
    return (max(registers, triton_registers), max(spills, triton_spills), int(kernel.metadata.shared),
            bool(_LD128.search(ptx)), bool(_ST128.search(ptx)), cpu)


def _features(spec: Specialisation) -> tuple[frozenset, frozenset]:
    """What a specialisation varies in: (options, covered pairwise: the activation's dtype, layout and each
    code-changing constexpr; shape-derived, covered value by value: the tile). Mixed dtypes (bf16
    activations with fp32 parameters under autocast) are in the models' main configuration."""
    consts = dict(spec.constexprs)
    layout = "nhwc" if consts.get("stride_c") == 1 else "nchw" if consts.get("stride_s") == 1 else "flat"
    pointers = [t for _, t in spec.signature if t.startswith("*")]
    options = {("dtype", pointers[0]), ("layout", layout)}  # the first pointer is the activation
    options |= {(k, v) for k, v in consts.items() if k not in _SHAPE_CONSTEXPRS}
    return frozenset(options), frozenset({("tile", (consts.get("BLOCK_C"), consts.get("BLOCK_S")))})


_SHAPE_CONSTEXPRS = ("BLOCK_C", "BLOCK_S", "stride_c", "stride_s", "C", "TILES", "SPLIT")  # follow from shapes


def _needs(spec: Specialisation) -> set:
    options, shape = _features(spec)
    items = sorted(options, key=repr)
    return {(a, b) for i, a in enumerate(items) for b in items[i + 1:]} | {(f,) for f in shape}


def pairwise_cover(specs: list[Specialisation]) -> list[Specialisation]:
    """A subset of ``specs`` in which, per kernel, every pair of option values (see _features) and every
    tile that any of them shows appears at least once (greedy: most missing first)."""
    chosen = []
    by_kernel: dict[str, list[Specialisation]] = {}
    for spec in specs:
        by_kernel.setdefault(spec.kernel, []).append(spec)
    for group in by_kernel.values():
        group.sort(key=repr)  # ties go the same way whatever order the launches came in
        needs = {spec: _needs(spec) for spec in group}
        missing = set().union(*needs.values())
        while missing:
            best = max(group, key=lambda spec: len(needs[spec] & missing))
            missing -= needs[best]
            chosen.append(best)
    return chosen


def plan(launches: list[Launch], everything: bool = False,
         include=None) -> tuple[list[tuple[Specialisation, tuple, str]], dict]:
    """(specialisation, source, arch) to compile. Everything: each distinct specialisation for sm_80 and
    sm_90. Otherwise (the CI tier): each specialisation of the models' main GPU configuration (--amp bf16,
    channels_last) for both, and a pairwise cover of all the others (fp32/fp16, NCHW, every public
    option, odd shapes) for sm_90, the GPU fastgan is measured on; ``include(spec)`` adds specialisations to
    the ones compiled for both. Also returns, per specialisation, the origins of its launches."""
    sources: dict[Specialisation, tuple] = {}
    origins: dict[Specialisation, list[str]] = {}
    primary: set[Specialisation] = set()
    for launch in launches:
        spec, source = specialise(launch)
        sources.setdefault(spec, source)
        origins.setdefault(spec, []).append(launch.origin)
        if launch.primary or (include is not None and include(spec)):
            primary.add(spec)
    if everything:
        return [(spec, source, arch) for spec, source in sources.items() for arch in TARGETS], origins
    jobs = [(spec, sources[spec], arch) for spec in sources if spec in primary for arch in TARGETS]
    others = [spec for spec in sources if spec not in primary]
    return jobs + [(spec, sources[spec], "sm_90") for spec in pairwise_cover(others)], origins


def compile_all(launches: list[Launch], everything: bool = False, jobs: int | None = None,
                include=None) -> list[Compiled]:
    """Compiles the plan for ``launches`` (see plan) in ``jobs`` processes (default: $FASTGAN_COMPILE_JOBS,
    else one per CPU this process may use); every result lists the origins of its launches."""
    todo, origins = plan(launches, everything, include)
    work = [(spec.kernel.rsplit(".", 1)[0], spec.kernel.rsplit(".", 1)[1], *source[1:], arch)
            for spec, source, arch in todo]
    jobs = jobs or int(os.environ.get("FASTGAN_COMPILE_JOBS", 0)) or len(os.sched_getaffinity(0))
    if jobs > 1 and len(work) > 1:
        import multiprocessing

        # fork: the workers inherit the imported kernels; compiling is pure CPU work in each.
        with multiprocessing.get_context("fork").Pool(min(jobs, len(work))) as pool:
            measured = pool.map(_compile, work, chunksize=1)
    else:
        measured = [_compile(job) for job in work]
    return [Compiled(spec, arch, *m[:5], origins=list(dict.fromkeys(origins[spec])), seconds=m[5])
            for (spec, _, arch), m in zip(todo, measured)]


def check(results: list[Compiled]) -> list[str]:
    """One line per specialisation with a spill, too many registers or too much shared memory."""
    return [f"{r.spec.kernel.rsplit('.', 1)[-1]} [{r.spec.describe()}] on {r.arch}: {', '.join(r.problems())} "
            f"(from {r.origins[0]})" for r in results if r.problems()]


def table(results: list[Compiled]) -> str:
    rows = [("kernel", "specialisation", "arch", "regs", "spill", "smem", "ld128", "st128", "launched by")]
    for r in sorted(results, key=lambda r: (r.spec.kernel, r.spec.describe(), r.arch)):
        rows.append((r.spec.kernel.rsplit(".", 1)[-1], r.spec.describe(), r.arch, str(r.registers),
                     str(r.spill_bytes), str(r.shared), "yes" if r.ld128 else "no", "yes" if r.st128 else "no",
                     f"{r.origins[0]}" + (f" (+{len(r.origins) - 1})" if len(r.origins) > 1 else "")))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[-1] for row in rows]
    return "\n".join(lines)


def summary(results: list[Compiled], seconds: float) -> str:
    kernels = {r.spec.kernel for r in results}
    specs = {r.spec for r in results}
    return (f"{len(specs)} specialisations of {len(kernels)} kernels compiled, {len(results)} compilations "
            f"({', '.join(sorted({r.arch for r in results}))}) in {seconds:.1f} s "
            f"({sum(r.seconds for r in results):.1f} s of CPU); "
            f"max registers {max(r.registers for r in results)}, "
            f"spills in {sum(1 for r in results if r.spill_bytes)}, "
            f"max shared memory {max(r.shared for r in results)} bytes, "
            f"128-bit loads in {sum(1 for r in results if r.ld128)}, stores in {sum(1 for r in results if r.st128)}")


def main(argv=None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m fastgan.testing.specialisations",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--all", action="store_true", help="compile every specialisation for sm_80 and sm_90 "
                        "(default: the CI tier, see plan())")
    parser.add_argument("--jobs", type=int, default=0, help="compiler processes (default: one per CPU)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    launches = model_launches() + public_launches()
    recorded = time.perf_counter()
    results = compile_all(launches, everything=args.all, jobs=args.jobs or None)
    print(table(results))
    print(f"\n{len(launches)} launches recorded in {recorded - start:.1f} s")
    print(summary(results, time.perf_counter() - recorded))
    problems = check(results)
    for line in problems:
        print("PROBLEM:", line)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
