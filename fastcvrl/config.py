"""Typed, nested configuration: YAML files mapped onto dataclasses, with dotted command-line overrides.

    cfg = load_config("configs/cvrl_r3d50_k400.yaml", ["--optim.lr=0.32", "--train.epochs=200"])
    save_config(cfg, "run/config.yaml")            # reloads to an equal object

Strict by design (unknown keys are typos, not options): an unknown key, a duplicate YAML key, a value of the
wrong type or a value outside the key's domain raises ``ConfigError`` in one line naming the dotted key.

Every key is declared with its default, its value domain and a one-line help (``key(...)``); relations
between keys (``min_area <= max_area``) are declared beside the section they belong to (``RELATIONS``).
``load_config`` checks them all (``validate``) before it returns, so every entry point refuses a bad value
before any work; ``config_help`` (``--help-config``) lists the same declarations. A new key is one line
(``tests/test_config_domains.py`` names any key declared without a domain and feeds each domain's
out-of-domain values to the loader):

    num_frames: int = key(16, at_least(1), "T, frames per clip")
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import os
import re
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Sequence

import yaml


class ConfigError(ValueError):
    """A configuration problem; the message names the key (and file) at fault."""


# ------------------------------------------------------------------------------------------- value domains
class Domain:
    """The values one key allows. ``allows`` decides, ``describe`` says it in words (errors, ``--help-config``),
    ``outside`` gives values of the key's type that it refuses (the generated tests feed them to the loader)."""

    def allows(self, value: Any) -> bool:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError

    def outside(self) -> list[Any]:
        return []


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


