"""Typed, nested configuration: YAML files mapped onto dataclasses, with dotted command-line overrides.

    cfg = load_config("configs/cvrl_r3d50_k400.yaml", ["--optim.lr=0.32", "--train.epochs=200"])
    save_config(cfg, "run/config.yaml")            # reloads to an equal object

Strict by design (unknown keys are typos, not options): an unknown key, a duplicate YAML key or a value of
the wrong type raises ``ConfigError`` naming the dotted key.
"""
from __future__ import annotations

import dataclasses
import os
import re
import typing
from dataclasses import dataclass, field
from typing import Any, Sequence

import yaml


class ConfigError(ValueError):
    """A configuration problem; the message names the key (and file) at fault."""


@dataclass
class DataConfig:
    """Input data and the CVRL augmentations (Qian et al. 2021, Sec. 3 and Appendix A)."""

    train_manifest: str = ""  # manifest.csv from `python -m fastcvrl.prepare`; "" = built-in synthetic
    val_manifest: str = ""  # labelled split for the kNN monitor / linear probe
    synthetic_dir: str = "~/.cache/fastcvrl/synthetic"  # where the built-in dataset is generated once
    synthetic_classes: int = 8
    synthetic_videos_per_class: int = 24
    synthetic_scene: str = "dots"  # dots (a random-dot kinematogram) | objects (see fastcvrl.datasets.synthetic)
    device: str = "auto"  # auto | cpu | gpu: where DALI decodes and augments
    source: str = "video"  # video (DALI over train_manifest) | random (random tensors, no files: tests, step benchmarks)
    random_videos: int = 256  # data.source=random: clips per epoch
    num_threads: int = 2  # DALI CPU threads per pipeline
    prefetch: int = 2  # DALI prefetch queue depth
    # temporal sampling: T frames at stride s, two clips per video, gap from a decreasing distribution
    num_frames: int = 16
    stride: int = 2
    gap_distribution: str = "linear"  # linear (p=1) | power (1-(gap/M)^p) | uniform
    gap_power: float = 1.0
    # spatial augmentation, one draw per clip (identical for all frames of the clip)
    crop_size: int = 224
    min_area: float = 0.3
    max_area: float = 1.0
    min_aspect: float = 0.5
    max_aspect: float = 2.0
    flip_prob: float = 0.5
    color_jitter_prob: float = 0.8
    brightness: float = 0.8
    contrast: float = 0.8
    saturation: float = 0.8
    hue: float = 0.2
    grayscale_prob: float = 0.2
    blur: bool = False  # Gaussian blur (sigma 0.1-2, zero padding) with blur_prob per view
    blur_prob: list[float] = field(default_factory=lambda: [1.0, 0.1])  # view 1, view 2 (the reference's)
    solarize: bool = False  # solarize with solarize_prob per view
    solarize_prob: list[float] = field(default_factory=lambda: [0.0, 0.2])  # view 1, view 2 (the reference's)
    mean: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])  # in [0,1] pixel units
    std: list[float] = field(default_factory=lambda: [1.0, 1.0, 1.0])
    skip_corrupt: bool = True  # a video the decoder fails on is reported and skipped (False: raise naming it)
    augment: str = "auto"  # auto (torch on cpu, dali on gpu) | dali | torch: where crop/resize/colour run


@dataclass
class ModelConfig:
    arch: str = "r3d50"  # r3d_tiny | r3d50 | r3d101 | r3d152
    width: int = 1  # width multiplier (1, 2, 4)
    proj_hidden: int = 2048
    proj_layers: int = 3  # (Linear, BN, ReLU) blocks before the final Linear
    proj_dim: int = 128
    sync_bn: bool = True  # SyncBatchNorm across ranks (as the reference)


@dataclass
class LossConfig:
    temperature: float = 0.1


@dataclass
class OptimConfig:
    name: str = "lars"  # lars | sgd
    lr: float = 0.32  # learning rate at base_batch_size; scaled linearly with the global batch
    base_batch_size: int = 1024
    momentum: float = 0.9
    weight_decay: float = 1e-6
    eta: float = 0.001  # LARS trust coefficient
    warmup_epochs: float = 5.0
    min_lr: float = 0.0  # cosine floor


@dataclass
class TrainConfig:
    epochs: int = 800
    batch_size: int = 1024  # global, over all ranks
    max_steps: int = 0  # 0 = run all epochs; >0 stops early (smoke tests, benchmarks)
    precision: str = "auto"  # auto (bf16 on GPU, fp32 on CPU) | bf16 | fp16 | fp32
    channels_last: bool = True
    cuda_graph: bool = True  # capture the whole step as a CUDA graph (GPU only; eager otherwise)
    cuda_graph_warmup: int = 3  # eager steps before capture (at least 11 under DDP, PyTorch's rule)
    log_every: int = 20  # steps between metric reads (the only host syncs)
    ckpt_every: int = 500  # steps between checkpoints (and always at the end)
    keep_ckpts: int = 3
    knn_every: int = 0  # epochs between kNN monitor runs; 0 = off
    out_dir: str = "runs/default"
    seed: int = 0
    profile_steps: str = ""  # "A:B" starts/stops the CUDA profiler around steps A..B-1 (nsys)


