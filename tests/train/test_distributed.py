"""Data-parallel training under torchrun (fastgan/train/distributed.py), on CPU with gloo and 2 processes.

N processes of batch B must train exactly what one process of batch N*B trains (the data layer serves each
rank its block of the global batch, the phases draw the global batch's noise and keep the rank's rows, the
gradients are averaged): 2 x B against 1 x 2B after 10 iterations, within float32 rounding (the sums over
the global batch are taken in another order). The unit tests run 2 gloo processes in-process
(torch.multiprocessing); the end-to-end tests launch `python -m torch.distributed.run` as a user does.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from fastgan.errors import UserError
from fastgan.models.cyclegan import ImagePool
from fastgan.train.checkpoint import existing_checkpoints, gather_rank_states, latest_checkpoint, load_checkpoint
from fastgan.train.distributed import (
    Distributed,
    GlobalBatchNorm2d,
    ReplicasDiffer,
    all_reduce_gradients,
    broadcast_tensors,
    convert_sync_batchnorm,
    parameter_digest,
)
from fastgan.train.graphs import check_cuda_graphs
from fastgan.train.loop import train
from fastgan.train.steps import Task
from fastgan.train.stops import Diverged

pytestmark = pytest.mark.distributed

ENV = os.environ | {"OMP_NUM_THREADS": "1"}
# tests/train/conftest.py's tiny models as flags (batch size and data given per test).
TINY_FLAGS = ["--device", "cpu", "--ngf", "4", "--ndf", "4", "--seed", "3", "--deterministic",
              "--log-every", "1", "--sample-every", "0", "--save-every", "0"]


# --- in-process units: two gloo processes started by torch.multiprocessing ---

def _units(rank: int, world_size: int, init_file: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        _check_sync_bn(rank)
        _check_gradient_buckets(rank, world_size)
        _check_broadcast_and_agreement(rank)
        _check_replicas_at_checkpoints(rank)
    finally:
        dist.destroy_process_group()


def _check_sync_bn(rank: int) -> None:
    # Unequal shares of the global batch (3 and 5 images), so the counts matter; fp64 reference.
    gen = torch.Generator().manual_seed(0)
    x_all = torch.randn(8, 3, 5, 7, generator=gen) * 2 + 1
    w_all = torch.randn(8, 3, 5, 7, generator=gen)  # the upstream gradient
    rows = slice(0, 3) if rank == 0 else slice(3, 8)
    reference = nn.BatchNorm2d(3).double()
    with torch.no_grad():
        reference.weight.uniform_(0.5, 1.5, generator=gen)
        reference.bias.uniform_(-0.5, 0.5, generator=gen)
    synced = convert_sync_batchnorm(nn.Sequential(nn.BatchNorm2d(3)), torch.device("cpu"))[0]
    assert isinstance(synced, GlobalBatchNorm2d)
    synced.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in reference.state_dict().items()})
    x_ref = x_all.double().requires_grad_()
    x = x_all[rows].clone().requires_grad_()
    for _ in range(2):  # running statistics after two updates
        y_ref = reference(x_ref)
        y = synced(x)
    (y_ref * w_all.double()).sum().backward()
    (y * w_all[rows]).sum().backward()
    torch.testing.assert_close(y, y_ref[rows].float(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x.grad, x_ref.grad[rows].float(), rtol=1e-4, atol=1e-5)
    for name in ("weight", "bias"):  # each rank holds its batch's part; the gradient averaging sums them
        grad = getattr(synced, name).grad.clone()
        dist.all_reduce(grad)
        torch.testing.assert_close(grad, getattr(reference, name).grad.float(), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(synced.running_mean, reference.running_mean.float(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(synced.running_var, reference.running_var.float(), rtol=1e-5, atol=1e-6)
    assert int(synced.num_batches_tracked) == 2
    synced.eval()  # running statistics, no collective (rank 0 samples alone)
    reference.eval()
    torch.testing.assert_close(synced(x.detach()), reference(x_ref.detach())[rows].float(), rtol=1e-5, atol=1e-5)

    # A channel whose mean is large against its spread (100 vs 0.01): the variance must come from deviations
    # (E[x^2] - mean^2 cancels to noise in fp32 here), matching nn.BatchNorm2d in fp32 on the joined batch.
    x_all = torch.randn(8, 3, 5, 7, generator=gen) * 0.01 + 100
    synced.train()
    reference = nn.BatchNorm2d(3)
    reference.load_state_dict(synced.state_dict())
    torch.testing.assert_close(synced(x_all[rows]), reference(x_all)[rows], rtol=1e-3, atol=2e-3)


def _check_gradient_buckets(rank: int, world_size: int) -> None:
    gen = torch.Generator().manual_seed(1)
    shapes = [(4, 3, 2, 2), (7,), (5, 5), (3,), (2, 3, 4, 4)]
    params = [nn.Parameter(torch.zeros(s)) for s in shapes]
    per_rank = [[torch.randn(s, generator=gen) for s in shapes] for _ in range(world_size)]
    for p, g in zip(params, per_rank[rank]):
        p.grad = g.clone()
    params[0].grad = params[0].grad.to(memory_format=torch.channels_last)  # a layout the bucket flattens
    params[3].grad = None  # a parameter without a gradient in this phase keeps none
    half = nn.Parameter(torch.zeros(6, dtype=torch.float64))  # another dtype: a bucket of its own
    half.grad = torch.full((6,), float(rank + 1), dtype=torch.float64)
    all_reduce_gradients([*params, half], world_size, bucket_bytes=64)  # 64 bytes: several buckets
    for i, p in enumerate(params):
        if i == 3:
            assert p.grad is None
            continue
        expected = sum(grads[i] for grads in per_rank) / world_size
        torch.testing.assert_close(p.grad, expected, rtol=1e-6, atol=1e-7)
    assert params[0].grad.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(half.grad, torch.full((6,), 1.5, dtype=torch.float64))


def _check_broadcast_and_agreement(rank: int) -> None:
    ddp = Distributed(rank, 2, rank, "gloo", dist.group.WORLD, dist.group.WORLD)
    net = nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3))
    torch.manual_seed(rank)  # different weights on each rank
    for p in net.parameters():
        nn.init.normal_(p)
    net[1].running_mean.fill_(rank)
    digest = parameter_digest({"net": net})
    assert (ddp.all_gather_object(digest)[0] == digest) == (rank == 0)
    broadcast_tensors([*net.parameters(), *net.buffers()])
    assert ddp.all_gather_object(parameter_digest({"net": net}))[1] == parameter_digest({"net": net})
    assert torch.equal(net[1].running_mean, torch.zeros(3))
    # A signal seen by one rank stops both after the same iteration; SIGTERM wins over SIGINT.
    assert ddp.agree_stop(signal.SIGTERM if rank == 1 else None) == signal.SIGTERM
    assert ddp.agree_stop(signal.SIGINT if rank == 0 else signal.SIGTERM) == signal.SIGTERM
    assert ddp.agree_stop(None) is None
    assert ddp.broadcast_object(f"chosen by {rank}") == "chosen by 0"
    torch.testing.assert_close(ddp.mean(torch.tensor([float(rank), 2.0])), torch.tensor([0.5, 2.0]))


def _check_replicas_at_checkpoints(rank: int) -> None:
    ddp = Distributed(rank, 2, rank, "gloo", dist.group.WORLD, dist.group.WORLD)
    torch.manual_seed(0)
    net, pool = nn.Linear(3, 2), ImagePool(2, (1, 2, 2))
    task = Task({"D": net}, {"D": torch.optim.Adam(net.parameters())}, {}, {}, [], {"pool": pool})
    pool.images.fill_(rank)
    gathered = gather_rank_states(task, ddp, 5, None)  # each rank's own pool, on rank 0
    if rank == 0:
        assert [int(entry["state"]["pool"]["images"][0, 0, 0, 0]) for entry in gathered] == [0, 1]
    else:
        assert gathered is None
    with torch.no_grad():
        net.bias[0] += rank  # one replica drifts: every rank stops alike, nothing is saved
    with pytest.raises(ReplicasDiffer, match="at step 5 the parameters of rank\\(s\\) 1 differ from rank 0's"):
        gather_rank_states(task, ddp, 5, None)
    with torch.no_grad():
        net.bias[0] -= rank
    pool.images[0, 0, 0, 0] = float("nan") if rank == 1 else 0.0  # per-rank state is checked on every rank too
    with pytest.raises(Diverged, match="non-finite value in state.pool.images on rank 1"):
        gather_rank_states(task, ddp, 5, "checkpoint-00000003.pt")


def test_sync_bn_gradient_buckets_broadcast_and_stop_agreement(tmp_path):
    mp.spawn(_units, args=(2, str(tmp_path / "init")), nprocs=2, join=True)


# --- end to end: torchrun ---

def torchrun(nproc: int, model: str, out: Path, *flags: str, timeout: float = 300, **popen):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
               "-m", "fastgan.train", model, "--out", str(out), *TINY_FLAGS, *flags]
    if popen.pop("background", False):
        return subprocess.Popen(command, env=ENV, **popen)
    return subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def one_thread():
    """The in-process 1-process runs use one thread, as torchrun's processes: the same reduction order."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def read_log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "losses.jsonl").read_text().splitlines()]


