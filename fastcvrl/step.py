"""The training step: the eager step, and a CUDA-graph wrapper whose disabled path is exactly that step.

One step = forward of both views as one batch -> NT-Xent (negatives gathered across ranks) -> backward
(DDP all-reduces the gradients) -> optimizer step (fused LARS, lr in a device tensor) -> schedule step.
Nothing in it reads a value back to the host, so on a GPU the CPU runs ahead and, graphed, the whole step is
one ``graph.replay()``. Metrics are summed on the device and read every ``log_every`` steps only.

The views may be DALI's uint8 frames (the GPU default): the step then concatenates them (1 byte a pixel) and
normalises the result into the model's input in one multiply-add, so under a CUDA graph the static inputs are
the small uint8 buffers and normalisation and concatenation are captured with the rest; no float copy of a
view exists outside the graph. Float views (the CPU path, random clips) are used as they are.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
from torch import nn

from dali_pipelines.normalize import Normalize
from fastcvrl.loss import nt_xent_with_accuracy
from fastcvrl.precision import autocast_dtype

GatherFn = Callable[[torch.Tensor], torch.Tensor]


def nvtx_range(name: str, enabled: bool) -> contextlib.AbstractContextManager:
    """An NVTX range for nsys timelines when ``enabled`` (CUDA runs), else nothing."""
    return torch.cuda.nvtx.range(name) if enabled else contextlib.nullcontext()


class TrainStep:
    """The eager step: ``step(view1, view2) -> (loss, acc)``, both 0-dim device tensors (no host sync).

    Both views go through the model as one batch of 2B clips. BatchNorm statistics therefore span both
    views, as in the reference: SimCLR and CVRL's TF code concatenate the views along the batch axis before
    the backbone (``tf.concat(tf.split(...), 0)``), and with SyncBatchNorm the statistics span all ranks'
    2B clips. One pass also halves the kernel launches.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        schedule,
        *,
        temperature: float = 0.1,
        precision: str = "fp32",
        scaler: torch.amp.GradScaler | None = None,
        gather: GatherFn | None = None,
        channels_last: bool = True,
        nvtx: bool = False,
        normalize: Normalize | None = None,
    ) -> None:
        if precision == "auto":
            raise ValueError("train.precision: resolve 'auto' first (fastcvrl.precision.train_precision)")
        self.model, self.optimizer, self.schedule = model, optimizer, schedule
        self.temperature = temperature
        self.dtype = autocast_dtype(precision)  # None: fp32, no autocast
        self.scaler = scaler
        self.gather = gather
        self.memory_format = torch.channels_last_3d if channels_last else torch.contiguous_format
        self.nvtx = nvtx
        self.normalize = normalize  # for uint8 views: pixel values -> the model's input

    def input(self, view1: torch.Tensor, view2: torch.Tensor) -> torch.Tensor:
        """The model's input ``(2B, 3, T, H, W)`` in ``memory_format`` from the two views (uint8 or float)."""
        x = torch.cat([view1, view2], 0)  # cat of two channels_last_3d tensors stays channels_last_3d
        if x.dtype == torch.uint8:
            if self.normalize is None:
                raise ValueError("uint8 views need TrainStep(normalize=...): the pixel mean and std")
            x = self.normalize.apply(x)  # one pass: uint8 in, the model's dtype out
        return x.contiguous(memory_format=self.memory_format)  # no copy when the layout already matches

    def _autocast(self, device_type: str) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        # cache_enabled=False: required under CUDA-graph capture, and free here (each weight is cast once:
        # one forward pass per step)
        return torch.autocast(device_type, dtype=self.dtype, cache_enabled=False)

    def __call__(self, view1: torch.Tensor, view2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        nvtx = self.nvtx
        self.optimizer.zero_grad(set_to_none=True)
        with nvtx_range("forward", nvtx):
            x = self.input(view1, view2)  # (2B, 3, T, H, W)
            with self._autocast(x.device.type):
                z = self.model(x)  # (2B, D)
            if z.dtype in (torch.float16, torch.bfloat16):
                z = z.float()  # the loss in fp32
            z1, z2 = z.chunk(2)  # (B, D) each
            loss, acc = nt_xent_with_accuracy(z1, z2, self.temperature, gather=self.gather)
        with nvtx_range("backward", nvtx):
            if self.scaler is not None:
                self.scaler.scale(loss).backward()
            else:
                loss.backward()
        with nvtx_range("optimizer", nvtx):
            if self.scaler is not None:
                # note: GradScaler.step reads found_inf back to the host (a sync); fp16 is never graphed
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                self.optimizer.step()
            self.schedule.step()
        return loss.detach(), acc.detach()


class GraphedStep:
    """Runs ``step`` eagerly for ``warmup`` calls on a side stream, then captures it as a CUDA graph.

    Each later call copies the views into static input buffers (DALI's uint8 frames on the GPU default: the
    normalisation is inside the graph) and replays the graph; the returned loss and accuracy are the graph's
    static outputs (overwritten by the next call, so accumulate them before it). On the capture call the graph
    is captured (which runs nothing) and then replayed once, so every call trains on its own batch exactly
    once, as the eager step does.

    Under DDP the model must be wrapped with ``static_graph=True`` on the side stream used for warm-up and
    capture, and warmed up for at least 11 eager iterations before capture (PyTorch CUDA-graphs notes, "Usage
    with DistributedDataParallel"); ``warmup`` is raised to 11 when ``ddp=True``, and ``stream`` is that
    stream (``side_stream``). Capture uses ``capture_error_mode="thread_local"``: DALI's worker threads keep
    creating decoders, polling events and growing memory pools during capture, which the default "global"
    mode would count as illegal calls that invalidate the capture.
    """

    def __init__(
        self,
        step: TrainStep,
        *,
        warmup: int = 3,
        ddp: bool = False,
        stream: torch.cuda.Stream | None = None,
    ) -> None:
        if step.scaler is not None:
            raise ValueError(
                "CUDA graphs need a step without host syncs; fp16's GradScaler syncs: use bf16 "
                "or train.cuda_graph=false"
            )
        self.step = step
        self.warmup = max(warmup, 11 if ddp else 1)
        self.calls = 0
        self.graph: torch.cuda.CUDAGraph | None = None
        self.static_in: tuple[torch.Tensor, torch.Tensor] | None = None
        self.static_out: tuple[torch.Tensor, torch.Tensor] | None = None
        self.side = stream if stream is not None else torch.cuda.Stream()

    def __call__(self, view1: torch.Tensor, view2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.calls += 1
        if self.calls <= self.warmup:
            # warm-up on a side stream (cuDNN autotuning, lazy optimizer state, DDP buckets)
            self.side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(self.side):
                out = self.step(view1, view2)
            torch.cuda.current_stream().wait_stream(self.side)
            return out
        if self.graph is None:
            self._capture(view1, view2)
        self.static_in[0].copy_(view1, non_blocking=True)
        self.static_in[1].copy_(view2, non_blocking=True)
        self.graph.replay()
        return self.static_out

    def _capture(self, view1: torch.Tensor, view2: torch.Tensor) -> None:
        self.static_in = (_empty_like_strided(view1), _empty_like_strided(view2))
        self.static_in[0].copy_(view1)
        self.static_in[1].copy_(view2)
        self.step.optimizer.zero_grad(set_to_none=True)  # grads are then allocated from the graph's pool
        torch.cuda.synchronize()  # note: a deliberate one-time sync before capture
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph, stream=self.side, capture_error_mode="thread_local"):
            self.static_out = self.step(*self.static_in)


def _empty_like_strided(x: torch.Tensor) -> torch.Tensor:
    """An uninitialised tensor with ``x``'s shape, dtype, device and strides (keeps channels_last_3d)."""
    return torch.empty_strided(x.shape, x.stride(), dtype=x.dtype, device=x.device)


def graphed(cuda_graph: bool, device: torch.device, precision: str) -> bool:
    """Whether ``build_step`` will capture: asked for, on CUDA, and no GradScaler (fp16 syncs)."""
    return cuda_graph and device.type == "cuda" and precision != "fp16"


def side_stream(cuda_graph: bool, device: torch.device, precision: str) -> torch.cuda.Stream | None:
    """The one side stream DDP construction, warm-up and capture share when the step will be graphed."""
    return torch.cuda.Stream(device) if graphed(cuda_graph, device, precision) else None


def build_step(
    step: TrainStep,
    *,
    cuda_graph: bool,
    device: torch.device,
    ddp: bool = False,
    warmup: int = 3,
    stream: torch.cuda.Stream | None = None,
):
    """The graphed step where asked for and possible (CUDA, no GradScaler), else the eager step itself."""
    if cuda_graph and device.type == "cuda" and step.scaler is None:
        return GraphedStep(step, warmup=warmup, ddp=ddp, stream=stream)
    return step


class Metrics:
    """Sums (loss, accuracy) on the device; ``read()`` is the only host sync and runs every log_every
    steps."""

    def __init__(self, device: torch.device) -> None:
        self.sums = torch.zeros(2, device=device, dtype=torch.float64)  # (loss, acc)
        self.count = 0

    def add(self, loss: torch.Tensor, acc: torch.Tensor) -> None:
        self.sums += torch.stack([loss.double(), acc.double()])
        self.count += 1

    def mean(self) -> torch.Tensor:
        """The window's mean as a device tensor (2,) (no sync); reduce it across ranks before ``read``."""
        return self.sums / max(self.count, 1)

    def reset(self) -> None:
        self.sums.zero_()
        self.count = 0


# ------------------------------------------------------------------------------ warm-up before the data
class TrainingState:
    """A copy of everything one training step changes: the model's parameters and buffers (batch-norm
    statistics included), the optimizer's state, the schedule's step and learning rate, the grad scaler and
    the random generators. ``restore()`` writes it back *into the same tensors* (a captured CUDA graph holds
    their addresses); optimizer state created after the copy is zeroed, which is what a fresh state is for
    optimizers that start from zeros (``fastcvrl.optim``'s LARS)."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, schedule, scaler=None) -> None:
        import random

        import numpy as np

        self.model, self.optimizer, self.schedule, self.scaler = model, optimizer, schedule, scaler
        with torch.no_grad():
            self.tensors = {k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items()}
            self.opt = {p: _clone_state(s) for p, s in optimizer.state.items()}
            self.sched = [t.detach().clone() for t in _schedule_tensors(schedule)]
        self.scaler_state = scaler.state_dict() if scaler is not None else None
        self.rng = (random.getstate(), np.random.get_state(), torch.get_rng_state())
        self.cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None

    @torch.no_grad()
    def restore(self) -> None:
        """Write the copy back into the same tensors (and the generators' states)."""
        import random

        import numpy as np

        for k, v in self.model.state_dict(keep_vars=True).items():
            v.detach().copy_(self.tensors[k])
        for p, s in self.optimizer.state.items():
            before = self.opt.get(p, {})
            for k in list(s):
                if k in before:
                    if torch.is_tensor(s[k]):
                        s[k].copy_(before[k])
                    else:
                        s[k] = before[k]
                elif torch.is_tensor(s[k]):
                    s[k].zero_()  # created by the warm-up: kept (its address may be captured), as new
                else:
                    del s[k]
        for t, saved in zip(_schedule_tensors(self.schedule), self.sched):
            t.copy_(saved)
        if self.scaler is not None:
            self.scaler.load_state_dict(self.scaler_state)
        random.setstate(self.rng[0])
        np.random.set_state(self.rng[1])
        torch.set_rng_state(self.rng[2])
        if self.cuda_rng is not None:  # only if the warm-up drew from it (the CVRL step does not)
            now = torch.cuda.get_rng_state_all()
            if any(not torch.equal(a, b) for a, b in zip(now, self.cuda_rng)):
                torch.cuda.set_rng_state_all(self.cuda_rng)


def _clone_state(state: dict) -> dict:
    return {k: v.detach().clone() if torch.is_tensor(v) else v for k, v in state.items()}


def _schedule_tensors(schedule) -> list[torch.Tensor]:
    """The schedule's device state: its step counter and the learning rate it writes."""
    return [
        t
        for t in (getattr(schedule, "step_tensor", None), getattr(schedule, "lr_tensor", None))
        if t is not None
    ]


def synthetic_views(
    batch: int, frames: int, size: int, dtype: torch.dtype, device: torch.device, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Two views ``(batch, 3, frames, size, size)`` of ``dtype`` in channels_last_3d, as the loader yields
    them (uint8 pixels or float values); random, from their own generator (no global random state used)."""
    g = torch.Generator().manual_seed(seed)
    shape = (batch, 3, frames, size, size)
    if dtype == torch.uint8:
        views = [torch.randint(0, 256, shape, generator=g, dtype=torch.uint8) for _ in range(2)]
    else:
        views = [torch.randn(shape, generator=g).to(dtype) for _ in range(2)]
    return tuple(v.to(device).contiguous(memory_format=torch.channels_last_3d) for v in views)


def warm_up(step_fn, step: TrainStep, views: tuple[torch.Tensor, torch.Tensor], calls: int = 1) -> int:
    """Warm up (and, for a ``GraphedStep``, capture) ``step_fn`` on synthetic ``views``, then put the model,
    optimizer, batch-norm statistics, schedule, scaler and random state back exactly as they were, in place.

    Run before the data pipeline starts, so cuDNN's autotuning, lazy allocations and the capture happen while
    no decoder thread competes, and the training run then equals an eager run step for step. A
    ``GraphedStep`` gets its ``warmup`` eager calls and the capturing call (``calls`` is ignored); any other
    step ``calls`` eager calls. Returns the number of calls made."""
    saved = TrainingState(step.model, step.optimizer, step.schedule, step.scaler)
    n = step_fn.warmup + 1 if isinstance(step_fn, GraphedStep) else calls
    for _ in range(n):
        step_fn(*views)
    if views[0].is_cuda:
        torch.cuda.synchronize()  # note: a one-time sync: the warm-up's kernels finish before the restore
    saved.restore()
    return n
