"""Checkpoints: atomic writes that survive SIGKILL, last-K retention, skipping corrupt files, RNG round
trips."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch
from processes import kill_and_wait

from fastcvrl import checkpoint as ckpt


def _state(step: int) -> dict:
    g = torch.Generator().manual_seed(step)
    return {"step": step, "w": torch.randn(64, 64, generator=g), "rng": ckpt.rng_state()}


def test_save_load_round_trip_and_keep_last_k(tmp_path):
    for step in (10, 20, 30, 40, 50):
        ckpt.save_checkpoint(_state(step), tmp_path, step, keep=2)
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path)] == [40, 50]
    state, path = ckpt.load_latest(tmp_path)
    assert state["step"] == 50 and path.name == "ckpt_000000050.pt"
    assert torch.equal(state["w"], _state(50)["w"])
    assert not [p for p in (tmp_path / ckpt.CKPT_DIR).iterdir() if ".tmp." in p.name]


def test_steps_sort_numerically_not_by_name(tmp_path):
    for step in (9, 100, 1000):
        ckpt.save_checkpoint(_state(step), tmp_path, step, keep=5)
    assert ckpt.load_latest(tmp_path)[0]["step"] == 1000


def test_missing_keys_or_an_empty_file_are_corruption(tmp_path):
    ckpt.save_checkpoint(_state(1), tmp_path, 1)
    ckpt.save_checkpoint({"step": 2}, tmp_path, 2)  # unpickles, but lacks what a training state holds
    (tmp_path / ckpt.CKPT_DIR / "ckpt_000000003.pt").write_bytes(b"")
    with pytest.warns(UserWarning) as caught:
        state, path = ckpt.load_latest(tmp_path, required=("step", "w"))
    assert state["step"] == 1
    text = " ".join(str(w.message) for w in caught)
    assert (
        "ckpt_000000003.pt: empty file" in text
        and "ckpt_000000002.pt: not a fastcvrl checkpoint (no 'w')" in text
    )


def _deny(monkeypatch, target, attr, predicate):
    """Make ``target.attr`` raise PermissionError where ``predicate(path)`` holds (works as root, where chmod
    does not deny reads)."""
    real = getattr(target, attr)

    def denied(path, *a, **kw):
        if predicate(str(path)):
            raise PermissionError(13, "Permission denied", str(path))
        return real(path, *a, **kw)

    monkeypatch.setattr(target, attr, denied)


def test_an_unreadable_folder_is_an_error_not_an_empty_run(tmp_path, monkeypatch):
    for step in (10, 12):
        ckpt.save_checkpoint(_state(step), tmp_path, step)
    _deny(monkeypatch, ckpt.os, "scandir", lambda p: p.endswith(ckpt.CKPT_DIR))
    with pytest.raises(ckpt.CheckpointAccessError, match="cannot list the checkpoints") as e:
        ckpt.load_latest(tmp_path)
    assert e.value.filename == str(tmp_path / ckpt.CKPT_DIR)


def test_an_unreadable_newest_file_is_an_error_not_corruption(tmp_path, monkeypatch):
    for step in (10, 12):
        ckpt.save_checkpoint(_state(step), tmp_path, step)
    from pathlib import Path

    _deny(monkeypatch, Path, "read_bytes", lambda p: p.endswith("ckpt_000000012.pt"))
    with pytest.raises(ckpt.CheckpointAccessError, match="ckpt_000000012"):
        ckpt.load_latest(tmp_path)  # not a silent fall-back to step 10, nor None


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root reads unreadable folders")
def test_an_unreadable_folder_by_chmod(tmp_path):
    ckpt.save_checkpoint(_state(1), tmp_path, 1)
    folder = tmp_path / ckpt.CKPT_DIR
    folder.chmod(0o000)
    try:
        with pytest.raises(ckpt.CheckpointAccessError):
            ckpt.load_latest(tmp_path)
    finally:
        folder.chmod(0o755)
    assert ckpt.load_latest(tmp_path)[0]["step"] == 1


def test_rotation_never_deletes_the_checkpoint_just_written(tmp_path):
    for step in (10, 12):
        ckpt.save_checkpoint(_state(step), tmp_path, step, keep=2)
    for step in (10, 12):  # both damaged: a rerun restarts from step 0 below them
        (tmp_path / ckpt.CKPT_DIR / f"ckpt_{step:09d}.pt").write_bytes(b"garbage")
    ckpt.save_checkpoint(_state(2), tmp_path, 2, keep=2)
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path)] == [2, 10, 12]  # by step alone, 2 would go
    for step in (4, 6):
        ckpt.save_checkpoint(_state(step), tmp_path, step, keep=2)
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path)] == [
        4,
        6,
        10,
        12,
    ]  # corrupt ones kept, never deleted
    with pytest.warns(UserWarning) as caught:
        assert ckpt.load_latest(tmp_path)[0]["step"] == 6
    assert ["ckpt_000000012" in str(w.message) for w in caught] == [True, False]  # 12, then 10: both skipped


def test_corrupt_newest_is_skipped_with_a_warning(tmp_path):
    ckpt.save_checkpoint(_state(1), tmp_path, 1)
    p2 = ckpt.save_checkpoint(_state(2), tmp_path, 2)
    p2.write_bytes(p2.read_bytes()[: p2.stat().st_size // 2])  # truncated (e.g. a disk that filled up)
    with pytest.warns(UserWarning, match="ckpt_000000002"):
        state, path = ckpt.load_latest(tmp_path)
    assert state["step"] == 1
    (tmp_path / ckpt.CKPT_DIR / "ckpt_000000001.pt").write_bytes(b"garbage")
    with pytest.warns(UserWarning):
        assert ckpt.load_latest(tmp_path) is None


def test_empty_or_missing_folder_has_no_checkpoint(tmp_path):
    assert ckpt.load_latest(tmp_path / "nope") is None
    assert ckpt.list_checkpoints(tmp_path) == []


_WRITER = textwrap.dedent("""
    import os, sys, time, torch
    from fastcvrl import checkpoint as ckpt
    run = sys.argv[1]
    ckpt.save_checkpoint({"step": 1, "w": torch.ones(1000)}, run, 1)
    real_fsync = os.fsync
    def slow_fsync(fd):            # the data is written, the rename has not happened: kill lands here
        real_fsync(fd)
        print("in-write", flush=True)
        time.sleep(60)
    os.fsync = slow_fsync
    ckpt.save_checkpoint({"step": 2, "w": torch.zeros(1000)}, run, 2)
    print("finished", flush=True)
