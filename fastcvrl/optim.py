"""LARS (You et al. 2017) with the TF/SimCLR semantics CVRL used, fused and free of host synchronisation.

For each adapted parameter (ndim > 1: conv and linear kernels)::

    g' = g + wd * w
    trust = eta * ||w|| / ||g'||            (1 where either norm is 0)
    v = m * v + lr * trust * g'
    w = w - v

Parameters with ndim <= 1 (biases, BN) get neither weight decay nor trust scaling: v = m * v + lr * g.
``trust=False`` is SGD with momentum in the same (TF) form, weight decay still on kernels only: the released
reference config's optimizer. The step is a handful of ``torch._foreach_*`` calls over the whole model; the
learning rate lives in the 0-dim device tensor ``lr_tensor`` (written by ``fastcvrl.schedule``), so the step
can be captured in a CUDA graph.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn
from torch.optim import Optimizer


def _adapted(p: torch.Tensor, group: dict) -> bool:
    return p.ndim > 1 or not group["exclude_1d"]


class LARS(Optimizer):
    """Fused LARS / momentum SGD. ``lr`` (float or 0-dim tensor) becomes ``self.lr_tensor``, shared by all
    groups; write into it in place to change the learning rate (graph-safe). ``step()`` overwrites ``.grad``
    with the applied update (read gradients before it, as the trainer's metrics do)."""

    def __init__(
        self,
        params: Iterable,
        lr: float | torch.Tensor,
        momentum: float = 0.9,
        weight_decay: float = 1e-6,
        eta: float = 0.001,
        trust: bool = True,
        exclude_1d: bool = True,
    ):
        defaults = dict(
            momentum=momentum, weight_decay=weight_decay, eta=eta, trust=trust, exclude_1d=exclude_1d
        )
        super().__init__(params, defaults)
        device = self.param_groups[0]["params"][0].device
        if isinstance(lr, torch.Tensor):
            if lr.dim() != 0:
                raise ValueError(f"LARS: lr tensor must be 0-dim, got shape {tuple(lr.shape)}")
            self.lr_tensor = lr
        else:
            self.lr_tensor = torch.tensor(float(lr), dtype=torch.float32, device=device)  # ()

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        lr = self.lr_tensor
        for group in self.param_groups:
            ad_p, ad_g, ad_v, pl_p, pl_g, pl_v = [], [], [], [], [], []
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                ps, gs, vs = (ad_p, ad_g, ad_v) if _adapted(p, group) else (pl_p, pl_g, pl_v)
                ps.append(p)
                gs.append(p.grad)
                vs.append(state["momentum_buffer"])
            m, wd = group["momentum"], group["weight_decay"]
            # Every op below is in place: no model-sized temporaries (on CPU, fresh large allocations cost
            # page faults that made an allocating version slower than the per-parameter loop). The gradients
            # are overwritten with the update direction; backward writes new ones before the next step.
            if ad_p:
                if wd:
                    torch._foreach_add_(ad_g, ad_p, alpha=wd)  # g' = g + wd * w
                if group["trust"]:
                    w_norm = torch.stack(torch._foreach_norm(ad_p))  # (P,)
                    g_norm = torch.stack(torch._foreach_norm(ad_g))
                    ok = (w_norm > 0) & (g_norm > 0)
                    trust = torch.where(
                        ok, group["eta"] * w_norm / g_norm.clamp_min(1e-38), torch.ones_like(w_norm)
                    )
                    torch._foreach_mul_(ad_g, list((trust * lr).unbind(0)))  # lr * trust * g'
                else:
                    torch._foreach_mul_(ad_g, lr)
                torch._foreach_mul_(ad_v, m)
                torch._foreach_add_(ad_v, ad_g)  # v = m * v + lr * trust * g'
                torch._foreach_sub_(ad_p, ad_v)  # w = w - v
            if pl_p:
                torch._foreach_mul_(pl_g, lr)
                torch._foreach_mul_(pl_v, m)
                torch._foreach_add_(pl_v, pl_g)
                torch._foreach_sub_(pl_p, pl_v)
        return loss

    def state_dict(self) -> dict:
        sd = super().state_dict()
        sd["lr_tensor"] = self.lr_tensor.detach().clone()
        return sd

    def load_state_dict(self, state_dict: dict) -> None:
        """Restores momentum buffers and the learning rate *into the existing tensors* where they exist, so a
        schedule or a captured CUDA graph holding them stays valid."""
        state_dict = dict(state_dict)
        lr = state_dict.pop("lr_tensor", None)
        old = {p: s["momentum_buffer"] for p, s in self.state.items() if "momentum_buffer" in s}
        super().load_state_dict(state_dict)
        for p, buf in old.items():
            new = self.state[p].get("momentum_buffer")
            if new is not None:
                buf.copy_(new)
                self.state[p]["momentum_buffer"] = buf
        if lr is not None:
            self.lr_tensor.copy_(lr)


class LARSReference(Optimizer):
    """Per-parameter loop with the same semantics as ``LARS`` (host-side norms; for tests). lr in the
    groups."""

    def __init__(
        self,
        params: Iterable,
        lr: float,
        momentum: float = 0.9,
        weight_decay: float = 1e-6,
        eta: float = 0.001,
        trust: bool = True,
        exclude_1d: bool = True,
    ):
        super().__init__(
            params,
            dict(
                lr=lr,
                momentum=momentum,
                weight_decay=weight_decay,
                eta=eta,
                trust=trust,
                exclude_1d=exclude_1d,
            ),
        )

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                scale = 1.0
                if _adapted(p, group):
                    g = g + group["weight_decay"] * p
                    if group["trust"]:
                        w_norm, g_norm = p.norm().item(), g.norm().item()
                        if w_norm > 0 and g_norm > 0:
                            scale = group["eta"] * w_norm / g_norm
                v = self.state[p].setdefault("momentum_buffer", torch.zeros_like(p))
                v.mul_(group["momentum"]).add_(g, alpha=group["lr"] * scale)
                p.sub_(v)


def build_optimizer(cfg, model: nn.Module, global_batch_size: int) -> LARS:
    """From ``cfg.optim``: ``lars`` or ``sgd`` (LARS without trust), base lr = cfg.lr * global_batch /
    cfg.base_batch_size (linear scaling, CVRL Sec. 4.1: 0.32 at batch 1024)."""
    if cfg.name not in ("lars", "sgd"):
        raise ValueError(f"optim.name: unknown optimizer {cfg.name!r} (choose lars or sgd)")
    lr = cfg.lr * global_batch_size / cfg.base_batch_size
    params = [p for p in model.parameters() if p.requires_grad]
    return LARS(
        params,
        lr,
        momentum=cfg.momentum,
        weight_decay=cfg.weight_decay,
        eta=cfg.eta,
        trust=cfg.name == "lars",
    )
