"""The one feature-extraction loop of evaluation: frozen backbones over every clip a loader yields.

The linear probe (its cached training passes and the test views), fine-tuning's test (through the same view
grouping) and the kNN monitor all read features here:

    cf = clip_features([backbone], loader, device, precision)   # cf.feats[0] (M, D) L2-normalised, float32,
    CPU bank = gather_features(cf)                                  # every rank's rows (torch.distributed),
    row order feats, labels, videos = video_features(cf)                  # views of a video averaged: (V, D),
    (V,), (V,)

Each clip's video (its manifest row) comes from the batch's third element (the test loader's ``video_index``)
or, for one-clip-per-video loaders, from the loader's ``last_meta`` (a ``DaliLoader``); plain iterables of
``(clip, label)`` give no video (None).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from fastcvrl.precision import autocast

__all__ = ["ClipFeatures", "clip_features", "unreadable", "video_features", "gather_features", "gather_rows"]


@dataclass
class ClipFeatures:
    """Features of every clip a loader yielded, for one or more backbones (the clips decoded once).

    ``feats[i]`` (M, D_i) float32, CPU (L2-normalised unless asked otherwise); ``labels`` (M,) per clip;
    ``video`` (M,) the video (manifest row) each clip belongs to, or None where the loader does not say;
    ``unreadable``: the videos the loader left out as unreadable."""

    feats: list[torch.Tensor]
    labels: torch.Tensor
    video: torch.Tensor | None
    unreadable: frozenset[int] = frozenset()


def unreadable(loader: Any) -> frozenset[int]:
    """Manifest rows the loader found unreadable so far (``VideoSource.bad``; none for other iterables)."""
    return frozenset(getattr(getattr(loader, "source", None), "bad", ()))


@torch.no_grad()
def clip_features(
    backbones: Sequence[nn.Module],
    loader: Iterable,
    device: torch.device | str,
    precision: str = "fp32",
    *,
    normalize: bool = True,
    allow_empty: bool = False,
) -> ClipFeatures:
    """Run each backbone (eval mode, no grad) over every clip of ``loader``; no per-video averaging here.

    Batches are ``(clip (B,3,T,H,W), label (B,))`` or ``(clips (B*V,3,T,H,W), label (B,), video_index (B,))``
    (views of a video contiguous, as ``build_test_loader``). ``precision`` as ``eval_precision`` resolves it.
    Outputs are L2-normalised unless ``normalize=False`` (a classifier's logits). Modes are restored
    afterwards. An empty loader raises unless ``allow_empty`` (a rank's empty shard).
    """
    device = torch.device(device)
    modes = [b.training for b in backbones]
    for b in backbones:
        b.eval()
    feats: list[list[torch.Tensor]] = [[] for _ in backbones]
    labels, videos = [], []
    try:
        for batch in loader:
            clips, label = batch[0], batch[1].cpu().long()
            reps = clips.shape[0] // max(label.shape[0], 1)
            if clips.shape[0] != reps * label.shape[0]:
                raise ValueError(
                    f"a batch of {label.shape[0]} labels came with {clips.shape[0]} clips (not a multiple)"
                )
            x = clips.to(device, non_blocking=True)
            for i, b in enumerate(backbones):
                with autocast(device, precision):
                    f = b(x)  # (B*V, D)
                f = f.float()
                feats[i].append((F.normalize(f, dim=1) if normalize else f).cpu())  # host sync: to the host
            labels.append(label.repeat_interleave(reps))
            video = batch[2] if len(batch) > 2 else _meta_video(loader, label.shape[0])
            if video is not None:
                videos.append(torch.as_tensor(video).cpu().long().repeat_interleave(reps))
    finally:
        for b, m in zip(backbones, modes):
            b.train(m)
    bad = unreadable(loader)
    if not labels:
        if not allow_empty:
            raise ValueError(
                "the loader yielded no batches" + (f" (all {len(bad)} videos unreadable)" if bad else "")
            )
        dims = [int(b.out_dim) for b in backbones]
        return ClipFeatures(
            [torch.zeros(0, d) for d in dims],
            torch.zeros(0, dtype=torch.long),
            torch.zeros(0, dtype=torch.long),
            bad,
        )
    video = torch.cat(videos) if len(videos) == len(labels) else None
    return ClipFeatures([torch.cat(f) for f in feats], torch.cat(labels), video, bad)


def _meta_video(loader: Any, n: int) -> torch.Tensor | None:
    """The batch's videos from a ``DaliLoader``'s ``last_meta`` (column 0: manifest row), if it has one."""
    meta = getattr(loader, "last_meta", None)
    if meta is None or len(meta) != n:
        return None
    return torch.as_tensor(meta[:, 0].copy()).long()


def video_features(cf: ClipFeatures, index: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per video: the mean of its views' normalised features, renormalised (V, D); labels (V,); videos (V,),
    ascending. Without video ids every clip counts as its own video (videos = 0..M-1)."""
    feats, labels = cf.feats[index], cf.labels
    if cf.video is None:
        return feats, labels, torch.arange(labels.shape[0])
    videos, slot = torch.unique(cf.video, return_inverse=True)  # (V,), (M,) each clip's row among the videos
    sums = torch.zeros(videos.shape[0], feats.shape[1]).index_add_(0, slot, feats)
    out_labels = torch.empty(videos.shape[0], dtype=torch.long)
    out_labels[slot] = labels
    return F.normalize(sums, dim=1), out_labels, videos


# ------------------------------------------------------------------------------------------ distributed
def _world() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def gather_rows(t: torch.Tensor) -> torch.Tensor:
    """Every rank's rows of ``t`` (N_r, ...) concatenated in rank order (ranks may hold different N_r); ``t``
    itself outside a process group. Works on gloo (CPU) and NCCL (the rows travel through the GPU)."""
    if _world() == 1:
        return t
    comm = (
        torch.device("cuda", torch.cuda.current_device())
        if dist.get_backend() == "nccl"
        else torch.device("cpu")
    )
    x = t.to(comm).contiguous()
    n = torch.tensor([x.shape[0]], device=comm)
    sizes = [torch.zeros_like(n) for _ in range(_world())]
    dist.all_gather(sizes, n)
    sizes_host = [int(s.item()) for s in sizes]  # host sync: the row counts, once per gather
    width = max(max(sizes_host), 1)  # no zero-size collectives
    padded = x.new_zeros((width, *x.shape[1:]))
    padded[: x.shape[0]] = x
    parts = [torch.empty_like(padded) for _ in sizes_host]
    dist.all_gather(parts, padded)
    return torch.cat([p[:s] for p, s in zip(parts, sizes_host)]).to(t.device)


def gather_features(cf: ClipFeatures) -> ClipFeatures:
    """``cf`` of every rank in one, rows sorted by video (then by rank order within a video), so that the
    result does not depend on how the videos were sharded. Needs ``cf.video`` when there is more than one
    rank."""
    if _world() == 1:
        return cf
    if cf.video is None:
        raise ValueError("gather_features needs each clip's video to put the ranks' rows in a fixed order")
    video = gather_rows(cf.video)
    order = torch.sort(video, stable=True).indices
    bad = torch.tensor(sorted(cf.unreadable), dtype=torch.long)
    return replace(
        cf,
        feats=[gather_rows(f)[order] for f in cf.feats],
        labels=gather_rows(cf.labels)[order],
        video=video[order],
        unreadable=frozenset(gather_rows(bad).tolist()),
    )
