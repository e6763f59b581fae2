"""The precision evaluation runs in: the one the config asks for where the device supports it.

A training run's ``config.yaml`` names the precision of the machine it trained on (``train.precision: bf16``
on a GPU); evaluation may run elsewhere. On the CPU it runs in fp32 (the loaders then hand over fp32 clips, so
an fp32 backbone never meets a bf16 input); on a GPU ``auto`` is bf16, and bf16 falls back to fp16 where the
GPU has no bf16.

    precision = eval_precision(cfg.train.precision, device)     # "fp32" | "bf16" | "fp16"
    with autocast(device, precision):
        feats = backbone(clips)
"""

from __future__ import annotations

import contextlib

import torch

__all__ = ["PRECISIONS", "eval_precision", "autocast"]

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def eval_precision(requested: str, device: torch.device | str) -> str:
    """``requested`` (``train.precision``) resolved for ``device``: ``"fp32"``, ``"bf16"`` or ``"fp16"``."""
    if requested not in PRECISIONS:
        raise ValueError(f"train.precision: expected one of {', '.join(PRECISIONS)}, got {requested!r}")
    device = torch.device(device)
    if device.type != "cuda":
        return "fp32"  # CPU: no half-precision autocast for 3D convolutions worth having
    if requested == "fp32":
        return "fp32"
    if requested == "fp16":
        return "fp16"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"  # auto, bf16


def autocast(device: torch.device | str, precision: str) -> contextlib.AbstractContextManager:
    """Autocast to ``precision`` (as resolved by ``eval_precision``) on a GPU; nothing for fp32 or the CPU."""
    device = torch.device(device)
    if device.type != "cuda" or precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=_DTYPES[precision])
