"""Weighted kNN monitor: fast path vs loop reference, the weighting rule, the monitor's mode handling, the
capped bank and queries, and two gloo ranks giving the single process's result."""

from __future__ import annotations

import math
import os
import time

import pytest
import torch
import torch.multiprocessing as mp
from processes import rendezvous_env
from torch import nn

from fastcvrl.eval.features import clip_features, video_features
from fastcvrl.eval.knn import capped_rows, knn_monitor, knn_predict, knn_predict_reference, topk_accuracy


@pytest.mark.parametrize("k,chunk", [(7, 1024), (7, 3), (500, 4)])  # k > N is capped; several chunks
def test_knn_fast_matches_reference(k, chunk):
    g = torch.Generator().manual_seed(0)
    train = torch.randn(40, 6, generator=g) * 3  # not normalised: knn_predict must normalise itself
    labels = torch.randint(0, 5, (40,), generator=g)
    test = torch.randn(11, 6, generator=g)
    fast = knn_predict(train, labels, test, 5, k=k, temperature=0.1, chunk_size=chunk)
    ref = knn_predict_reference(train, labels, test, 5, k=k, temperature=0.1)
    assert fast.shape == (11, 5)
    torch.testing.assert_close(fast, ref, rtol=1e-4, atol=1e-6)


def _unit(angle_deg: float) -> list[float]:
    a = math.radians(angle_deg)
    return [math.cos(a), math.sin(a)]


def test_weighting_prefers_one_close_neighbour_over_three_far_ones_at_low_temperature():
    # Query at angle 0. Class 0: one training clip at 0 deg (sim 1). Class 1: three clips at +-36.87 deg (sim
    # 0.8).
    s = 0.8
    far = math.degrees(math.acos(s))
    train = torch.tensor([_unit(0), _unit(far), _unit(-far), _unit(far)])
    labels = torch.tensor([0, 1, 1, 1])
    query = torch.tensor([_unit(0)])
    # T=0.1: exp(10) = 22026 > 3 exp(8) = 8943 -> class 0 wins although it is outvoted 3:1.
    votes = knn_predict(train, labels, query, 2, k=4, temperature=0.1)
    assert votes.argmax(1).item() == 0
    torch.testing.assert_close(votes[0], torch.tensor([math.exp(10), 3 * math.exp(8)]), rtol=1e-4, atol=0)
    # T=1: exp(1) = 2.7 < 3 exp(0.8) = 6.7 -> the majority wins.
    assert knn_predict(train, labels, query, 2, k=4, temperature=1.0).argmax(1).item() == 1
    # k=1: only the nearest votes, the other class gets nothing.
    v1 = knn_predict(train, labels, query, 2, k=1, temperature=1.0)
    assert v1[0, 1].item() == 0 and v1[0, 0].item() > 0


def test_topk_accuracy():
    scores = torch.tensor([[0.1, 0.5, 0.4], [0.7, 0.2, 0.1], [0.2, 0.3, 0.5]])
    labels = torch.tensor([2, 0, 0])
    acc = topk_accuracy(scores, labels, (1, 2, 5))
    assert acc[1] == pytest.approx(1 / 3)
    assert acc[2] == pytest.approx(2 / 3)
    assert acc[5] == pytest.approx(1.0)  # k capped at the class count


class _MeanColour(nn.Module):
    """(B,3,T,H,W) -> (B,3) mean colour; records its mode and grad state at each call."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(3))
        self.calls: list[tuple[bool, bool]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append((self.training, torch.is_grad_enabled()))
        return x.mean(dim=(2, 3, 4)) * self.scale


def _clips(labels: torch.Tensor, g: torch.Generator, views: int = 1) -> torch.Tensor:
    """Clips whose mean colour is one-hot in the label's channel plus noise: (B*views, 3, 2, 4, 4)."""
    base = torch.nn.functional.one_hot(labels, 3).float().repeat_interleave(views, 0)  # (B*V, 3)
    return base[:, :, None, None, None] + 0.3 * torch.randn(base.shape[0], 3, 2, 4, 4, generator=g)


