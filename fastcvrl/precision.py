"""Precision names and what they mean: the one table from ``train.precision`` to dtypes.

    precision = train_precision(cfg.train.precision, device)   # "fp32" | "bf16" | "fp16" for training
    precision = eval_precision(cfg.train.precision, device)    # the same for evaluation (fp32 on the CPU)
    input_dtype(precision)      # the dtype the loaders hand over (torch.float32 / bfloat16 / float16)
    autocast_dtype(precision)   # the autocast dtype of the step (None for fp32)
    with autocast(device, precision):
        feats = backbone(clips)

Training: ``auto`` is bf16 on a GPU and fp32 on the CPU; an explicit name is kept. Evaluation: a training
run's ``config.yaml`` names the precision of the machine it trained on, and evaluation may run elsewhere: on
the CPU it runs in fp32 (the loaders then hand over fp32 clips, so an fp32 backbone never meets a bf16
input); on a GPU ``auto`` is bf16, and bf16 falls back to fp16 where the GPU has no bf16.
"""

from __future__ import annotations

import contextlib

import torch

__all__ = [
    "DTYPES",
    "PRECISIONS",
    "autocast",
    "autocast_dtype",
    "eval_precision",
    "input_dtype",
    "train_precision",
]

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}  # the one table
PRECISIONS = ("auto", *DTYPES)


def _check(requested: str) -> None:
    if requested not in PRECISIONS:
        raise ValueError(f"train.precision: expected one of {', '.join(PRECISIONS)}, got {requested!r}")


def train_precision(requested: str, device: torch.device | str) -> str:
    """``train.precision`` resolved for training on ``device``: ``auto`` is bf16 on a GPU, fp32 on the CPU."""
    _check(requested)
    if requested != "auto":
        return requested
    return "bf16" if torch.device(device).type == "cuda" else "fp32"


def eval_precision(requested: str, device: torch.device | str) -> str:
    """``requested`` (``train.precision``) resolved for evaluation on ``device``: ``"fp32"``, ``"bf16"`` or
    ``"fp16"``."""
    _check(requested)
    device = torch.device(device)
    if device.type != "cuda":
        return "fp32"  # CPU: no half-precision autocast for 3D convolutions worth having
    if requested in ("fp32", "fp16"):
        return requested
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"  # auto, bf16


def input_dtype(precision: str) -> torch.dtype:
    """The dtype a resolved ``precision`` feeds the model (the loaders' output, the step's normalisation)."""
    _check(precision)
    return DTYPES.get(precision, torch.float32)


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype of a resolved ``precision``; ``None`` for fp32 (no autocast)."""
    dtype = input_dtype(precision)
    return None if dtype == torch.float32 else dtype


def autocast(device: torch.device | str, precision: str) -> contextlib.AbstractContextManager:
    """Autocast to ``precision`` (as resolved by ``eval_precision``) on a GPU; nothing for fp32 or the CPU."""
    device = torch.device(device)
    dtype = autocast_dtype(precision)
    if device.type != "cuda" or dtype is None:
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=dtype)
