"""The layout's rules, read from the source: who imports what, and one home for each decision.

- ``dali_pipelines/`` imports nothing from ``fastcvrl/`` and logs under its own name; no module in
  ``fastcvrl/`` imports ``nvidia.dali`` (the data path is reached through ``fastcvrl.data``).
- One definition each for: the usable cores, the precision table, the learning-rate scaling rule, the
  data-device decision, the codecs DALI's CPU decoder takes, the parse of ``train.profile_steps``.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("fastcvrl", "dali_pipelines")


def _modules(*folders: str) -> list[Path]:
    return sorted(p for f in folders for p in (REPO / f).rglob("*.py"))


def _imports(path: Path) -> list[str]:
    """Every module name ``path`` imports, at any depth (function-level imports too)."""
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


def _code(path: Path, strings: bool = True) -> str:
    """The source without comments and docstrings (what runs); ``strings=False``: without any text literal."""
    tree = ast.parse(path.read_text())
    if not strings:
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                node.value = ""
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr):
            if isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str):
                body[0] = ast.Pass()
    return ast.unparse(tree)


def _defining(pattern: str, strings: bool) -> list[str]:
    rx = re.compile(pattern)
    return [
        str(p.relative_to(REPO)) for p in _modules(*PACKAGES, "benchmarks") if rx.search(_code(p, strings))
    ]


def test_the_data_path_imports_nothing_from_the_trainer():
    offenders = [
        f"{p.relative_to(REPO)}: {m}"
        for p in _modules("dali_pipelines")
        for m in _imports(p)
        if m == "fastcvrl" or m.startswith("fastcvrl.")
    ]
    assert not offenders, offenders


def test_no_trainer_module_imports_dali():
    offenders = [
        f"{p.relative_to(REPO)}: {m}"
        for p in _modules("fastcvrl")
        for m in _imports(p)
        if m == "nvidia.dali" or m.startswith("nvidia.dali.") or m == "nvidia"
    ]
    assert not offenders, offenders


def test_the_data_path_logs_under_its_own_name():
    for p in _modules("dali_pipelines"):
        for name in re.findall(r"getLogger\(([^)]*)\)", p.read_text()):
            assert name == "__name__" or name.strip("\"'").startswith("dali_pipelines"), (p, name)


@pytest.mark.parametrize(
    "what, pattern, strings, home",
    [
        ("usable cores", r"sched_getaffinity", False, ["dali_pipelines/cores.py"]),
        ("precision names to dtypes", r"['\"]bf16['\"]\s*:\s*torch\.", True, ["fastcvrl/precision.py"]),
        ("learning-rate scaling", r"/\s*[\w.]*base_batch_size", False, ["fastcvrl/schema.py"]),
        (
            "data device (auto: gpu when CUDA is up)",
            r"'gpu' if (torch\.cuda\.is_available\(\)|cuda)",
            True,
            None,
        ),
        ("codecs of DALI's CPU decoder", r"\{'vp8', 'vp9', 'mjpeg'\}", True, ["dali_pipelines/codecs.py"]),
        ("the parse of train.profile_steps", r"\(\\\\d\+\):\(\\\\d\+\)", True, ["fastcvrl/schema.py"]),
    ],
)
def test_one_home_per_decision(what, pattern, strings, home):
    found = _defining(pattern, strings)
    if home is None:  # the data device: the preflight, and the benchmarks' own device flag aside
        found = [f for f in found if not f.startswith("benchmarks/")]
        home = ["fastcvrl/preflight.py"]
    assert found == home, (what, found)


def test_profile_steps_domain_accepts_exactly_what_is_parsed():
    from fastcvrl.config import config_keys
    from fastcvrl.schema import steps_range

    domain = {k: f.metadata["domain"] for k, f, _ in config_keys()}["train.profile_steps"]
    for spec in ("", "0:1", "50:60", "9:3", "5", "a:b", "-1:4", "3:3", "1:2:3"):
        try:
            parsed = steps_range(spec)
        except ValueError:
            parsed = "refused"
        assert domain.allows(spec) == (parsed != "refused"), spec
    assert steps_range("50:60") == (50, 60) and steps_range("") is None
