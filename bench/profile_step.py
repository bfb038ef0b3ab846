"""torch.profiler over a few training steps of the headline case: kernels per step, GPU busy time, the top kernels.

  python bench/profile_step.py --json OUT.json [--steps 5]

On CUDA: CycleGAN 256² batch 1 (the paper's deconv upsampling) as `--amp --cuda-graphs` runs it, built by
bench/test_train_step.py's make_case (the trainer's configure_backends, configure_engine and
make_train_step), warmed up, then 5 synchronised graph replays under the profiler. On the CPU (gpu-check's
dry run) the same plumbing on the CPU case of that file, eager (no CUDA graphs there), counting CPU ops.

Kernel count, GPU busy time (the union of the kernels' intervals, so overlap is not counted twice) and wall
time are per step; when fastgan.testing.ledger is importable, its modelled launch count of the same
iteration is recorded beside the measured one.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ is no package: its conftest and test files

import torch  # noqa: E402
from conftest import synchronize  # noqa: E402
from test_train_step import VARIANTS, make_case  # noqa: E402

CUDA_CASE = ("cyclegan", 256, 1, {"upsample": "deconv"})
CPU_CASE = ("cyclegan", 32, 1, {"ngf": 8, "ndf": 8})


def busy_us(intervals: list[tuple[float, float]]) -> float:
    """Length of the union of [start, end) intervals."""
    total, end = 0.0, float("-inf")
    for start, stop in sorted(intervals):
        if stop <= end:
            continue
        total += stop - max(start, end)
        end = stop
    return total


def ledger_launches(case, flags) -> dict:
    """The step ledger's modelled launches of the same iteration, or why there are none."""
    try:
        from fastgan.testing import ledger
    except ImportError as e:
        return {"available": False, "why": f"fastgan.testing.ledger is not importable ({e})"}
    model, image_size, batch_size, overrides = case
    try:
        modelled = ledger.ledger_for(model, {"image_size": image_size, "batch_size": batch_size, "amp": flags["amp"],
                                             **overrides}, impls=("auto",))
        total = modelled["impls"]["auto"]["total"]
        return {"available": True, "launches": total["launches"], "bytes": total["bytes"],
                "modelled_seconds": total["seconds"], "gpu": modelled.get("gpu")}
    except Exception as e:  # the ledger is another engineer's moving target: record, never fail the profile
        return {"available": False, "why": f"ledger_for failed: {type(e).__name__}: {e}"}


def profile(steps: int) -> dict:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    variant = "fastgan" if cuda else "fastgan-eager"
    case = CUDA_CASE if cuda else CPU_CASE
    flags = VARIANTS[variant]
    step, batch = make_case(*case, flags, device)
    accum: dict = {}
    for _ in range(3):
        step(batch, accum)
    synchronize(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    walls = []
    with torch_profile(activities=activities) as prof:
        for _ in range(steps):
            start = time.perf_counter()
            step(batch, accum)
            synchronize(device)
            walls.append(time.perf_counter() - start)
    events = [e for e in prof.events() if (e.device_type == torch.autograd.DeviceType.CUDA) == cuda]
    if cuda:  # kernels, memcpy and memset on the device
        kernels = events
    else:  # CPU ops at the top of the stack stand in for launches in the dry run
        kernels = [e for e in events if e.cpu_parent is None and not e.name.startswith("ProfilerStep")]
    by_name: dict[str, dict] = {}
    for e in kernels:
        row = by_name.setdefault(e.name, {"name": e.name, "count": 0, "total_us": 0.0})
        row["count"] += 1
        row["total_us"] += e.time_range.end - e.time_range.start
    top = sorted(by_name.values(), key=lambda r: -r["total_us"])[:20]
    for row in top:
        row["us_per_step"] = row["total_us"] / steps
    busy = busy_us([(e.time_range.start, e.time_range.end) for e in kernels])
    return {"device": torch.cuda.get_device_name() if cuda else "cpu", "torch": torch.__version__,
            "case": {"model": case[0], "image_size": case[1], "batch_size": case[2], **case[3]},
            "variant": variant, "flags": flags, "steps": steps, "what": "CUDA kernels" if cuda else "CPU ops (dry run)",
            "kernels_per_step": len(kernels) / steps, "distinct_kernels": len(by_name),
            "busy_ms_per_step": busy / steps / 1e3, "wall_ms_per_step": statistics.median(walls) * 1e3,
            "top": top, "ledger": ledger_launches(case, flags),
            "ops_library": os.environ.get("FASTGAN_OPS_LIBRARY") or None}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", required=True, help="write the profile here")
    parser.add_argument("--steps", type=int, default=5, help="profiled steps (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error(f"--steps {args.steps}: at least 1")
    if not torch.cuda.is_available():
        torch.set_num_threads(1)
    result = profile(args.steps)
    tmp = Path(args.json + ".tmp")
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    os.replace(tmp, args.json)
    print(f"profile_step: {result['kernels_per_step']:.0f} {result['what']} per step, busy "
          f"{result['busy_ms_per_step']:.3f} ms of {result['wall_ms_per_step']:.3f} ms wall per step")
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # The profile is written: leave at once. Seen on the CPU: the interpreter's exit hung after a profiled run
    # (threads the profiler started), which cost gpu-check's step its whole time limit.
    os._exit(code)
