"""Data-parallel throughput: images/s of `python -m fastgan.train dcgan` under torchrun, 1 and 2 CPU processes
(gloo) and, on a CUDA machine, 1 GPU (multi-GPU scaling needs a machine with several GPUs).

Run with `pytest bench --benchmark-only -k distributed`. Each case launches
`python -m torch.distributed.run --standalone --nproc-per-node N -m fastgan.train dcgan ...` on synthetic
28x28 data with batch B per process (effective batch N*B) and reads the trainer's own it/s (its training loop
only: process start, data and network set-up are left out); images/s = it/s * B * N. The timed call is the
whole command. extra_info records the device label ("CPU (gloo)" or the GPU), the processes, the batches,
images/s and, for 2 processes, the ratio to 1 process measured in the same run. CPU figures say what the
collectives cost on one machine's cores, not what N GPUs give.
"""

import os
import re
import subprocess
import sys

import pytest
import torch

_CUDA = torch.cuda.is_available()
BATCH = 16  # per process
ITERS = 60  # the trainer's it/s covers these; the first one (lazy set-up) is a small part of them
CASES = [("cpu", 1), ("cpu", 2)] + ([("cuda", 1)] if _CUDA else [])
_measured: dict[tuple[str, int], float] = {}  # (device, processes) -> images/s, for the scaling ratio


def _train(device: str, nproc: int) -> float:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
               "-m", "fastgan.train", "dcgan", "--data", "synthetic", "--device", device, "--batch-size", str(BATCH),
               "--ngf", "16", "--ndf", "16", "--iters", str(ITERS), "--log-every", str(ITERS), "--sample-every", "0",
               "--save-every", "0", "--out", os.path.join(os.environ.get("TMPDIR", "/tmp"), f"bench-ddp-{os.getpid()}"
                                                                                          f"-{device}-{nproc}")]
    # One intra-op thread per process on CPU (torchrun's default for several processes), so 1 and 2 compare.
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    it_per_s = float(re.search(r"step \d+ \(epoch \d+\), ([\d.]+) it/s", result.stdout).group(1))
    return it_per_s * BATCH * nproc


@pytest.mark.parametrize("device, nproc", CASES, ids=[f"{d}-{n}proc" for d, n in CASES])
def test_data_parallel_images_per_s(benchmark, record, tmp_path, monkeypatch, device, nproc):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    images_per_s = benchmark.pedantic(_train, args=(device, nproc), rounds=1, iterations=1)
    _measured[(device, nproc)] = images_per_s
    single = _measured.get((device, 1))
    label = "CPU (gloo)" if device == "cpu" else torch.cuda.get_device_name()
    record(model="dcgan 28x28 ngf=ndf=16", device_label=label, processes=nproc, batch_per_process=BATCH,
           effective_batch=BATCH * nproc, images_per_s=round(images_per_s, 1),
           scaling_vs_1_process=round(images_per_s / single, 3) if single and nproc > 1 else None,
           cpu_cores=os.cpu_count())