def weights(out: Path, model: str, step: int) -> dict[str, torch.Tensor]:
    """network -> its weight tensors (not biases) flattened, at checkpoint ``step`` of run ``out``."""
    nets = load_checkpoint(out / f"checkpoint-{step:08d}.pt", model)["nets"]
    return {name: torch.cat([v.flatten() for k, v in sorted(state.items()) if k.endswith("weight")])
            for name, state in nets.items()}


def assert_same_losses(one: Path, two: Path, steps: int, rel: float) -> None:
    log_one, log_two = read_log(one)[:steps], read_log(two)[:steps]
    assert [r["step"] for r in log_two] == list(range(1, steps + 1))
    for a, b in zip(log_one, log_two):  # the logged losses are the global batch's (the mean of the ranks')
        assert a.keys() == b.keys()
        for key in a:
            assert a[key] == pytest.approx(b[key], rel=rel, abs=1e-7), (a["step"], key)


def test_two_processes_of_batch_b_train_what_one_of_2b_does_dcgan(tiny, tmp_path, one_thread):
    # --sync-bn: without it each process normalises with its own B images, by design not 2B's statistics.
    two = torchrun(2, "dcgan", tmp_path / "two", "--data", "synthetic", "--z-dim", "8", "--batch-size", "4",
                   "--iters", "10", "--save-every", "10", "--sync-bn")
    assert two.returncode == 0, two.stderr
    train(tiny("dcgan", tmp_path / "one", data="synthetic", batch_size=8, iters=10, save_every=10))
    assert_same_losses(tmp_path / "one", tmp_path / "two", 10, rel=1e-5)
    one, two = weights(tmp_path / "one", "dcgan", 10), weights(tmp_path / "two", "dcgan", 10)
    # Measured: 1.4e-6 at most (float32 rounding of the sums over the global batch, taken in another
    # order, through 10 Adam steps).
    assert max((one[k] - two[k]).abs().max().item() for k in one) < 2e-5


