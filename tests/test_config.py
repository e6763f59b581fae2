"""Strict typed config: YAML -> dataclasses, dotted overrides, errors that name the key, round trip."""

from __future__ import annotations

from pathlib import Path

import pytest

from fastcvrl.config import Config, ConfigError, load_config, load_yaml, parse_overrides, save_config, to_dict

CONFIGS = Path(__file__).resolve().parents[1] / "fastcvrl" / "configs"


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def test_every_shipped_config_loads_and_round_trips(tmp_path):
    files = sorted(CONFIGS.glob("*.yaml"))
    assert files, "configs/ holds no YAML files"
    for f in files:
        cfg = load_config(f)
        out = tmp_path / f.name
        save_config(cfg, out)
        assert load_config(out) == cfg, f.name


def test_paper_recipe():
    """configs/cvrl_r3d50_k400.yaml carries CVRL's recipe (Qian et al. 2021, Sec. 4.1)."""
    cfg = load_config(CONFIGS / "cvrl_r3d50_k400.yaml")
    assert (cfg.data.num_frames, cfg.data.stride, cfg.data.crop_size) == (16, 2, 224)
    assert cfg.train.batch_size == 1024 and cfg.train.epochs == 800
    assert cfg.loss.temperature == 0.1
    o = cfg.optim
    assert (o.name, o.momentum, o.weight_decay, o.lr, o.base_batch_size, o.warmup_epochs) == (
        "lars",
        0.9,
        1e-6,
        0.32,
        1024,
        5.0,
    )
    assert cfg.model.arch == "r3d50"
    assert load_config(CONFIGS / "cvrl_r3d50_k400_200ep.yaml").train.epochs == 200


def _without(data: dict, *dotted: str) -> dict:
    """The YAML mapping with the dotted keys removed (a copy)."""
    out = {section: dict(keys) for section, keys in data.items()}
    for d in dotted:
        section, name = d.split(".")
        out[section].pop(name)
    return out


@pytest.mark.parametrize(
    "long,short", [("cvrl_r3d50_k400", "cvrl_r3d50_k400_200ep"), ("cvrl_r3d50_k600", "cvrl_r3d50_k600_200ep")]
)
def test_200_epoch_configs_differ_only_in_epochs_and_run_folder(long, short):
    a, b = load_yaml(CONFIGS / f"{long}.yaml"), load_yaml(CONFIGS / f"{short}.yaml")
    assert (a["train"]["epochs"], b["train"]["epochs"]) == (800, 200)
    assert (a["train"]["out_dir"], b["train"]["out_dir"]) == (f"runs/{long}", f"runs/{short}")
    assert _without(a, "train.epochs", "train.out_dir") == _without(b, "train.epochs", "train.out_dir")
    # and resolved: nothing left to a default on one side only
    ca, cb = to_dict(load_config(CONFIGS / f"{long}.yaml")), to_dict(load_config(CONFIGS / f"{short}.yaml"))
    assert _without(ca, "train.epochs", "train.out_dir") == _without(cb, "train.epochs", "train.out_dir")


def test_k600_config_is_the_k400_recipe_on_kinetics_600():
    k400, k600 = load_yaml(CONFIGS / "cvrl_r3d50_k400.yaml"), load_yaml(CONFIGS / "cvrl_r3d50_k600.yaml")
    assert k600["data"]["train_manifest"] == "data/k600/train/manifest.csv"
    assert k600["data"]["val_manifest"] == "data/k600/val/manifest.csv"
    assert k600["train"]["out_dir"] == "runs/cvrl_r3d50_k600" and k600["train"]["epochs"] == 800
    keys = ("data.train_manifest", "data.val_manifest", "train.out_dir")
    assert _without(k400, *keys) == _without(k600, *keys)


_LINEAR_PROTOCOL = {  # the reference's cvrl_linear_eval_k600.yaml (lr 32 at 1024, 5 of 100 epochs warm-up)
    "lr": 32.0,
    "base_batch_size": 1024,
    "warmup_epochs": 5.0,
    "momentum": 0.9,
    "weight_decay": 0.0,
    "num_frames": 32,
    "stride": 2,
    "crop_size": 224,
    "short_side": 256,
    "test_crop_size": 256,
    "test_clips": 10,
    "test_crops": 3,
}


