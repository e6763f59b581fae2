"""Weighted k-nearest-neighbour monitor: a cheap, training-free read of representation quality.

The protocol of Wu et al. 2018 (InstDisc, Sec. 3.4), used by the video SSL peers (VideoMoCo, CoCLR, ...):
cosine similarity between L2-normalised features, the ``k`` most similar training clips each vote for their
class with weight ``exp(sim / T)``, the votes are summed per class. Defaults k=200, T=0.1 as in InstDisc.

    feats, labels = extract_features(backbone, loader, device)        # (N, D) normalised, (N,)
    scores = knn_predict(train_feats, train_labels, test_feats, num_classes, k=200, temperature=0.1)
    stats = knn_monitor(backbone, train_loader, test_loader)           # {"knn_top1": .., "knn_top5": ..}
    stats = knn_from_manifests(backbone, cfg, train_manifest, val_manifest, device)   # builds the loaders

``knn_predict`` is the batched fast path; ``knn_predict_reference`` is the per-clip loop it is tested against.
"""
from __future__ import annotations

import contextlib
import math
from typing import Any, Iterable

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "knn_predict",
    "knn_predict_reference",
    "topk_accuracy",
    "extract_features",
    "knn_monitor",
    "knn_from_manifests",
]


def knn_predict(
    train_feats: torch.Tensor,
    train_labels: torch.Tensor,
    test_feats: torch.Tensor,
    num_classes: int,
    k: int = 200,
    temperature: float = 0.1,
    chunk_size: int = 1024,
) -> torch.Tensor:
    """Class scores (Nq, num_classes) of weighted kNN voting; features need not be normalised (we do it).

    ``train_feats`` (N, D), ``train_labels`` (N,) int64, ``test_feats`` (Nq, D). ``k`` is capped at N.
    The test set is processed in chunks of ``chunk_size`` so the (chunk, N) similarity matrix stays small.
    """
    if train_feats.ndim != 2 or test_feats.ndim != 2 or train_feats.shape[1] != test_feats.shape[1]:
        raise ValueError(f"expected (N, D) and (Nq, D) features, got {tuple(train_feats.shape)} and {tuple(test_feats.shape)}")
    if train_labels.shape != (train_feats.shape[0],):
        raise ValueError(f"train_labels must be ({train_feats.shape[0]},), got {tuple(train_labels.shape)}")
    if train_feats.shape[0] == 0:
        raise ValueError("knn_predict needs at least one training feature")
    k = min(k, train_feats.shape[0])
    bank = F.normalize(train_feats.float(), dim=1)  # (N, D)
    labels = train_labels.to(bank.device).long()
    out = []
    for start in range(0, test_feats.shape[0], chunk_size):
        q = F.normalize(test_feats[start : start + chunk_size].float().to(bank.device), dim=1)  # (b, D)
        sim = q @ bank.T  # (b, N) cosine similarity
        top_sim, top_idx = sim.topk(k, dim=1)  # (b, k)
        weights = (top_sim / temperature).exp()  # (b, k)
        votes = torch.zeros(q.shape[0], num_classes, device=bank.device)  # (b, C)
        votes.scatter_add_(1, labels[top_idx], weights)
        out.append(votes)
    return torch.cat(out) if out else torch.zeros(0, num_classes)


def knn_predict_reference(
    train_feats: torch.Tensor,
    train_labels: torch.Tensor,
    test_feats: torch.Tensor,
    num_classes: int,
    k: int = 200,
    temperature: float = 0.1,
) -> torch.Tensor:
    """Slow, obvious statement of ``knn_predict``: one test clip at a time, plain Python over neighbours."""
    train = [[float(v) for v in row] for row in train_feats.double()]
    labels = [int(v) for v in train_labels]

    def unit(v: list[float]) -> list[float]:
        n = math.sqrt(sum(x * x for x in v))
        return [x / max(n, 1e-12) for x in v]

    train = [unit(v) for v in train]
    rows = []
    for q in test_feats.double():
        qn = unit([float(v) for v in q])
        sims = [(sum(a * b for a, b in zip(qn, t)), i) for i, t in enumerate(train)]
        sims.sort(key=lambda s: -s[0])
        votes = [0.0] * num_classes
        for s, i in sims[: min(k, len(train))]:
            votes[labels[i]] += math.exp(s / temperature)
        rows.append(votes)
    return torch.tensor(rows, dtype=torch.float32).reshape(len(rows), num_classes)