def test_two_processes_of_batch_b_train_what_one_of_2b_does_cyclegan(tiny, tmp_path, one_thread, unpaired_dir):
    # Pools of 50 images, 10 x 2 given: they only pass images through, so per-rank pools change nothing.
    flags = ["--data", str(unpaired_dir), "--image-size", "32", "--load-size", "36", "--workers", "0",
             "--n-blocks", "1", "--pool-size", "50", "--iters", "10", "--save-every", "1", "--keep-checkpoints", "10"]
    two = torchrun(2, "cyclegan", tmp_path / "two", "--batch-size", "1", *flags)
    assert two.returncode == 0, two.stderr
    train(tiny("cyclegan", tmp_path / "one", data=str(unpaired_dir), batch_size=2, pool_size=50, iters=10,
               save_every=1, keep_checkpoints=10))
    # Step 1 is the same forward pass over the same 2 images.
    assert_same_losses(tmp_path / "one", tmp_path / "two", 1, rel=1e-5)
    # After that the two runs part by float32 rounding that Adam amplifies: its first update is lr * sign(grad)
    # whatever the gradient's size, so a weight whose gradient is rounding noise (the biases before an
    # InstanceNorm, a few transposed-conv taps) moves by +lr in one run and -lr in the other. One process of
    # batch 2 against itself with another conv layout (--channels-last) parts as far (2.9e-4 in 10 steps).
    # So the check is relative: the distance between the runs' weights against the distance the weights
    # travelled since step 1. Measured: 0.02 (D) to 0.13 (G) after 10 steps; one process of batch 1, what a
    # rank that trained on its own batch alone would do, is 0.5 to 0.9 away.
    one, two, start = (weights(tmp_path / "one", "cyclegan", 10), weights(tmp_path / "two", "cyclegan", 10),
                       weights(tmp_path / "one", "cyclegan", 1))
    for net in one:
        assert (one[net] - two[net]).norm() < 0.3 * (one[net] - start[net]).norm(), net


