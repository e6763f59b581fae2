"""Config input is bounded: alias bombs, huge files, non-UTF-8 text and huge values each end in one short
``ConfigError`` line naming the file, in bounded memory (checked in a child process under an address-space
limit that the unbounded loader exceeds)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from fastcvrl.config import MAX_YAML_BYTES, MAX_YAML_NODES, ConfigError, load_config, parse_overrides
from fastcvrl.domains import SHOWN_CHARS, shown


def alias_bomb(levels: int = 9, fan: int = 9) -> str:
    """A "billion laughs": ``fan ** levels`` strings from a few hundred bytes of YAML."""
    names = [f"l{i}" for i in range(levels)]
    lines = [f"{names[0]}: &{names[0]} [{', '.join(['x'] * fan)}]"]
    for prev, name in zip(names, names[1:]):
        lines.append(f"{name}: &{name} [{', '.join([f'*{prev}'] * fan)}]")
    return "\n".join(lines) + "\n"


def run_bounded(code: str, mem_bytes: int = 1 << 28, timeout: float = 300) -> subprocess.CompletedProcess:
    """``code`` in a fresh interpreter that may map only ``mem_bytes`` more address space than it holds once
    ``fastcvrl.config`` (and what it imports: torch) is loaded: the bound is on the loading, not on the
    imports. ``timeout`` only stops a hang."""
    prelude = textwrap.dedent(
        f"""
        import resource
        import fastcvrl.config
        with open("/proc/self/status") as f:
            held = int(f.read().split("VmSize:")[1].split()[0]) * 1024
        resource.setrlimit(resource.RLIMIT_AS, (held + {mem_bytes}, held + {mem_bytes}))
        """
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-c", prelude + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


@pytest.mark.parametrize("where", ["top level", "list-valued key"])
def test_alias_bomb_refused_in_one_line_in_bounded_memory(tmp_path, where):
    """With 256 MiB of address space beyond the imports. Without the alias budget the list-valued case at 9
    levels took 30 s and ended in a one-line error 226 MB long; 10 levels (nine times the values) are used
    here."""
    path = tmp_path / "bomb.yaml"
    path.write_text(
        alias_bomb() if where == "top level" else f"data:\n  mean: {_flow_bomb('0.5', levels=10)}\n"
    )
    assert path.stat().st_size < 5000
    r = run_bounded(
        f"""
        from fastcvrl.config import ConfigError, load_config
        try:
            load_config({str(path)!r})
        except ConfigError as e:
            print("ConfigError:", e)
        """
    )
    assert r.returncode == 0, r.stderr[-2000:]
    out = r.stdout.strip()
    assert out.startswith("ConfigError:") and "\n" not in out and len(out) < 400, out[:1000]
    assert str(path) in out and "alias" in out


def _flow_bomb(leaf: str, levels: int = 9, fan: int = 9) -> str:
    """A bomb as one flow value (anchors defined inline): ``[&l0 [x, ...], *l0, ...]`` nested ``levels``
    deep, ``fan ** levels`` leaves."""
    value = f"&l0 [{', '.join([leaf] * fan)}]"
    for i in range(1, levels):
        value = f"&l{i} [{', '.join([value] + [f'*l{i - 1}'] * (fan - 1))}]"
    return value


def test_a_value_within_the_alias_budget_is_quoted_short(tmp_path):
    """Aliases below the budget still load; a wrong value built from them is quoted in a short line."""
    path = tmp_path / "wide.yaml"
    path.write_text("data:\n  mean: &m [" + ", ".join(["x"] * 2000) + "]\n  std: *m\n")
    with pytest.raises(ConfigError) as e:
        load_config(path)
    msg = str(e.value)
    assert "data.mean" in msg and str(path) in msg and len(msg) < 300


def test_recursive_alias_is_refused(tmp_path):
    path = tmp_path / "loop.yaml"
    path.write_text("data:\n  mean: &m [0.5, *m]\n")
    with pytest.raises(ConfigError, match="alias"):
        load_config(path)


def test_aliases_within_budget_still_work(tmp_path):
    path = tmp_path / "ok.yaml"
    path.write_text("data:\n  mean: &m [0.5, 0.5, 0.5]\n  std: *m\n")
    cfg = load_config(path)
    assert cfg.data.std == cfg.data.mean == [0.5, 0.5, 0.5]


def test_non_utf8_config_is_one_line_naming_the_file(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("optim:\n  # r\xe9glage\n  lr: 0.1\n".encode("latin-1"))
    with pytest.raises(ConfigError) as e:
        load_config(path)
    msg = str(e.value)
    assert str(path) in msg and "UTF-8" in msg and "0xe9" in msg


def test_huge_config_is_refused_without_reading_it_whole(tmp_path):
    path = tmp_path / "huge.yaml"
    with open(path, "w") as f:  # 40 MB of comments: valid YAML, not a config
        line = "# " + "x" * 1000 + "\n"
        for _ in range(40_000):
            f.write(line)
    r = run_bounded(
        f"""
        from fastcvrl.config import ConfigError, load_config
        try:
            load_config({str(path)!r})
        except ConfigError as e:
            print("ConfigError:", e)
        """
    )
    assert r.returncode == 0, r.stderr[-2000:]
    out = r.stdout.strip()
    assert out.startswith("ConfigError:") and str(path) in out and str(MAX_YAML_BYTES) in out


def test_a_run_folders_config_yaml_is_bounded_too(tmp_path):
    """A run folder's ``config.yaml`` (read by ``fastcvrl.eval.weights``) goes through the same loader."""
    path = tmp_path / "config.yaml"
    path.write_text(alias_bomb())
    with pytest.raises(ConfigError, match="alias"):
        load_config(path)


def test_override_values_are_bounded_and_quoted_short():
    with pytest.raises(ConfigError, match="alias"):
        parse_overrides(["--data.mean=" + _flow_bomb("0.5")])
    with pytest.raises(ConfigError) as e:
        load_config(None, ["--train.epochs=" + "y" * 10_000])
    assert len(str(e.value)) < 300 and "train.epochs" in str(e.value)


def test_shown_is_short_for_huge_and_shared_values():
    shared = ["x"] * 10
    for _ in range(30):  # 10 ** 30 strings if walked naively
        shared = [shared] * 10
    for value in (shared, "z" * 10**6, {i: i for i in range(10**5)}, 10**100):
        text = shown(value)
        assert len(text) <= SHOWN_CHARS
    assert shown("short") == "'short'"
    assert MAX_YAML_NODES >= 1000