def topk_accuracy(scores: torch.Tensor, labels: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> dict[int, float]:
    """Fraction of rows whose label is among the ``k`` highest scores, for each k (capped at the class count)."""
    labels = labels.to(scores.device).long()
    if scores.shape[0] == 0:
        return {k: float("nan") for k in ks}
    out = {}
    for k in ks:
        top = scores.topk(min(k, scores.shape[1]), dim=1).indices  # (N, k)
        out[k] = (top == labels[:, None]).any(dim=1).float().mean().item()  # host sync: final metric
    return out


def _autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA (as the trainer), nothing on CPU (fp32)."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def extract_features(
    backbone: nn.Module, loader: Iterable, device: torch.device | str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """L2-normalised pooled features and labels of every video the loader yields, in loader order.

    Batches are ``(clip (B,3,T,H,W), label (B,))`` (one clip per video) or
    ``(clips (B*V,3,T,H,W), label (B,), video_index (B,))`` from the multi-view test loader, in which case the
    V normalised view features of each video are averaged (then renormalised). The backbone is put in eval
    mode and its previous mode restored afterwards. Returns float32 (N, D) and int64 (N,) on the CPU.
    """
    device = torch.device(device) if device is not None else next(backbone.parameters()).device
    was_training = backbone.training
    backbone.eval()
    feats, labels = [], []
    try:
        for batch in loader:
            clip, label = batch[0], batch[1]
            b = label.shape[0]
            with _autocast(device):
                f = backbone(clip.to(device, non_blocking=True))  # (B*V, D)
            f = F.normalize(f.float(), dim=1)
            if f.shape[0] != b:
                if f.shape[0] % b:
                    raise ValueError(f"a batch of {b} labels came with {f.shape[0]} clips (not a multiple)")
                f = F.normalize(f.view(b, f.shape[0] // b, -1).mean(dim=1), dim=1)  # (B, D), views contiguous
            feats.append(f.cpu())
            labels.append(label.cpu().long())
    finally:
        backbone.train(was_training)
    if not feats:
        raise ValueError("the loader yielded no batches")
    return torch.cat(feats), torch.cat(labels)


def knn_monitor(
    backbone: nn.Module,
    train_loader: Iterable,
    test_loader: Iterable,
    *,
    num_classes: int | None = None,
    k: int = 200,
    temperature: float = 0.1,
    device: torch.device | str | None = None,
) -> dict[str, float]:
    """Weighted kNN top-1/top-5 of ``test_loader`` videos against a bank of ``train_loader`` features.

    Meant to be called by the trainer every ``cfg.train.knn_every`` epochs: no gradients, the backbone in eval
    mode for the duration (train mode restored after). ``num_classes`` defaults to the largest label + 1.
    Returns ``{"knn_top1", "knn_top5", "knn_train_size", "knn_test_size"}``.
    """
    train_feats, train_labels = extract_features(backbone, train_loader, device)
    test_feats, test_labels = extract_features(backbone, test_loader, device)
    if num_classes is None:
        num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    scores = knn_predict(train_feats, train_labels, test_feats, num_classes, k=k, temperature=temperature)
    acc = topk_accuracy(scores, test_labels, (1, 5))
    return {
        "knn_top1": acc[1],
        "knn_top5": acc[5],
        "knn_train_size": float(train_feats.shape[0]),
        "knn_test_size": float(test_feats.shape[0]),
    }


def knn_from_manifests(
    backbone: nn.Module, cfg: Any, train_manifest: str, val_manifest: str, device: torch.device | str
) -> dict[str, float]:
    """``knn_monitor`` over two labelled manifests: one centre clip per video (``build_linear_loader`` with
    ``train=False``: ``cfg.eval.num_frames`` x ``cfg.eval.stride``, ``cfg.eval.crop_size``), k and T from
    ``cfg.eval.knn_k`` / ``cfg.eval.knn_temperature``. For the trainer's ``train.knn_every``."""
    from fastcvrl.data import build_linear_loader  # DALI only when the monitor runs

    train = build_linear_loader(cfg, train_manifest, device=device, train=False)
    val = build_linear_loader(cfg, val_manifest, device=device, train=False)
    return knn_monitor(backbone, train, val, k=cfg.eval.knn_k, temperature=cfg.eval.knn_temperature, device=device)
