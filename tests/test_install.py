"""Installed like a library: a wheel in a fresh virtual environment finds its shipped configs by name and its
built-in default from any folder, and trains it, with the package taken from the wheel, never this checkout.

To keep the cost small the fresh environment sees the dependencies (torch, DALI, ...) through a ``.pth`` line
naming this interpreter's site-packages; a ``.pth`` line only adds a folder to ``sys.path``, so the
checkout's editable finder (itself started by a ``.pth`` file in that folder) is never installed there."""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from fastcvrl.config import ConfigError, builtin_default, load_config, resolve_config, shipped_configs

REPO = Path(__file__).resolve().parents[1]


def test_shipped_configs_are_found_by_name_with_or_without_yaml():
    names = shipped_configs()
    assert {"cvrl_r3d50_k400", "synthetic_cpu", "synthetic_gpu"} <= set(names)
    by_name = resolve_config("cvrl_r3d50_k400")
    assert by_name == resolve_config("cvrl_r3d50_k400.yaml")
    assert by_name.parent == REPO / "fastcvrl" / "configs" and by_name.is_file()
    assert load_config("cvrl_r3d50_k400") == load_config(by_name)
    assert builtin_default(False).name == "synthetic_cpu.yaml"
    assert builtin_default(True).name == "synthetic_gpu.yaml"


def test_a_path_wins_over_a_shipped_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cvrl_r3d50_k400.yaml").write_text("train:\n  epochs: 7\n")
    assert load_config("cvrl_r3d50_k400.yaml").train.epochs == 7  # the local file
    assert load_config("cvrl_r3d50_k400").train.epochs == 800  # no such file: the shipped config


def test_an_unknown_name_lists_the_shipped_configs():
    with pytest.raises(ConfigError, match=r"config not found: cvrl_nope .*shipped: .*cvrl_r3d50_k400"):
        load_config("cvrl_nope")
    with pytest.raises(ConfigError, match=r"config not found: some/dir/nope.yaml"):
        load_config("some/dir/nope.yaml")


_PROBE = """
import json, sys
import fastcvrl
from fastcvrl.config import builtin_default, load_config
cfg = load_config("cvrl_r3d50_k400")
print(json.dumps({
    "file": fastcvrl.__file__,
    "epochs": cfg.train.epochs,
    "arch": cfg.model.arch,
    "default": str(builtin_default(False)),
    "default_arch": load_config(builtin_default(False)).model.arch,
    "finders": [type(f).__module__ + "." + type(f).__name__ for f in sys.meta_path],
    "modules": sorted(m for m in sys.modules if "editable" in m),
}))
"""


@pytest.mark.slow
def test_wheel_in_a_fresh_environment_from_an_empty_folder(tmp_path):
    # built from a copy, with the test extras' setuptools and wheel: an in-tree build would leave build/ and
    # *.egg-info in the checkout, whose egg-info would make pip think the wheel is installed already
    src = tmp_path / "src"
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        src.mkdir(exist_ok=True)
        shutil.copy2(REPO / name, src / name)
    for pkg in ("fastcvrl", "dali_pipelines"):
        shutil.copytree(REPO / pkg, src / pkg, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    wheels = tmp_path / "wheels"
    r = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", wheels, src],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    (wheel,) = wheels.glob("fastcvrl-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True, timeout=120)
    py = venv / "bin" / "python"
    purelib = Path(
        subprocess.run(
            [py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    r = subprocess.run(
        [sys.executable, "-m", "pip", "--python", py, "install", "--no-deps", "--no-index", "-q", wheel],
        capture_output=True,
        text=True,
        timeout=300,
        env=clean,
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    # after the install: pip would otherwise see the checkout's editable fastcvrl and skip the wheel
    ours = {sysconfig.get_paths()["purelib"], *site.getsitepackages()}
    (purelib / "deps.pth").write_text("".join(f"{p}\n" for p in sorted(ours)))

    empty = tmp_path / "empty"
    empty.mkdir()
    env = dict(clean)
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["CUDA_VISIBLE_DEVICES"] = ""  # the CPU default, whatever the machine

    def run(*cmd: str | Path) -> str:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=empty, env=env)
        assert r.returncode == 0, r.stdout + r.stderr
        return r.stdout

    got = json.loads(run(py, "-c", _PROBE).strip().splitlines()[-1])
    assert Path(got["file"]).resolve().is_relative_to(venv.resolve()), got["file"]  # the wheel's copy
    assert Path(got["default"]).resolve().is_relative_to(venv.resolve()), got["default"]
    assert not Path(got["file"]).resolve().is_relative_to(REPO)
    assert not any("editable" in f for f in got["finders"]) and got["modules"] == []
    assert (got["epochs"], got["arch"], got["default_arch"]) == (800, "r3d50", "r3d_tiny")
    assert "Config keys" in run(venv / "bin" / "fastcvrl-train", "--help-config")
    printed = run(venv / "bin" / "fastcvrl-train", "--print-config")  # the built-in default, resolved
    assert "arch: r3d_tiny" in printed and "out_dir: runs/synthetic_cpu" in printed
    named = run(venv / "bin" / "fastcvrl-train", "--config", "cvrl_r3d50_k400", "--print-config")
    assert "epochs: 800" in named and "out_dir: runs/cvrl_r3d50_k400" in named
    assert list(empty.iterdir()) == []  # nothing written by listing or printing
    # and it trains the built-in default (two steps on a small built-in set)
    run_dir = tmp_path / "run"
    out = run(
        venv / "bin" / "fastcvrl-train",
        f"--data.synthetic_dir={tmp_path / 'synthetic'}",
        "--data.synthetic_classes=2",
        "--data.synthetic_videos_per_class=4",
        "--data.synthetic_size=64",
        "--train.batch_size=8",
        "--train.max_steps=2",
        "--train.knn_every=0",
        "--optim.warmup_epochs=0",
        f"--train.out_dir={run_dir}",
    )
    default_line = next(
        line for line in out.splitlines() if line.startswith("no --config: the built-in default")
    )
    assert Path(default_line.rsplit(" ", 1)[1]).resolve().is_relative_to(venv.resolve()), default_line
    assert (run_dir / "backbone.pt").is_file() and (run_dir / "config.yaml").is_file()
