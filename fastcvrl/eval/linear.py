"""CVRL's linear protocol on a frozen backbone, from loaders: cached training features, one linear layer, test
views averaged per video.

    result = linear_probe(backbone, train_passes, test_loader, num_classes=C, num_test_videos=V, cfg=cfg,
                          device=device, precision="bf16")

Feature cache: a frozen backbone gives the same feature for the same augmented clip, so the backbone runs
over the training set ``cfg.eval.feature_passes`` times, each pass one fresh crop-and-flip draw per video,
and the linear layer's epoch e trains on cached pass e mod K (``probe.train_linear``). With K = epochs this is
exactly the uncached protocol. The probe's lr is ``eval.lr`` at ``eval.base_batch_size`` scaled linearly to
``eval.batch_size``, with ``eval.warmup_epochs`` of linear warm-up then cosine decay.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fastcvrl.config import Config
from fastcvrl.eval.features import ClipFeatures, clip_features
from fastcvrl.eval.probe import (
    ViewAverager,
    scaled_lr,
    topk_accuracy,
    train_linear,
    video_labels,
    video_result,
)

__all__ = ["video_scores", "probe_features", "linear_probe"]


def video_scores(
    head: nn.Linear, feats: torch.Tensor, video: torch.Tensor, num_videos: int, excused: Collection[int] = ()
) -> torch.Tensor:
    """Per-video mean of the softmax scores of all its views: (M, D) view features -> (num_videos, C); NaN
    rows for the ``excused`` videos that have no view (unreadable)."""
    with torch.no_grad():
        probs = head(F.normalize(feats.to(head.weight.device), dim=1)).softmax(dim=1).cpu()  # (M, C)
    acc = ViewAverager(num_videos, probs.shape[1])
    acc.add(probs, video)
    return acc.mean(excused)


def probe_features(
    train_feats: Sequence[torch.Tensor],
    train_labels: Sequence[torch.Tensor],
    test: ClipFeatures,
    test_index: int,
    *,
    num_classes: int,
    num_test_videos: int,
    cfg: Config,
    device: torch.device,
    seed: int = 0,
) -> tuple[dict[str, Any], nn.Linear]:
    """Train the linear layer on cached train passes, test on cached view features
    ``test.feats[test_index]``."""
    e = cfg.eval
    feats = [f.to(device) for f in train_feats]
    labels = [y.to(device) for y in train_labels]
    head = train_linear(
        feats,
        labels,
        num_classes,
        epochs=e.epochs,
        batch_size=e.batch_size,
        lr=scaled_lr(e.lr, e.batch_size, e.base_batch_size),
        warmup_epochs=e.warmup_epochs,
        momentum=e.momentum,
        weight_decay=e.weight_decay,
        seed=seed,
    )
    with torch.no_grad():
        train_acc = topk_accuracy(head(F.normalize(feats[-1], dim=1)), labels[-1], (1,))[1]
    if test.video is None:
        raise ValueError("the test loader must yield (clips, label, video_index)")
    scores = video_scores(head, test.feats[test_index], test.video, num_test_videos, test.unreadable)
    out: dict[str, Any] = video_result(scores, video_labels(test.labels, test.video, num_test_videos))
    out["train_top1"] = train_acc
    return out, head


def linear_probe(
    backbone: nn.Module,
    train_passes: Iterable[Iterable],
    test_loader: Iterable,
    *,
    num_classes: int,
    num_test_videos: int,
    cfg: Config,
    device: torch.device,
    precision: str = "fp32",
    seed: int = 0,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """CVRL linear protocol on a frozen backbone; ``train_passes`` yields one train loader per cached pass.

    Each train loader yields ``(clip (B,3,T,H,W), label (B,))``; features are extracted once per pass (no
    grad, BatchNorm in eval mode), and once per test view. Returns top-1/top-5 over test videos and the
    probe's training accuracy on the last pass."""
    backbone.to(device)
    for p in backbone.parameters():
        p.requires_grad_(False)
    feats, labels = [], []
    t0 = time.perf_counter()
    for i, loader in enumerate(train_passes):
        cf = clip_features([backbone], loader, device, precision)
        feats.append(cf.feats[0])
        labels.append(cf.labels)
        log(
            f"eval: train features, pass {i + 1}: {tuple(cf.feats[0].shape)} "
            f"({time.perf_counter() - t0:.1f}s)"
        )
    if not feats:
        raise ValueError("linear_probe needs at least one training pass")
    test = clip_features([backbone], test_loader, device, precision)
    log(f"eval: test features {tuple(test.feats[0].shape)} ({time.perf_counter() - t0:.1f}s)")
    out, _ = probe_features(
        feats,
        labels,
        test,
        0,
        num_classes=num_classes,
        num_test_videos=num_test_videos,
        cfg=cfg,
        device=device,
        seed=seed,
    )
    return out
