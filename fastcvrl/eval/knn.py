"""Weighted k-nearest-neighbour monitor: a cheap, training-free read of representation quality.

The protocol of Wu et al. 2018 (InstDisc, Sec. 3.4), used by the video SSL peers (VideoMoCo, CoCLR, ...):
cosine similarity between L2-normalised features, the ``k`` most similar training clips each vote for their
class with weight ``exp(sim / T)``, the votes are summed per class. Defaults k=200, T=0.1 as in InstDisc.

    scores = knn_predict(train_feats, train_labels, test_feats, num_classes, k=200, temperature=0.1)
    stats = knn_monitor(backbone, train_loader, test_loader)           # {"knn_top1": .., "knn_top5": ..}
    monitor = KnnMonitor(cfg, train_manifest, val_manifest, device)   # the trainer's: checks the splits now
    stats = monitor(backbone)                                          # every rank calls it; same stats on
    all

On a real dataset (``KnnMonitor``) the bank is a fixed random subset of ``eval.knn_bank_size`` training
videos and the queries one of ``eval.knn_query_size`` validation videos (chosen once per run from
``train.seed``; 0 = all). Every rank extracts the features of its share (``torch.distributed``), the bank is
gathered on all ranks in video order, each rank scores its own queries and the hit counts are summed: the
result equals the single-process one (tested with two gloo processes). Features come from the evaluation's
one loop, ``fastcvrl.eval.features``.

``knn_predict`` is the batched fast path; ``knn_predict_reference`` is the per-clip loop it is tested against.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from fastcvrl.eval.weights import EvalError

__all__ = [
    "EvalError",
    "knn_predict",
    "knn_predict_reference",
    "topk_accuracy",
    "knn_monitor",
    "capped_rows",
    "KnnMonitor",
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
        raise ValueError(
            f"expected (N, D) and (Nq, D) features, got {tuple(train_feats.shape)} and "
            f"{tuple(test_feats.shape)}"
        )
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


def topk_accuracy(
    scores: torch.Tensor, labels: torch.Tensor, ks: tuple[int, ...] = (1, 5)
) -> dict[int, float]:
    """Fraction of rows whose label is among the ``k`` highest scores, for each k (capped at the class
    count)."""
    labels = labels.to(scores.device).long()
    if scores.shape[0] == 0:
        return {k: float("nan") for k in ks}
    out = {}
    for k in ks:
        top = scores.topk(min(k, scores.shape[1]), dim=1).indices  # (N, k)
        out[k] = (top == labels[:, None]).any(dim=1).float().mean().item()  # host sync: final metric
    return out


def knn_monitor(
    backbone: nn.Module,
    train_loader: Iterable,
    test_loader: Iterable,
    *,
    num_classes: int | None = None,
    k: int = 200,
    temperature: float = 0.1,
    device: torch.device | str | None = None,
    precision: str = "fp32",
) -> dict[str, float]:
    """Weighted kNN top-1/top-5 of ``test_loader`` videos against a bank of ``train_loader`` features (one
    process). No gradients, the backbone in eval mode for the duration (its mode restored after); the views
    of a multi-view test video are averaged. ``num_classes`` defaults to the largest label + 1.
    Returns ``{"knn_top1", "knn_top5", "knn_train_size", "knn_test_size"}``."""
    from fastcvrl.eval.features import clip_features, video_features

    device = torch.device(device) if device is not None else next(backbone.parameters()).device
    bank = video_features(clip_features([backbone], train_loader, device, precision))
    queries = video_features(clip_features([backbone], test_loader, device, precision))
    if num_classes is None:
        num_classes = int(max(bank[1].max(), queries[1].max())) + 1
    scores = knn_predict(bank[0], bank[1], queries[0], num_classes, k=k, temperature=temperature)
    acc = topk_accuracy(scores, queries[1], (1, 5))
    return {
        "knn_top1": acc[1],
        "knn_top5": acc[5],
        "knn_train_size": float(bank[0].shape[0]),
        "knn_test_size": float(queries[0].shape[0]),
    }


def capped_rows(n: int, cap: int, seed: int, purpose: int) -> list[int]:
    """A fixed random subset of ``cap`` of the rows 0..n-1 (all when ``cap`` is 0 or >= n), ascending: the
    same for the same ``(seed, purpose)`` on every rank and every call."""
    if cap <= 0 or cap >= n:
        return list(range(n))
    rng = np.random.default_rng([seed, purpose])
    return sorted(rng.choice(n, size=cap, replace=False).tolist())


def _rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class KnnMonitor:
    """The trainer's kNN monitor over two labelled manifests (``train.knn_every``), sharded over all ranks.

    Built once before training (reads both manifests, checks the validation labels against the training
    split's classes by name, picks the capped bank and query subsets); each call extracts one centre clip per
    video (``build_linear_loader(train=False)``: ``eval.num_frames`` x ``eval.stride``, ``eval.crop_size``) on
    this rank's share, gathers the bank, and returns the same statistics on every rank. Every rank of the
    process group must call it (it communicates)."""

    def __init__(
        self, cfg: Any, train_manifest: str, val_manifest: str, device: torch.device | str, log: Any = print
    ) -> None:
        from fastcvrl.config import merge
        from fastcvrl.eval.inputs import check_eval_config, match_splits
        from fastcvrl.precision import eval_precision

        check_eval_config(cfg)
        self.device = torch.device(device)
        self.precision = eval_precision(cfg.train.precision, self.device)
        self.cfg = merge(cfg, {"train": {"precision": self.precision}})  # the loaders hand over this dtype
        rank, _ = _rank_world()
        splits = match_splits(train_manifest, val_manifest, log=log if rank == 0 else (lambda s: None))
        self.train, self.val, self.num_classes = splits.train, splits.test, splits.num_classes
        e, seed = cfg.eval, cfg.train.seed
        self.bank_rows = capped_rows(len(self.train), e.knn_bank_size, seed, 0)
        self.query_rows = capped_rows(len(self.val), e.knn_query_size, seed, 1)

    def features(self, backbone: nn.Module, entries: Sequence[Any], rows: list[int]):
        """``ClipFeatures`` of this rank's share of ``rows`` (every world-th), ``video`` = manifest rows."""
        from dali_pipelines.loaders import build_linear_loader
        from fastcvrl.eval.features import ClipFeatures, clip_features

        rank, world = _rank_world()
        mine = rows[rank::world]
        if not mine:
            return ClipFeatures(
                [torch.zeros(0, int(backbone.out_dim))],
                torch.zeros(0, dtype=torch.long),
                torch.zeros(0, dtype=torch.long),
            )
        loader = build_linear_loader(self.cfg, [entries[r] for r in mine], device=self.device, train=False)
        cf = clip_features([backbone], loader, self.device, self.precision, allow_empty=True)
        if cf.video is None:
            raise RuntimeError("the kNN loader did not say which video each clip came from")
        to_row = torch.tensor(mine, dtype=torch.long)
        cf.video = to_row[cf.video]
        cf.unreadable = frozenset(mine[v] for v in cf.unreadable)
        return cf

    def bank(self, backbone: nn.Module):
        """The whole bank on every rank: each rank's share extracted, gathered, in manifest-row order."""
        from fastcvrl.eval.features import gather_features

        return gather_features(self.features(backbone, self.train, self.bank_rows))

    def __call__(self, backbone: nn.Module) -> dict[str, float]:
        e = self.cfg.eval
        bank = self.bank(backbone)  # (N, D) on every rank
        queries = self.features(backbone, self.val, self.query_rows)  # this rank's queries only
        if bank.labels.numel() == 0:
            raise RuntimeError("the kNN monitor's bank is empty: every sampled training video was unreadable")
        scores = knn_predict(
            bank.feats[0].to(self.device),
            bank.labels,
            queries.feats[0],
            self.num_classes,
            k=e.knn_k,
            temperature=e.knn_temperature,
        )  # (Nq_rank, C)
        labels = queries.labels.to(scores.device)
        hits = torch.zeros(3, dtype=torch.float64, device=scores.device)  # top-1 hits, top-5 hits, queries
        if labels.numel():
            top = scores.topk(min(5, scores.shape[1]), dim=1).indices  # (Nq_rank, 5)
            hits[0] = (top[:, 0] == labels).sum()
            hits[1] = (top == labels[:, None]).any(dim=1).sum()
            hits[2] = labels.numel()
        if _rank_world()[1] > 1:
            comm = hits.cuda() if dist.get_backend() == "nccl" else hits.cpu()
            dist.all_reduce(comm)
            hits = comm
        top1, top5, n = hits.tolist()  # host sync: the monitor's result
        nan = float("nan")
        return {
            "knn_top1": top1 / n if n else nan,
            "knn_top5": top5 / n if n else nan,
            "knn_train_size": float(bank.labels.numel()),
            "knn_test_size": float(n),
        }


def knn_from_manifests(
    backbone: nn.Module, cfg: Any, train_manifest: str, val_manifest: str, device: torch.device | str
) -> dict[str, float]:
    """``KnnMonitor(cfg, train_manifest, val_manifest, device)(backbone)`` in one call."""
    return KnnMonitor(cfg, train_manifest, val_manifest, device)(backbone)
