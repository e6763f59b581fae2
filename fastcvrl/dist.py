"""torch.distributed plumbing: the torchrun environment, the process groups, and the gather NT-Xent needs.

    env = init_distributed()                      # reads RANK / WORLD_SIZE / LOCAL_RANK set by torchrun
    loss = nt_xent(z1, z2, gather=gather_with_grad)
    if any_rank(failed): ...                      # host-side agreement (gloo), off the GPU stream
    stop = StopFlag(env)                          # SIGTERM / Ctrl-C, agreed by all ranks between steps

Without torchrun's environment this is a single process (world_size 1, no process group) and every helper
is a no-op, so the same training code runs on a laptop CPU.
"""

from __future__ import annotations

import functools
import inspect
import os
import signal
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn


@dataclass
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    distributed: bool  # a process group is running


def _active() -> bool:
    return dist.is_available() and dist.is_initialized()


def init_distributed(backend: str | None = None) -> DistEnv:
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
        all_gather_single(out, x)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        world, rank = dist.get_world_size(), dist.get_rank()
        n = grad.shape[0] // world
        grad = grad.contiguous()
        if dist.get_backend() == "nccl":
            out = grad.new_empty((n, *grad.shape[1:]))
            reduce_scatter_single(out, grad)
            return out
        grad = grad.clone()  # gloo has no reduce-scatter: all-reduce and keep our rows
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[rank * n : (rank + 1) * n]


def all_gather_single(out: torch.Tensor, x: torch.Tensor) -> None:
    """``out`` (world*N, ...) <- every rank's ``x`` (N, ...) in rank order. ``dist.all_gather_single`` where
    torch has it (2.13 deprecates ``all_gather_into_tensor`` with a FutureWarning), the old name before."""
    fn = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    fn(out, x)


def reduce_scatter_single(out: torch.Tensor, x: torch.Tensor) -> None:
    """``out`` (N, ...) <- this rank's rows of the sum over ranks of ``x`` (world*N, ...);
    ``dist.reduce_scatter_single`` where present, ``reduce_scatter_tensor`` on older torch."""
    fn = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor
    fn(out, x, op=dist.ReduceOp.SUM)


def wrap_ddp(
    model: nn.Module, device_ids: list[int] | None, *, static_graph: bool, sync_buffers: bool
) -> nn.parallel.DistributedDataParallel:
    """DDP with buffers broadcast from rank 0 every forward when ``sync_buffers``. torch 2.13 names that
    ``forward_sync_buffers`` and warns on ``broadcast_buffers``; older torch has only ``broadcast_buffers``.
    (Both sync buffers once at construction, as the models start from the same seed anyway.)"""
    ddp = nn.parallel.DistributedDataParallel
    key = (
        "forward_sync_buffers"
        if "forward_sync_buffers" in inspect.signature(ddp.__init__).parameters
        else "broadcast_buffers"
    )
    match_grad_strides(model)
    return ddp(model, device_ids=device_ids, static_graph=static_graph, **{key: sync_buffers})


def match_grad_strides(model: nn.Module) -> None:
    """Hand each parameter its gradient with the parameter's own strides, where the two differ only on dims
    of size 1 (the same elements at the same offsets, so the gradient is re-viewed, never copied).

    A 1x1x1 kernel (C_out, C_in, 1, 1, 1) in channels_last_3d has strides (C_in, 1, C_in, C_in, C_in); the
    convolution's backward may hand back (C_in, 1, 1, 1, 1) for the same memory, which autograd's layout
    rule accepts (it ignores size-1 dims) but DDP's buckets, built from the parameters' strides, do not: it
    warns "Grad strides do not match bucket view strides" and copies. A hook on such parameters restrides the
    gradient before it is accumulated."""
    for p in model.parameters():
        if p.requires_grad and p.dim() > 1 and 1 in p.shape:
            p.register_hook(functools.partial(_restride, tuple(p.shape), p.stride()))


def _restride(shape: tuple[int, ...], stride: tuple[int, ...], grad: torch.Tensor) -> torch.Tensor:
    """``grad`` viewed with ``stride`` when it addresses its elements exactly so (strides equal on every dim
    of size > 1); unchanged otherwise."""
    if grad.stride() == stride or tuple(grad.shape) != shape:
        return grad
    if any(n > 1 and a != b for n, a, b in zip(shape, grad.stride(), stride)):
        return grad
    return grad.as_strided(shape, stride)


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


def world_size() -> int:
    """Processes in the running group (1 without one)."""
    return dist.get_world_size() if _active() else 1


_host_group: Any = None


def host_group() -> Any:
    """A gloo group of its own for small host-side agreements (the stop flag, errors), so that they never
    touch the GPU stream. Its own also on the CPU, where the default group is gloo already: DDP keeps the
    default group alive past ``destroy_process_group``, with its worker threads, and a worker that drops the
    last host collective's tensors while the interpreter exits aborts the process ("terminate called without
    an active exception"); this group is freed, its threads joined, at ``destroy``. Created on first use:
    call it on every rank."""
    global _host_group
    if _host_group is None and _active():
        _host_group = dist.new_group(backend="gloo")
    return _host_group


def any_rank(flag: bool) -> bool:
    """True on every rank when ``flag`` is true on any (a host-side all-reduce; every rank must call it)."""
    if not _active():
        return flag
    t = torch.tensor([int(flag)])
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=host_group())  # CPU tensor, gloo
    return bool(t.item())


def gather_objects(obj: Any) -> list[Any]:
    """``obj`` of every rank, in rank order (a host sync; for checkpoint-time state such as RNGs)."""
    if not _active() or dist.get_world_size() == 1:
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj, group=host_group())
    return out


class StopFlag:
    """SIGTERM (or a first Ctrl-C) sets a flag; the loop checks it between steps, all ranks agreeing, and
    checkpoints before it exits. A second Ctrl-C interrupts at once."""

    def __init__(self) -> None:
        self.raised = False
        host_group()  # collective on first use: create it now, on every rank alike
        self.previous = {s: signal.signal(s, self._handle) for s in (signal.SIGTERM, signal.SIGINT)}

    def _handle(self, signum, frame) -> None:
        if signum == signal.SIGINT and self.raised:
            raise KeyboardInterrupt
        self.raised = True

    def check(self) -> bool:
        return any_rank(self.raised)

    def close(self) -> None:
        for s, handler in self.previous.items():
            signal.signal(s, handler)


def destroy() -> None:
    global _host_group
    _host_group = None
    if _active():
        dist.destroy_process_group()