@dataclass
class EvalConfig:
    """CVRL linear evaluation: frozen backbone, one linear layer, 10x3 views at test time."""

    epochs: int = 100
    batch_size: int = 256
    lr: float = 32.0  # > 0; linear probe lr at base_batch_size, scaled linearly (8 at batch 256), as the reference
    base_batch_size: int = 1024  # >= 1
    warmup_epochs: float = 5.0  # 0 <= warmup_epochs <= epochs; linear warm-up, then cosine to 0
    momentum: float = 0.9
    weight_decay: float = 0.0
    finetune_lr: float = 0.32  # > 0; --finetune: learning rate (not scaled), the probe's schedule
    num_frames: int = 32
    stride: int = 2
    crop_size: int = 224
    short_side: int = 256
    test_crop_size: int = 256  # >= 1; test views: square crops at short side short_side (training clips: crop_size)
    test_clips: int = 10
    test_crops: int = 3
    knn_k: int = 200
    knn_temperature: float = 0.1
    knn_bank_size: int = 50000  # >= 0; kNN monitor bank: a fixed random subset of the training videos (0 = all)
    knn_query_size: int = 10000  # >= 0; kNN monitor queries: a fixed random subset of data.val_manifest (0 = all)
    finetune: bool = False
    feature_passes: int = 10  # linear probe: cached augmented passes over the train set (epoch e uses pass e mod K)


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


# ---------------------------------------------------------------------------------------------- YAML I/O
class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate keys (PyYAML silently keeps the last one)."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    loader.flatten_mapping(node)
    out: dict = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in out:
            line = key_node.start_mark.line + 1
            raise ConfigError(f"duplicate key {key!r} (line {line})")
        out[key] = loader.construct_object(value_node, deep=deep)
    return out


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
# PyYAML follows YAML 1.1, where `1e-6` (no dot) is a string; accept YAML 1.2 floats so `weight_decay: 1e-6` works.
_StrictLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; ints are accepted where floats are expected."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {type(value).__name__} {value!r}")
        return _from_dict(tp, value, key + ".")
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {type(value).__name__} {value!r}")
        return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected a bool (true/false), got {type(value).__name__} {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an int, got {type(value).__name__} {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a float, got {type(value).__name__} {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {type(value).__name__} {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported type {tp!r}")  # pragma: no cover - schema error


def _from_dict(cls: type, data: dict, prefix: str = "") -> Any:
    hints = _hints(cls)
    unknown = [k for k in data if k not in hints]
    if unknown:
        known = ", ".join(sorted(hints))
        raise ConfigError(f"unknown key {prefix}{unknown[0]!s} (known keys here: {known})")
    kwargs = {k: _coerce(v, hints[k], prefix + str(k)) for k, v in data.items()}
    return cls(**kwargs)


def merge(base: Any, data: dict, prefix: str = "") -> Any:
    """Return a copy of dataclass ``base`` with the (possibly partial, nested) mapping ``data`` applied."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {data!r}")
    hints = _hints(type(base))
    changes = {}
    for k, v in data.items():
        if k not in hints:
            known = ", ".join(sorted(hints))
            raise ConfigError(f"unknown key {prefix}{k!s} (known keys here: {known})")
        cur = getattr(base, k)
        if dataclasses.is_dataclass(cur):
            changes[k] = merge(cur, v, f"{prefix}{k}.")
        else:
            changes[k] = _coerce(v, hints[k], prefix + k)
    return dataclasses.replace(base, **changes)


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def parse_overrides(args: Sequence[str]) -> dict:
    """``["--optim.lr=0.32", "--train.cuda_graph", "false"]`` -> nested dict, values parsed as YAML scalars."""
    out: dict = {}
    args = list(args)
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--"):
            raise ConfigError(f"expected an override like --section.key=value, got {arg!r}")
        body = arg[2:]
        if "=" in body:
            key, raw = body.split("=", 1)
        elif i + 1 < len(args) and not args[i + 1].startswith("--"):
            key, raw = body, args[i + 1]
            i += 1
        else:
            raise ConfigError(f"override --{body} has no value (write --{body}=VALUE)")
        try:
            value = yaml.load(raw, Loader=_StrictLoader) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        if value is None:
            value = raw
        node = out
        parts = key.replace("-", "_").split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override --{key} conflicts with an earlier override")
        node[parts[-1]] = value
        i += 1
    return out


def load_yaml(path: str | os.PathLike) -> dict:
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ConfigError(f"config file not found: {path}")
    with open(path, encoding="utf-8") as f:
        try:
            data = yaml.load(f, Loader=_StrictLoader)
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    return data


def load_config(path: str | os.PathLike | None = None, overrides: Sequence[str] = ()) -> Config:
    """Defaults <- YAML file (if any) <- dotted command-line overrides. Errors name the key and file."""
    cfg = Config()
    if path:
        try:
            cfg = merge(cfg, load_yaml(path))
        except ConfigError as e:
            msg = str(e)
            raise ConfigError(msg if msg.startswith(os.fspath(path)) else f"{path}: {msg}") from None
    if overrides:
        try:
            cfg = merge(cfg, parse_overrides(overrides))
        except ConfigError as e:
            raise ConfigError(f"command line: {e}") from None
    return cfg


def save_config(cfg: Config, path: str | os.PathLike) -> None:
    """Write the resolved config as YAML (atomically); ``load_config(path)`` gives an equal object."""
    from fastcvrl.atomic import atomic_write

    atomic_write(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))
