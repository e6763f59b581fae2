"""Evaluate a pretrained backbone: CVRL's linear protocol (default) or fine-tuning, plus the kNN monitor.

    python -m fastcvrl.eval --checkpoint runs/default/backbone.pt \\
        --train-manifest data/ucf101/train/manifest.csv --test-manifest data/ucf101/test/manifest.csv \\
        [--config configs/X.yaml] [--finetune] [--random-init] [--out DIR] [--eval.epochs=100 ...]

Linear protocol (Qian et al. 2021, Sec. 4.1): the backbone is frozen with BatchNorm in eval mode; its pooled
features are L2-normalised and one linear layer is trained on them with SGD (momentum) and a cosine schedule
on crop-and-flip augmented clips (``cfg.eval.num_frames`` x ``cfg.eval.stride``). Test: ``test_clips``
temporal x ``test_crops`` spatial views per video (CVRL's 10 x 3), softmax scores averaged per video.

Feature cache (the choice made here): a frozen backbone gives the same feature for the same augmented clip,
so the backbone runs over the training set ``cfg.eval.feature_passes`` times, each pass one fresh crop-and-flip
draw per video, and the linear layer's epoch e trains on cached pass e mod K. With K = epochs this is exactly
the uncached protocol; the default K = 10 trades augmentation diversity for a 10x cheaper probe.

``--finetune`` (``cfg.eval.finetune``) trains the whole network (BatchNorm in train mode) and a linear head on
its raw pooled features, with the same optimiser and schedule, on freshly augmented clips every epoch.

CKPT is a trainer checkpoint (``<run>/checkpoints/ckpt_*.pt``) or the exported backbone; the architecture is
taken from the checkpoint's config, else from ``config.yaml`` in its run folder, else from ``--config``.
``--random-init`` evaluates a randomly initialised backbone instead (the baseline of the learning proof).
Results: printed, written to ``OUT/eval.json`` and to TensorBoard in ``OUT`` (``eval/top1``, ``eval/top5``).

A test video that cannot be read or decoded is named in a warning and left out: accuracy is over the readable
test videos (``num_scored_videos``), and ``unreadable_test_videos`` lists the files. An unreadable training
video is replaced by another one of the set (also named), as in pretraining.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Collection, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from fastcvrl.config import Config, ConfigError, load_config, merge, to_dict
from fastcvrl.manifest import ManifestError, read_manifest
from fastcvrl.eval.probe import ViewAverager, cosine_lr, topk_accuracy, train_linear

__all__ = [
    "EvalError",
    "Classifier",
    "load_backbone",
    "predict_videos",
    "unreadable",
    "ClipFeatures",
    "clip_features",
    "video_scores",
    "probe_features",
    "linear_probe",
    "finetune",
    "evaluate",
    "main",
]


class EvalError(RuntimeError):
    """A problem with the evaluation's inputs; the message names the file at fault."""


class Classifier(nn.Module):
    """Backbone -> pooled features (L2-normalised for the linear protocol) -> one linear layer.

    (B,3,T,H,W) -> logits (B, C). Fine-tuning uses the raw pooled features (``normalize=False``): unit-norm
    features bound the logits by the head's norm, which slows training the whole network from its start.
    """

    def __init__(self, backbone: nn.Module, head: nn.Linear, normalize: bool = True) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.normalize = normalize

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.backbone(x).float()  # (B, D)
        return self.head(F.normalize(f, dim=1) if self.normalize else f)  # (B, C)


def _autocast(device: torch.device) -> contextlib.AbstractContextManager:
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


