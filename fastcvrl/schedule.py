"""Linear warm-up then cosine decay (CVRL Sec. 4.1: 5 warm-up epochs, cosine to the end), written in place
into the optimizer's 0-dim learning-rate tensor from a step counter that lives on the device, so a captured
CUDA graph that contains ``step()`` advances the schedule on every replay.

    sched = WarmupCosine(opt.lr_tensor, base_lr, warmup_steps, total_steps)   # lr_tensor = value_at(0)
    for ...: loss.backward(); opt.step(); sched.step()                        # k-th step() -> value_at(k)
"""

from __future__ import annotations

import math

import torch


class WarmupCosine:
    """lr(s) = base * (s + 1) / warmup for s < warmup (from ~0 up to base), then
    min + (base - min) * (1 + cos(pi * (s - warmup) / (total - warmup))) / 2, and min from ``total_steps``
    on."""

    def __init__(
        self,
        lr_tensor: torch.Tensor,
        base_lr: float,
        warmup_steps: int,
        total_steps: int,
        min_lr: float = 0.0,
    ) -> None:
        if lr_tensor.dim() != 0:
            raise ValueError(f"WarmupCosine: lr_tensor must be 0-dim, got shape {tuple(lr_tensor.shape)}")
        if not 0 <= warmup_steps <= total_steps or total_steps <= 0:
            raise ValueError(
                f"WarmupCosine: need 0 <= warmup_steps ({warmup_steps}) <= total_steps "
                f"({total_steps}) and total_steps > 0"
            )
        if min_lr > base_lr:
            raise ValueError(f"WarmupCosine: min_lr ({min_lr}) exceeds base_lr ({base_lr})")
        self.lr_tensor = lr_tensor
        self.base_lr, self.min_lr = float(base_lr), float(min_lr)
        self.warmup_steps, self.total_steps = int(warmup_steps), int(total_steps)
        self.step_tensor = torch.zeros((), dtype=torch.int64, device=lr_tensor.device)  # () steps taken
        self._write()

    def value_at(self, step: int) -> float:
        """Host reference of the learning rate used at optimizer step ``step`` (0-based)."""
        if step < self.warmup_steps:
            return self.base_lr * (step + 1) / self.warmup_steps
        progress = min((step - self.warmup_steps) / max(self.total_steps - self.warmup_steps, 1), 1.0)
        return self.min_lr + (self.base_lr - self.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))

    def _write(self) -> None:
        s = self.step_tensor.double()
        warm = self.base_lr * (s + 1) / max(self.warmup_steps, 1)
        progress = ((s - self.warmup_steps) / max(self.total_steps - self.warmup_steps, 1)).clamp(0.0, 1.0)
        cos = self.min_lr + (self.base_lr - self.min_lr) * 0.5 * (1.0 + torch.cos(math.pi * progress))
        self.lr_tensor.copy_(torch.where(s < self.warmup_steps, warm, cos))

    @torch.no_grad()
    def step(self) -> None:
        """Advance one step on the device and write the new learning rate in place (no host sync)."""
        self.step_tensor.add_(1)
        self._write()

    def state_dict(self) -> dict:
        return {"step": int(self.step_tensor.item())}  # host sync: checkpointing only

    def load_state_dict(self, state: dict) -> None:
        self.step_tensor.fill_(int(state["step"]))
        self._write()
