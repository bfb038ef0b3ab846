"""Shared helpers for `pytest bench --benchmark-only`: run metadata and synchronised timing."""

import functools
import statistics
import subprocess
import time

import pytest
import torch


@functools.lru_cache(None)
def run_metadata() -> dict:
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        sha = "unknown"
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    return {"device": device, "torch": torch.__version__, "triton": triton_version, "git_sha": sha}


@pytest.fixture(scope="session", autouse=True)
def one_cpu_thread():
    """On CPU, one intra-op thread: the small CPU cases on a shared 2-core machine take seconds with one
    thread and over a minute with several contending. GPU runs keep torch's default."""
    if torch.cuda.is_available():
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def bench_device():
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@pytest.fixture
def record(benchmark):
    """Adds run metadata plus the given fields to the benchmark's extra_info."""

    def _record(**fields):
        benchmark.extra_info.update(run_metadata())
        benchmark.extra_info.update(fields)

    return _record


def median_ms(fn, device, reps=20, warmup=5):
    """Median time of fn() in ms: CUDA events on a GPU, perf_counter on the CPU."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()  # sync: timing only
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)
