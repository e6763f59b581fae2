"""The run folder never loses or mixes state: resume only under the checkpoint's config, a finished run left
alone, one trainer per folder (a lock, tested with two processes), checkpoint access errors never taken for
corruption, and file-system errors (read-only folders, a full disk) in one line with the last good checkpoint
kept. Tiny CPU runs in process (``train.cli``) unless a second process is the point."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from processes import kill_and_wait
from tiny_runs import tiny_run

from fastcvrl import atomic, train
from fastcvrl import checkpoint as ckpt
from fastcvrl.config import load_config

REPO = Path(__file__).resolve().parents[1]
TRAIN = str(REPO / "fastcvrl" / "train.py")
TINY = tiny_run(videos=8, epochs=2, extra={"train.keep_ckpts": 2})  # 2 steps per epoch, 4 in all


def _args(run_dir: Path, *extra: str) -> list[str]:
    return [
        "--config",
        str(REPO / "fastcvrl" / "configs" / "synthetic_cpu.yaml"),
        *TINY,
        f"--train.out_dir={run_dir}",
        *extra,
    ]


def _snapshot(run_dir: Path) -> dict[str, tuple[int, bytes]]:
    """Every file of the run folder (but the lock file) with its mtime and bytes."""
    return {
        str(p.relative_to(run_dir)): (p.stat().st_mtime_ns, p.read_bytes())
        for p in sorted(run_dir.rglob("*"))
        if p.is_file() and p.name != "train.lock"
    }


def _one_line_error(capsys) -> str:
    """The one ``error:`` line on stderr (beside progress lines), with no traceback."""
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture
def partial_run(tmp_path) -> Path:
    """A run stopped at step 2 of 4 (checkpoint at step 2, backbone exported at step 2)."""
    assert train.cli(_args(tmp_path, "--train.max_steps=2")) == 0
    return tmp_path


# ------------------------------------------------------------------------------------------ resume rules
def test_changed_run_keys_are_refused_listing_them_and_nothing_is_written(partial_run, capsys):
    before = _snapshot(partial_run)
    capsys.readouterr()
    assert train.cli(_args(partial_run, "--train.batch_size=8", "--optim.lr=64")) == 2
    line = _one_line_error(capsys)
    assert (
        "optim.lr: 2.0 -> 64.0" in line
        and "train.batch_size: 4 -> 8" in line
        and "--resume-with-changes" in line
    )
    assert train.cli(_args(partial_run, "--model.arch=r3d50")) == 2  # no size-mismatch traceback
    assert "model.arch: 'r3d_tiny' -> 'r3d50'" in _one_line_error(capsys)
    assert _snapshot(partial_run) == before  # config.yaml, env.json, checkpoints, backbone untouched


def test_keys_that_do_not_change_the_run_resume_freely(partial_run):
    assert train.cli(_args(partial_run, "--train.log_every=1", "--train.keep_ckpts=3")) == 0
    assert ckpt.load_latest(partial_run)[0]["step"] == 4
    assert load_config(partial_run / "config.yaml").train.log_every == 1
    assert not (partial_run / "config_changes.yaml").exists()


def test_resume_with_changes_continues_and_records_the_change(partial_run, capsys):
    assert train.cli(_args(partial_run, "--optim.lr=4.0", "--resume-with-changes")) == 0
    assert "optim.lr: 2.0 -> 4.0" in capsys.readouterr().out
    import yaml

    (doc,) = list(yaml.safe_load_all((partial_run / "config_changes.yaml").read_text()))
    assert doc["resumed_at_step"] == 2 and doc["changes"] == {"optim.lr": {"old": 2.0, "new": 4.0}}
    assert load_config(partial_run / "config.yaml").optim.lr == 4.0
    state = ckpt.load_latest(partial_run)[0]
    assert state["step"] == 4 and state["config"]["optim"]["lr"] == 4.0


def test_a_finished_run_is_not_rewritten(tmp_path, capsys):
    assert train.cli(_args(tmp_path)) == 0
    before = _snapshot(tmp_path)
    capsys.readouterr()
    assert train.cli(_args(tmp_path)) == 0
    out = capsys.readouterr().out
    assert "nothing to do" in out and "finished at step 4" in out
    assert _snapshot(tmp_path) == before  # no backbone re-export, no config.yaml or env.json rewrite


def test_a_finished_run_without_checkpoints_is_refused_not_restarted(tmp_path, capsys):
    assert train.cli(_args(tmp_path)) == 0
    for _, p in ckpt.list_checkpoints(tmp_path):
        p.unlink()
    (tmp_path / ckpt.CKPT_DIR).rmdir()
    before = _snapshot(tmp_path)
    capsys.readouterr()
    assert train.cli(_args(tmp_path)) == 2
    line = _one_line_error(capsys)
    assert "finished run (backbone.pt)" in line and "no loadable checkpoint" in line
    assert _snapshot(tmp_path) == before and not (tmp_path / ckpt.CKPT_DIR).exists()


# ------------------------------------------------------------------------------- access errors vs corruption
def test_unreadable_checkpoints_stop_the_run_and_keep_every_checkpoint(partial_run, monkeypatch, capsys):
    before = _snapshot(partial_run)
    real = os.scandir

    def denied(path="."):
        if str(path).endswith(ckpt.CKPT_DIR):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", denied)
    capsys.readouterr()
    assert train.cli(_args(partial_run)) == 4
    line = _one_line_error(capsys)
    assert str(partial_run / ckpt.CKPT_DIR) in line and "Permission denied" in line and "writable" in line
    monkeypatch.undo()
    assert _snapshot(partial_run) == before  # not restarted at step 0, nothing rotated away


# ------------------------------------------------------------------------------------ file-system errors
def _deny_writes_under(monkeypatch, folder: Path, code: int = errno.EROFS) -> None:
    """``os.open`` for writing and ``mkdir`` under ``folder`` fail as on a read-only file system."""
    real_open, real_mkdir = os.open, os.mkdir

    def open_(path, flags, *a, **kw):
        if str(path).startswith(str(folder)) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            raise OSError(code, os.strerror(code), str(path))
        return real_open(path, flags, *a, **kw)

    def mkdir(path, *a, **kw):
        if str(path).startswith(str(folder)):
            raise OSError(code, os.strerror(code), str(path))
        return real_mkdir(path, *a, **kw)

    monkeypatch.setattr(os, "open", open_)
    monkeypatch.setattr(os, "mkdir", mkdir)


def test_a_read_only_out_dir_is_one_line_and_nothing_trains(tmp_path, monkeypatch, capsys):
    run_dir = tmp_path / "ro" / "run"
    _deny_writes_under(monkeypatch, tmp_path / "ro")
    assert train.cli(_args(run_dir)) == 4
    line = _one_line_error(capsys)
    assert str(run_dir) in line and "Read-only file system" in line and "train.out_dir" in line


@pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root writes to read-only folders"
)
def test_a_read_only_out_dir_by_chmod(tmp_path, capsys):
    parent = tmp_path / "ro"
    parent.mkdir()
    parent.chmod(0o555)
    try:
        assert train.cli(_args(parent / "run")) == 4
        assert "Permission denied" in _one_line_error(capsys)
    finally:
        parent.chmod(0o755)


def test_a_read_only_checkpoints_folder_fails_at_start_keeping_the_last_checkpoint(
    partial_run, monkeypatch, capsys
):
    before = _snapshot(partial_run)
    _deny_writes_under(monkeypatch, partial_run / ckpt.CKPT_DIR, errno.EACCES)
    capsys.readouterr()
    assert train.cli(_args(partial_run)) == 4
    line = _one_line_error(capsys)
    assert f"make {partial_run / ckpt.CKPT_DIR} writable" in line and "Permission denied" in line
    monkeypatch.undo()
    assert _snapshot(partial_run) == before  # refused before config.yaml or any step


def test_a_full_disk_during_a_checkpoint_write_keeps_the_last_good_one(tmp_path, monkeypatch, capsys):
    real = atomic._write_all

    def full_at_step_4(fd, data):
        if os.readlink(f"/proc/self/fd/{fd}").rsplit("/", 1)[-1].startswith(".ckpt_000000004.pt"):
            real(fd, data[: len(data) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(fd, data)

    monkeypatch.setattr(atomic, "_write_all", full_at_step_4)
    assert train.cli(_args(tmp_path)) == 4
    line = _one_line_error(capsys)
    assert "No space left on device" in line and "ckpt_000000004.pt" in line and "free space" in line
    assert "ckpt_000000002.pt, is kept" in line
    monkeypatch.undo()
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path)] == [2]
    assert not [p for p in (tmp_path / ckpt.CKPT_DIR).iterdir() if ".tmp." in p.name]
    assert not (tmp_path / "backbone.pt").exists()
    assert train.cli(_args(tmp_path)) == 0  # space freed: the same command resumes and finishes
    assert ckpt.load_latest(tmp_path)[0]["step"] == 4


# ------------------------------------------------------------------------------------------------- lock
_HOLDER = textwrap.dedent("""
    import sys
    from fastcvrl.runfolder import RunFolder
    RunFolder.open(sys.argv[1])
    print("locked", flush=True)
    sys.stdin.read()  # holds the lock until its stdin closes, or it is killed
