"""Typed, nested configuration: YAML files mapped onto dataclasses, with dotted command-line overrides.

    cfg = load_config("cvrl_r3d50_k400", ["--train.epochs=200"])  # a shipped name, or a path
    save_config(cfg, "run/config.yaml")            # reloads to an equal object

Strict by design (unknown keys are typos, not options): an unknown key, a duplicate YAML key, a value of the
wrong type or a value outside the key's domain raises ``ConfigError`` in one line naming the dotted key.

The keys themselves, with their defaults, value domains and help, are declared in ``fastcvrl.schema`` (the
file to read to learn them); the language they are declared in (``key(...)``, ``Range``, ``OneOf``, relations
between keys) is ``fastcvrl.domains``. This module loads, checks and prints: ``load_config`` checks every key
and relation (``validate``) before it returns, so every entry point refuses a bad value before any work;
``config_help`` (``--help-config``) lists the same declarations.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from fastcvrl.domains import SHOWN_CHARS, ConfigError, Relation, shown
from fastcvrl.schema import Config, DataConfig, EvalConfig, LossConfig, ModelConfig, OptimConfig, TrainConfig

__all__ = [  # the config API: the keys (fastcvrl.schema) and the loading machinery below
    "Config",
    "ConfigError",
    "DataConfig",
    "EvalConfig",
    "LossConfig",
    "ModelConfig",
    "OptimConfig",
    "TrainConfig",
    "Relation",
    "add_config_flags",
    "config_help",
    "config_keys",
    "config_yaml",
    "get_value",
    "load_config",
    "load_yaml",
    "read_yaml_text",
    "merge",
    "parse_overrides",
    "relations",
    "save_config",
    "shipped_configs",
    "resolve_config",
    "builtin_default",
    "to_dict",
    "validate",
]


# -------------------------------------------------------------------------------------------- validation
def config_keys(cfg: Config | None = None) -> list[tuple[str, dataclasses.Field, Any]]:
    """``(dotted key, field, value)`` of every key, in declaration order (values of ``cfg`` or the
    defaults)."""
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
    """Check every key against its domain, then every relation; raise ``ConfigError`` (one line naming the
    key, its value and what is allowed) at the first violation. Returns ``cfg`` unchanged. ``sections``: only
    the keys of these sections (and the relations whose first key is one of them), e.g. ``("eval",)``."""

    def wanted(dotted: str) -> bool:
        return sections is None or dotted.split(".", 1)[0] in sections

    for dotted, f, value in config_keys(cfg):
        if not wanted(dotted):
            continue
        domain = f.metadata.get("domain")
        if domain is not None and not domain.allows(
            value
        ):  # (a key without one fails tests/test_config_domains.py)
            raise ConfigError(f"{dotted}: expected {domain.describe()}, got {shown(value)}")
    for r in relations():
        if wanted(r.keys[0]) and not r.holds(cfg):
            got = ", ".join(f"{k}={shown(get_value(cfg, k))}" for k in r.keys)
            raise ConfigError(f"{r.keys[0]}: expected {r.rule}, got {got}")
    return cfg


# ------------------------------------------------------------------------------------------- help, printing
def config_help(path: str | os.PathLike | None = None, overrides: Sequence[str] = ()) -> str:
    """Every key with its type, built-in default, allowed values and help, then the relations
    (``--help-config``). With ``path`` (the config the command would run: ``--config`` or the built-in
    default file) and ``overrides``, a ``value`` column shows what that command line sets, ``*`` marking
    each value that differs from the built-in default."""
    cfg = load_config(path, overrides) if path or overrides else None
    defaults = {dotted: value for dotted, _, value in config_keys()}
    rows = []
    for dotted, f, value in config_keys(cfg):
        domain = f.metadata.get("domain")
        row = [dotted, _type_name(f.type)]
        if cfg is not None:
            row.append(_yaml_scalar(value) + (" *" if value != defaults[dotted] else ""))
        row += [
            _yaml_scalar(defaults[dotted]),
            domain.describe() if domain else "(undeclared)",
            f.metadata.get("help", ""),
        ]
        rows.append(row)
    head = ["key", "type", *(["value"] if cfg is not None else []), "built-in default", "allowed", "meaning"]
    w = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head) - 1)]

    def line(cells: list[str]) -> str:
        return "  ".join(f"{c:{n}}" for c, n in zip(cells, w)) + "  " + cells[-1]

    source = (
        f"the values of {path}" + (" with this command line's overrides" if overrides else "")
        if path
        else "the values of this command line's overrides"
    )
    lines = [
        "Config keys: set in a YAML file (section: key: value) or on the command line (--section.key=VALUE).",
        "built-in default: the value of a key that neither the config file nor the command line sets.",
    ]
    if cfg is not None:
        lines.append(f"value: {source}; * marks a value that differs from the built-in default.")
    lines += ["", line(head).rstrip()] + [line(r).rstrip() for r in rows]
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


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """``--help-config`` and ``--print-config``: the caller, once it knows which config the command line
    runs (``--config``, or its built-in default), prints ``config_help(path, overrides)`` or the resolved
    config (``config_yaml``) and exits without running."""
    parser.add_argument(
        "--help-config",
        action="store_true",
        help="list every config key with its built-in default, the value the config this command runs "
        "gives it (marked * where they differ) and the allowed values, and exit",
    )
    parser.add_argument(
        "--print-config",
        action="store_true",
        help="print the resolved config of this command line (YAML) and exit without running",
    )


# ---------------------------------------------------------------------------------------------- YAML I/O
MAX_YAML_BYTES = 1 << 20  # a config is a few kB; anything near this is not a config
MAX_YAML_NODES = 100_000  # values after alias expansion: the shipped configs have a few hundred


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate keys (PyYAML silently keeps the last one) and documents whose
    aliases expand beyond ``MAX_YAML_NODES`` values (a "billion laughs" of a few hundred bytes would
    otherwise take gigabytes as soon as anything walks the value)."""

    def get_single_data(self) -> Any:
        node = self.get_single_node()
        if node is None:
            return None
        expanded = _expanded_size(node, MAX_YAML_NODES)
        if expanded > MAX_YAML_NODES:
            raise ConfigError(
                f"aliases (*name) expand to more than {MAX_YAML_NODES} values: refused (a config needs a few "
                "hundred; write the values out)"
            )
        return self.construct_document(node)


