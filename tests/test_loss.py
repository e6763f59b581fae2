"""NT-Xent: agreement with the loop reference, the cross-rank semantics via a simulated gather, accuracy."""

from __future__ import annotations

import ast
import math

import pytest
import torch
import torch.nn.functional as F

import fastcvrl.loss as loss_mod
from fastcvrl.loss import nt_xent, nt_xent_reference, nt_xent_with_accuracy


def _pair(n=6, d=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    z1 = torch.randn(n, d, generator=g, dtype=torch.float64).requires_grad_()
    z2 = torch.randn(n, d, generator=g, dtype=torch.float64).requires_grad_()
    return z1, z2


@pytest.mark.parametrize("temperature", [0.1, 0.5])
def test_matches_reference_value_and_gradient(temperature):
    z1, z2 = _pair()
    fast = nt_xent(z1, z2, temperature)
    g_fast = torch.autograd.grad(fast, (z1, z2))
    ref = nt_xent_reference(z1, z2, temperature)
    g_ref = torch.autograd.grad(ref, (z1, z2))
    torch.testing.assert_close(fast.double(), ref, rtol=1e-5, atol=1e-6)
    for a, b in zip(g_fast, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_identical_embeddings_give_log_of_candidates():
    # all 2N clips identical: every logit equal, 2N - 1 candidates (self excluded) -> per direction log(2N-1)
    n = 4
    z = torch.ones(n, 3)
    assert nt_xent(z, z.clone()).item() == pytest.approx(2 * math.log(2 * n - 1), rel=1e-6)


def test_scale_invariant_and_fp32_output():
    z1, z2 = _pair()
    a = nt_xent(z1.float(), z2.float())
    b = nt_xent(3.0 * z1.float(), 0.5 * z2.float())
    assert a.dtype == torch.float32 and a.dim() == 0
    torch.testing.assert_close(a, b)
    c = nt_xent(z1.bfloat16(), z2.bfloat16())
    assert c.dtype == torch.float32 and abs(c.item() - a.item()) < 0.05 * a.item()


class FakeGather:
    """Simulates rank ``rank`` of ``world`` with the other ranks' rows taken from the global views (with
    gradient, as the real gather routes it); called once per view, view 1 first."""

    def __init__(self, views, rank, world):
        self.views, self.rank, self.world, self.calls = views, rank, world, 0

    def __call__(self, x):
        full = F.normalize(self.views[self.calls], dim=1)
        self.calls += 1
        n = x.shape[0]
        parts = list(full.split(n))
        parts[self.rank] = x
        return torch.cat(parts)


def test_rank_losses_averaged_equal_global_loss_and_gradient():
    world, n = 3, 4
    z1, z2 = _pair(world * n, 6, seed=1)
    full = nt_xent(z1, z2)
    g_full = torch.autograd.grad(full, (z1, z2))
    _, acc_full = nt_xent_with_accuracy(z1, z2)
    total, accs = 0.0, []
    for r in range(world):
        sl = slice(r * n, (r + 1) * n)
        lr, ar = nt_xent_with_accuracy(z1[sl], z2[sl], gather=FakeGather((z1, z2), r, world))
        total = total + lr / world  # DDP averages over ranks
        accs.append(ar)
    g_ranks = torch.autograd.grad(total, (z1, z2))
    torch.testing.assert_close(total, full)
    torch.testing.assert_close(torch.stack(accs).mean(), acc_full)
    for a, b in zip(g_ranks, g_full):
        torch.testing.assert_close(a, b)


def test_custom_gather_needs_rank():
    z1, z2 = _pair()
    with pytest.raises(ValueError, match="rank"):
        nt_xent(z1, z2, gather=lambda x: x)
    # an explicit rank works; identity gather at rank 0 is the single-process loss
    torch.testing.assert_close(nt_xent(z1, z2, gather=lambda x: x, rank=0), nt_xent(z1, z2))


def test_accuracy_counts_top1_positives():
    torch.manual_seed(0)
    z1 = torch.randn(8, 16)
    _, acc = nt_xent_with_accuracy(z1, z1 + 0.01 * torch.randn(8, 16))
    assert acc.item() == 1.0
    # brute force on random pairs: argmax over the other 2N-1 clips is the positive
    z2 = torch.randn(8, 16)
    _, acc = nt_xent_with_accuracy(z1, z2)
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    sim = z @ z.t()
    sim.fill_diagonal_(-2)
    expected = (sim.argmax(1) == (torch.arange(16) + 8) % 16).float().mean()
    assert acc.item() == pytest.approx(expected.item())
    assert not acc.requires_grad


def test_loss_module_never_touches_torch_distributed():
    tree = ast.parse(open(loss_mod.__file__).read())
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] + [getattr(node, "module", "") or ""]
            assert not any("distributed" in n for n in names), names
        if isinstance(node, ast.Attribute):
            assert node.attr != "distributed"


def test_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="same shape"):
        nt_xent(torch.randn(4, 8), torch.randn(3, 8))
