"""How big a size-like flag may be: the bytes a command will need, estimated before anything is allocated,
against what the machine can hold. train, generate and translate share it.

- What is available: on the CPU, the smaller of /proc/meminfo's MemAvailable (os.sysconf elsewhere) and the
  room left under the process's cgroup memory limit (a container's or a Slurm job's); on CUDA,
  ``torch.cuda.mem_get_info``. ``FASTGAN_MEMORY_LIMIT`` (bytes, or with a K/M/G/T suffix) caps it further,
  for a shared machine (and for tests that must not depend on the machine they run on). Files going to disk
  are compared with the free space of their folder.
- What a training step needs: its networks and their state built on PyTorch's ``meta`` device (shapes, no
  memory), 16 bytes per parameter (fp32 weight, gradient and Adam's two moments), the buffers, the sum of
  every tensor each phase's forward pass creates (an upper bound of what backward keeps), and the batches
  in flight. An estimate to refuse sizes that cannot run, not a promise that every size below fits.
- A refusal is one line naming the flag, the estimate and the limit (fastgan.errors.UserError, exit 2).

Torch-free at import; only the estimates of networks import torch.
"""

from __future__ import annotations

import copy
import math
import os
import re
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path

from .errors import UserError

ENV_LIMIT = "FASTGAN_MEMORY_LIMIT"
ADAM_BYTES_PER_PARAMETER = 16  # fp32 weight + gradient + Adam's exp_avg and exp_avg_sq
# Flags that size a training step, in the order a refusal names them when several are equally to blame.
TRAIN_SIZE_FLAGS = ("z_dim", "hidden", "ngf", "ndf", "image_size", "load_size", "batch_size", "n_blocks",
                    "pool_size", "unet_depth")
ESTIMATE_CHANNELS = 3  # images are RGB at most; the data is not read before the check
ESTIMATE_CLASSES = 10  # label embeddings of conditional models are small next to the networks


def format_bytes(n: float) -> str:
    if math.isinf(n):
        return "more than 8 EiB"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PiB"  # not reached


def _about(n: float) -> str:
    return format_bytes(n) if math.isinf(n) else f"about {format_bytes(n)}"


def _parse_bytes(text: str) -> int:
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)i?B?\s*", text, re.IGNORECASE)
    if not match:
        raise UserError(f"{ENV_LIMIT}={text!r}: use a number of bytes, e.g. 8G or 512M")
    scale = 1024 ** " KMGT".index(match.group(2).upper() or " ")
    return int(float(match.group(1)) * scale)


def _read_int(path: str) -> int | None:
    try:
        with open(path) as f:
            text = f.read().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None  # cgroup v2 writes "max" for no limit


