"""fastcvrl.dist: single-process fallbacks, and NT-Xent gradients across two gloo processes under DDP."""

from __future__ import annotations

import os

import torch
import torch.multiprocessing as mp
from processes import rendezvous_env
from torch import nn

from fastcvrl import dist as fdist
from fastcvrl.loss import nt_xent

WORLD, N, D_IN = 2, 4, 10  # per-rank batch N; global batch WORLD * N


def _model() -> nn.Module:
    torch.manual_seed(0)
    # BN-free: per-rank BN statistics would legitimately differ from full-batch ones
    return nn.Sequential(nn.Linear(D_IN, 16), nn.Tanh(), nn.Linear(16, 8))


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(WORLD * N, D_IN, generator=g), torch.randn(WORLD * N, D_IN, generator=g)


def _step(model: nn.Module, x1: torch.Tensor, x2: torch.Tensor, gather=None) -> torch.Tensor:
    z1, z2 = model(torch.cat([x1, x2])).chunk(2)  # one forward for both views, as the trainer does
    loss = nt_xent(z1, z2, 0.2, gather)
    loss.backward()
    return loss.detach()


def _worker(rank: int, meet: dict, out_dir: str) -> None:
    os.environ.update(
        meet,
        RANK=str(rank),
        WORLD_SIZE=str(WORLD),
        LOCAL_RANK=str(rank),
    )
    torch.set_num_threads(1)
    env = fdist.init_distributed()
    try:
        model = nn.parallel.DistributedDataParallel(_model())  # averages gradients over ranks
        x1, x2 = _data()
        sl = slice(rank * N, (rank + 1) * N)
        loss = _step(model, x1[sl], x2[sl], fdist.gather_with_grad)
        gathered = fdist.gather_with_grad(torch.full((N, 3), float(rank)))
        torch.save(
            {
                "env": (env.rank, env.world_size, env.local_rank, env.distributed, str(env.device)),
                "grads": [p.grad.clone() for p in model.module.parameters()],
                "loss": loss,
                "loss_mean": fdist.all_reduce_mean(loss),
                "gathered": gathered,
                "is_main": fdist.is_main(),
                "gather_rank": fdist.gather_with_grad.rank,
            },
            os.path.join(out_dir, f"rank{rank}.pt"),
        )
        fdist.barrier()
    finally:
        fdist.destroy()


def test_two_gloo_ranks_match_single_process_gradient(tmp_path):
    with rendezvous_env() as meet:
        mp.spawn(_worker, args=(meet, str(tmp_path)), nprocs=WORLD, join=True)
    res = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]

    model = _model()
    x1, x2 = _data()
    full_loss = _step(model, x1, x2)  # single process on the concatenated batch
    full_grads = [p.grad for p in model.parameters()]

    for r, out in enumerate(res):
        assert out["env"] == (r, WORLD, r, True, "cpu")
        assert out["is_main"] == (r == 0) and out["gather_rank"] == r
        expected = torch.cat([torch.full((N, 3), float(s)) for s in range(WORLD)])
        assert torch.equal(out["gathered"], expected)
        torch.testing.assert_close(out["loss_mean"], full_loss)
        for g, ref in zip(out["grads"], full_grads):
            torch.testing.assert_close(g, ref, rtol=1e-5, atol=1e-6)
    # the ranks' own losses differ (different local batches) yet average to the global loss
    assert not torch.allclose(res[0]["loss"], res[1]["loss"])
    torch.testing.assert_close((res[0]["loss"] + res[1]["loss"]) / 2, full_loss)


def test_single_process_fallbacks(monkeypatch):
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    env = fdist.init_distributed()
    assert (env.rank, env.world_size, env.local_rank, env.distributed) == (0, 1, 0, False)
    assert env.device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    x = torch.randn(3, 4, requires_grad=True)
    assert fdist.gather_with_grad(x) is x and fdist.gather_with_grad.rank == 0
    t = torch.tensor(2.5)
    assert fdist.all_reduce_mean(t).item() == 2.5
    assert fdist.is_main()
    fdist.barrier()
    fdist.destroy()


