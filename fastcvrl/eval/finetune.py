"""Fine-tuning (``--finetune``): the whole network and a linear head trained together, then tested on the
multi-view test loader with the scores of a video's views averaged.

    result = finetune(backbone, loader_for_epoch, test_loader, num_classes=C, num_test_videos=V, cfg=cfg,
                      device=device, precision="bf16")

Same optimiser and schedule as the linear probe (SGD with momentum, linear warm-up then cosine), at
``eval.finetune_lr``; BatchNorm in train mode; the head reads the raw pooled features.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fastcvrl.config import Config
from fastcvrl.eval.features import clip_features, unreadable
from fastcvrl.eval.probe import ViewAverager, probe_schedule, video_labels, video_result
from fastcvrl.precision import autocast

__all__ = ["Classifier", "predict_videos", "finetune"]


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


def predict_videos(
    model: nn.Module,
    test_loader: Iterable,
    num_videos: int,
    num_classes: int,
    device: torch.device,
    precision: str = "fp32",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-video softmax scores averaged over all views (num_videos, C), and per-video labels (num_videos,),
    CPU. Videos the loader found unreadable have NaN scores and label -1.

    ``test_loader`` yields ``(clips (B*V,3,T,H,W), label (B,), video_index (B,))`` with the V views of each
    video contiguous (``build_test_loader``); views are grouped by ``video_index``, so a video's views may
    also be split over batches. The model's logits come from the evaluation's one feature loop
    (``clip_features``)."""
    out = clip_features([model], test_loader, device, precision, normalize=False)  # logits (B*V, C) per batch
    if out.video is None:
        raise ValueError("the test loader must yield (clips, label, video_index)")
    scores = ViewAverager(num_videos, num_classes)
    scores.add(out.feats[0].softmax(dim=1), out.video)
    return scores.mean(excused=unreadable(test_loader)), video_labels(out.labels, out.video, num_videos)


def finetune(
    backbone: nn.Module,
    train_loader_for_epoch: Callable[[int], Iterable],
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
    """Train backbone and linear head together (BatchNorm in train mode) on augmented clips, then test.

    ``train_loader_for_epoch(e)`` returns the loader reseeded for epoch e."""
    torch.manual_seed(seed)
    head = nn.Linear(backbone.out_dim, num_classes)
    model = Classifier(backbone, head, normalize=False).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last_3d)
    for p in model.parameters():
        p.requires_grad_(True)
    e = cfg.eval
    opt = torch.optim.SGD(
        model.parameters(), lr=e.finetune_lr, momentum=e.momentum, weight_decay=e.weight_decay, nesterov=False
    )
    scaler = torch.amp.GradScaler("cuda") if precision == "fp16" and device.type == "cuda" else None
    schedule, step = None, 0
    model.train()
    for epoch in range(e.epochs):
        loader = train_loader_for_epoch(epoch)
        if schedule is None and hasattr(loader, "__len__"):  # a loader of unknown length: constant lr
            schedule = probe_schedule(e.finetune_lr, max(len(loader), 1), e.epochs, e.warmup_epochs)
        loss_sum = torch.zeros((), device=device)
        n = 0
        for clip, label in loader:
            for g in opt.param_groups:
                g["lr"] = schedule.value_at(step) if schedule is not None else e.finetune_lr
            with autocast(device, precision):
                logits = model(clip.to(device, non_blocking=True))
            loss = F.cross_entropy(logits.float(), label.to(device).long())
            opt.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
            else:
                loss.backward()
                opt.step()
            loss_sum += loss.detach()
            n += 1
            step += 1
        log(
            f"eval: finetune epoch {epoch + 1}/{e.epochs} loss {loss_sum.item() / max(n, 1):.4f}"
        )  # host sync: per-epoch log
    scores, test_labels = predict_videos(model, test_loader, num_test_videos, num_classes, device, precision)
    return video_result(scores, test_labels)