def _worker_pids(launcher: int) -> dict[int, int]:
    """rank -> PID of the processes torchrun started (its children, by their RANK)."""
    found = {}
    # Every thread's children: /proc/PID/task/TID/children lists those of thread TID alone.
    children = set()
    for task in Path(f"/proc/{launcher}/task").iterdir():
        try:
            children.update(map(int, (task / "children").read_text().split()))
        except OSError:  # the thread ended meanwhile
            continue
    for pid in sorted(children):
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        ranks = [int(item[5:]) for item in env if item.startswith(b"RANK=")]
        if ranks:
            found[ranks[0]] = pid
    return found


def _signal_rank_1(out: Path, flags: list[str], signum: int, checkpoints: int, log: Path) -> tuple[int, float, str]:
    """Starts a long 2-process run in ``out`` (resuming it if it has checkpoints), sends ``signum`` to rank 1
    once ``out`` holds ``checkpoints`` checkpoints; (torchrun's exit code, seconds it took to end, its stderr)."""
    with open(log, "w") as err:
        launcher = torchrun(2, "dcgan", out, *flags, "--iters", "100000", "--resume", "auto", background=True,
                            stdout=subprocess.DEVNULL, stderr=err)
    try:
        deadline = time.monotonic() + 240
        while len(existing_checkpoints(out)) < checkpoints:
            assert launcher.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "the 2-process run made no progress"
            time.sleep(0.05)
        workers = _worker_pids(launcher.pid)
        assert 1 in workers, (workers, log.read_text())
        os.kill(workers[1], signum)
        sent = time.monotonic()
        code = launcher.wait(timeout=120)
    finally:
        if launcher.poll() is None:
            launcher.kill()
    return code, time.monotonic() - sent, log.read_text()


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="finds torchrun's workers through /proc")
def test_stopped_or_killed_rank_and_the_run_resumes_exactly(tiny, tmp_path, one_thread):
    """SIGTERM to one process stops both after the same step with a checkpoint of it; one process killed
    mid-run ends the job with a message; --resume auto with 2 processes then continues from the last
    checkpoint and ends where an uninterrupted 2-process run ends, bit for bit. Also: only rank 0 writes
    files, and every rank holds the same weights (checked at each checkpoint)."""
    parts, whole = tmp_path / "parts", tmp_path / "whole"
    flags = ["--data", "synthetic", "--z-dim", "8", "--batch-size", "4", "--save-every", "3",
             "--keep-checkpoints", "1000"]

    # SIGTERM reaches rank 1 alone; the per-iteration agreement stops rank 0 after the same step.
    code, _, err = _signal_rank_1(parts, flags, signal.SIGTERM, 1, tmp_path / "sigterm.err")
    stopped = re.search(r"fastgan\.train: stopped by SIGTERM after step (\d+); checkpoint (\S+); to continue", err)
    assert code != 0 and stopped, err
    assert re.search(r"exitcode +: 143", err) and not re.search(r"exitcode +: (?!143)", err), err
    assert Path(stopped.group(2)) == latest_checkpoint(parts)
    assert load_checkpoint(latest_checkpoint(parts), "dcgan")["step"] == int(stopped.group(1))

    code, stopped_in, err = _signal_rank_1(parts, flags, signal.SIGKILL, len(existing_checkpoints(parts)) + 2,
                                           tmp_path / "killed.err")
    assert code != 0
    assert stopped_in < 60, stopped_in  # the survivor's collective fails at once (the timeout is 300 s)
    # torchrun's summary names the killed rank. Rank 0's collective fails at once (the peer's socket closes):
    # it says so in one line, unless torchrun's SIGTERM, sent to the survivors, ends it first.
    # (torch 2.14 writes "exitcode : -9 (pid: N) (SIGKILL)", torch 2.11 "exitcode : -9 (pid: N)".)
    assert re.search(r"rank +: 1 \(local_rank: 1\)\s+exitcode +: -9 \(pid", err), err
    assert "[rank0]: Traceback" not in err, err

    saved = load_checkpoint(latest_checkpoint(parts), "dcgan")["step"]
    total = saved + 4
    resumed = torchrun(2, "dcgan", parts, *flags, "--iters", str(total), "--resume", "auto")
    assert resumed.returncode == 0, resumed.stderr
    assert f"step {total}" in resumed.stdout
    uninterrupted = torchrun(2, "dcgan", whole, *flags, "--iters", str(total))
    assert uninterrupted.returncode == 0, uninterrupted.stderr
    assert "effective batch 8 per step; learning rate 0.0002 not scaled" in uninterrupted.stdout
    assert "BatchNorm statistics per process" in uninterrupted.stdout

    a, b = (load_checkpoint(latest_checkpoint(d), "dcgan") for d in (whole, parts))
    assert a["step"] == b["step"] == total
    for group in ("nets", "optimizers"):
        for key, value in _flat(a[group]).items():
            assert torch.equal(value, _flat(b[group])[key]), (group, key)
    assert a["world_size"] == 2 and len(a["ranks"]) == 2
    for rank in range(2):
        assert torch.equal(a["ranks"][rank]["rng"]["torch"], b["ranks"][rank]["rng"]["torch"])
    assert read_log(whole) == [r for r in read_log(parts) if r["step"] <= total]

    # Rank 0's files only: one log, one checkpoint series, one sample grid, no per-rank files.
    steps = sorted(set(range(3, total + 1, 3)) | {total})
    expected = {"config.json", "latest", "lock", "losses.jsonl", "report.html", "samples",
                f"samples/step-{total:08d}.png"} | {f"checkpoint-{s:08d}.pt{x}" for s in steps for x in ("", ".sha256")}
    assert {p.relative_to(whole).as_posix() for p in whole.rglob("*")} == expected

    # A different number of processes cannot continue it exactly: one line naming both numbers.
    with pytest.raises(UserError, match=r"checkpoint .*checkpoint-\d+\.pt was written by 2 process\(es\), this run "
                                        r"has 1; resume with 2"):
        train(tiny("dcgan", whole, data="synthetic", batch_size=4, iters=total + 2, resume="auto"))


