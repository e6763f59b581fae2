"""Value domains: every key declares one, every value outside it is refused by the loader naming the key,
every entry point refuses before any work (one line, exit 2, nothing on disk), and ``--help-config`` lists
them.

The cases are generated from the declarations in ``fastcvrl/config.py``, so a new key is covered (or the
completeness test names it) without editing this file.
"""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from fastcvrl import config as C
from fastcvrl import domains as D
from fastcvrl.config import Config, ConfigError, config_keys, load_config, relations, validate
from fastcvrl.resolve import resolved_config

REPO = Path(__file__).resolve().parents[1]
KEYS = config_keys()  # (dotted key, field, default)
# every declared domain's out-of-domain values (a key without a domain is named by the completeness test)
DOMAIN_CASES = [(k, v) for k, f, _ in KEYS if "domain" in f.metadata for v in f.metadata["domain"].outside()]
WRONG_TYPE = {
    "str": [1, 2],
    "int": 1.5,
    "int | str": [1, 2],
    "float": "x",
    "bool": "maybe",
    "list[float]": "x",
}


def undeclared_keys(cfg: object) -> list[str]:
    """Keys of a (nested dataclass) config declared without a value domain or a help line."""
    out = []
    for section in dataclasses.fields(cfg):
        for f in dataclasses.fields(getattr(cfg, section.name)):
            if not isinstance(f.metadata.get("domain"), D.Domain) or not f.metadata.get("help"):
                out.append(f"{section.name}.{f.name}")
    return out


def nested(flat: dict) -> dict:
    """``{"data.stride": 0}`` -> ``{"data": {"stride": 0}}``."""
    out: dict = {}
    for dotted, value in flat.items():
        section, name = dotted.split(".")
        out.setdefault(section, {})[name] = value
    return out


def load_values(tmp_path: Path, flat: dict) -> Config:
    """``load_config`` of a YAML file holding exactly these values (YAML keeps their Python types)."""
    p = tmp_path / "values.yaml"
    p.write_text(yaml.safe_dump(nested(flat)))
    return load_config(p)


# ------------------------------------------------------------------------------------------ declarations
def test_every_key_declares_a_domain_and_a_help_line():
    missing = undeclared_keys(Config())
    assert not missing, (
        f"config keys without a value domain or help: {', '.join(missing)}. Declare each in "
        "fastcvrl/config.py "
        'as `name: type = key(default, domain, "help")`, e.g. key(4, at_least(1), "...") or '
        'key("vp9", one_of("vp9", "h264"), "...")'
    )


def test_the_completeness_check_finds_a_key_declared_without_a_domain():
    Extra = dataclasses.make_dataclass(
        "Extra",
        [
            ("plain", int, dataclasses.field(default=3)),
            ("declared", int, D.key(1, D.at_least(1), "declared")),
        ],
    )
    Outer = dataclasses.make_dataclass("Outer", [("extra", Extra, dataclasses.field(default_factory=Extra))])
    assert undeclared_keys(Outer()) == ["extra.plain"]


def test_an_error_names_the_file_only_when_the_value_came_from_it(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("data:\n  stride: 0\n  crop_size: 64\n")
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(p))}: data\.stride: expected >= 1, got 0$"):
        load_config(p)
    with pytest.raises(ConfigError, match=r"^data\.crop_size: expected >= 1, got 0$"):
        load_config(p, ["--data.stride=2", "--data.crop_size=0"])  # the command line's value, not the file's


def test_the_defaults_and_every_shipped_config_are_inside_their_domains():
    validate(Config())
    for f in sorted((REPO / "fastcvrl" / "configs").glob("*.yaml")):
        load_config(f)  # raises on a value outside its domain


def test_every_restricted_domain_generates_values_outside_it():
    """Only free text and booleans (refused by the type check alone) may have no out-of-domain value."""
    for key, f, default in KEYS:
        d = f.metadata.get("domain")
        if d is None:
            continue  # named by test_every_key_declares_a_domain_and_a_help_line
        assert d.allows(default), key
        assert d.describe(), key
        if not isinstance(d, (D.Flag, D.Text)) or d.outside():
            assert d.outside(), f"{key}: its domain generates no value outside it"
            assert not any(d.allows(v) for v in d.outside()), key


