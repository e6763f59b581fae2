"""The config's keys, section by section: what a user reads to learn them (``--help-config`` prints the same).

Every key is declared with its default, its value domain and a one-line help (``key(...)``,
``fastcvrl.domains``); relations between keys are declared beside the section they belong to (``RELATIONS``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import ClassVar

from fastcvrl.domains import (
    Matches,
    Relation,
    above,
    at_least,
    auto_or,
    between,
    flag,
    key,
    numbers,
    one_of,
    probability,
    text,
)


def scaled_lr(lr: float, batch_size: int, base_batch_size: int) -> float:
    """The linear scaling rule (Goyal et al. 2017; CVRL Sec. 4.1): ``lr`` given at ``base_batch_size``,
    scaled to ``batch_size``. Pretraining: 0.32 at 1024; the linear probe: 32 at 1024 (8 at 256)."""
    return lr * batch_size / base_batch_size


def steps_range(spec: str) -> tuple[int, int] | None:
    """``train.profile_steps``: ``"A:B"`` -> (A, B), steps A..B-1, with 0 <= A < B; ``""`` -> None. Raises
    ``ValueError`` for anything else (the key's domain accepts exactly what this parses)."""
    if spec == "":
        return None
    m = re.fullmatch(r"(\d+):(\d+)", spec)
    if m is None or int(m[1]) >= int(m[2]):
        raise ValueError(f"expected A:B with 0 <= A < B, got {spec!r}")
    return int(m[1]), int(m[2])


def _steps_range(spec: str) -> bool:
    try:
        steps_range(spec)
    except ValueError:
        return False
    return True


# ------------------------------------------------------------------------------------------------- sections
@dataclass
class DataConfig:
    """Input data and the CVRL augmentations (Qian et al. 2021, Sec. 3 and Appendix A)."""

    train_manifest: str = key(
        "", text(), 'manifest.csv from `python -m fastcvrl.prepare`; "" = built-in synthetic'
    )
    val_manifest: str = key("", text(), "labelled split for the kNN monitor / linear probe")
    synthetic_dir: str = key(
        "~/.cache/fastcvrl/synthetic", text(nonempty=True), "where the built-in dataset is generated once"
    )
    synthetic_classes: int = key(8, between(1, 12), "motion classes of the built-in dataset")
    synthetic_videos_per_class: int = key(
        24, at_least(1), "training videos per class of the built-in dataset"
    )
    synthetic_scene: str = key(
        "dots",
        one_of("dots", "objects"),
        "dots (a random-dot kinematogram) | objects (see fastcvrl.datasets.synthetic)",
    )
    synthetic_codec: str = key(
        "vp9",
        one_of("vp9", "h264", "mjpeg"),
        "the built-in dataset's codec: vp9 (DALI's CPU decoder) | h264 (NVDEC: the GPU default)",
    )
    synthetic_size: int = key(
        112, at_least(16), "the built-in dataset's frame side, even (NVDEC: >= 128 for vp9)"
    )
    device: str = key(
        "auto", one_of("auto", "cpu", "gpu"), "where DALI decodes and augments (auto: the GPU if any)"
    )
    source: str = key(
        "video",
        one_of("video", "random"),
        "video (DALI over train_manifest) | random (random tensors, no files: tests, step benchmarks)",
    )
    random_videos: int = key(256, at_least(1), "data.source=random: clips per epoch")
    num_threads: int | str = key(
        "auto",
        auto_or(at_least(1)),
        "DALI threads per pipeline; auto: on the GPU the cores of this rank, at least 8 (each thread "
        "decodes one sample at a time on NVDEC), on the CPU 2",
    )
    prefetch: int = key(2, at_least(1), "DALI prefetch queue depth")
    host_workers: int = key(
        -1,
        at_least(-1),
        "processes preparing batches (clip plans, trimming): 0 = in the "
        "pipeline thread, -1 = auto (one per 4 cores of this process, at most 4)",
    )
    # temporal sampling: T frames at stride s, two clips per video, gap from a decreasing distribution
    num_frames: int = key(16, at_least(1), "T, frames per clip")
    stride: int = key(2, at_least(1), "frame step within a clip")
    gap_distribution: str = key(
        "linear",
        one_of("linear", "power", "uniform"),
        "linear (p=1) | power (1-(gap/M)^p) | uniform: the gap between the two clips",
    )
    gap_power: float = key(1.0, above(0), "p of the power gap distribution")
    # spatial augmentation, one draw per clip (identical for all frames of the clip)
    crop_size: int = key(224, at_least(1), "side of the square crop fed to the model")
    min_area: float = key(0.3, between(0, 1, lo_open=True), "random resized crop: smallest area fraction")
    max_area: float = key(1.0, between(0, 1, lo_open=True), "random resized crop: largest area fraction")
    min_aspect: float = key(0.5, above(0), "random resized crop: smallest aspect ratio (w/h)")
    max_aspect: float = key(2.0, above(0), "random resized crop: largest aspect ratio (w/h)")
    flip_prob: float = key(0.5, probability(), "horizontal flip probability")
    color_jitter_prob: float = key(0.8, probability(), "colour jitter probability")
    brightness: float = key(0.8, at_least(0), "colour jitter: brightness factor in [1-b, 1+b]")
    contrast: float = key(0.8, at_least(0), "colour jitter: contrast factor in [1-c, 1+c]")
    saturation: float = key(0.8, at_least(0), "colour jitter: saturation factor in [1-s, 1+s]")
    hue: float = key(0.2, between(0, 0.5), "colour jitter: hue shift in [-h, h] of a full turn")
    grayscale_prob: float = key(0.2, probability(), "grayscale probability")
    blur: bool = key(False, flag(), "Gaussian blur (sigma 0.1-2, zero padding) with blur_prob per view")
    blur_prob: list[float] = key([1.0, 0.1], numbers(2, probability()), "view 1, view 2 (the reference's)")
    solarize: bool = key(False, flag(), "solarize with solarize_prob per view")
    solarize_prob: list[float] = key(
        [0.0, 0.2], numbers(2, probability()), "view 1, view 2 (the reference's)"
    )
    mean: list[float] = key(
        [0.0, 0.0, 0.0], numbers(3, probability()), "per-channel mean, in [0,1] pixel units"
    )
    std: list[float] = key([1.0, 1.0, 1.0], numbers(3, above(0)), "per-channel std, in [0,1] pixel units")
    skip_corrupt: bool = key(
        True, flag(), "a video the decoder fails on is reported and skipped (false: raise)"
    )
    augment: str = key(
        "auto",
        one_of("auto", "dali", "torch"),
        "where crop/resize/colour run (auto: torch on cpu, dali on gpu)",
    )

    RELATIONS: ClassVar[tuple[Relation, ...]] = (
        Relation(
            ("data.synthetic_size",),
            "data.synthetic_size is even (4:2:0 video)",
            lambda c: c.data.synthetic_size % 2 == 0,
            {"data.synthetic_size": 113},
        ),
        Relation(
            ("data.min_area", "data.max_area"),
            "data.min_area <= data.max_area",
            lambda c: c.data.min_area <= c.data.max_area,
            {"data.min_area": 0.9, "data.max_area": 0.5},
        ),
        Relation(
            ("data.min_aspect", "data.max_aspect"),
            "data.min_aspect <= data.max_aspect",
            lambda c: c.data.min_aspect <= c.data.max_aspect,
            {"data.min_aspect": 2.0, "data.max_aspect": 0.5},
        ),
        Relation(
            ("data.random_videos", "train.batch_size"),
            "data.random_videos >= train.batch_size when data.source=random (one whole batch per epoch)",
            lambda c: c.data.source != "random" or c.data.random_videos >= c.train.batch_size,
            {"data.source": "random", "data.random_videos": 4, "train.batch_size": 8},
        ),
    )


@dataclass
class ModelConfig:
    arch: str = key("r3d50", one_of("r3d_tiny", "r3d50", "r3d101", "r3d152"), "backbone architecture")
    width: int = key(1, at_least(1), "channel width multiplier (the paper's 1, 2, 4)")
    proj_hidden: int = key(2048, at_least(1), "projection head hidden width")
    proj_layers: int = key(3, at_least(0), "(Linear, BN, ReLU) blocks before the final Linear")
    proj_dim: int = key(128, at_least(1), "embedding size the loss compares")
    sync_bn: bool = key(True, flag(), "SyncBatchNorm across ranks (as the reference)")
    activation_checkpointing: str = key(
        "none",
        one_of("none", "stage", "block"),
        "keep only each residual stage's/block's input for backward and recompute "
        "the rest there (less memory, about one more forward pass)",
    )


@dataclass
class LossConfig:
    temperature: float = key(0.1, above(0), "NT-Xent temperature")


@dataclass
class OptimConfig:
    name: str = key("lars", one_of("lars", "sgd"), "optimizer (sgd: LARS without the trust ratio)")
    lr: float = key(0.32, above(0), "learning rate at base_batch_size; scaled linearly with the global batch")
    base_batch_size: int = key(1024, at_least(1), "the batch optim.lr is given for")
    momentum: float = key(0.9, between(0, 1, hi_open=True), "momentum")
    weight_decay: float = key(1e-6, at_least(0), "weight decay (kernels only)")
    eta: float = key(0.001, above(0), "LARS trust coefficient")
    warmup_epochs: float = key(5.0, at_least(0), "linear warm-up epochs before the cosine decay")
    min_lr: float = key(0.0, at_least(0), "cosine floor (absolute)")

    RELATIONS: ClassVar[tuple[Relation, ...]] = (
        Relation(
            ("optim.warmup_epochs", "train.epochs"),
            "optim.warmup_epochs <= train.epochs",
            lambda c: c.optim.warmup_epochs <= c.train.epochs,
            {"optim.warmup_epochs": 6, "train.epochs": 5},
        ),
        Relation(
            ("optim.min_lr", "optim.lr", "train.batch_size", "optim.base_batch_size"),
            "optim.min_lr <= optim.lr x train.batch_size / optim.base_batch_size (the peak learning rate)",
            lambda c: c.optim.min_lr <= scaled_lr(c.optim.lr, c.train.batch_size, c.optim.base_batch_size),
            {"optim.min_lr": 1.0, "optim.lr": 0.5, "train.batch_size": 8, "optim.base_batch_size": 8},
        ),
    )


@dataclass
class TrainConfig:
    epochs: int = key(800, at_least(1), "training epochs")
    batch_size: int = key(1024, at_least(1), "global batch, over all ranks (videos; two clips each)")
    max_steps: int = key(0, at_least(0), "0 = run all epochs; >0 stops early (smoke tests, benchmarks)")
    precision: str = key("auto", one_of("auto", "bf16", "fp16", "fp32"), "auto: bf16 on GPU, fp32 on CPU")
    channels_last: bool = key(True, flag(), "channels_last_3d activations")
    cuda_graph: bool = key(True, flag(), "capture the whole step as a CUDA graph (GPU only; eager otherwise)")
    cuda_graph_warmup: int = key(
        3, at_least(0), "eager steps before capture (at least 11 under DDP, PyTorch's rule)"
    )
    log_every: int = key(20, at_least(1), "steps between metric reads (the only host syncs)")
    ckpt_every: int = key(500, at_least(1), "steps between checkpoints (and always at the end)")
    keep_ckpts: int = key(3, at_least(1), "checkpoints kept")
    knn_every: int = key(0, at_least(0), "epochs between kNN monitor runs; 0 = off")
    out_dir: str = key("runs/default", text(nonempty=True), "the run folder")
    seed: int = key(0, at_least(0), "random seed")
    profile_steps: str = key(
        "",
        Matches(_steps_range, '"" or A:B with 0 <= A < B', ("9:3", "5", "a:b", "-1:4")),
        '"A:B" starts/stops the CUDA profiler around steps A..B-1 (nsys)',
    )

    RELATIONS: ClassVar[tuple[Relation, ...]] = (
        Relation(
            ("train.precision", "train.cuda_graph"),
            "train.precision is not fp16 when train.cuda_graph=true (fp16's grad scaler syncs with the host)",
            lambda c: not (c.train.cuda_graph and c.train.precision == "fp16"),
            {"train.precision": "fp16", "train.cuda_graph": True},
        ),
    )


@dataclass
class EvalConfig:
    """CVRL linear evaluation: frozen backbone, one linear layer, 10x3 views at test time."""

    epochs: int = key(
        100, at_least(1), "linear probe (or fine-tuning) epochs (0 would report an untrained head)"
    )
    batch_size: int = key(256, at_least(1), "clips per batch")
    lr: float = key(
        32.0,
        above(0),
        "linear probe lr at eval.base_batch_size, scaled linearly (8 at batch 256), as the reference",
    )
    base_batch_size: int = key(1024, at_least(1), "the batch eval.lr is given for")
    warmup_epochs: float = key(5.0, at_least(0), "linear warm-up epochs, then cosine to 0")
    momentum: float = key(0.9, between(0, 1, hi_open=True), "SGD momentum")
    weight_decay: float = key(0.0, at_least(0), "weight decay")
    finetune_lr: float = key(0.32, above(0), "--finetune: learning rate (not scaled), the probe's schedule")
    num_frames: int = key(32, at_least(1), "frames per clip")
    stride: int = key(2, at_least(1), "frame step within a clip")
    crop_size: int = key(224, at_least(1), "side of the square training crop")
    short_side: int = key(256, at_least(1), "test frames are resized to this short side before cropping")
    test_crop_size: int = key(
        256, at_least(1), "test views: square crops at short side short_side (training clips: crop_size)"
    )
    test_clips: int = key(10, at_least(1), "temporal views per test video")
    test_crops: int = key(3, at_least(1), "spatial views per test clip")
    knn_k: int = key(200, at_least(1), "kNN: neighbours")
    knn_temperature: float = key(0.1, above(0), "kNN: temperature of the vote weights")
    knn_bank_size: int = key(
        50000, at_least(0), "kNN monitor bank: a fixed random subset of the training videos (0 = all)"
    )
    knn_query_size: int = key(
        10000, at_least(0), "kNN monitor queries: a fixed random subset of data.val_manifest (0 = all)"
    )
    finetune: bool = key(False, flag(), "train the whole network instead of the linear probe")
    feature_passes: int = key(
        10,
        at_least(1),
        "linear probe: cached augmented passes over the train set (epoch e uses pass e mod K)",
    )

    RELATIONS: ClassVar[tuple[Relation, ...]] = (
        Relation(
            ("eval.warmup_epochs", "eval.epochs"),
            "eval.warmup_epochs <= eval.epochs",
            lambda c: c.eval.warmup_epochs <= c.eval.epochs,
            {"eval.warmup_epochs": 6, "eval.epochs": 5},
        ),
    )


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