def test_knn_monitor_classifies_separable_clips_and_restores_train_mode():
    g = torch.Generator().manual_seed(1)
    train_y = torch.arange(60) % 3
    test_y = torch.arange(30) % 3
    train_loader = [(_clips(y, g), y) for y in train_y.split(16)]
    test_loader = [(_clips(y, g), y) for y in test_y.split(8)]
    backbone = _MeanColour().train()
    stats = knn_monitor(backbone, train_loader, test_loader, k=20, temperature=0.1)
    assert stats["knn_top1"] == pytest.approx(1.0)
    assert stats["knn_train_size"] == 60 and stats["knn_test_size"] == 30
    assert all(not training and not grad for training, grad in backbone.calls)  # eval mode, no grad
    assert backbone.training  # restored
    # shuffled labels carry no information: the monitor must not find any.
    perm = torch.randperm(60, generator=g)
    noisy = [(_clips(y, g), y) for y in train_y.split(16)]
    noisy = [(c, y) for (c, _), y in zip(noisy, train_y[perm].split(16))]
    chance = knn_monitor(backbone, noisy, test_loader, k=20, temperature=0.1)
    assert chance["knn_top1"] < 0.7


def test_video_features_average_contiguous_views():
    g = torch.Generator().manual_seed(2)
    y = torch.tensor([0, 2, 1])
    clips = _clips(y, g, views=4)  # (12, 3, 2, 4, 4), views of a video contiguous
    backbone = _MeanColour()
    feats, labels, videos = video_features(
        clip_features([backbone], [(clips, y, torch.tensor([5, 1, 3]))], "cpu")
    )
    per_view = torch.nn.functional.normalize(clips.mean(dim=(2, 3, 4)), dim=1).view(3, 4, 3).mean(1)
    want = torch.nn.functional.normalize(per_view, dim=1)
    assert videos.tolist() == [1, 3, 5]  # ascending video ids
    torch.testing.assert_close(feats, want[[1, 2, 0]])
    assert labels.tolist() == [2, 1, 0]


def test_capped_rows_are_a_fixed_seeded_subset():
    a = capped_rows(1000, 100, seed=3, purpose=0)
    assert len(a) == len(set(a)) == 100 and a == sorted(a) and 0 <= a[0] and a[-1] < 1000
    assert a == capped_rows(1000, 100, seed=3, purpose=0)  # the same on every rank and call
    assert a != capped_rows(1000, 100, seed=4, purpose=0) and a != capped_rows(1000, 100, seed=3, purpose=1)
    assert (
        capped_rows(10, 0, 0, 0) == capped_rows(10, 10, 0, 0) == capped_rows(10, 50, 0, 0) == list(range(10))
    )


# ------------------------------------------------------------------------------ sharded over two gloo ranks
WORLD = 2
KNN = [
    "--model.arch=r3d_tiny",
    "--data.device=cpu",
    "--data.num_threads=1",
    "--eval.num_frames=4",
    "--eval.stride=2",
    "--eval.crop_size=32",
    "--eval.short_side=36",
    "--eval.batch_size=2",
    "--eval.knn_bank_size=7",
    "--eval.knn_query_size=5",
    "--eval.knn_k=3",
    "--train.seed=5",
]


@pytest.fixture(scope="module")
def knn_set(tmp_path_factory):
    from fastcvrl.datasets.synthetic import ensure_synthetic

    root = tmp_path_factory.mktemp("knn") / "d"
    return ensure_synthetic(
        root, num_classes=2, videos_per_class=5, test_videos_per_class=3, size=32, num_frames=16, workers=1
    )


