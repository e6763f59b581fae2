"""What the data path takes: its own typed settings, so it can be read and changed apart from the trainer.

    settings = PretrainSettings(batch_size=512, clip=ClipSpec(16, 2), gap=GapRule(), recipe=Recipe(),
                                runtime=Runtime(device="gpu", augment="dali"))
    loader = build_pretrain_loader(settings, "data/train/manifest.csv", rank=r, world_size=w, device=dev)

``fastcvrl`` builds these from its config in one place (``fastcvrl.data``); nothing in ``dali_pipelines``
reads a trainer config. Every ``auto`` is resolved before a settings object exists: ``Runtime.device`` is
the decoder that runs (``"cpu"`` or ``"gpu"``), ``augment`` the backend that augments, ``host_workers`` a
process count, ``dtype`` the dtype the loaders hand over. ``resolve_augment`` and ``resolve_host_workers``
are the data path's own rules for those two.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from . import temporal
from .cores import cores_per_rank
from .recipe import Recipe

DEVICES = ("cpu", "gpu")
AUGMENT = ("dali", "torch")


@dataclass(frozen=True)
class ClipSpec:
    """A clip: ``num_frames`` frames ``stride`` apart (CVRL: 16 x 2 pretraining, 32 x 2 evaluation)."""

    num_frames: int = 16
    stride: int = 2


@dataclass(frozen=True)
class GapRule:
    """CVRL's temporal augmentation: the density of the gap between a video's two clips
    (``temporal.sample_starts``; the reference's ``linear``)."""

    distribution: str = "linear"
    power: float = 1.0

    def __post_init__(self) -> None:
        temporal.check_rule(self.distribution, self.power)


@dataclass(frozen=True)
class Runtime:
    """How the pipelines run: resolved values only (no ``auto``)."""

    device: str = "cpu"  # the decoder: "cpu" (DALI's CPU decoder) or "gpu" (NVDEC, 'mixed')
    augment: str = "torch"  # "dali": the whole chain in the graph; "torch": DALI decodes, torch augments
    num_threads: int = 2  # DALI threads per pipeline
    prefetch: int = 2  # DALI prefetch queue depth
    host_workers: int = 0  # worker processes of the host source (0: the pipeline's own thread)
    skip_corrupt: bool = True  # a file the decoder fails on is named and skipped (False: an error naming it)
    dtype: torch.dtype = torch.float32  # what normalised views are handed over in
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)  # per channel, in [0, 1] pixel units
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)

    def __post_init__(self) -> None:
        if self.device not in DEVICES:
            raise ValueError(f"data device must be one of {DEVICES}, got {self.device!r}")
        if self.augment not in AUGMENT:
            raise ValueError(f"augmentation backend must be one of {AUGMENT}, got {self.augment!r}")
        if self.host_workers < 0:
            raise ValueError(f"host_workers must be >= 0, got {self.host_workers}")


@dataclass(frozen=True)
class PretrainSettings:
    """CVRL pretraining: two views per video, ``batch_size`` videos over all ranks."""

    batch_size: int
    clip: ClipSpec = field(default_factory=ClipSpec)
    gap: GapRule = field(default_factory=GapRule)
    recipe: Recipe = field(default_factory=Recipe)
    runtime: Runtime = field(default_factory=Runtime)


@dataclass(frozen=True)
class EvalSettings:
    """Evaluation: linear-probe training clips (``recipe``: crop and flip only, to ``recipe.crop_size``) and
    the test views (``test_clips`` clips x ``test_crops`` crops of ``test_crop_size`` after a resize to
    ``short_side``). ``batch_size``: videos over all ranks (test loaders: views per batch)."""

    batch_size: int
    clip: ClipSpec = field(default_factory=lambda: ClipSpec(32, 2))
    recipe: Recipe = field(default_factory=lambda: Recipe(color=False))
    short_side: int = 256
    test_clips: int = 10
    test_crops: int = 3
    test_crop_size: int = 256
    runtime: Runtime = field(default_factory=Runtime)


def resolve_augment(augment: str, device: str) -> str:
    """``auto`` | ``dali`` | ``torch`` -> the backend that augments. ``auto``: torch on the CPU, where DALI
    2.4's CPU resize and colour kernels are several times slower than torch's (``torch_augment``), DALI on the
    GPU, where the whole chain stays in the graph."""
    if augment == "auto":
        return "torch" if device == "cpu" else "dali"
    if augment not in AUGMENT:
        raise ValueError(f"data.augment must be auto, dali or torch, got {augment!r}")
    return augment


def resolve_host_workers(host_workers: int) -> int:
    """``-1`` (auto) | ``n >= 0`` -> worker processes for the host source (0: in the pipeline's own thread).

    Auto: one worker per 4 cores this rank may use (``cores.cores_per_rank``), at most 4, none below 4 cores:
    one worker prepares several thousand clips a second (docs/performance.md, host work), more than a GPU
    consumes, and the rest of the cores decode and train."""
    if host_workers >= 0:
        return host_workers
    if host_workers != -1:
        raise ValueError(f"data.host_workers must be -1 (auto) or >= 0, got {host_workers}")
    return min(4, cores_per_rank() // 4)