def _flat(tree, prefix=""):
    if isinstance(tree, torch.Tensor):
        return {prefix: tree}
    items = tree.items() if isinstance(tree, dict) else enumerate(tree) if isinstance(tree, (list, tuple)) else []
    out = {}
    for key, value in items:
        out.update(_flat(value, f"{prefix}.{key}"))
    return out


def test_bad_input_is_one_line_from_the_failing_rank(tmp_path):
    proc = torchrun(2, "dcgan", tmp_path / "run", "--data", "synthetic", "--batch-size", "4", "--device", "cuda:1",
                    timeout=120)
    assert proc.returncode != 0
    # Both ranks reject the flag, but the first to exit makes torchrun SIGTERM the other, which may not have
    # printed yet: at least one rank's line, and each line printed names its rank.
    lines = re.findall(r"^fastgan\.train: rank (\d): error: --device cuda:1: .*$", proc.stderr, re.M)
    assert lines and set(lines) <= {"0", "1"}, proc.stderr
    assert re.search(r"exitcode +: 2 ", proc.stderr), proc.stderr
    assert not re.search(r"\[rank\d\]: Traceback", proc.stderr), proc.stderr
    assert not (tmp_path / "run").exists()


def test_refused_at_start(tiny, tmp_path):
    with pytest.raises(UserError, match=r"--sync-bn: cyclegan's networks have no BatchNorm layer to synchronise; "
                                        "drop --sync-bn"):
        train(tiny("cyclegan", tmp_path / "c", data="synthetic", sync_bn=True, iters=1))
    assert not (tmp_path / "c").exists()
    cfg = tiny("dcgan", tmp_path, cuda_graphs=True)
    with pytest.raises(UserError, match="--cuda-graphs with 2 processes: capturing the gradient all-reduce"):
        check_cuda_graphs(cfg, torch.device("cuda"), world_size=2)
