"""Linear-probe math of the CVRL linear protocol (Qian et al. 2021, Sec. 4.1), free of data loading.

Frozen backbone, L2-normalised pooled features, one linear layer trained with SGD (momentum 0.9, no Nesterov,
no weight decay) and the reference's schedule: a linear warm-up (5 epochs) then a cosine decay to 0
(``fastcvrl.schedule.WarmupCosine``, the pretraining schedule); lr 32 per batch of 1024, scaled linearly
(``fastcvrl.schema.scaled_lr``). At test time the softmax scores of N temporal x 3 spatial views are
averaged per video (CVRL's 10 x 3, as SlowFast/X3D's dense testing).

    head = train_linear(feats, labels, num_classes, epochs=100, lr=scaled_lr(32, 256, 1024), warmup_epochs=5)
    acc = ViewAverager(num_videos, num_classes); acc.add(probs, view_video)     # any order, any batching
    top = topk_accuracy(acc.mean(), video_labels)

``average_views`` / ``ViewAverager`` are the scatter (fast) path; ``average_views_reference`` is the loop.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fastcvrl.eval.knn import topk_accuracy
from fastcvrl.optim import LARS
from fastcvrl.schedule import WarmupCosine

__all__ = [
    "probe_schedule",
    "train_linear",
    "ViewAverager",
    "average_views",
    "average_views_reference",
    "video_labels",
    "video_result",
    "topk_accuracy",
]


def probe_schedule(lr: float, steps_per_epoch: int, epochs: int, warmup_epochs: float) -> WarmupCosine:
    """The learning rate of every step: linear warm-up over ``warmup_epochs`` then cosine to 0 at the end
    (``.value_at(step)``; the same schedule as pretraining)."""
    total = max(epochs * steps_per_epoch, 1)
    warmup = min(round(warmup_epochs * steps_per_epoch), total)
    return WarmupCosine(torch.zeros(()), lr, warmup, total)


def train_linear(
    features: torch.Tensor | Sequence[torch.Tensor],
    labels: torch.Tensor | Sequence[torch.Tensor],
    num_classes: int,
    *,
    epochs: int = 100,
    batch_size: int = 256,
    lr: float = 8.0,
    warmup_epochs: float = 5.0,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    seed: int = 0,
) -> nn.Linear:
    """Train one linear layer on frozen features (SGD, warm-up + cosine); returns it (on the features'
    device).

    ``lr`` is the rate at ``batch_size`` (already scaled, see ``scaled_lr``). ``features`` is (N, D) with
    ``labels`` (N,), or lists of K such tensors: K cached augmented passes over the training set (each pass in
    its own order, so each has its labels). Epoch e reads pass e mod K, so every epoch sees a fresh
    augmentation draw as long as K allows. Features are L2-normalised here (CVRL's protocol).
    """
    passes = [features] if isinstance(features, torch.Tensor) else list(features)
    pass_labels = [labels] if isinstance(labels, torch.Tensor) else list(labels)
    if not passes or len(passes) != len(pass_labels):
        raise ValueError(
            f"train_linear needs matching feature and label passes, got {len(passes)} and {len(pass_labels)}"
        )
    dim = passes[0].shape[1]
    for p, y in zip(passes, pass_labels):
        if p.ndim != 2 or p.shape[1] != dim or y.shape != (p.shape[0],):
            raise ValueError(
                f"each pass must be features (N, {dim}) with labels (N,), got {tuple(p.shape)}, "
                f"{tuple(y.shape)}"
            )
    device = passes[0].device
    passes = [F.normalize(p.float(), dim=1) for p in passes]
    pass_labels = [y.to(device).long() for y in pass_labels]
    n = max(p.shape[0] for p in passes)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    head = nn.Linear(dim, num_classes).to(device)
    with torch.no_grad():  # deterministic init from the seed (not from the global RNG)
        bound = 1.0 / math.sqrt(dim)
        head.weight.copy_(torch.empty(num_classes, dim).uniform_(-bound, bound, generator=gen))
        head.bias.zero_()
    # Momentum in TF's form (v = m * v + lr * g; w = w - v), the reference's Keras SGD: torch's SGD
    # (v = m * v + g; w = w - lr * v) applies each step's lr to the past gradients too, which departs from the
    # reference wherever the lr changes (all of warm-up and cosine). Decay, if any, on every parameter.
    opt = LARS(
        head.parameters(), lr, momentum=momentum, weight_decay=weight_decay, trust=False, exclude_1d=False
    )
    schedule = probe_schedule(lr, math.ceil(n / batch_size), epochs, warmup_epochs)
    step = 0
    for epoch in range(epochs):
        x_all, y_all = passes[epoch % len(passes)], pass_labels[epoch % len(passes)]
        order = torch.randperm(x_all.shape[0], generator=gen).to(device)
        for start in range(0, x_all.shape[0], batch_size):
            idx = order[start : start + batch_size]
            opt.lr_tensor.fill_(schedule.value_at(step))
            loss = F.cross_entropy(head(x_all[idx]), y_all[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
    return head


class ViewAverager:
    """Accumulates per-view class scores into per-video means, whatever the view order or batching.

    ``add(scores (M, C), view_video (M,))`` adds each view's scores to its video's row; ``mean()`` returns
    (num_videos, C). Views of one video may arrive shuffled, split over batches, or mixed with other videos.
    """

    def __init__(self, num_videos: int, num_classes: int, device: torch.device | str = "cpu"):
        self.sums = torch.zeros(num_videos, num_classes, dtype=torch.float64, device=device)
        self.counts = torch.zeros(num_videos, dtype=torch.float64, device=device)

    def add(self, scores: torch.Tensor, view_video: torch.Tensor) -> None:
        if scores.ndim != 2 or view_video.shape != (scores.shape[0],):
            raise ValueError(
                f"expected scores (M, C) and view_video (M,), got {tuple(scores.shape)}, "
                f"{tuple(view_video.shape)}"
            )
        idx = view_video.to(self.sums.device).long()
        self.sums.index_add_(0, idx, scores.to(self.sums.device, torch.float64))
        self.counts.index_add_(0, idx, torch.ones_like(idx, dtype=torch.float64))

    def mean(self, excused: Collection[int] = ()) -> torch.Tensor:
        """(num_videos, C) float32. A video with no views is a loader bug, not a zero score, and raises,
        unless it is ``excused`` (a video the loader found unreadable): its row is NaN."""
        missing = [v for v in (self.counts == 0).nonzero().flatten().tolist() if v not in excused]
        if missing:
            raise ValueError(f"{len(missing)} video(s) received no test views, e.g. video {missing[0]}")
        return (self.sums / self.counts[:, None]).float()  # 0/0: NaN rows for the excused


def average_views(scores: torch.Tensor, view_video: torch.Tensor, num_videos: int) -> torch.Tensor:
    """Per-video mean of per-view scores (M, C) grouped by ``view_video`` (M,) -> (num_videos, C)."""
    acc = ViewAverager(num_videos, scores.shape[1], scores.device)
    acc.add(scores, view_video)
    return acc.mean()


def average_views_reference(scores: torch.Tensor, view_video: torch.Tensor, num_videos: int) -> torch.Tensor:
    """Loop statement of ``average_views``: collect each video's views in a list, then average."""
    rows: list[list[torch.Tensor]] = [[] for _ in range(num_videos)]
    for s, v in zip(scores, view_video.tolist()):
        rows[v].append(s.double())
    return torch.stack([torch.stack(r).mean(dim=0) for r in rows]).float()


def video_labels(labels: torch.Tensor, video: torch.Tensor, num_videos: int) -> torch.Tensor:
    """(num_videos,) label of each video from per-clip labels; -1 where a video has no clip."""
    out = torch.full((num_videos,), -1, dtype=torch.long)
    out[video] = labels
    return out


def video_result(scores: torch.Tensor, labels: torch.Tensor) -> dict[str, Any]:
    """Top-1/top-5 over the videos that were scored (label -1: a video left out as unreadable)."""
    scored = labels >= 0
    acc = topk_accuracy(scores[scored], labels[scored], (1, 5))
    return {"top1": acc[1], "top5": acc[5], "num_scored_videos": int(scored.sum())}