@dataclass(frozen=True)
class Range(Domain):
    """Numbers between ``lo`` and ``hi`` (either may be None: unbounded), each end open or closed."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False

    def allows(self, value: Any) -> bool:
        if not _num(value) or not math.isfinite(value):
            return False
        if self.lo is not None and (value <= self.lo if self.lo_open else value < self.lo):
            return False
        return self.hi is None or (value < self.hi if self.hi_open else value <= self.hi)

    def describe(self) -> str:
        if self.lo is not None and self.hi is not None:
            return f"in {'(' if self.lo_open else '['}{self.lo}, {self.hi}{')' if self.hi_open else ']'}"
        if self.lo is not None:
            return f"{'>' if self.lo_open else '>='} {self.lo}"
        return f"{'<' if self.hi_open else '<='} {self.hi}"

    def inside(self) -> float:
        """One value it allows."""
        return next(v for v in (self.lo, self.hi, 0, 1, (self.lo or 0) + 1, (self.hi or 0) - 1) if self.allows(v))

    def outside(self) -> list[Any]:
        step = 1 if all(isinstance(b, int) for b in (self.lo, self.hi) if b is not None) else 0.5
        out = []
        if self.lo is not None:
            out.append(self.lo if self.lo_open else self.lo - step)
        if self.hi is not None:
            out.append(self.hi if self.hi_open else self.hi + step)
        return out


def at_least(lo: float) -> Range:
    return Range(lo=lo)


def above(lo: float) -> Range:
    return Range(lo=lo, lo_open=True)


def between(lo: float, hi: float, *, lo_open: bool = False, hi_open: bool = False) -> Range:
    return Range(lo, hi, lo_open, hi_open)


def probability() -> Range:
    return Range(0, 1)


@dataclass(frozen=True)
class OneOf(Domain):
    """One of a fixed set of choices (``auto`` is one of them where the key has it)."""

    choices: tuple

    def allows(self, value: Any) -> bool:
        return value in self.choices

    def describe(self) -> str:
        names = [str(c) for c in self.choices]
        return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"

    def outside(self) -> list[Any]:
        return [f"not_{self.choices[0]}"]


def one_of(*choices: Any) -> OneOf:
    return OneOf(tuple(choices))


@dataclass(frozen=True)
class Text(Domain):
    """Any string (a path, a name), or any non-empty one."""

    nonempty: bool = False

    def allows(self, value: Any) -> bool:
        return isinstance(value, str) and (bool(value) or not self.nonempty)

    def describe(self) -> str:
        return "a non-empty string" if self.nonempty else "any string"

    def outside(self) -> list[Any]:
        return [""] if self.nonempty else []


def text(nonempty: bool = False) -> Text:
    return Text(nonempty)


@dataclass(frozen=True)
class Flag(Domain):
    """true or false (the type check already refuses anything else)."""

    def allows(self, value: Any) -> bool:
        return isinstance(value, bool)

    def describe(self) -> str:
        return "true or false"


def flag() -> Flag:
    return Flag()


@dataclass(frozen=True)
class Numbers(Domain):
    """A list of exactly ``length`` numbers, each in ``item``."""

    length: int
    item: Range

    def allows(self, value: Any) -> bool:
        return isinstance(value, (list, tuple)) and len(value) == self.length and all(map(self.item.allows, value))

    def describe(self) -> str:
        return f"{self.length} numbers, each {self.item.describe()}"

    def outside(self) -> list[Any]:
        return [[self.item.inside()] * (self.length - 1), *([bad] * self.length for bad in self.item.outside())]


def numbers(length: int, item: Range) -> Numbers:
    return Numbers(length, item)


@dataclass(frozen=True)
class Matches(Domain):
    """Strings a predicate accepts (a small format such as ``A:B``); ``examples_outside`` feeds the tests."""

    predicate: Callable[[str], bool]
    description: str
    examples_outside: tuple = ()

    def allows(self, value: Any) -> bool:
        return isinstance(value, str) and self.predicate(value)

    def describe(self) -> str:
        return self.description

    def outside(self) -> list[Any]:
        return list(self.examples_outside)


@dataclass(frozen=True)
class Relation:
    """A rule between keys (``keys``, dotted), checked on the whole config after every key's own domain.

    ``holds(cfg)`` decides; ``rule`` says it in words; ``breach`` is a set of dotted values that break it,
    for the generated tests (every relation must come with one)."""

    keys: tuple[str, ...]
    rule: str
    holds: Callable[[Any], bool]
    breach: dict[str, Any]


def key(default: Any, domain: Domain, help: str = "") -> Any:
    """A config field with its allowed values and a one-line help (both shown by ``--help-config``)."""
    meta = {"domain": domain, "help": help}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


def _steps_range(spec: str) -> bool:
    m = re.fullmatch(r"(\d+):(\d+)", spec)
    return spec == "" or (m is not None and int(m[1]) < int(m[2]))


# ------------------------------------------------------------------------------------------------- sections
@dataclass
class DataConfig:
    """Input data and the CVRL augmentations (Qian et al. 2021, Sec. 3 and Appendix A)."""

    train_manifest: str = key("", text(), 'manifest.csv from `python -m fastcvrl.prepare`; "" = built-in synthetic')
    val_manifest: str = key("", text(), "labelled split for the kNN monitor / linear probe")
    synthetic_dir: str = key("~/.cache/fastcvrl/synthetic", text(nonempty=True),
                             "where the built-in dataset is generated once")
    synthetic_classes: int = key(8, between(1, 12), "motion classes of the built-in dataset")
    synthetic_videos_per_class: int = key(24, at_least(1), "training videos per class of the built-in dataset")
    synthetic_scene: str = key("dots", one_of("dots", "objects"),
                               "dots (a random-dot kinematogram) | objects (see fastcvrl.datasets.synthetic)")
    synthetic_codec: str = key("vp9", one_of("vp9", "h264", "mjpeg"),
                               "the built-in dataset's codec: vp9 (DALI's CPU decoder) | h264 (NVDEC: the GPU default)")
    synthetic_size: int = key(112, at_least(16), "the built-in dataset's frame side, even (NVDEC: >= 128 for vp9)")
    device: str = key("auto", one_of("auto", "cpu", "gpu"), "where DALI decodes and augments (auto: the GPU if any)")
    source: str = key("video", one_of("video", "random"),
                      "video (DALI over train_manifest) | random (random tensors, no files: tests, step benchmarks)")
    random_videos: int = key(256, at_least(1), "data.source=random: clips per epoch")
    num_threads: int = key(2, at_least(1), "DALI CPU threads per pipeline")
    prefetch: int = key(2, at_least(1), "DALI prefetch queue depth")
    host_workers: int = key(-1, at_least(-1), "processes preparing batches (clip plans, trimming): 0 = in the "
                            "pipeline thread, -1 = auto (one per 4 cores of this process, at most 4)")
    # temporal sampling: T frames at stride s, two clips per video, gap from a decreasing distribution
    num_frames: int = key(16, at_least(1), "T, frames per clip")
    stride: int = key(2, at_least(1), "frame step within a clip")
    gap_distribution: str = key("linear", one_of("linear", "power", "uniform"),
                                "linear (p=1) | power (1-(gap/M)^p) | uniform: the gap between the two clips")
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
    solarize_prob: list[float] = key([0.0, 0.2], numbers(2, probability()), "view 1, view 2 (the reference's)")
    mean: list[float] = key([0.0, 0.0, 0.0], numbers(3, probability()), "per-channel mean, in [0,1] pixel units")
    std: list[float] = key([1.0, 1.0, 1.0], numbers(3, above(0)), "per-channel std, in [0,1] pixel units")
    skip_corrupt: bool = key(True, flag(), "a video the decoder fails on is reported and skipped (false: raise)")
    augment: str = key("auto", one_of("auto", "dali", "torch"),
                       "where crop/resize/colour run (auto: torch on cpu, dali on gpu)")

    RELATIONS: ClassVar[tuple[Relation, ...]] = (
        Relation(("data.synthetic_size",), "data.synthetic_size is even (4:2:0 video)",
                 lambda c: c.data.synthetic_size % 2 == 0, {"data.synthetic_size": 113}),
        Relation(("data.min_area", "data.max_area"), "data.min_area <= data.max_area",
                 lambda c: c.data.min_area <= c.data.max_area, {"data.min_area": 0.9, "data.max_area": 0.5}),
        Relation(("data.min_aspect", "data.max_aspect"), "data.min_aspect <= data.max_aspect",
                 lambda c: c.data.min_aspect <= c.data.max_aspect, {"data.min_aspect": 2.0, "data.max_aspect": 0.5}),
        Relation(("data.random_videos", "train.batch_size"),
                 "data.random_videos >= train.batch_size when data.source=random (one whole batch per epoch)",
                 lambda c: c.data.source != "random" or c.data.random_videos >= c.train.batch_size,
                 {"data.source": "random", "data.random_videos": 4, "train.batch_size": 8}),
    )


@dataclass
class ModelConfig:
    arch: str = key("r3d50", one_of("r3d_tiny", "r3d50", "r3d101", "r3d152"), "backbone architecture")
    width: int = key(1, at_least(1), "channel width multiplier (the paper's 1, 2, 4)")
    proj_hidden: int = key(2048, at_least(1), "projection head hidden width")
    proj_layers: int = key(3, at_least(0), "(Linear, BN, ReLU) blocks before the final Linear")
    proj_dim: int = key(128, at_least(1), "embedding size the loss compares")
    sync_bn: bool = key(True, flag(), "SyncBatchNorm across ranks (as the reference)")
    activation_checkpointing: str = key("none", one_of("none", "stage", "block"),
                                        "keep only each residual stage's/block's input for backward and recompute "
                                        "the rest there (less memory, about one more forward pass)")


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
        Relation(("optim.warmup_epochs", "train.epochs"), "optim.warmup_epochs <= train.epochs",
                 lambda c: c.optim.warmup_epochs <= c.train.epochs, {"optim.warmup_epochs": 6, "train.epochs": 5}),
        Relation(("optim.min_lr", "optim.lr", "train.batch_size", "optim.base_batch_size"),
                 "optim.min_lr <= optim.lr x train.batch_size / optim.base_batch_size (the peak learning rate)",
                 lambda c: c.optim.min_lr <= c.optim.lr * c.train.batch_size / c.optim.base_batch_size,
                 {"optim.min_lr": 1.0, "optim.lr": 0.5, "train.batch_size": 8, "optim.base_batch_size": 8}),
    )


@dataclass
class TrainConfig:
    epochs: int = key(800, at_least(1), "training epochs")
    batch_size: int = key(1024, at_least(1), "global batch, over all ranks (videos; two clips each)")
    max_steps: int = key(0, at_least(0), "0 = run all epochs; >0 stops early (smoke tests, benchmarks)")
    precision: str = key("auto", one_of("auto", "bf16", "fp16", "fp32"), "auto: bf16 on GPU, fp32 on CPU")
    channels_last: bool = key(True, flag(), "channels_last_3d activations")
    cuda_graph: bool = key(True, flag(), "capture the whole step as a CUDA graph (GPU only; eager otherwise)")
    cuda_graph_warmup: int = key(3, at_least(0), "eager steps before capture (at least 11 under DDP, PyTorch's rule)")
    log_every: int = key(20, at_least(1), "steps between metric reads (the only host syncs)")
    ckpt_every: int = key(500, at_least(1), "steps between checkpoints (and always at the end)")
    keep_ckpts: int = key(3, at_least(1), "checkpoints kept")
    knn_every: int = key(0, at_least(0), "epochs between kNN monitor runs; 0 = off")
    out_dir: str = key("runs/default", text(nonempty=True), "the run folder")
    seed: int = key(0, at_least(0), "random seed")
    profile_steps: str = key("", Matches(_steps_range, '"" or A:B with 0 <= A < B', ("9:3", "5", "a:b", "-1:4")),
                             '"A:B" starts/stops the CUDA profiler around steps A..B-1 (nsys)')

    RELATIONS: ClassVar[tuple[Relation, ...]] = (
        Relation(("train.precision", "train.cuda_graph"),
                 "train.precision is not fp16 when train.cuda_graph=true (fp16's grad scaler syncs with the host)",
                 lambda c: not (c.train.cuda_graph and c.train.precision == "fp16"),
                 {"train.precision": "fp16", "train.cuda_graph": True}),
    )


@dataclass
class EvalConfig:
    """CVRL linear evaluation: frozen backbone, one linear layer, 10x3 views at test time."""

    epochs: int = key(100, at_least(1), "linear probe (or fine-tuning) epochs (0 would report an untrained head)")
    batch_size: int = key(256, at_least(1), "clips per batch")
    lr: float = key(32.0, above(0), "linear probe lr at eval.base_batch_size, scaled linearly (8 at batch 256), "
                    "as the reference")
    base_batch_size: int = key(1024, at_least(1), "the batch eval.lr is given for")
    warmup_epochs: float = key(5.0, at_least(0), "linear warm-up epochs, then cosine to 0")
    momentum: float = key(0.9, between(0, 1, hi_open=True), "SGD momentum")
    weight_decay: float = key(0.0, at_least(0), "weight decay")
    finetune_lr: float = key(0.32, above(0), "--finetune: learning rate (not scaled), the probe's schedule")
    num_frames: int = key(32, at_least(1), "frames per clip")
    stride: int = key(2, at_least(1), "frame step within a clip")
    crop_size: int = key(224, at_least(1), "side of the square training crop")
    short_side: int = key(256, at_least(1), "test frames are resized to this short side before cropping")
    test_crop_size: int = key(256, at_least(1), "test views: square crops at short side short_side "
                                                "(training clips: crop_size)")
    test_clips: int = key(10, at_least(1), "temporal views per test video")
    test_crops: int = key(3, at_least(1), "spatial views per test clip")
    knn_k: int = key(200, at_least(1), "kNN: neighbours")
    knn_temperature: float = key(0.1, above(0), "kNN: temperature of the vote weights")
    knn_bank_size: int = key(50000, at_least(0), "kNN monitor bank: a fixed random subset of the training videos "
                                                 "(0 = all)")
    knn_query_size: int = key(10000, at_least(0), "kNN monitor queries: a fixed random subset of data.val_manifest "
                                                  "(0 = all)")
    finetune: bool = key(False, flag(), "train the whole network instead of the linear probe")
    feature_passes: int = key(10, at_least(1),
                              "linear probe: cached augmented passes over the train set (epoch e uses pass e mod K)")

    RELATIONS: ClassVar[tuple[Relation, ...]] = (
        Relation(("eval.warmup_epochs", "eval.epochs"), "eval.warmup_epochs <= eval.epochs",
                 lambda c: c.eval.warmup_epochs <= c.eval.epochs, {"eval.warmup_epochs": 6, "eval.epochs": 5}),
    )


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


# -------------------------------------------------------------------------------------------- validation
def config_keys(cfg: Config | None = None) -> list[tuple[str, dataclasses.Field, Any]]:
    """``(dotted key, field, value)`` of every key, in declaration order (values of ``cfg`` or the defaults)."""
    cfg = Config() if cfg is None else cfg
    out = []
    for section in dataclasses.fields(cfg):
        obj = getattr(cfg, section.name)
        for f in dataclasses.fields(obj):
            out.append((f"{section.name}.{f.name}", f, getattr(obj, f.name)))
    return out


def relations() -> list[Relation]:
    """Every declared relation between keys, section by section."""
    return [r for section in _hints(Config).values() for r in getattr(section, "RELATIONS", ())]


def get_value(cfg: Config, dotted: str) -> Any:
    section, name = dotted.split(".", 1)
    return getattr(getattr(cfg, section), name)


def validate(cfg: Config, sections: Sequence[str] | None = None) -> Config:
    """Check every key against its domain, then every relation; raise ``ConfigError`` (one line naming the key,
    its value and what is allowed) at the first violation. Returns ``cfg`` unchanged. ``sections``: only the keys
    of these sections (and the relations whose first key is one of them), e.g. ``("eval",)``."""
    def wanted(dotted: str) -> bool:
        return sections is None or dotted.split(".", 1)[0] in sections

    for dotted, f, value in config_keys(cfg):
        if not wanted(dotted):
            continue
        domain = f.metadata.get("domain")
        if domain is not None and not domain.allows(value):  # (a key without one fails tests/test_config_domains.py)
            raise ConfigError(f"{dotted}: expected {domain.describe()}, got {value!r}")
    for r in relations():
        if wanted(r.keys[0]) and not r.holds(cfg):
            got = ", ".join(f"{k}={get_value(cfg, k)!r}" for k in r.keys)
            raise ConfigError(f"{r.keys[0]}: expected {r.rule}, got {got}")
    return cfg


# ------------------------------------------------------------------------------------------- help, printing
def config_help() -> str:
    """Every key with its type, default, allowed values and help, then the relations (``--help-config``)."""
    rows = []
    for dotted, f, value in config_keys():
        domain = f.metadata.get("domain")
        rows.append((dotted, _type_name(f.type), _yaml_scalar(value),
                     domain.describe() if domain else "(undeclared)", f.metadata.get("help", "")))
    w = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["Config keys: set in a YAML file (section: key: value) or on the command line (--section.key=VALUE).",
             f"{'key':{w[0]}}  {'type':{w[1]}}  {'default':{w[2]}}  {'allowed':{w[3]}}  meaning"]
    lines += [f"{a:{w[0]}}  {b:{w[1]}}  {c:{w[2]}}  {d:{w[3]}}  {e}".rstrip() for a, b, c, d, e in rows]
    lines += ["", "Relations between keys:"] + [f"  {r.rule}" for r in relations()]
    return "\n".join(lines)


def _type_name(tp: Any) -> str:
    return tp if isinstance(tp, str) else getattr(tp, "__name__", str(tp))


def _yaml_scalar(value: Any) -> str:
    """``value`` as it would be written in YAML, on one line (``''`` for the empty string)."""
    out = yaml.safe_dump(value, default_flow_style=True, width=1000).strip()
    return out[: -len("...")].strip() if out.endswith("\n...") else out


def config_yaml(cfg: Config) -> str:
    """The config as the YAML ``save_config`` writes (``--print-config``)."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


