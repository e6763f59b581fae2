"""Checkpoints: atomic writes that survive SIGKILL, last-K retention, skipping corrupt files, RNG round trips."""
from __future__ import annotations

import random
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch

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
        proc.kill()
    folder = tmp_path / ckpt.CKPT_DIR
    assert [p for p in folder.iterdir() if ".tmp." in p.name], "the interrupted write should leave only a temp file"
    state, path = ckpt.load_latest(tmp_path)
    assert state["step"] == 1 and torch.equal(state["w"], torch.ones(1000))
    assert ckpt.remove_partial(tmp_path) and not [p for p in folder.iterdir() if ".tmp." in p.name]


_LOOP_WRITER = textwrap.dedent("""
    import sys, torch
    from fastcvrl import checkpoint as ckpt
    run = sys.argv[1]
    w = torch.arange(2_000_000, dtype=torch.float32)  # 8 MB: each write takes a while, so kills land inside torch.save too
    step = 0
    while True:
        step += 1
        ckpt.save_checkpoint({"step": step, "w": w + step}, run, step, keep=2)
        print(step, flush=True)
""")


@pytest.mark.parametrize("delay", [0.3, 0.55, 0.8])
def test_sigkill_at_random_times_never_leaves_an_unloadable_checkpoint(tmp_path, delay):
    proc = subprocess.Popen([sys.executable, "-c", _LOOP_WRITER, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "1"  # import done, first checkpoint written
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        proc.kill()
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