@pytest.mark.parametrize("key, value", DOMAIN_CASES, ids=[f"{k}={v!r}" for k, v in DOMAIN_CASES])
def test_a_value_outside_its_domain_is_refused_naming_the_key(tmp_path, key, value):
    domain = dict((k, f) for k, f, _ in KEYS)[key].metadata["domain"]
    with pytest.raises(ConfigError) as e:
        load_values(tmp_path, {key: value})
    msg = str(e.value)
    assert msg.startswith(f"{tmp_path / 'values.yaml'}: {key}: expected {domain.describe()}, got "), msg
    assert "\n" not in msg


@pytest.mark.parametrize("key", [k for k, _, _ in KEYS])
def test_a_value_of_the_wrong_type_is_refused_naming_the_key(tmp_path, key):
    f = dict((k, f) for k, f, _ in KEYS)[key]
    assert str(f.type) in WRONG_TYPE, f"{key}: add a wrongly typed example for {f.type} to WRONG_TYPE"
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_values(tmp_path, {key: WRONG_TYPE[str(f.type)]})


@pytest.mark.parametrize("rel", relations(), ids=[r.keys[0] for r in relations()])
def test_a_broken_relation_is_refused_naming_its_keys(tmp_path, rel):
    known = {k for k, _, _ in KEYS}
    assert set(rel.keys) <= known and set(rel.breach) <= known
    with pytest.raises(ConfigError) as e:
        load_values(tmp_path, rel.breach)
    msg = str(e.value)
    assert msg.startswith(f"{tmp_path / 'values.yaml'}: {rel.keys[0]}: expected {rel.rule}, got "), msg
    assert "\n" not in msg
    assert all(k in msg for k in rel.keys)


# ------------------------------------------------------------------- domains agree with the implementation
def test_choices_agree_with_what_the_code_implements():
    from dali_pipelines.temporal import GAP_RULES
    from fastcvrl.datasets.synthetic import MOTIONS, SCENES
    from fastcvrl.model import DEPTHS
    from fastcvrl.precision import PRECISIONS

    dom = {k: f.metadata["domain"] for k, f, _ in KEYS}
    assert dom["data.gap_distribution"].choices == GAP_RULES
    assert dom["data.synthetic_scene"].choices == SCENES
    assert (dom["data.synthetic_classes"].lo, dom["data.synthetic_classes"].hi) == (1, len(MOTIONS))
    assert set(dom["model.arch"].choices) == {"r3d_tiny"} | {f"r3d{d}" for d in DEPTHS}
    assert set(dom["train.precision"].choices) == set(PRECISIONS)


def test_every_choice_is_accepted_where_it_is_used():
    from dali_pipelines.settings import resolve_augment
    from fastcvrl.optim import build_optimizer
    from fastcvrl.preflight import data_device

    dom = {k: f.metadata["domain"] for k, f, _ in KEYS}
    for a in dom["data.augment"].choices:
        assert resolve_augment(a, "cpu") in ("dali", "torch")
    for d in dom["data.device"].choices:
        if d != "gpu" or torch.cuda.is_available():
            assert data_device(d) in ("cpu", "gpu")
    for name in dom["optim.name"].choices:
        build_optimizer(dataclasses.replace(Config().optim, name=name), torch.nn.Linear(2, 2), 8)


# ---------------------------------------------------------------------------------------- the cases
BAD = [
    ["--data.stride=0"],
    ["--model.proj_dim=0"],
    ["--data.flip_prob=5"],
    ["--data.min_area=0", "--data.max_area=0"],
    ["--data.gap_distribution=cubic"],
    ["--data.augment=gpu"],
    ["--data.device=tpu"],
    ["--data.num_frames=0"],
    ["--data.crop_size=0"],
    ["--data.min_area=2"],
    ["--data.max_aspect=0.1"],
    ["--data.std=[0,0,0]"],
    ["--optim.lr=-1"],
    ["--model.width=0"],
    ["--data.num_threads=0"],
    ["--eval.batch_size=0"],
    ["--eval.epochs=0"],
    ["--eval.test_clips=0"],
]


