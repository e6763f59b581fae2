"""The trainer's side of the data path: the data path's settings built from the config, in one place.

    loader = build_pretrain_loader(cfg, manifest, rank=r, world_size=w, device=device, seed=cfg.train.seed)

``dali_pipelines`` takes its own typed settings (``dali_pipelines.settings``) and never reads a config; this
module is the one that maps ``cfg.data``, ``cfg.eval`` and ``cfg.train`` onto them, resolving every ``auto``
on the way (the data device through ``fastcvrl.preflight``, the precision through ``fastcvrl.precision``, the
augmentation backend and the host workers by the data path's own rules). No DALI import here: the loaders
import DALI when they build a pipeline.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from dali_pipelines import loaders
from dali_pipelines.cores import resolve_num_threads
from dali_pipelines.manifest import VideoEntry
from dali_pipelines.recipe import Recipe
from dali_pipelines.settings import (
    ClipSpec,
    EvalSettings,
    GapRule,
    PretrainSettings,
    Runtime,
    resolve_augment,
    resolve_host_workers,
)
from fastcvrl import preflight
from fastcvrl.config import Config, DataConfig
from fastcvrl.precision import input_dtype, train_precision

__all__ = [
    "build_linear_loader",
    "build_pretrain_loader",
    "build_test_loader",
    "eval_settings",
    "pretrain_settings",
    "recipe",
    "runtime",
]


def runtime(cfg: Config, device: torch.device | str = "cpu") -> Runtime:
    """How the pipelines run for a trainer (or evaluation) on ``device``: every ``auto`` resolved."""
    d = cfg.data
    dev = preflight.data_device(d.device)
    return Runtime(
        device=dev,
        augment=resolve_augment(d.augment, dev),
        num_threads=resolve_num_threads(d.num_threads, dev),
        prefetch=d.prefetch,
        host_workers=resolve_host_workers(d.host_workers),
        skip_corrupt=d.skip_corrupt,
        dtype=input_dtype(train_precision(cfg.train.precision, device)),
        mean=tuple(d.mean),
        std=tuple(d.std),
    )


def recipe(d: DataConfig, crop_size: int | None = None, color: bool = True) -> Recipe:
    """The per-view augmentation recipe of ``data.*`` (``crop_size``: another crop side, e.g. evaluation's;
    ``color=False``: crop and flip only)."""
    return Recipe(
        crop_size=d.crop_size if crop_size is None else crop_size,
        area=(d.min_area, d.max_area),
        aspect=(d.min_aspect, d.max_aspect),
        flip_prob=d.flip_prob,
        color=color,
        color_jitter_prob=d.color_jitter_prob,
        strength=(d.brightness, d.contrast, d.saturation, d.hue),
        grayscale_prob=d.grayscale_prob,
        blur=d.blur,
        blur_prob=tuple(d.blur_prob),
        solarize=d.solarize,
        solarize_prob=tuple(d.solarize_prob),
    )


def pretrain_settings(cfg: Config, device: torch.device | str = "cpu") -> PretrainSettings:
    """CVRL pretraining: ``train.batch_size`` videos, ``data``'s clips, gap rule and recipe."""
    d = cfg.data
    return PretrainSettings(
        batch_size=cfg.train.batch_size,
        clip=ClipSpec(d.num_frames, d.stride),
        gap=GapRule(d.gap_distribution, d.gap_power),
        recipe=recipe(d),
        runtime=runtime(cfg, device),
    )


def eval_settings(cfg: Config, device: torch.device | str = "cpu") -> EvalSettings:
    """Evaluation: ``eval``'s clips, batch and test views; training clips cropped and flipped as ``data``'s
    recipe, to ``eval.crop_size``, without colour."""
    e = cfg.eval
    return EvalSettings(
        batch_size=e.batch_size,
        clip=ClipSpec(e.num_frames, e.stride),
        recipe=recipe(cfg.data, crop_size=e.crop_size, color=False),
        short_side=e.short_side,
        test_clips=e.test_clips,
        test_crops=e.test_crops,
        test_crop_size=e.test_crop_size,
        runtime=runtime(cfg, device),
    )


def build_pretrain_loader(
    cfg: Config,
    manifest: str | Sequence[VideoEntry],
    *,
    rank: int = 0,
    world_size: int = 1,
    device: torch.device | str = "cpu",
    seed: int = 0,
    normalize: bool = True,
) -> loaders.DaliLoader:
    """``dali_pipelines.loaders.build_pretrain_loader`` on ``pretrain_settings(cfg, device)``."""
    return loaders.build_pretrain_loader(
        pretrain_settings(cfg, device),
        manifest,
        rank=rank,
        world_size=world_size,
        device=device,
        seed=seed,
        normalize=normalize,
    )


def build_linear_loader(
    cfg: Config,
    manifest: str | Sequence[VideoEntry],
    *,
    rank: int = 0,
    world_size: int = 1,
    device: torch.device | str = "cpu",
    seed: int = 0,
    train: bool = True,
) -> loaders.DaliLoader:
    """``dali_pipelines.loaders.build_linear_loader`` on ``eval_settings(cfg, device)``."""
    return loaders.build_linear_loader(
        eval_settings(cfg, device),
        manifest,
        rank=rank,
        world_size=world_size,
        device=device,
        seed=seed,
        train=train,
    )


def build_test_loader(
    cfg: Config, manifest: str | Sequence[VideoEntry], *, device: torch.device | str = "cpu"
) -> loaders.DaliLoader:
    """``dali_pipelines.loaders.build_test_loader`` on ``eval_settings(cfg, device)``."""
    return loaders.build_test_loader(eval_settings(cfg, device), manifest, device=device)