def _expanded_size(root: yaml.Node, budget: int) -> int:
    """Values in the tree of ``root`` with every alias expanded, counted without expanding (each node's size
    is computed once); stops counting past ``budget``. Cycles (an alias inside its own anchor) count as
    over the budget."""
    sizes: dict[int, int] = {}
    busy: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if key in sizes:
            continue
        kids: list[yaml.Node] = []
        if isinstance(node, yaml.SequenceNode):
            kids = list(node.value)
        elif isinstance(node, yaml.MappingNode):
            kids = [n for pair in node.value for n in pair]
        if not children_done:
            if key in busy:
                return budget + 1  # a cycle: infinite expansion
            busy.add(key)
            stack.append((node, True))
            stack.extend((k, False) for k in kids if id(k) not in sizes)
            continue
        busy.discard(key)
        sizes[key] = min(budget + 1, 1 + sum(sizes.get(id(k), budget + 1) for k in kids))
    return sizes[id(root)]


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    loader.flatten_mapping(node)
    out: dict = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in out:
            line = key_node.start_mark.line + 1
            raise ConfigError(f"duplicate key {shown(key)} (line {line})")
        out[key] = loader.construct_object(value_node, deep=deep)
    return out


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
# PyYAML follows YAML 1.1, where `1e-6` (no dot) is a string; accept YAML 1.2 floats so `weight_decay: 1e-6`
# works.
_StrictLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def _hints(cls: type) -> dict[str, Any]:
    """Field name -> resolved type of a config dataclass (class-level declarations such as RELATIONS left
    out)."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; ints are accepted where floats are expected."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {type(value).__name__} {shown(value)}")
        return _from_dict(tp, value, key + ".")
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {type(value).__name__} {shown(value)}")
        return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is typing.Union or isinstance(tp, types.UnionType):  # e.g. int | str: the first arm that fits
        arms = typing.get_args(tp)
        for arm in arms:
            try:
                return _coerce(value, arm, key)
            except ConfigError:
                continue
        names = " or ".join(getattr(a, "__name__", str(a)) for a in arms)
        raise ConfigError(f"{key}: expected {names}, got {type(value).__name__} {value!r}")
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(
                f"{key}: expected a bool (true/false), got {type(value).__name__} {shown(value)}"
            )
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an int, got {type(value).__name__} {shown(value)}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a float, got {type(value).__name__} {shown(value)}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {type(value).__name__} {shown(value)}")
        return value
    raise ConfigError(f"{key}: unsupported type {tp!r}")  # pragma: no cover - schema error


def _from_dict(cls: type, data: dict, prefix: str = "") -> Any:
    hints = _hints(cls)
    unknown = [k for k in data if k not in hints]
    if unknown:
        known = ", ".join(sorted(hints))
        raise ConfigError(f"unknown key {prefix}{_cut(unknown[0])} (known keys here: {known})")
    kwargs = {k: _coerce(v, hints[k], prefix + str(k)) for k, v in data.items()}
    return cls(**kwargs)


def merge(base: Any, data: dict, prefix: str = "") -> Any:
    """Return a copy of dataclass ``base`` with the (possibly partial, nested) mapping ``data`` applied."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {shown(data)}")
    hints = _hints(type(base))
    changes = {}
    for k, v in data.items():
        if k not in hints:
            known = ", ".join(sorted(hints))
            raise ConfigError(f"unknown key {prefix}{_cut(k)} (known keys here: {known})")
        cur = getattr(base, k)
        if dataclasses.is_dataclass(cur):
            changes[k] = merge(cur, v, f"{prefix}{k}.")
        else:
            changes[k] = _coerce(v, hints[k], prefix + k)
    return dataclasses.replace(base, **changes)


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def parse_overrides(args: Sequence[str]) -> dict:
    """``["--optim.lr=0.32", "--train.cuda_graph", "false"]`` -> nested dict, values parsed as YAML
    scalars."""
    out: dict = {}
    args = list(args)
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--"):
            raise ConfigError(f"expected an override like --section.key=value, got {shown(arg)}")
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
        except (yaml.YAMLError, RecursionError):
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