@pytest.mark.parametrize("bad", BAD, ids=[" ".join(b) for b in BAD])
def test_the_trainer_refuses_in_one_line_before_any_work(tmp_path, capsys, bad):
    from fastcvrl import train

    run_dir, synth = tmp_path / "run", tmp_path / "synthetic"
    rc = train.cli([*bad, f"--train.out_dir={run_dir}", f"--data.synthetic_dir={synth}"])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    assert any(f"{b[2:].split('=')[0]}" in err for b in bad), err  # names the key
    assert not run_dir.exists() and not synth.exists()


def test_the_synthetic_set_too_small_for_a_batch_is_refused_before_it_is_generated(tmp_path, capsys):
    from fastcvrl import train

    synth = tmp_path / "synthetic"
    rc = train.cli(
        [
            "--data.synthetic_classes=2",
            "--data.synthetic_videos_per_class=3",
            "--train.batch_size=8",
            f"--data.synthetic_dir={synth}",
            f"--train.out_dir={tmp_path / 'run'}",
        ]
    )
    assert rc == 2 and "train.batch_size" in capsys.readouterr().err
    assert not synth.exists() and not (tmp_path / "run").exists()


# -------------------------------------------------------------------------------------- every entry point
def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=600, cwd=cwd, env=env
    )


ENTRY_POINTS = {
    "train": (
        [
            str(REPO / "fastcvrl" / "train.py"),
            "--data.stride=0",
            "--train.out_dir=run",
            "--data.synthetic_dir=synthetic",
        ],
        "data.stride",
    ),
    "eval": (
        [
            "-m",
            "fastcvrl.eval",
            "--random-init",
            "--train-manifest",
            "m.csv",
            "--test-manifest",
            "m.csv",
            "--eval.test_clips=0",
            "--out",
            "out",
        ],
        "eval.test_clips",
    ),
    "learning_proof": (
        [
            str(REPO / "benchmarks" / "learning_proof.py"),
            "--out",
            "proof",
            "--model.proj_dim=0",
            "--data.synthetic_dir=synthetic",
        ],
        "model.proj_dim",
    ),
}


@pytest.mark.parametrize("name", list(ENTRY_POINTS))
def test_every_entry_point_validates_its_config(tmp_path, name):
    args, key = ENTRY_POINTS[name]
    r = _run(args, tmp_path)
    err = r.stderr.strip()
    assert r.returncode == 2, r.stderr[-2000:]
    assert len(err.splitlines()) == 1 and err.startswith(f"error: {key}: expected "), err
    assert list(tmp_path.iterdir()) == []  # no run folder, no synthetic set, no output folder


# ------------------------------------------------------------------------------------- --help-config,
# --print-config
def _help_lines(parse, capsys) -> list[str]:
    with pytest.raises(SystemExit) as e:
        parse(["--help-config"])
    assert e.value.code in (0, None)
    return capsys.readouterr().out.splitlines()


@pytest.mark.parametrize("entry", ["train", "eval"])
def test_help_config_lists_every_key_with_its_default_and_allowed_values(capsys, entry):
    from fastcvrl import train
    from fastcvrl.eval import evaluate

    lines = _help_lines(train.parse_args if entry == "train" else evaluate._parse, capsys)
    for key, f, default in KEYS:
        row = [ln for ln in lines if ln.split(" ", 1)[0] == key]
        assert len(row) == 1, key
        assert C._yaml_scalar(default) in row[0] and f.metadata["domain"].describe() in row[0], row[0]
    for r in relations():
        assert any(r.rule in ln for ln in lines), r.rule


def _row(lines: list[str], key: str) -> list[str]:
    (row,) = [ln for ln in lines if ln.split(" ", 1)[0] == key]
    return re.split(r"\s{2,}", row)