""")


def test_sigkill_between_write_and_rename_leaves_previous_checkpoint(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "in-write"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        kill_and_wait(proc)
    folder = tmp_path / ckpt.CKPT_DIR
    assert [p for p in folder.iterdir() if ".tmp." in p.name], (
        "the interrupted write should leave only a temp file"
    )
    state, path = ckpt.load_latest(tmp_path)
    assert state["step"] == 1 and torch.equal(state["w"], torch.ones(1000))
    assert ckpt.remove_partial(tmp_path) and not [p for p in folder.iterdir() if ".tmp." in p.name]


_LOOP_WRITER = textwrap.dedent("""
    import sys, torch
    from fastcvrl import checkpoint as ckpt
    run = sys.argv[1]
    # 8 MB: each write takes a while, so kills land inside torch.save too
    w = torch.arange(2_000_000, dtype=torch.float32)
    step = 0
    while True:
        step += 1
        ckpt.save_checkpoint({"step": step, "w": w + step}, run, step, keep=2)
        print(step, flush=True)
""")


@pytest.mark.parametrize("delay", [0.3, 0.55, 0.8])
def test_sigkill_at_random_times_never_leaves_an_unloadable_checkpoint(tmp_path, delay):
    proc = subprocess.Popen(
        [sys.executable, "-c", _LOOP_WRITER, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout.readline().strip() == "1"  # import done, first checkpoint written
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        kill_and_wait(proc)
    found = ckpt.list_checkpoints(tmp_path)
    assert found
    for step, path in found:  # every file with a checkpoint's name is whole
        state = ckpt.load_checkpoint(path)
        assert state["step"] == step
        assert torch.equal(state["w"], torch.arange(2_000_000, dtype=torch.float32) + step)  # all data there


def test_rng_state_round_trip_through_a_file(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    ckpt.save_checkpoint({"step": 0, "rng": ckpt.rng_state()}, tmp_path, 0)
    expect = (random.random(), np.random.rand(), torch.rand(3))
    random.seed(9)
    np.random.seed(9)
    torch.manual_seed(9)
    state, _ = ckpt.load_latest(tmp_path)  # weights_only=True load
    ckpt.set_rng_state(state["rng"])
    got = (random.random(), np.random.rand(), torch.rand(3))
    assert got[0] == expect[0] and got[1] == expect[1] and torch.equal(got[2], expect[2])


def test_atomic_save_replaces_whole_file(tmp_path):
    p = tmp_path / "backbone.pt"
    ckpt.atomic_torch_save({"a": torch.arange(3)}, p)
    ckpt.atomic_torch_save({"a": torch.arange(5)}, p)
    assert torch.equal(torch.load(p, weights_only=True)["a"], torch.arange(5))
    assert [q.name for q in tmp_path.iterdir()] == ["backbone.pt"]


def test_run_config_changes_list_only_keys_that_change_the_run():
    from fastcvrl.config import Config, to_dict

    old = to_dict(Config())
    new = to_dict(Config())
    new["train"].update(batch_size=16, out_dir="elsewhere", log_every=7, max_steps=5)
    new["model"]["arch"] = "r3d101"
    new["eval"]["epochs"] = 3
    new["data"]["num_threads"] = 8
    assert ckpt.run_changes(old, new) == {"model.arch": ("r3d50", "r3d101"), "train.batch_size": (1024, 16)}
    del old["optim"]["lr"]  # a key the checkpoint did not know yet: not compared
    new["optim"]["lr"] = 9.0
    assert "optim.lr" not in ckpt.run_changes(old, new)
