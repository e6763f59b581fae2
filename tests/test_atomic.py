"""The one atomic writer: whole-or-nothing replacement, temporaries named after their writer, a full disk
leaving the old file, only dead writers' leftovers swept, and no other writer in the project."""

from __future__ import annotations

import ast
import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fastcvrl import atomic
from fastcvrl.atomic import atomic_open, atomic_write, sweep, temp_path, temp_writer

REPO = Path(__file__).resolve().parents[1]


def test_replaces_whole_file_and_leaves_no_temporary(tmp_path):
    p = tmp_path / "a.txt"
    atomic_write(p, "old\n")
    atomic_write(p, b"new bytes")
    assert p.read_bytes() == b"new bytes"
    with atomic_open(p, "w", newline="") as f:
        f.write("x,y\r\n")
    assert p.read_bytes() == b"x,y\r\n"
    assert sorted(q.name for q in tmp_path.iterdir()) == ["a.txt"]


def test_an_error_inside_the_block_writes_nothing(tmp_path):
    p = tmp_path / "a.txt"
    atomic_write(p, "old")
    with pytest.raises(ZeroDivisionError):
        with atomic_open(p, "w") as f:
            f.write("half")
            raise ZeroDivisionError
    assert p.read_text() == "old" and [q.name for q in tmp_path.iterdir()] == ["a.txt"]


def test_temporary_names_carry_the_writer_and_fit_the_name_limit(tmp_path):
    t = temp_path(tmp_path / "manifest.csv")
    assert t.parent == tmp_path and t.name.startswith(".manifest.csv.tmp.")
    assert temp_writer(t.name) == (atomic.host_tag(), os.getpid())
    assert temp_writer("ckpt_000000004.pt.tmp.1234") == (atomic.host_tag(), 1234)  # the older form
    assert temp_writer("manifest.csv") is None
    video = temp_path(tmp_path / "clip.mp4", keep_suffix=True, pid=4321)  # an encoder's: the extension kept
    assert video.name.endswith(".mp4") and temp_writer(video.name) == (atomic.host_tag(), 4321)
    long = tmp_path / ("v" * 250 + ".csv")
    assert len(temp_path(long).name.encode()) <= 255
    atomic_write(long, "ok")  # would fail with ENAMETOOLONG if the temporary were the name plus a suffix
    assert long.read_text() == "ok"


def test_full_disk_mid_write_keeps_the_old_file_and_names_the_target(tmp_path, monkeypatch):
    p = tmp_path / "ckpt.pt"
    atomic_write(p, b"good" * 1000)
    real = atomic._write_all

    def half_then_full(fd, data):
        real(fd, data[: len(data) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(atomic, "_write_all", half_then_full)
    with pytest.raises(OSError) as e:
        atomic_write(p, b"new!" * 1000)
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(p)
    assert p.read_bytes() == b"good" * 1000
    assert [q.name for q in tmp_path.iterdir()] == ["ckpt.pt"]  # the partial temporary is gone


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait(timeout=60)
    return proc.pid  # reaped: no process has it (pid reuse within the test is vanishingly unlikely)


def test_sweep_removes_only_dead_writers_temporaries(tmp_path):
    live = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        host = atomic.host_tag()
        dead = tmp_path / f".a.csv.tmp.{host}.{_dead_pid()}"
        alive = tmp_path / f".a.csv.tmp.{host}.{live.pid}"
        remote = tmp_path / f".a.csv.tmp.otherhost.{_dead_pid()}"
        other_target = tmp_path / f".b.csv.tmp.{host}.{_dead_pid()}"
        keep = tmp_path / "a.csv"
        for p in (dead, alive, remote, other_target, keep):
            p.write_text("x")
        assert sweep(tmp_path, target="a.csv") == [dead]
        atomic_write(keep, "y")  # a write sweeps its own target's leftovers too (none left now)
        assert alive.exists() and remote.exists() and other_target.exists()
        assert sorted(sweep(tmp_path)) == [other_target]
        assert sweep(tmp_path, any_host=True) == [remote]  # for the holder of the folder's lock
        assert alive.exists()
    finally:
        live.stdin.close()
        live.wait(timeout=60)


# besides the writer itself: videos that an encoder streams to a temporary (too large for memory:
# prepare's transcodes, datasets/video.py), prepare's append-only progress journal, the synthetic set's
# folder swap
_ALLOWED = {
    "fastcvrl/atomic.py",
    "fastcvrl/datasets/transcode.py",
    "fastcvrl/datasets/journal.py",
    "fastcvrl/datasets/video.py",
    "fastcvrl/datasets/synthetic.py",
}


def test_no_other_temp_and_rename_writer_in_the_project():
    """Every file the project writes goes through fastcvrl.atomic: no os.replace/os.rename/fsync elsewhere
    (outside the two folder-level renames allowed above), and no torch.save straight to a path."""
    offenders = []
    for f in [
        *REPO.glob("fastcvrl/**/*.py"),
        *REPO.glob("benchmarks/*.py"),
        *REPO.glob("dali_pipelines/*.py"),
    ]:
        rel = f.relative_to(REPO).as_posix()
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                name = node.func.attr
                owner = node.func.value.id if isinstance(node.func.value, ast.Name) else ""
                if owner == "os" and name in ("replace", "rename", "fsync") and rel not in _ALLOWED:
                    offenders.append(f"{rel}:{node.lineno} os.{name}")
                if (
                    owner == "torch"
                    and name == "save"
                    and not (node.args and isinstance(node.args[1], ast.Name) and node.args[1].id == "buf")
                ):
                    offenders.append(f"{rel}:{node.lineno} torch.save")
    assert not offenders, offenders


def test_eval_results_carry_the_environment_record(tmp_path):
    import json

    import torch

    from fastcvrl.eval.evaluate import _write_json

    _write_json({"top1": 0.5}, tmp_path / "eval.json")
    saved = json.loads((tmp_path / "eval.json").read_text())
    assert saved["top1"] == 0.5 and saved["env"]["torch"] == torch.__version__ and saved["env"]["cores"] >= 1


def test_environment_record_without_a_git_checkout(tmp_path):
    from fastcvrl.logger import git_commit

    assert git_commit(tmp_path) == {"commit": None, "dirty": None}