# ---------------------------------------------------------------------------------------------- checkpoints
def _strip(state: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def _backbone_state(obj: Any, path: str) -> dict[str, torch.Tensor]:
    """The backbone's state dict out of a trainer checkpoint, a CVRLModel state dict or an exported backbone."""
    if not isinstance(obj, dict):
        raise EvalError(f"{path}: not a checkpoint (a {type(obj).__name__}, expected a dict)")
    state: Any = obj
    for key in ("backbone", "model", "state_dict"):
        if isinstance(obj.get(key), dict):
            state = obj[key]
            break
    if not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise EvalError(f"{path}: found no model weights (expected keys 'backbone', 'model' or a state dict)")
    for prefix in ("module.", "_orig_mod."):  # DDP / torch.compile wrappers
        if all(k.startswith(prefix) for k in state):
            state = _strip(state, prefix)
    if any(k.startswith("backbone.") for k in state):
        state = _strip(state, "backbone.")
    return state


def _checkpoint_model_cfg(obj: Any, path: Path) -> dict | None:
    """The ``model`` config section saved with the checkpoint, or in ``config.yaml`` of its run folder."""
    if isinstance(obj, dict):
        cfg = obj.get("config")
        if isinstance(cfg, dict) and isinstance(cfg.get("model"), dict):
            return cfg["model"]
        if isinstance(obj.get("arch"), str):
            return {"arch": obj["arch"], "width": int(obj.get("width", 1))}
    for folder in (path.parent, path.parent.parent):
        if (folder / "config.yaml").is_file():
            return to_dict(load_config(folder / "config.yaml").model)
    return None


def load_backbone(path: str | os.PathLike, cfg: Config) -> tuple[nn.Module, Config]:
    """Build the backbone the checkpoint at ``path`` holds and load its weights (strictly).

    Returns the backbone (CPU, eval mode) and ``cfg`` with its ``model`` section replaced by the checkpoint's,
    where the checkpoint records one. Raises ``EvalError`` naming the file if it is missing, unreadable or
    does not fit the architecture.
    """
    from fastcvrl.model import build_backbone

    path = Path(path)
    if not path.is_file():
        raise EvalError(f"checkpoint not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise EvalError(f"{path}: cannot read the checkpoint ({type(e).__name__}: {e})") from None
    state = _backbone_state(obj, str(path))
    model_cfg = _checkpoint_model_cfg(obj, path)
    if model_cfg is not None:
        known = {k: v for k, v in model_cfg.items() if k in to_dict(cfg.model)}
        cfg = merge(cfg, {"model": known})
    backbone = build_backbone(cfg.model.arch, cfg.model.width)
    missing, unexpected = [], []
    try:
        result = backbone.load_state_dict(state, strict=False)
        missing, unexpected = list(result.missing_keys), list(result.unexpected_keys)
    except RuntimeError as e:  # shape mismatches
        raise EvalError(f"{path}: weights do not fit model.arch={cfg.model.arch} width={cfg.model.width}: {e}") from None
    if missing or unexpected:
        raise EvalError(
            f"{path}: weights do not fit model.arch={cfg.model.arch} width={cfg.model.width} "
            f"({len(missing)} missing, e.g. {missing[:3]}; {len(unexpected)} unexpected, e.g. {unexpected[:3]}); "
            "pass the run's config with --config or the matching --model.arch"
        )
    return backbone.eval(), cfg


# ------------------------------------------------------------------------------------------------ testing
@torch.no_grad()
def predict_videos(
    model: nn.Module, test_loader: Iterable, num_videos: int, num_classes: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-video softmax scores averaged over all views, and per-video labels.
    Videos the loader found unreadable have NaN scores and label -1.

    ``test_loader`` yields ``(clips (B*V,3,T,H,W), label (B,), video_index (B,))`` with the V views of each video
    contiguous (``build_test_loader``); views are grouped by ``video_index``, so a video's views may also be
    split over batches. Returns (num_videos, C) float32 and (num_videos,) int64, on the CPU.
    """
    was_training = model.training
    model.eval()
    scores = ViewAverager(num_videos, num_classes)
    labels = torch.full((num_videos,), -1, dtype=torch.long)
    try:
        for clips, label, video_index in test_loader:
            b = video_index.shape[0]
            if clips.shape[0] % b:
                raise ValueError(f"a test batch of {b} videos came with {clips.shape[0]} clips (not a multiple)")
            with _autocast(device):
                logits = model(clips.to(device, non_blocking=True))  # (B*V, C)
            probs = logits.float().softmax(dim=1).cpu()
            view_video = video_index.cpu().long().repeat_interleave(clips.shape[0] // b)  # (B*V,)
            scores.add(probs, view_video)
            labels[video_index.cpu().long()] = label.cpu().long()
    finally:
        model.train(was_training)
    return scores.mean(excused=unreadable(test_loader)), labels


def unreadable(loader: Any) -> frozenset[int]:
    """Manifest rows the loader found unreadable so far (``VideoSource.bad``; none for other iterables)."""
    return frozenset(getattr(getattr(loader, "source", None), "bad", ()))


def _result(scores: torch.Tensor, labels: torch.Tensor) -> dict[str, Any]:
    """Top-1/top-5 over the videos that were scored (label -1: a video left out as unreadable)."""
    scored = labels >= 0
    acc = topk_accuracy(scores[scored], labels[scored], (1, 5))
    return {"top1": acc[1], "top5": acc[5], "num_scored_videos": int(scored.sum())}


# ------------------------------------------------------------------------------------------- linear probe
@dataclass
class ClipFeatures:
    """Features of every clip a loader yielded, for one or more backbones (the clips decoded once).

    ``feats[i]`` (M, D_i) L2-normalised, float32, CPU; ``labels`` (M,) per clip; ``video`` (M,) the video each
    clip (view) belongs to, or None for one-clip-per-video loaders; ``unreadable``: the videos the loader left
    out as unreadable.
    """

    feats: list[torch.Tensor]
    labels: torch.Tensor
    video: torch.Tensor | None
    unreadable: frozenset[int] = frozenset()


@torch.no_grad()
def clip_features(backbones: Sequence[nn.Module], loader: Iterable, device: torch.device) -> ClipFeatures:
    """Run each (frozen, eval-mode) backbone over every clip of ``loader``; no per-video averaging here.

    Batches are ``(clip (B,3,T,H,W), label (B,))`` or ``(clips (B*V,3,T,H,W), label (B,), video_index (B,))``
    (views of a video contiguous, as ``build_test_loader``). Modes are restored afterwards.
    """
    modes = [b.training for b in backbones]
    for b in backbones:
        b.eval()
    feats: list[list[torch.Tensor]] = [[] for _ in backbones]
    labels, videos = [], []
    try:
        for batch in loader:
            clips, label = batch[0], batch[1].cpu().long()
            reps = clips.shape[0] // label.shape[0]
            if clips.shape[0] != reps * label.shape[0]:
                raise ValueError(f"a batch of {label.shape[0]} labels came with {clips.shape[0]} clips (not a multiple)")
            x = clips.to(device, non_blocking=True)
            for i, b in enumerate(backbones):
                with _autocast(device):
                    f = b(x)  # (B*V, D)
                feats[i].append(F.normalize(f.float(), dim=1).cpu())
            labels.append(label.repeat_interleave(reps))
            if len(batch) > 2:
                videos.append(batch[2].cpu().long().repeat_interleave(reps))
    finally:
        for b, m in zip(backbones, modes):
            b.train(m)
    bad = unreadable(loader)
    if not labels:
        raise ValueError("the loader yielded no batches" + (f" (all {len(bad)} videos unreadable)" if bad else ""))
    return ClipFeatures([torch.cat(f) for f in feats], torch.cat(labels), torch.cat(videos) if videos else None, bad)


def video_scores(head: nn.Linear, feats: torch.Tensor, video: torch.Tensor, num_videos: int,
                 excused: Collection[int] = ()) -> torch.Tensor:
    """Per-video mean of the softmax scores of all its views: (M, D) view features -> (num_videos, C); NaN rows
    for the ``excused`` videos that have no view (unreadable)."""
    with torch.no_grad():
        probs = head(F.normalize(feats.to(head.weight.device), dim=1)).softmax(dim=1).cpu()  # (M, C)
    acc = ViewAverager(num_videos, probs.shape[1])
    acc.add(probs, video)
    return acc.mean(excused)


def video_labels(labels: torch.Tensor, video: torch.Tensor, num_videos: int) -> torch.Tensor:
    """(num_videos,) label of each video from per-clip labels; -1 where a video has no clip."""
    out = torch.full((num_videos,), -1, dtype=torch.long)
    out[video] = labels
    return out


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
    """Train the linear layer on cached train passes, test on cached view features ``test.feats[test_index]``."""
    e = cfg.eval
    feats = [f.to(device) for f in train_feats]
    labels = [y.to(device) for y in train_labels]
    head = train_linear(feats, labels, num_classes, epochs=e.epochs, batch_size=e.batch_size, lr=e.lr,
                        momentum=e.momentum, weight_decay=e.weight_decay, seed=seed)
    with torch.no_grad():
        train_acc = topk_accuracy(head(F.normalize(feats[-1], dim=1)), labels[-1], (1,))[1]
    if test.video is None:
        raise ValueError("the test loader must yield (clips, label, video_index)")
    scores = video_scores(head, test.feats[test_index], test.video, num_test_videos, test.unreadable)
    out: dict[str, Any] = _result(scores, video_labels(test.labels, test.video, num_test_videos))
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
    seed: int = 0,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """CVRL linear protocol on a frozen backbone; ``train_passes`` yields one train loader per cached pass.

    Each train loader yields ``(clip (B,3,T,H,W), label (B,))``; features are extracted once per pass (no grad,
    BatchNorm in eval mode), and once per test view. Returns top-1/top-5 over test videos and the probe's
    training accuracy on the last pass.
    """
    backbone.to(device)
    for p in backbone.parameters():
        p.requires_grad_(False)
    feats, labels = [], []
    t0 = time.perf_counter()
    for i, loader in enumerate(train_passes):
        cf = clip_features([backbone], loader, device)
        feats.append(cf.feats[0])
        labels.append(cf.labels)
        log(f"eval: train features, pass {i + 1}: {tuple(cf.feats[0].shape)} ({time.perf_counter() - t0:.1f}s)")
    if not feats:
        raise ValueError("linear_probe needs at least one training pass")
    test = clip_features([backbone], test_loader, device)
    log(f"eval: test features {tuple(test.feats[0].shape)} ({time.perf_counter() - t0:.1f}s)")
    out, _ = probe_features(feats, labels, test, 0, num_classes=num_classes, num_test_videos=num_test_videos,
                            cfg=cfg, device=device, seed=seed)
    return out


# ---------------------------------------------------------------------------------------------- fine-tune
def finetune(
    backbone: nn.Module,
    train_loader_for_epoch: Callable[[int], Iterable],
    test_loader: Iterable,
    *,
    num_classes: int,
    num_test_videos: int,
    cfg: Config,
    device: torch.device,
    seed: int = 0,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train backbone and linear head together (BatchNorm in train mode) on augmented clips, then test.

    Same optimiser and schedule as the probe (SGD, momentum, cosine over all steps); the head reads the raw
    pooled features. ``train_loader_for_epoch(e)`` returns the loader reseeded for epoch e."""
    torch.manual_seed(seed)
    head = nn.Linear(backbone.out_dim, num_classes)
    model = Classifier(backbone, head, normalize=False).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last_3d)
    for p in model.parameters():
        p.requires_grad_(True)
    e = cfg.eval
    opt = torch.optim.SGD(model.parameters(), lr=e.lr, momentum=e.momentum, weight_decay=e.weight_decay)
    total, step = None, 0
    model.train()
    for epoch in range(e.epochs):
        loader = train_loader_for_epoch(epoch)
        if total is None:
            total = e.epochs * max(len(loader), 1) if hasattr(loader, "__len__") else 0
        loss_sum = torch.zeros((), device=device)
        n = 0
        for clip, label in loader:
            for g in opt.param_groups:
                g["lr"] = cosine_lr(e.lr, step, total) if total else e.lr
            with _autocast(device):
                logits = model(clip.to(device, non_blocking=True))
            loss = F.cross_entropy(logits.float(), label.to(device).long())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += loss.detach()
            n += 1
            step += 1
        log(f"eval: finetune epoch {epoch + 1}/{e.epochs} loss {loss_sum.item() / max(n, 1):.4f}")  # host sync: per-epoch log
    scores, test_labels = predict_videos(model, test_loader, num_test_videos, num_classes, device)
    return _result(scores, test_labels)


# ------------------------------------------------------------------------------------ from manifests (DALI)
def _num_classes(train_entries, test_entries) -> int:
    return max(max(e.label for e in train_entries), max(e.label for e in test_entries)) + 1


def evaluate(
    cfg: Config,
    backbone: nn.Module,
    train_manifest: str,
    test_manifest: str,
    *,
    device: torch.device,
    finetune_all: bool | None = None,
    seed: int = 0,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run the linear protocol (or fine-tuning) with the DALI loaders of ``fastcvrl.data`` on two manifests."""
    from fastcvrl.data import build_linear_loader, build_test_loader  # DALI only where loaders are needed

    train_entries = _read(train_manifest)
    test_entries = _read(test_manifest)
    num_classes = _num_classes(train_entries, test_entries)
    do_finetune = cfg.eval.finetune if finetune_all is None else finetune_all
    e = cfg.eval
    if len(train_entries) < e.batch_size:  # training batches are whole: none at all would be a silent no-op
        raise EvalError(f"{train_manifest}: {len(train_entries)} videos, fewer than one training batch "
                        f"(eval.batch_size={e.batch_size}); lower eval.batch_size")
    test_loader = build_test_loader(cfg, test_manifest, device=device)
    t0 = time.perf_counter()
    common = dict(num_classes=num_classes, num_test_videos=len(test_entries), cfg=cfg, device=device, seed=seed, log=log)
    if do_finetune:
        train_loader = build_linear_loader(cfg, train_manifest, device=device, seed=seed, train=True)

        def for_epoch(epoch: int):
            return _at_epoch(train_loader, epoch)

        result = finetune(backbone, for_epoch, test_loader, **common)
        passes = 0
    else:
        passes = max(1, min(e.feature_passes, e.epochs))
        train_loader = build_linear_loader(cfg, train_manifest, device=device, seed=seed, train=True)

        def pass_loaders():
            for p in range(passes):
                yield _at_epoch(train_loader, p)

        result = linear_probe(backbone, pass_loaders(), test_loader, **common)
    result.update(
        unreadable_test_videos=[test_entries[v].path for v in sorted(unreadable(test_loader))],
        unreadable_train_videos=[train_entries[v].path for v in sorted(unreadable(train_loader))],
        mode="finetune" if do_finetune else "linear",
        num_classes=num_classes,
        num_train_videos=len(train_entries),
        num_test_videos=len(test_entries),
        views_per_video=e.test_clips * e.test_crops,
        epochs=e.epochs,
        feature_passes=passes,
        seconds=round(time.perf_counter() - t0, 1),
        device=str(device),
    )
    return result


def _at_epoch(loader, epoch: int):
    """The loader reseeded for ``epoch`` (a fresh augmentation draw and order, deterministic per epoch)."""
    if hasattr(loader, "set_epoch"):
        loader.set_epoch(epoch)
    return loader


def _read(manifest: str):
    try:
        return read_manifest(manifest)
    except ManifestError as e:
        raise EvalError(str(e)) from None


# --------------------------------------------------------------------------------------------------- CLI
def _parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    p = argparse.ArgumentParser(prog="python -m fastcvrl.eval", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="trainer checkpoint or exported backbone (.pt)")
    src.add_argument("--random-init", action="store_true", help="evaluate a randomly initialised backbone (baseline)")
    p.add_argument("--train-manifest", required=True, help="labelled manifest the probe is trained on")
    p.add_argument("--test-manifest", required=True, help="labelled manifest it is tested on")
    p.add_argument("--config", help="YAML config (default: config.yaml of the checkpoint's run folder, if any)")
    p.add_argument("--finetune", action="store_true", help="fine-tune the whole network (= --eval.finetune=true)")
    p.add_argument("--out", help="output folder for eval.json and TensorBoard (default: beside the checkpoint)")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_known_args(argv)


def _default_config_path(args: argparse.Namespace) -> str | None:
    if args.config:
        return args.config
    if args.checkpoint:
        ck = Path(args.checkpoint)
        for folder in (ck.parent, ck.parent.parent):
            if (folder / "config.yaml").is_file():
                return str(folder / "config.yaml")
    return None


def _write_json(obj: dict, path: Path) -> None:
    tmp = path.with_name(f"{path.name}.tmp.{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args, overrides = _parse(sys.argv[1:] if argv is None else argv)
    cfg = load_config(_default_config_path(args), overrides)
    if args.finetune:
        cfg = merge(cfg, {"eval": {"finetune": True}})
    for m in (args.train_manifest, args.test_manifest):
        _read(m)  # fail on a bad manifest before any model work
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.random_init:
        from fastcvrl.model import build_backbone

        torch.manual_seed(args.seed)
        backbone = build_backbone(cfg.model.arch, cfg.model.width)
        source = "random-init"
    else:
        backbone, cfg = load_backbone(args.checkpoint, cfg)
        source = str(args.checkpoint)
    mode = "finetune" if cfg.eval.finetune else "linear"
    if args.out:
        out = Path(args.out)
    elif args.checkpoint:
        out = Path(args.checkpoint).parent / f"eval_{mode}"
    else:
        out = Path("runs") / f"eval_random_init_{mode}"
    out.mkdir(parents=True, exist_ok=True)
    print(f"eval: {mode} evaluation of {source} ({cfg.model.arch}) on {device}; results in {out}")
    result = evaluate(cfg, backbone, args.train_manifest, args.test_manifest, device=device, seed=args.seed)
    result.update(checkpoint=source, train_manifest=args.train_manifest, test_manifest=args.test_manifest,
                  seed=args.seed, config=to_dict(cfg))
    _write_json(result, out / "eval.json")
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(str(out)) as tb:
        tb.add_scalar("eval/top1", result["top1"], 0)
        tb.add_scalar("eval/top5", result["top5"], 0)
    print(f"eval: {mode} top-1 {100 * result['top1']:.2f}%  top-5 {100 * result['top5']:.2f}%  "
          f"({result['num_scored_videos']} test videos x {result['views_per_video']} views, {result['seconds']}s)")
    for split in ("test", "train"):
        bad = result[f"unreadable_{split}_videos"]
        if bad:
            left = "left out of the accuracy" if split == "test" else "replaced by other training videos"
            print(f"eval: {len(bad)} unreadable {split} video(s) {left}: {', '.join(bad[:5])}"
                  + (" ..." if len(bad) > 5 else ""))
    print(f"eval: wrote {out / 'eval.json'}")
    return result