def _cut(text: Any) -> str:
    text = str(text)
    return text if len(text) <= SHOWN_CHARS else text[: SHOWN_CHARS - 3] + "..."


def read_yaml_text(path: str | os.PathLike, limit: int = MAX_YAML_BYTES) -> str:
    """The text of a YAML file the project reads (a config, a run folder's ``config.yaml``): at most
    ``limit`` bytes, UTF-8; ``ConfigError`` naming the file otherwise (read no further than the limit)."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            raw = f.read(limit + 1)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a folder, not a config file") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read ({e.strerror or e})") from None
    if len(raw) > limit:
        raise ConfigError(f"{path}: larger than {limit} bytes, too large for a config file: refused")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(
            f"{path}: not UTF-8 text (byte 0x{raw[e.start]:02x} at offset {e.start}); save it as UTF-8"
        ) from None


def load_yaml(path: str | os.PathLike) -> dict:
    """The top-level mapping of a YAML file, read through ``read_yaml_text`` (size and encoding bounded)
    and ``_StrictLoader`` (no duplicate keys, bounded alias expansion); errors are one ``ConfigError`` line
    naming the file."""
    path = os.fspath(path)
    text = read_yaml_text(path)
    try:
        data = yaml.load(text, Loader=_StrictLoader)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    except RecursionError:
        raise ConfigError(f"{path}: nested too deeply to be a config") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    return data


def load_config(path: str | os.PathLike | None = None, overrides: Sequence[str] = ()) -> Config:
    """Defaults <- YAML file (if any) <- dotted command-line overrides, then every value checked against its
    domain and every relation (``validate``). Errors name the key, and the file when the value came from
    it. ``path``: a YAML file or the name of a shipped config (``resolve_config``)."""
    cfg, from_file = Config(), {}
    if path:
        path = resolve_config(path)
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


# ------------------------------------------------------------------------------------- shipped configs
def _configs_dir() -> Path:
    """The shipped configs: package data of ``fastcvrl`` (``fastcvrl/configs/*.yaml``), wherever the package
    is installed (a wheel, ``pip install .``, an editable checkout)."""
    return Path(__file__).resolve().parent / "configs"


def shipped_configs() -> list[str]:
    """Names of the configs that ship with the package (``cvrl_r3d50_k400``, ...), sorted."""
    return sorted(p.stem for p in _configs_dir().glob("*.yaml"))


def resolve_config(name_or_path: str | os.PathLike) -> Path:
    """``--config NAME_OR_PATH`` to a file: an existing path as given, else a shipped config by name (with or
    without ``.yaml``). A path that exists wins over a shipped name, so a local ``my.yaml`` is never
    shadowed. Raises ``ConfigError`` listing the shipped names when neither is found."""
    given = os.fspath(name_or_path)
    path = Path(os.path.expanduser(given))
    if path.is_file():
        return path
    if os.sep not in given and "/" not in given:
        stem = given[: -len(".yaml")] if given.endswith(".yaml") else given
        shipped = _configs_dir() / f"{stem}.yaml"
        if shipped.is_file():
            return shipped
    raise ConfigError(
        f"config not found: {given} (neither a file nor a shipped config; shipped: "
        f"{', '.join(shipped_configs())})"
    )


def builtin_default(cuda: bool) -> Path:
    """The built-in default of ``fastcvrl-train`` without ``--config``: the synthetic dataset with a small
    model, sized for the device at hand (``synthetic_gpu`` with CUDA, else ``synthetic_cpu``)."""
    return resolve_config("synthetic_gpu" if cuda else "synthetic_cpu")


def _given(data: dict, dotted: str) -> bool:
    section, _, name = dotted.partition(".")
    return isinstance(data.get(section), dict) and name in data[section]


def save_config(cfg: Config, path: str | os.PathLike) -> None:
    """Write the resolved config as YAML (atomically); ``load_config(path)`` gives an equal object."""
    from fastcvrl.atomic import atomic_write

    atomic_write(path, config_yaml(cfg))
