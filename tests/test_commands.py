"""The console scripts of setup.cfg: each resolves to a callable, and behaves as its module form does (the
same exit status and the same one-line error for bad input)."""

from __future__ import annotations

import configparser
import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = {"fastcvrl-train", "fastcvrl-eval", "fastcvrl-prepare", "fastcvrl-synthetic"}


def _entry_points() -> dict[str, str]:
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg", encoding="utf-8")
    lines = cfg["options.entry_points"]["console_scripts"].strip().splitlines()
    return dict((part.strip() for part in line.split("=", 1)) for line in lines if line.strip())


def test_console_scripts_resolve_to_callables():
    eps = _entry_points()
    assert set(eps) == SCRIPTS
    for name, target in eps.items():
        module, func = target.split(":")
        fn = getattr(importlib.import_module(module), func)
        assert callable(fn), name


# (console script, the module form's command line, arguments that are bad input, what the error names)
CASES = [
    (
        "fastcvrl-train",
        [str(REPO / "fastcvrl" / "train.py")],
        ["--config", "/nonexistent/run.yaml"],
        "/nonexistent/",
    ),
    (
        "fastcvrl-eval",
        ["-m", "fastcvrl.eval"],
        [
            "--random-init",
            "--train-manifest",
            "/nonexistent/train.csv",
            "--test-manifest",
            "/nonexistent/test.csv",
        ],
        "/nonexistent/",
    ),
    (
        "fastcvrl-prepare",
        ["-m", "fastcvrl.prepare"],
        ["/nonexistent/videos", "--out", "/nonexistent/out"],
        "/nonexistent/",
    ),
    (
        "fastcvrl-synthetic",
        ["-m", "fastcvrl.synthetic"],
        ["--out", "/nonexistent/synthetic", "--classes", "0"],
        "classes",
    ),
]

# What pip's generated console script does (``sys.exit(func())``), under the script's name.
_SCRIPT = (
    "import sys, importlib; m, f = sys.argv.pop(1).split(':'); sys.argv[0] = sys.argv.pop(1); "
    "sys.exit(getattr(importlib.import_module(m), f)())"
)


@pytest.mark.parametrize("name, module_form, bad, named", CASES, ids=[c[0] for c in CASES])
def test_console_script_exits_as_the_module_form(tmp_path, name, module_form, bad, named):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    run = dict(cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    script = subprocess.run([sys.executable, "-c", _SCRIPT, _entry_points()[name], name, *bad], **run)
    module = subprocess.run([sys.executable, *module_form, *bad], **run)
    assert module.returncode == 2, module.stderr  # bad input: exit status 2 ...
    assert script.returncode == module.returncode, script.stderr
    errors = [line for line in script.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and errors[0].startswith("error: "), (
        script.stderr
    )  # ... and one line, no traceback
    assert errors == [line for line in module.stderr.splitlines() if line.strip()]
    assert named in errors[0]  # naming what is wrong


# (console script, its python form's arguments, that form as its usage shows it, a default its help shows)
HELP = [
    ("fastcvrl-train", ["-m", "fastcvrl.train"], "python -m fastcvrl.train", "(default: the built-in"),
    ("fastcvrl-eval", ["-m", "fastcvrl.eval"], "python -m fastcvrl.eval", "(default: 0)"),
    ("fastcvrl-prepare", ["-m", "fastcvrl.prepare"], "python -m fastcvrl.prepare", "(default: 16)"),
    ("fastcvrl-synthetic", ["-m", "fastcvrl.synthetic"], "python -m fastcvrl.synthetic", "(default: 24)"),
]


@pytest.mark.parametrize("name, module_form, usage, default", HELP, ids=[h[0] for h in HELP])
def test_help_names_the_command_as_typed_and_shows_defaults(tmp_path, name, module_form, usage, default):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    run = dict(cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    script = subprocess.run([sys.executable, "-c", _SCRIPT, _entry_points()[name], name, "--help"], **run)
    module = subprocess.run([sys.executable, *module_form, "--help"], **run)
    assert script.returncode == module.returncode == 0, script.stderr + module.stderr
    assert script.stdout.startswith(f"usage: {name} "), script.stdout[:200]
    assert module.stdout.startswith(f"usage: {usage} "), module.stdout[:200]
    assert default in " ".join(script.stdout.split()), script.stdout  # (help lines are wrapped)


def test_no_development_paths_in_the_product():
    """Code, help texts and comments name no folder outside the repository (``../shared``) and cite no
    document that is not in it under its old name."""
    found = []
    for top in ("fastcvrl", "dali_pipelines", "benchmarks"):
        for path in sorted((REPO / top).rglob("*")):
            if path.is_file() and path.suffix in (".py", ".sh", ".yaml", ".md", ".cfg"):
                text = path.read_text(encoding="utf-8")
                found += [f"{path}: {word}" for word in ("shared/", "DALI-NOTES") if word in text]
    assert found == []