class _OldDDP(nn.parallel.DistributedDataParallel):
    """DDP as torch < 2.13 presents it: no ``forward_sync_buffers`` keyword."""

    def __init__(self, module, device_ids=None, static_graph=False, broadcast_buffers=True):
        super().__init__(
            module, device_ids=device_ids, static_graph=static_graph, broadcast_buffers=broadcast_buffers
        )


def _api_worker(rank: int, meet: dict, out_dir: str, old_api: bool) -> None:
    import warnings

    os.environ.update(
        meet,
        RANK=str(rank),
        WORLD_SIZE=str(WORLD),
        LOCAL_RANK=str(rank),
    )
    torch.set_num_threads(1)
    if old_api:  # hide the new names, as on older torch
        import torch.distributed as td

        for name in ("all_gather_single", "reduce_scatter_single"):
            if hasattr(td, name):
                delattr(td, name)
        nn.parallel.DistributedDataParallel = _OldDDP
    fdist.init_distributed()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model = fdist.wrap_ddp(_model(), None, static_graph=False, sync_buffers=True)
            x1, x2 = _data()
            sl = slice(rank * N, (rank + 1) * N)
            _step(model, x1[sl], x2[sl], fdist.gather_with_grad)
        torch.save(
            {
                "grads": [p.grad.clone() for p in model.module.parameters()],
                "future": [str(w.message) for w in caught if issubclass(w.category, FutureWarning)],
                "type": type(model).__name__,
            },
            os.path.join(out_dir, f"api{rank}.pt"),
        )
        fdist.barrier()
    finally:
        fdist.destroy()


def test_current_and_older_torch_collective_names_give_the_same_gradients(tmp_path):
    """torch 2.13 warns on all_gather_into_tensor and DDP(broadcast_buffers=...); the new names are used where
    present (no FutureWarning) and the old ones where hidden, with the single-process gradient either way."""
    import torch.distributed as td

    model = _model()
    x1, x2 = _data()
    _step(model, x1, x2)
    full = [p.grad for p in model.parameters()]
    new_api = hasattr(td, "all_gather_single")
    for old in (False, True):
        out = tmp_path / ("old" if old else "new")
        out.mkdir()
        with rendezvous_env() as meet:
            mp.spawn(_api_worker, args=(meet, str(out), old), nprocs=WORLD, join=True)
        for r in range(WORLD):
            res = torch.load(out / f"api{r}.pt")
            for g, ref in zip(res["grads"], full):
                torch.testing.assert_close(g, ref, rtol=1e-5, atol=1e-6)
            if not old:
                assert res["future"] == [], res["future"]
            else:
                assert res["type"] == "_OldDDP"
                if new_api:  # this torch deprecates the old names: their warnings show the fallback ran
                    assert any("all_gather_into_tensor" in m for m in res["future"]), res["future"]


def test_gradients_take_the_strides_of_their_channels_last_parameters():
    """A 1x1x1 kernel in channels_last_3d and a gradient with contiguous strides address the same memory the
    same way; autograd keeps such a gradient as it is, and DDP (buckets built from the parameters' strides)
    would warn and copy. ``match_grad_strides`` re-views it with the parameter's strides, without a copy."""
    kernel = nn.Conv3d(4, 6, 1, bias=False).to(memory_format=torch.channels_last_3d)
    p = kernel.weight
    assert p.stride() == (4, 1, 4, 4, 4)
    contiguous = torch.arange(24.0).reshape(6, 4, 1, 1, 1)  # strides (4, 1, 1, 1, 1)

    (p * contiguous).sum().backward()
    assert p.grad.stride() == (4, 1, 1, 1, 1)  # what DDP's bucket check refuses
    p.grad = None
    fdist.match_grad_strides(kernel)
    (p * contiguous).sum().backward()
    assert p.grad.stride() == p.stride() and torch.equal(p.grad, contiguous)
    # a gradient laid out otherwise on a dim of size > 1 is left to autograd's own layout rule
    wide = nn.Parameter(torch.zeros(3, 1, 5))
    fdist.match_grad_strides(nn.ParameterList([wide]))
    other = torch.arange(15.0).reshape(5, 1, 3).permute(2, 1, 0)  # strides (1, 3, 3)
    (wide * other).sum().backward()
    assert torch.equal(wide.grad, other)