@pytest.mark.parametrize("entry", ["train", "eval"])
def test_help_config_shows_the_values_of_the_config_the_command_runs(capsys, entry):
    """With --config (and overrides) each key shows that command line's value beside the built-in default,
    ``*`` marking the ones that differ; the trainer without --config shows its built-in default file."""
    from fastcvrl import train
    from fastcvrl.eval import evaluate
    from fastcvrl.resolve import default_config_path

    parse = train.parse_args if entry == "train" else evaluate._parse
    path = str(REPO / "fastcvrl" / "configs" / "synthetic_cpu.yaml")
    lines = _help_lines(lambda a: parse([*a, "--config", path, "--optim.lr=0.5"]), capsys)
    assert any(path in ln for ln in lines[:4]) and "built-in default" in _row(lines, "key")
    assert _row(lines, "data.crop_size")[2:4] == ["64 *", "224"]  # set by the file
    assert _row(lines, "optim.lr")[2:4] == ["0.5 *", "0.32"]  # set on the command line
    assert _row(lines, "loss.temperature")[2:4] == ["0.1", "0.1"]  # the file repeats the default
    if entry == "train":  # a plain run's config: the built-in default file for this machine
        plain = _help_lines(train.parse_args, capsys)
        assert any(str(default_config_path()) in ln for ln in plain[:4])
        assert _row(plain, "model.arch")[2] == load_config(default_config_path()).model.arch + " *"


def test_print_config_prints_the_resolved_config_and_runs_nothing(tmp_path, capsys):
    from fastcvrl import train

    run_dir = tmp_path / "run"
    args = ["--optim.lr=0.5", "--profile-steps", "3:5", f"--train.out_dir={run_dir}"]
    with pytest.raises(SystemExit) as e:
        train.main([*args, "--print-config"])
    assert e.value.code == 0
    printed = C.merge(Config(), yaml.safe_load(capsys.readouterr().out))
    expected = resolved_config(train.resolve_config(*train.parse_args(args), train._planned_device()))
    assert printed == expected and printed.optim.lr == 0.5 and printed.train.profile_steps == "3:5"
    assert printed.train.precision in ("fp32", "bf16")  # "auto" resolved for this machine
    assert not run_dir.exists()


def test_print_config_fills_in_auto_values_as_the_run_would(tmp_path, capsys, monkeypatch):
    """``auto`` and ``-1`` become what the loaders and the trainer pick on this machine: the data device,
    the augmentation backend, the host workers (from the usable cores) and the precision."""
    from dali_pipelines.cores import resolve_num_threads
    from dali_pipelines.settings import resolve_augment, resolve_host_workers
    from fastcvrl import train
    from fastcvrl.preflight import data_device

    args = ["--data.device=auto", "--data.augment=auto", "--data.host_workers=-1", "--train.precision=auto"]
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    with pytest.raises(SystemExit):
        train.main([*args, f"--train.out_dir={tmp_path / 'run'}", "--print-config"])
    printed = C.merge(Config(), yaml.safe_load(capsys.readouterr().out))
    device = data_device("auto")
    assert printed.data.device == device and printed.data.augment == resolve_augment("auto", device)
    assert printed.data.num_threads == resolve_num_threads("auto", device)
    assert printed.data.host_workers == resolve_host_workers(-1) >= 0
    assert printed.train.precision == ("bf16" if torch.cuda.is_available() else "fp32")
    # explicit values are kept, and the printed config is a config file that loads
    (tmp_path / "printed.yaml").write_text(C.config_yaml(printed))
    assert C.load_config(tmp_path / "printed.yaml") == printed


def test_eval_print_config(tmp_path, capsys):
    from fastcvrl.eval import evaluate

    with pytest.raises(SystemExit) as e:
        evaluate.main(
            [
                "--random-init",
                "--train-manifest",
                "m.csv",
                "--test-manifest",
                "m.csv",
                "--eval.epochs=7",
                "--finetune",
                "--out",
                str(tmp_path / "out"),
                "--print-config",
            ]
        )
    assert e.value.code == 0
    printed = C.merge(Config(), yaml.safe_load(capsys.readouterr().out))
    assert printed.eval.epochs == 7 and printed.eval.finetune is True
    assert not (tmp_path / "out").exists()
    # with a checkpoint: the model section the evaluation will take from it, auto values filled in
    from fastcvrl.model import build_backbone

    bb = build_backbone("r3d_tiny", 2)
    torch.save({"arch": "r3d_tiny", "width": 2, "state_dict": bb.state_dict()}, tmp_path / "backbone.pt")
    with pytest.raises(SystemExit):
        evaluate.main(["--checkpoint", str(tmp_path / "backbone.pt"), "--print-config"])
    printed = C.merge(Config(), yaml.safe_load(capsys.readouterr().out))
    assert (printed.model.arch, printed.model.width) == ("r3d_tiny", 2)
    assert "auto" not in (printed.data.device, printed.data.augment, printed.train.precision)