@pytest.mark.parametrize(
    "name,finetune,epochs",
    [
        ("cvrl_linear_kinetics", False, 100),
        ("cvrl_linear_ucf101", False, 100),
        ("cvrl_linear_hmdb51", False, 100),
        ("cvrl_finetune_ucf101", True, 50),
        ("cvrl_finetune_hmdb51", True, 50),
    ],
)
def test_evaluation_configs_follow_the_protocol(name, finetune, epochs):
    from fastcvrl.eval.inputs import check_eval_config

    cfg = load_config(name)  # by name, as the README's commands use them
    check_eval_config(cfg)
    e = to_dict(cfg)["eval"]
    assert {k: e[k] for k in _LINEAR_PROTOCOL} == _LINEAR_PROTOCOL
    assert (e["finetune"], e["epochs"]) == (finetune, epochs)
    assert cfg.model.arch == "r3d50" and cfg.train.precision == "bf16"


def test_every_paper_config_says_what_it_targets():
    """Each shipped CVRL config's opening comment names the result it targets (or says it targets none)."""
    for f in sorted(CONFIGS.glob("cvrl_*.yaml")):
        head = "".join(line for line in f.read_text().splitlines(keepends=True) if line.startswith("#"))
        assert "%" in head or "no CVRL figure" in head, f.name
        assert "arget" in head, f.name


def test_yaml_overrides_defaults_and_cli_overrides_yaml(tmp_path):
    p = write(tmp_path, "optim:\n  lr: 0.5\ntrain:\n  epochs: 7\n")
    cfg = load_config(p, ["--optim.lr=0.1", "--train.cuda_graph", "false", "--data.mean=[0.5,0.5,0.5]"])
    assert cfg.optim.lr == 0.1  # command line beats the file
    assert cfg.train.epochs == 7  # file beats the default
    assert cfg.train.cuda_graph is False
    assert cfg.data.mean == [0.5, 0.5, 0.5]
    assert cfg.model == Config().model  # untouched sections keep their defaults


def test_int_accepted_for_float_and_kept_float():
    cfg = load_config(None, ["--optim.lr=1"])
    assert cfg.optim.lr == 1.0 and isinstance(cfg.optim.lr, float)


@pytest.mark.parametrize(
    "text, key",
    [
        ("optim:\n  lrr: 0.1\n", "optim.lrr"),
        ("optimizer:\n  lr: 0.1\n", "optimizer"),
        ("optim:\n  lr: 0.1\n  lr: 0.2\n", "lr"),
        ("optim:\n  lr: fast\n", "optim.lr"),
        ("train:\n  epochs: 1.5\n", "train.epochs"),
        ("train:\n  cuda_graph: 1\n", "train.cuda_graph"),
        ("data:\n  mean: 0.5\n", "data.mean"),
        ("data:\n  mean: [0.5, x, 0.5]\n", "data.mean[1]"),
        ("optim: 3\n", "optim"),
    ],
)
def test_bad_yaml_names_the_key_and_file(tmp_path, text, key):
    p = write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert key in str(e.value) and str(p) in str(e.value)


@pytest.mark.parametrize(
    "args, key",
    [
        (["--optim.nope=1"], "optim.nope"),
        (["--train.epochs=many"], "train.epochs"),
        (["--optim.lr"], "optim.lr"),
        (["optim.lr=0.1"], "optim.lr"),
    ],
)
def test_bad_override_names_the_key(args, key):
    with pytest.raises(ConfigError) as e:
        load_config(None, args)
    assert key in str(e.value)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml"):
        load_config(tmp_path / "nope.yaml")


def test_override_parsing_types():
    assert parse_overrides(["--a.b=3", "--a.c=0.5", "--d=true", "--e=text", "--f.g-h=1e-6"]) == {
        "a": {"b": 3, "c": 0.5},
        "d": True,
        "e": "text",
        "f": {"g_h": 1e-6},
    }


def test_save_writes_resolved_values(tmp_path):
    cfg = load_config(None, ["--optim.lr=0.25", "--model.arch=r3d_tiny"])
    out = tmp_path / "resolved.yaml"
    save_config(cfg, out)
    text = out.read_text()
    assert "lr: 0.25" in text and "arch: r3d_tiny" in text
    assert load_config(out) == cfg
    assert not list(tmp_path.glob("*.tmp*"))  # atomic write leaves no temporary behind


@pytest.mark.parametrize("name", ["synthetic_cpu.yaml", "synthetic_gpu.yaml"])
def test_synthetic_defaults_fit_the_synthetic_set(name):
    """The built-in defaults train and evaluate on the built-in set: whole batches of its training split."""
    cfg = load_config(CONFIGS / name)
    videos = cfg.data.synthetic_classes * cfg.data.synthetic_videos_per_class
    assert cfg.train.batch_size <= videos and cfg.eval.batch_size <= videos
    assert cfg.data.flip_prob == 0  # mirror-pair classes
    assert cfg.eval.test_crops == 1  # square frames
