"""NT-Xent, the SimCLR/CVRL contrastive loss (Chen et al. 2020, Eq. 1; Qian et al. 2021, Eq. 1).

Embeddings are L2-normalised; for each clip the other view of the same video is the positive and every other
clip of both views (over all ranks when ``gather`` is given) is a negative; self-similarity is excluded. The
two directions (view 1 -> view 2 and view 2 -> view 1) are summed, each the mean over the local batch, as the
TF reference (``simclr/objective.py``) does. Pure tensor math: cross-rank communication comes in as ``gather``
(``fastcvrl.dist.gather_with_grad``), so this module never touches ``torch.distributed``."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

Gather = Callable[[torch.Tensor], torch.Tensor]  # local (N, D) -> (world*N, D), gradient to the local rows

_MASK = -1e9  # logit of the excluded self-similarity (finite: no inf - inf in the backward)


def _resolve_rank(gather: Gather | None, rank: int | None) -> int:
    if gather is None:
        return 0
    if rank is None:
        rank = getattr(gather, "rank", None)
    if rank is None:
        raise ValueError("nt_xent: with a custom `gather`, pass rank= (the index of this process's rows)")
    return int(rank)


def _logits(
    z1: torch.Tensor, z2: torch.Tensor, temperature: float, gather: Gather | None, rank: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Masked logits (2N, 2M) of every local clip against every clip of both views, and the positives
    (2N,)."""
    if z1.shape != z2.shape or z1.dim() != 2:
        raise ValueError(
            f"nt_xent expects two (N, D) tensors of the same shape, got {tuple(z1.shape)} "
            f"and {tuple(z2.shape)}"
        )
    r = _resolve_rank(gather, rank)
    n = z1.shape[0]
    with torch.autocast(z1.device.type, enabled=False):  # tiny matmul; fp32 keeps exp(1/t) well resolved
        dtype = torch.promote_types(z1.dtype, torch.float32)  # bf16/fp16 -> fp32; fp64 stays
        q1 = F.normalize(z1.to(dtype), dim=1)  # (N, D)
        q2 = F.normalize(z2.to(dtype), dim=1)
        k1 = gather(q1) if gather is not None else q1  # (M, D), M = world * N
        k2 = gather(q2) if gather is not None else q2
        m = k1.shape[0]
        q = torch.cat([q1, q2])  # (2N, D): view-1 clips, then view-2 clips
        k = torch.cat([k1, k2])  # (2M, D)
        logits = q @ k.t() / temperature  # (2N, 2M)
    local = (
        torch.arange(n, device=z1.device) + r * n
    )  # this rank's rows within one view of the gathered batch
    self_col = torch.cat([local, local + m])  # (2N,)
    pos_col = torch.cat([local + m, local])  # the other view of the same video
    logits = logits.scatter(1, self_col[:, None], _MASK)
    return logits, pos_col


def nt_xent(
    z1: torch.Tensor,
    z2: torch.Tensor,
    temperature: float = 0.1,
    gather: Gather | None = None,
    *,
    rank: int | None = None,
) -> torch.Tensor:
    """NT-Xent of two views' embeddings ``z1``, ``z2`` (N, D), un-normalised. Returns a 0-dim tensor (fp32 for
    half-precision inputs).

    ``gather`` (optional) maps (N, D) to (world*N, D); ``rank`` says where this process's rows sit in it
    (taken from ``gather.rank`` when not given, as ``fastcvrl.dist.gather_with_grad`` provides).
    """
    return nt_xent_with_accuracy(z1, z2, temperature, gather, rank=rank)[0]


def nt_xent_with_accuracy(
    z1: torch.Tensor,
    z2: torch.Tensor,
    temperature: float = 0.1,
    gather: Gather | None = None,
    *,
    rank: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, acc): acc is the fraction of local clips (both views) whose positive is the most similar of all
    candidates, a 0-dim device tensor (no host sync)."""
    logits, pos = _logits(z1, z2, temperature, gather, rank)
    loss = 2.0 * F.cross_entropy(logits, pos)  # sum of the two directions, each a mean over N
    acc = (logits.argmax(dim=1) == pos).float().mean().detach()
    return loss, acc


def nt_xent_reference(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """Slow, obvious NT-Xent on one (global) batch: a Python loop over anchors, for testing."""
    n = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]).double(), dim=1)  # (2N, D): clip i and clip i+N are one video's views
    losses = []
    for i in range(2 * n):
        j = (i + n) % (2 * n)  # the positive
        sims = [torch.dot(z[i], z[k]) / temperature for k in range(2 * n) if k != i]
        denom = torch.logsumexp(torch.stack(sims), dim=0)
        losses.append(denom - torch.dot(z[i], z[j]) / temperature)
    view1 = torch.stack(losses[:n]).mean()
    view2 = torch.stack(losses[n:]).mean()
    return (view1 + view2).to(z1.dtype)