def _host_available() -> tuple[int, str]:
    found: list[tuple[int, str]] = []
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    found.append((int(line.split()[1]) * 1024, "available memory (MemAvailable)"))
                    break
    except (OSError, ValueError, IndexError):
        pass
    if not found:
        try:
            found.append((os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"), "available memory"))
        except (ValueError, OSError, AttributeError):
            pass
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        limit, usage = _read_int(limit_file), _read_int(usage_file)
        if limit is not None and usage is not None and limit < 1 << 60:
            found.append((max(0, limit - usage), "memory left under the cgroup limit"))
            break
    return min(found) if found else (1 << 62, "available memory (unknown)")


def available_memory(device: str = "cpu") -> tuple[int, str]:
    """(bytes, what they are) that ``device`` ("cpu", "cuda", "cuda:N", a torch.device) can still hold."""
    device = str(device)
    if device.startswith("cuda"):
        import torch

        free, _ = torch.cuda.mem_get_info(torch.device(device))
        name = torch.cuda.get_device_name(torch.device(device))
        found = (free, f"free memory on {device} ({name})")
    else:
        found = _host_available()
    capped = os.environ.get(ENV_LIMIT, "").strip()
    if capped:
        limit = _parse_bytes(capped)
        if limit < found[0]:
            found = (limit, f"{ENV_LIMIT}")
    return found


def check_fits(flag: str, need: float, device: str = "cpu", what: str = "") -> None:
    """Refuses, naming ``flag`` (e.g. "--n 100000000"), when ``need`` bytes exceed what ``device`` can hold."""
    have, where = available_memory(device)
    if need > have:
        what = f" ({what})" if what else ""
        raise UserError(f"{flag}: needs {_about(need)}{what}, more than the {format_bytes(have)} of "
                        f"{where}; use a smaller value")


def check_disk(flag: str, need: float, folder: str | os.PathLike, what: str = "") -> None:
    """Refuses, naming ``flag``, when ``need`` bytes exceed the free space of the file system of ``folder``
    (its nearest existing ancestor)."""
    folder = Path(folder)
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return
    if need > free:
        what = f" ({what})" if what else ""
        raise UserError(f"{flag}: needs {_about(need)} on disk{what}, more than the "
                        f"{format_bytes(free)} free in {folder}; use a smaller value")


def smallest_side(runs: Callable[[int], bool], multiple: int, largest: int = 4096) -> int | None:
    """The smallest square side, a multiple of ``multiple``, for which ``runs(side)`` is True (a network's
    lower bound, probed on shapes alone, e.g. on the meta device); None if none up to ``largest`` runs."""
    side = max(1, multiple)
    while side <= largest:
        if runs(side):
            return side
        side += max(1, multiple)
    return None


# --- estimates that build networks (import torch) ---

def forward_bytes(fn: Callable[[], object]) -> int:
    """The bytes of every tensor the calls inside ``fn()`` create (on any device; use meta tensors to pay
    nothing): an upper bound of the activations a forward pass keeps for backward."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_leaves

    class _Count(TorchDispatchMode):
        total = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in tree_leaves(out):
                if isinstance(t, torch.Tensor):
                    _Count.total += t.numel() * t.element_size()
            return out

    with _Count():
        fn()
    return _Count.total


def peak_bytes(fn: Callable[[], object]) -> int:
    """The most bytes of tensors alive at once while ``fn()`` runs (tensors it creates; a storage is counted
    once, until it is freed). Under torch.no_grad this is an inference pass's peak: each activation is freed
    once the next layer has read it, which the sum of forward_bytes ignores."""
    import weakref

    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_leaves

    live: dict[int, int] = {}
    peak = 0

    def free(key: int) -> None:
        live.pop(key, None)

    class _Peak(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            nonlocal peak
            out = func(*args, **(kwargs or {}))
            for t in tree_leaves(out):
                if isinstance(t, torch.Tensor):
                    storage = t.untyped_storage()
                    if storage._cdata not in live:
                        live[storage._cdata] = storage.nbytes()
                        weakref.finalize(storage, free, storage._cdata)
            peak = max(peak, sum(live.values()))
            return out

    with _Peak():
        fn()
    return peak


def inference_bytes(net, *shapes: tuple[int, ...], dtype=None) -> int:
    """Peak bytes of ``net(*inputs)`` under no_grad for inputs of ``shapes`` (of ``dtype``, by default the
    network's parameters'), on the meta device: the network's weights stay where they are and nothing is
    allocated. Raises what the network raises for shapes it cannot take (see smallest_side)."""
    import torch
    from torch.func import functional_call

    from .nn import set_impl

    if dtype is None:  # the network's own (a --half export's generator takes fp16 inputs)
        dtype = next((p.dtype for p in net.parameters() if p.is_floating_point()), torch.float32)
    tensors = {name: torch.empty_like(t, device="meta") for name, t in (*net.named_parameters(),
                                                                         *net.named_buffers())}
    inputs = tuple(torch.empty(shape, dtype=dtype, device="meta") for shape in shapes)
    impls = {m: m.impl for m in net.modules() if hasattr(m, "impl")}
    set_impl(net, "ref")  # shapes only: no fast path runs on meta tensors
    try:
        with torch.no_grad():
            return peak_bytes(lambda: functional_call(net, tensors, inputs))
    finally:
        for m, impl in impls.items():
            m.impl = impl


def runs_on_meta(net, channels: int) -> Callable[[int], bool]:
    """For smallest_side: whether ``net`` takes a [1, channels, side, side] input (tried on the meta device)."""
    def runs(side: int) -> bool:
        try:
            inference_bytes(net, (1, channels, side, side))
        except (RuntimeError, ValueError, IndexError) as e:
            del e
            return False
        return True
    return runs


# An image-to-image generator's peak bytes per input pixel where it cannot be traced (an .onnx file run by
# onnxruntime): cyclegan's ResNet generator at ngf 64 peaks at 768 B per pixel in inference_bytes (at 256 and
# at 1024 px), rounded up.
FALLBACK_BYTES_PER_PIXEL = 1024


def image_bytes(side_h: int, side_w: int, bytes_per_pixel: float, channels: int = 3) -> float:
    """Host or device bytes to translate one image: the network's peak (``bytes_per_pixel`` of its input) and
    its float32 input and output."""
    pixels = side_h * side_w
    return pixels * (bytes_per_pixel + 2 * channels * 4)


def bytes_per_pixel(net, channels: int, multiple: int = 1) -> float:
    """A fully convolutional network's inference peak per input pixel (inference_bytes at a side of about
    64 that is a multiple of ``multiple``); the peak grows with the pixels, so this sizes any input (from above
    for larger ones: the borders of reflection-padded activations are relatively smaller on a larger side)."""
    side = max(multiple, -(-64 // multiple) * multiple)
    return inference_bytes(net, (1, channels, side, side)) / side**2


def check_image_size(flag: str, height: int, width: int, bytes_per_pixel: float, device: str = "cpu",
                     channels: int = 3, verb: str = "translate") -> None:
    """Refuses, naming ``flag`` (e.g. "--size 100000"), an image whose translation cannot fit on ``device``:
    image_bytes against available_memory."""
    check_fits(flag, image_bytes(height, width, bytes_per_pixel, channels), device,
               what=f"to {verb} one {height}x{width} image")


def _meta_batch(kind: str, batch: int, side: int):
    import torch

    images = torch.empty(batch, ESTIMATE_CHANNELS, side, side, device="meta")
    labels = torch.zeros(batch, dtype=torch.long, device="meta")
    return {"A": images, "B": images} if kind in ("unpaired", "paired") else {"real": images, "label": labels}


def _trace_step(cfg, model) -> float:
    """Bytes of one training step of ``model`` under ``cfg`` (see the module docstring), on the meta device."""
    import torch

    from .nn import set_impl

    info = {"channels": ESTIMATE_CHANNELS, "num_classes": ESTIMATE_CLASSES, "num_images": cfg.batch_size}
    shapes_only = copy.copy(cfg)
    shapes_only.impl = "ref"  # the losses' and image pools' path (models pass cfg.impl to fastgan.ops)
    with torch.device("meta"):
        nets = model.build_nets(cfg, info)
        state = model.build_state(shapes_only, info)
    for net in nets.values():
        set_impl(net, "ref")  # shapes only: no fast path runs on meta tensors
    parameters = sum(p.numel() for net in nets.values() for p in net.parameters())
    buffers = sum(b.numel() * b.element_size() for m in (*nets.values(), *state.values()) for b in m.buffers())
    batch = _meta_batch(model.data_kind, cfg.batch_size, cfg.image_size)
    activations = 0
    for phase in model.phases(shapes_only, nets, state, info):
        activations = max(activations, forward_bytes(lambda loss=phase.loss: loss(batch)))
    # Batches in flight (two domains, prefetched) and each loader worker's image before its crop.
    side = max(cfg.image_size, getattr(cfg, "load_size", None) or 0)
    data = 4 * cfg.batch_size * ESTIMATE_CHANNELS * cfg.image_size ** 2 * 4
    data += (cfg.workers + 1) * ESTIMATE_CHANNELS * side ** 2 * 4
    return ADAM_BYTES_PER_PARAMETER * parameters + buffers + activations + data


# Fields that neither shape the networks nor the batches (outputs, schedule, where the run goes): configs that
# differ only in these share one trace (tests start many tiny runs of one shape into different folders).
_NOT_SHAPES = ("out", "resume", "init_from", "init_nets", "inception_weights", "seed", "iters", "epochs",
               "epochs_decay", "sample_every", "save_every", "keep_checkpoints", "log_every", "eval_every", "eval_n",
               "eval_feature", "tensorboard", "dry_run", "device", "dist_timeout", "deterministic", "strict")
_TRACED: dict[tuple, float | None] = {}


def train_step_bytes(cfg, model) -> float | None:
    """Estimated bytes of one training step; math.inf when the sizes overflow what tensors can describe;
    None when the model's step cannot be traced on the meta device (then no bound is applied)."""
    import dataclasses

    fields = dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else dict(vars(cfg))
    try:
        key = (type(model).__qualname__, model.name,
               tuple(sorted((k, v) for k, v in fields.items() if k not in _NOT_SHAPES)))
        hash(key)
    except TypeError:  # a field that is not hashable: no cache
        key = None
    if key is not None and key in _TRACED:
        return _TRACED[key]
    found = _train_step_bytes(cfg, model)
    if key is not None:
        if len(_TRACED) >= 64:
            _TRACED.pop(next(iter(_TRACED)))
        _TRACED[key] = found
    return found


def _train_step_bytes(cfg, model) -> float | None:
    try:
        return _trace_step(cfg, model)
    except UserError:
        raise
    except (RuntimeError, ValueError, OverflowError, TypeError, IndexError) as e:
        if isinstance(e, OverflowError) or "overflow" in str(e).lower() or "too large" in str(e).lower():
            return math.inf
        return None


def check_train_memory(cfg, model, sizes: Iterable[str] = TRAIN_SIZE_FLAGS) -> None:
    """Refuses a training config whose step cannot fit on its device, naming the size flag most to blame:
    the one whose recipe value (an eighth of its value where the recipe leaves it to the data) brings the
    estimate down the most."""
    need = train_step_bytes(cfg, model)
    if need is None:
        return
    have, where = available_memory(cfg.device)
    if need <= have:
        return
    import dataclasses

    recipe = model.defaults()
    blame, lowest = None, need
    for name in sizes:
        value, default = getattr(cfg, name, None), recipe.get(name)
        if default is None and isinstance(value, int):
            default = max(1, value // 8)  # a default that depends on the data: compare with a smaller value
        if value is None or default is None or value <= default:
            continue
        try:
            estimate = train_step_bytes(dataclasses.replace(cfg, **{name: default}), model)
        except UserError:  # a value the networks cannot take: no comparison
            continue
        if estimate is not None and (estimate < lowest or blame is None):
            blame, lowest = name, estimate
    flag = (f"--{blame.replace('_', '-')} {getattr(cfg, blame)}" if blame is not None
            else f"--batch-size {cfg.batch_size} --image-size {cfg.image_size}")
    raise UserError(f"{flag}: a {model.name} training step needs {_about(need)} (weights, gradients, "
                    f"Adam state, activations at batch {cfg.batch_size} of {cfg.image_size}x{cfg.image_size}), "
                    f"more than the {format_bytes(have)} of {where} on {cfg.device}; use a smaller value")