def _knn_run(train_m: str, test_m: str) -> dict:
    from fastcvrl.config import load_config
    from fastcvrl.eval.knn import KnnMonitor
    from fastcvrl.model import build_backbone

    cfg = load_config(None, KNN)
    torch.manual_seed(0)
    backbone = build_backbone("r3d_tiny")
    monitor = KnnMonitor(cfg, train_m, test_m, "cpu", log=lambda s: None)
    bank = monitor.bank(backbone)
    return {
        "stats": monitor(backbone),
        "bank": bank.feats[0],
        "labels": bank.labels,
        "video": bank.video,
        "bank_rows": monitor.bank_rows,
        "query_rows": monitor.query_rows,
    }


def _knn_worker(rank: int, meet: dict, train_m: str, test_m: str, out: str) -> None:
    os.environ.update(
        meet,
        RANK=str(rank),
        WORLD_SIZE=str(WORLD),
        LOCAL_RANK=str(rank),
    )
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        torch.save(_knn_run(train_m, test_m), os.path.join(out, f"rank{rank}.pt"))
        torch.distributed.barrier()
    finally:
        torch.distributed.destroy_process_group()


def test_two_gloo_ranks_give_the_single_process_knn(knn_set, tmp_path):
    train_m, test_m = knn_set
    ctx = mp.get_context("spawn")
    with rendezvous_env() as meet:
        procs = [
            ctx.Process(target=_knn_worker, args=(r, meet, train_m, test_m, str(tmp_path)))
            for r in range(WORLD)
        ]
        for p in procs:
            p.start()
        deadline = time.monotonic() + 300
        try:
            while any(p.exitcode is None for p in procs) and time.monotonic() < deadline:
                if any(p.exitcode not in (None, 0) for p in procs):
                    break  # one rank failed: the other would wait at a collective until the deadline
                time.sleep(0.2)
        finally:
            for p in procs:
                if p.exitcode is None:
                    p.kill()
                p.join(10)
    assert [p.exitcode for p in procs] == [0, 0], "a kNN rank failed or ran past the deadline"

    single = _knn_run(train_m, test_m)  # no process group: the same caps, one process
    assert len(single["bank_rows"]) == 7 and len(single["query_rows"]) == 5  # 10 and 6 videos, capped
    assert single["video"].tolist() == single["bank_rows"]
    for r in range(WORLD):
        got = torch.load(tmp_path / f"rank{r}.pt")
        assert got["bank_rows"] == single["bank_rows"] and got["query_rows"] == single["query_rows"]
        assert got["video"].tolist() == single["bank_rows"]  # the gathered bank, in manifest-row order
        assert torch.equal(got["labels"], single["labels"])
        torch.testing.assert_close(got["bank"], single["bank"], rtol=1e-4, atol=1e-5)
        assert got["stats"] == single["stats"]
    assert single["stats"]["knn_train_size"] == 7 and single["stats"]["knn_test_size"] == 5


def test_monitor_checks_the_splits_when_built(tmp_path):
    """The trainer builds the monitor before its first epoch: a validation class the training split lacks is
    refused then, naming it, not at the first kNN epoch."""
    from dali_pipelines.manifest import VideoEntry
    from fastcvrl.config import Config
    from fastcvrl.datasets.manifest import write_classes, write_manifest
    from fastcvrl.eval.knn import EvalError, KnnMonitor

    for split, labels, names in (("train", [0, 1, 0], ["walk", "run"]), ("val", [0, 1], ["walk", "swim"])):
        folder = tmp_path / split
        folder.mkdir()
        entries = []
        for i, y in enumerate(labels):
            (folder / f"{i}.webm").write_bytes(b"")
            entries.append(VideoEntry(str(folder / f"{i}.webm"), y, 10, 25.0, 32, 32, "vp9"))
        write_manifest(folder / "manifest.csv", entries)
        write_classes(folder / "classes.txt", names)
    with pytest.raises(EvalError, match=r"val/manifest.csv: test class\(es\) 1 \(swim\) are not among"):
        KnnMonitor(
            Config(), str(tmp_path / "train" / "manifest.csv"), str(tmp_path / "val" / "manifest.csv"), "cpu"
        )
