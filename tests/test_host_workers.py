"""The host source in worker processes (DALI's parallel external source, ``data.host_workers``): the same
batches as the serial in-thread path for the same seed, across epochs and resumption; unreadable and
undecodable videos named once and replaced (training) or left out (evaluation) as without workers; workers
gone after ``close``. No timing is asserted; waits poll with deadlines."""

from __future__ import annotations

import logging
import os
import time

import numpy as np
import pytest
import torch

pytest.importorskip("av")  # absent on a bare GPU image: skip, not a collection error
pytest.importorskip("nvidia.dali")
from dali_videos import corrupt_payload, make_index_videos, small_config

from dali_pipelines.host import META_FIELDS  # noqa: E402
from dali_pipelines.manifest import read_manifest
from dali_pipelines.settings import resolve_host_workers
from fastcvrl.data import build_linear_loader, build_pretrain_loader

LENGTHS = [60, 41, 5, 75, 33, 50, 64, 7, 40, 52, 30, 45]


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    return make_index_videos(tmp_path_factory.mktemp("hw"), LENGTHS, codec="vp9", gop=8)


def _batches(loader, epochs=(0, 1), start=0):
    out = []
    for epoch in epochs:
        loader.set_epoch(epoch)
        for v1, v2, label in loader.iter_from(start):
            out.append((epoch, v1.clone(), v2.clone(), label.clone(), loader.last_meta.copy()))
    return out


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    """Meta rows equal except ``bytes_read``: a process reads a file whole the first time it indexes it, and
    each worker indexes the files it meets, so the bytes read depend on which process met a file first."""
    keep = [i for i, name in enumerate(META_FIELDS) if name != "bytes_read"]
    return np.array_equal(a[:, keep], b[:, keep])


def _named(caplog, path: str) -> int:
    """Warnings that name ``path``."""
    return sum(path in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)


def _children() -> set[int]:
    pids = set()
    for task in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{task}/children") as f:
                pids |= {int(p) for p in f.read().split()}
        except OSError:  # a thread that ended between the listing and the read
            pass
    return pids


def _alive(pids: set[int]) -> set[int]:
    alive = set()
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().split(")")[-1].split()[0] != "Z":
                    alive.add(pid)
        except OSError:
            pass
    return alive


@pytest.mark.parametrize("augment", ["torch", "dali"])
def test_workers_deliver_the_serial_batches(manifest, augment):
    got = {}
    for workers in (0, 2):
        cfg = small_config(host_workers=workers, augment=augment, color_jitter_prob=1.0)
        loader = build_pretrain_loader(cfg, str(manifest), device="cpu", seed=3)
        got[workers] = _batches(loader, epochs=(0, 1, 1, 4))  # consecutive, repeated and skipped epochs
        loader.close()
    assert len(got[0]) == len(got[2]) == 4 * (len(LENGTHS) // 4)
    for a, b in zip(got[0], got[2]):
        assert a[0] == b[0] and _same(a[4], b[4])  # same videos, starts, frames decoded
        for x, y in zip(a[1:4], b[1:4]):
            assert torch.equal(x, y)


def test_workers_resume_mid_epoch_like_the_serial_path(manifest):
    metas = {}
    for workers in (0, 2):
        loader = build_pretrain_loader(
            small_config(host_workers=workers), str(manifest), device="cpu", seed=5
        )
        metas[workers] = [b[4] for b in _batches(loader, epochs=(2,), start=1)] + [
            b[4] for b in _batches(loader, epochs=(3,))
        ]  # and the next epoch from its start
        loader.close()
    assert len(metas[0]) == len(metas[2]) == 2 + 3
    assert all(_same(a, b) for a, b in zip(metas[0], metas[2]))


def test_unreadable_file_named_once_and_replaced_with_workers(tmp_path, caplog):
    manifest = make_index_videos(tmp_path, [30] * 8, codec="vp9", gop=8)
    bad = read_manifest(manifest)[2].path
    with open(bad, "wb") as f:
        f.write(b"\x1aE\xdf\xa3 this is not a video" * 10)
    metas = {}
    for workers in (0, 2):
        caplog.clear()
        loader = build_pretrain_loader(
            small_config(host_workers=workers), str(manifest), device="cpu", seed=0
        )
        with caplog.at_level(logging.WARNING, "dali_pipelines"):
            metas[workers] = [b[4] for b in _batches(loader, epochs=(0, 1, 2))]
        assert _named(caplog, bad) == 1, caplog.text  # named once, by the loader's process
        assert loader.source.bad == {2}
        loader.close()
    vids = np.concatenate([m[:, 0] for m in metas[2]])
    assert 2 not in vids.tolist() and len(vids) == 3 * 8
    assert all(_same(a, b) for a, b in zip(metas[0], metas[2]))  # replaced as without workers


def test_evaluation_with_workers_leaves_unreadable_out(tmp_path, caplog):
    manifest = make_index_videos(tmp_path, [30] * 7, codec="vp9", gop=8)
    bad = read_manifest(manifest)[4].path
    with open(bad, "wb") as f:
        f.write(b"not a video" * 30)
    cfg = small_config(host_workers=2)
    cfg.eval.batch_size = 3
    loader = build_linear_loader(cfg, str(manifest), device="cpu", train=False)
    with caplog.at_level(logging.WARNING, "dali_pipelines"):
        seen = []
        for _ in loader:
            seen += loader.last_meta[:, 0].tolist()
    loader.close()
    assert sorted(seen) == [0, 1, 2, 3, 5, 6]  # every readable video once
    assert loader.source.bad == {4} and _named(caplog, bad) == 1


def test_undecodable_video_is_skipped_with_workers(tmp_path, caplog):
    manifest = make_index_videos(tmp_path, [40] * 8, codec="vp9", gop=8)
    bad = read_manifest(manifest)[5].path
    corrupt_payload(bad, 0, 39)  # indexes fine, fails in the decoder
    loader = build_pretrain_loader(small_config(host_workers=2), str(manifest), device="cpu", seed=0)
    with caplog.at_level(logging.WARNING, "dali_pipelines"):
        batches = _batches(loader, epochs=(0,))
    loader.close()
    vids = np.concatenate([b[4][:, 0] for b in batches]).tolist()
    assert len(batches) == 2 and 5 not in vids
    assert bad in caplog.text and "video decoder" in caplog.text


def test_workers_stop_on_close(manifest):
    before = _children()
    loader = build_pretrain_loader(small_config(host_workers=2), str(manifest), device="cpu", seed=0)
    next(iter(loader))
    workers = _children() - before
    assert len(workers) >= 2  # the pool's processes are this process's children
    loader.close()
    deadline = time.monotonic() + 60
    while _alive(workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(workers)


def test_host_workers_setting(monkeypatch):
    assert resolve_host_workers(0) == 0 and resolve_host_workers(3) == 3
    with pytest.raises(ValueError, match="host_workers"):
        resolve_host_workers(-2)
    monkeypatch.setattr(os, "sched_getaffinity", lambda _: set(range(64)))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")  # 8 cores per process
    assert resolve_host_workers(-1) == 2
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "32")  # 2 cores per process: the pipeline thread does it
    assert resolve_host_workers(-1) == 0