class _HelpConfig(argparse.Action):
    def __call__(self, parser: argparse.ArgumentParser, namespace: Any, values: Any, option_string: Any = None):
        print(config_help())
        parser.exit()


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """``--help-config`` (list every key, its default and allowed values, then exit) and ``--print-config``
    (the caller prints the resolved config of the command line, ``config_yaml``, and exits without running)."""
    parser.add_argument("--help-config", action=_HelpConfig, nargs=0, default=argparse.SUPPRESS,
                        help="list every config key with its default and allowed values, and exit")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved config of this command line (YAML) and exit without running")


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
    """Field name -> resolved type of a config dataclass (class-level declarations such as RELATIONS left out)."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


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
        if value is None or (":" in raw and isinstance(value, (int, float))):
            value = raw  # YAML 1.1 reads 50:60 as a base-60 number; on a command line it is text
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
    """Defaults <- YAML file (if any) <- dotted command-line overrides, then every value checked against its
    domain and every relation (``validate``). Errors name the key, and the file when the value came from it."""
    cfg, from_file = Config(), {}
    if path:
        try:
            from_file = load_yaml(path)
            cfg = merge(cfg, from_file)
        except ConfigError as e:
            msg = str(e)
            raise ConfigError(msg if msg.startswith(os.fspath(path)) else f"{path}: {msg}") from None
    from_cli = {}
    if overrides:
        try:
            from_cli = parse_overrides(overrides)
            cfg = merge(cfg, from_cli)
        except ConfigError as e:
            raise ConfigError(f"command line: {e}") from None
    try:
        return validate(cfg)
    except ConfigError as e:
        dotted = str(e).split(":", 1)[0]
        if path and _given(from_file, dotted) and not _given(from_cli, dotted):
            raise ConfigError(f"{path}: {e}") from None
        raise


def _given(data: dict, dotted: str) -> bool:
    section, _, name = dotted.partition(".")
    return isinstance(data.get(section), dict) and name in data[section]


def save_config(cfg: Config, path: str | os.PathLike) -> None:
    """Write the resolved config as YAML (atomically); ``load_config(path)`` gives an equal object."""
    from fastcvrl.atomic import atomic_write

    atomic_write(path, config_yaml(cfg))
