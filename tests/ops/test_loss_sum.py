"""fastgan.ops.loss_sum: the Triton kernel (interpreted on the CPU, its output poisoned) adds a phase's losses
left to right in fp32, bit for bit Python's sum, for short lists and lists longer than one launch takes."""

import pytest
import torch

from fastgan.ops import loss_sum, loss_sum_ref
from fastgan.testing import ledger


def _losses(n, seed=0):
    gen = torch.Generator().manual_seed(seed)
    # Magnitudes 1e-4 .. 1e4: the order of the fp32 adds shows in the last bits.
    values = torch.rand(n, generator=gen) * 10.0 ** torch.randint(-4, 5, (n,), generator=gen)
    return [v.clone().requires_grad_() for v in values]


@pytest.mark.parametrize("n", [1, 2, 6, 8, 9, 17])  # one loss; CycleGAN's G phase (6); one launch full; chained
def test_bit_for_bit_python_sum_and_gradients(triton_cpu, n):
    for seed in range(5):
        losses = _losses(n, seed)
        total = loss_sum(losses, impl="triton")
        assert total.dtype == torch.float32 and total.dim() == 0
        assert torch.equal(total, sum(loss.detach() for loss in losses))  # the same adds in the same order
        assert torch.equal(total, loss_sum_ref([loss.detach() for loss in losses]))
        grad = torch.tensor(0.37)
        grads = torch.autograd.grad(total, losses, grad)
        assert all(torch.equal(g, grad) for g in grads)


def test_replayed_launches_match_a_real_run(monkeypatch):
    """The step ledger's replay of loss_sum makes the launches a real run makes (two for 9 losses)."""
    pytest.importorskip("triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    calls = ledger._Calls(costs=False)
    with ledger._recording(calls, run_triton=True):
        loss_sum(_losses(9), impl="triton")
    (_, op, inner, (args, kwargs)), = [e for e in calls.entries if e[0] == "op"]
    assert [e[1] for e in inner] == ["triton _loss_sum_kernel"] * 2
    replayed = ledger.op_kernels(op.removesuffix(".default").replace(".", "::", 1), args, kwargs)
    assert [e[1] for e in replayed] == ["triton _loss_sum_kernel"] * 2


def test_bad_input_is_one_clear_error(triton_cpu):
    with pytest.raises(ValueError, match="no losses"):
        loss_sum([], impl="triton")
    with pytest.raises(ValueError, match=r"losses\[1\] is torch.float64"):
        loss_sum([torch.tensor(1.0), torch.tensor(2.0, dtype=torch.float64)], impl="triton")
    with pytest.raises(ValueError, match=r"losses\[0\] is torch.float32 \(2,\)"):
        loss_sum([torch.ones(2)], impl="triton")
