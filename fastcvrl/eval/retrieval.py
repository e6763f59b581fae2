"""Video retrieval (``python -m fastcvrl.eval --retrieval``): Recall@k of test videos in the training set.

The protocol video self-supervised papers report beside classification (Xu et al. 2019, "Self-supervised
spatiotemporal learning via video clip order prediction"; then MemDPC, CoCLR, ...): every test
video is a query, the training videos are the gallery; a video's feature is the backbone's pooled feature of
each of its test views, L2-normalised and averaged over the views (then normalised again), and neighbours are
ranked by cosine similarity. A query is correct at k when at least one of its k nearest gallery videos has
its label; Recall@k is the fraction of correct queries. Nothing is trained: it reads the frozen features as
they are.

    rec = recall_at_k(query_feats, query_labels, gallery_feats, gallery_labels, ks=(1, 5, 10, 20))
    result = retrieval(cfg, backbone, train_manifest, test_manifest, device=device)

``recall_at_k`` is the batched fast path; ``recall_at_k_reference`` the per-query loop it is tested against.
Views per video: ``eval.test_clips`` x ``eval.test_crops`` of ``eval.num_frames`` x ``eval.stride`` at
``eval.test_crop_size`` (short side ``eval.short_side``), the linear protocol's test views, for both sets.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fastcvrl.eval.weights import EvalError

__all__ = ["RECALL_KS", "recall_at_k", "recall_at_k_reference", "retrieval"]

RECALL_KS: tuple[int, ...] = (1, 5, 10, 20)


def _check(
    query: torch.Tensor, query_labels: torch.Tensor, gallery: torch.Tensor, gallery_labels: torch.Tensor
):
    if query.ndim != 2 or gallery.ndim != 2 or query.shape[1] != gallery.shape[1]:
        raise ValueError(
            f"expected (Nq, D) and (Ng, D) features, got {tuple(query.shape)} and {tuple(gallery.shape)}"
        )
    if query_labels.shape != (query.shape[0],) or gallery_labels.shape != (gallery.shape[0],):
        raise ValueError("one label per query and per gallery video")
    if gallery.shape[0] == 0:
        raise ValueError("retrieval needs at least one gallery video")


def recall_at_k(
    query_feats: torch.Tensor,
    query_labels: torch.Tensor,
    gallery_feats: torch.Tensor,
    gallery_labels: torch.Tensor,
    ks: Sequence[int] = RECALL_KS,
    chunk_size: int = 1024,
) -> dict[int, float]:
    """Recall@k for each k (capped at the gallery size): the fraction of queries with a same-label video
    among their k most cosine-similar gallery videos. Features need not be normalised (done here); queries go
    in chunks of ``chunk_size`` so the (chunk, Ng) similarity matrix stays small. NaN for no queries."""
    _check(query_feats, query_labels, gallery_feats, gallery_labels)
    if query_feats.shape[0] == 0:
        return {k: float("nan") for k in ks}
    bank = F.normalize(gallery_feats.float(), dim=1)  # (Ng, D)
    glabels = gallery_labels.to(bank.device).long()
    kmax = min(max(ks), bank.shape[0])
    first_hit = []  # per query: the rank (1-based) of its first same-label neighbour, or kmax + 1
    for start in range(0, query_feats.shape[0], chunk_size):
        q = F.normalize(query_feats[start : start + chunk_size].float().to(bank.device), dim=1)  # (b, D)
        labels = query_labels[start : start + chunk_size].to(bank.device).long()
        top = (q @ bank.T).topk(kmax, dim=1).indices  # (b, kmax) nearest first
        hit = glabels[top] == labels[:, None]  # (b, kmax)
        rank = torch.where(hit.any(dim=1), hit.float().argmax(dim=1) + 1, torch.full_like(labels, kmax + 1))
        first_hit.append(rank)
    ranks = torch.cat(first_hit)  # (Nq,)
    n = ranks.shape[0]
    return {k: int((ranks <= min(k, kmax)).sum()) / n for k in ks}  # host sync: the final metric


def recall_at_k_reference(
    query_feats: torch.Tensor,
    query_labels: torch.Tensor,
    gallery_feats: torch.Tensor,
    gallery_labels: torch.Tensor,
    ks: Sequence[int] = RECALL_KS,
) -> dict[int, float]:
    """Slow, obvious statement of ``recall_at_k``: one query at a time, plain Python over the gallery."""
    _check(query_feats, query_labels, gallery_feats, gallery_labels)

    def unit(v: list[float]) -> list[float]:
        n = math.sqrt(sum(x * x for x in v))
        return [x / max(n, 1e-12) for x in v]

    gallery = [unit([float(x) for x in row]) for row in gallery_feats.double()]
    glabels = [int(v) for v in gallery_labels]
    correct = {k: 0 for k in ks}
    for q, label in zip(query_feats.double(), query_labels.tolist()):
        qn = unit([float(x) for x in q])
        sims = sorted(
            ((sum(a * b for a, b in zip(qn, g)), i) for i, g in enumerate(gallery)), key=lambda s: -s[0]
        )
        for k in ks:
            if any(glabels[i] == label for _, i in sims[:k]):
                correct[k] += 1
    n = len(query_labels)
    return {k: correct[k] / n if n else float("nan") for k in ks}


def _video_features(
    backbone: nn.Module, cfg: Any, entries: Sequence[Any], device: torch.device, precision: str
) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """One feature per readable video (the mean of its test views' normalised features), its label, and the
    manifest rows the loader found unreadable."""
    from fastcvrl.data import build_test_loader
    from fastcvrl.eval.features import clip_features, video_features

    loader = build_test_loader(cfg, entries, device=device)
    cf = clip_features([backbone], loader, device, precision)
    feats, labels, _ = video_features(cf)
    return feats, labels, sorted(cf.unreadable)


def retrieval(
    cfg: Any,
    backbone: nn.Module,
    train_manifest: str,
    test_manifest: str,
    *,
    device: torch.device,
    ks: Sequence[int] = RECALL_KS,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Recall@k of the test videos (queries) against the training videos (gallery), features of the frozen
    ``backbone`` over the linear protocol's test views. Test labels follow the training split's classes by
    name (``match_splits``). An unreadable video is named in the result and left out of its set."""
    from fastcvrl.config import merge
    from fastcvrl.eval.inputs import check_eval_config, match_splits
    from fastcvrl.precision import eval_precision

    check_eval_config(cfg)
    splits = match_splits(train_manifest, test_manifest, log=log)
    precision = eval_precision(cfg.train.precision, device)
    cfg = merge(cfg, {"train": {"precision": precision}})  # the loaders hand over clips in this dtype
    t0 = time.perf_counter()
    gallery, gallery_labels, bad_train = _video_features(backbone, cfg, splits.train, device, precision)
    queries, query_labels, bad_test = _video_features(backbone, cfg, splits.test, device, precision)
    if gallery.shape[0] == 0:
        raise EvalError(f"{train_manifest}: no readable training video to retrieve from")
    rec = recall_at_k(queries, query_labels, gallery, gallery_labels, ks)
    e = cfg.eval
    return {
        "mode": "retrieval",
        **{f"recall@{k}": rec[k] for k in ks},
        "num_queries": int(queries.shape[0]),
        "num_gallery": int(gallery.shape[0]),
        "num_classes": splits.num_classes,
        "views_per_video": e.test_clips * e.test_crops,
        "test_labels_renumbered": splits.remapped,
        "unreadable_test_videos": [splits.test[v].path for v in bad_test],
        "unreadable_train_videos": [splits.train[v].path for v in bad_train],
        "precision": precision,
        "seconds": round(time.perf_counter() - t0, 1),
        "device": str(device),
    }
