"""torch.distributed plumbing: the torchrun environment, the process group, and the gather NT-Xent needs.

    env = init_distributed()                      # reads RANK / WORLD_SIZE / LOCAL_RANK set by torchrun
    loss = nt_xent(z1, z2, gather=gather_with_grad)

Without torchrun's environment this is a single process (world_size 1, no process group) and every helper
is a no-op, so the same training code runs on a laptop CPU.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist


@dataclass
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    distributed: bool  # a process group is running


def _active() -> bool:
    return dist.is_available() and dist.is_initialized()


def init_distributed(backend: Optional[str] = None) -> DistEnv:
    """Join the process group torchrun describes (nccl on CUDA, gloo on CPU); single process otherwise."""
    cuda = torch.cuda.is_available()
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return DistEnv(0, 1, 0, torch.device("cuda", 0) if cuda else torch.device("cpu"), False)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    if cuda:
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if not _active():
        dist.init_process_group(backend or ("nccl" if cuda else "gloo"), rank=rank, world_size=world)
    return DistEnv(rank, world, local_rank, device, True)


class _AllGatherWithGrad(torch.autograd.Function):
    """Forward: all ranks' (N, ...) rows concatenated in rank order. Backward: each rank receives the SUM over
    ranks of the gradient of its rows, so that with DDP's gradient averaging the result equals the
    single-process gradient of the mean loss over the global batch."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        world = dist.get_world_size()
        x = x.contiguous()
        out = x.new_empty((world * x.shape[0], *x.shape[1:]))  # (world*N, ...)
        dist.all_gather_into_tensor(out, x)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        world, rank = dist.get_world_size(), dist.get_rank()
        n = grad.shape[0] // world
        grad = grad.contiguous()
        if dist.get_backend() == "nccl":
            out = grad.new_empty((n, *grad.shape[1:]))
            dist.reduce_scatter_tensor(out, grad, op=dist.ReduceOp.SUM)
            return out
        grad = grad.clone()  # gloo has no reduce-scatter: all-reduce and keep our rows
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[rank * n:(rank + 1) * n]


class _GatherWithGrad:
    """Callable ``(N, D) -> (world*N, D)``; ``.rank`` tells ``nt_xent`` where the local rows are."""

    @property
    def rank(self) -> int:
        return dist.get_rank() if _active() else 0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if not _active() or dist.get_world_size() == 1:
            return x
        return _AllGatherWithGrad.apply(x)


gather_with_grad = _GatherWithGrad()


def is_main() -> bool:
    return not _active() or dist.get_rank() == 0


def print0(*args, **kwargs) -> None:
    if is_main():
        print(*args, **kwargs, flush=True)


def barrier() -> None:
    if _active():
        dist.barrier()


def all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    """Mean of ``t`` over ranks (a new tensor; ``t`` itself when single-process)."""
    if not _active() or dist.get_world_size() == 1:
        return t
    out = t.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out / dist.get_world_size()


def destroy() -> None:
    if _active():
        dist.destroy_process_group()