""")


def test_a_second_trainer_is_refused_naming_the_holder_then_runs_once_it_is_killed(tmp_path, capsys):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(tmp_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert train.cli(_args(tmp_path)) == 2
        line = _one_line_error(capsys)
        assert f"pid {holder.pid} on host {__import__('socket').gethostname()}" in line and "in use" in line
        assert not (tmp_path / "config.yaml").exists() and not (tmp_path / ckpt.CKPT_DIR).exists()
        holder.kill()  # SIGKILL: the OS releases the lock
        assert holder.wait(timeout=60) == -9
    finally:
        kill_and_wait(holder)
    assert train.cli(_args(tmp_path)) == 0
    assert ckpt.load_latest(tmp_path)[0]["step"] == 4


def test_two_trainers_on_one_folder_the_second_refused_and_the_first_unharmed(tmp_path):
    """Two real trainer processes: the second starts while the first writes checkpoints; it is refused and
    touches nothing (a live writer's temporary included); the first goes on and stops cleanly on SIGTERM."""
    live_tmp_owner = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE
    )
    # epochs far beyond what runs while the second trainer starts: the first is still running when it is
    # checked, however the load on the machine shares the CPU between the two
    args = _args(tmp_path, "--train.epochs=50000", "--train.ckpt_every=1")
    first = subprocess.Popen(
        [sys.executable, TRAIN, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 300  # a deadline only bounds a failure: generous under load
        while not ckpt.list_checkpoints(tmp_path):
            assert time.monotonic() < deadline and first.poll() is None, (
                "the first trainer wrote no checkpoint"
            )
            time.sleep(0.05)
        # a temporary of a live writer on this host: start-up cleanup must not touch it
        live = tmp_path / ckpt.CKPT_DIR / f".ckpt_000000999.pt.tmp.{atomic.host_tag()}.{live_tmp_owner.pid}"
        live.write_bytes(b"x")
        second = subprocess.run([sys.executable, TRAIN, *args], capture_output=True, text=True, timeout=600)
        assert second.returncode == 2, second.stderr
        assert f"pid {first.pid}" in second.stderr and "in use by another trainer" in second.stderr
        assert live.exists()
        assert first.poll() is None  # the first trainer was not disturbed
        first.terminate()
        out, err = first.communicate(timeout=300)
        assert first.returncode == 143, err
    finally:
        kill_and_wait(first)
        live_tmp_owner.stdin.close()
        live_tmp_owner.wait(timeout=60)
    state = ckpt.load_latest(tmp_path)[0]
    assert state["step"] >= 1 and state["config"]["optim"]["lr"] == 2.0
    assert live.exists()  # its writer is alive: never swept


def test_python_dash_m_runs_the_trainer(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "fastcvrl.train", *_args(tmp_path, "--train.max_steps=2")],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert r.returncode == 0, r.stderr
    assert "done at step 2" in r.stdout and ckpt.load_latest(tmp_path)[0]["step"] == 2


_RANK_FULL_DISK = textwrap.dedent("""
    import errno, os, sys
    from fastcvrl import atomic
    real = atomic._write_all
    def full_at_step_4(fd, data):
        if os.readlink(f"/proc/self/fd/{fd}").rsplit("/", 1)[-1].startswith(".ckpt_000000004.pt"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(fd, data)
    atomic._write_all = full_at_step_4
    from fastcvrl.train import cli
    sys.exit(cli(sys.argv[1:]))
""")


def test_two_ranks_agree_on_a_failed_checkpoint_write_and_both_stop(tmp_path):
    """Rank 0 writes the checkpoint; when that fails, rank 1 must not wait for it at a barrier: both exit,
    the error printed once."""
    script = tmp_path / "worker.py"
    script.write_text(_RANK_FULL_DISK)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--standalone",  # the rendezvous store binds a port the OS picks, and holds it: no port race
        str(script),
        *_args(tmp_path / "run", "--model.sync_bn=false"),
    ]
    r = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)},
    )
    assert r.returncode != 0
    assert r.stderr.count("error: cannot write the checkpoint of step 4") == 1, r.stderr
    assert "Traceback" not in r.stderr.split("error: cannot write")[0]  # no rank crashed before the message
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path / "run")] == [2]
