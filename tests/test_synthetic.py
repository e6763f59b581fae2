"""The synthetic motion dataset: deterministic, cached, atomic, and its classes differ by motion only."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from dali_pipelines.manifest import read_classes, read_manifest
from fastcvrl.datasets import synthetic
from fastcvrl.datasets.synthetic import MOTIONS, SCENES, SyntheticParams, ensure_synthetic, render_video
from fastcvrl.datasets.video import keyframe_indices, read_video

TINY = dict(
    num_classes=3, videos_per_class=2, test_videos_per_class=1, size=32, num_frames=12, gop=4, workers=1
)


def _frames(manifest: str) -> list[np.ndarray]:
    return [read_video(e.path) for e in read_manifest(manifest)]


def test_manifests_describe_the_videos(tmp_path):
    train, test = ensure_synthetic(tmp_path / "ds", **TINY)
    entries = read_manifest(train)
    assert [e.label for e in entries] == [0, 0, 1, 1, 2, 2]
    assert len(read_manifest(test)) == 3
    assert read_classes(Path(train).parent / "classes.txt") == MOTIONS[:3]
    for e in entries:
        frames = read_video(e.path)
        assert frames.shape == (e.num_frames, e.height, e.width, 3) == (12, 32, 32, 3)
        assert e.codec == "vp9" and e.path.endswith(".webm")
        assert keyframe_indices(e.path) == [0, 4, 8]


def test_deterministic_by_seed(tmp_path):
    a = _frames(ensure_synthetic(tmp_path / "a", seed=3, **TINY)[0])
    b = _frames(ensure_synthetic(tmp_path / "b", seed=3, **TINY)[0])
    c = _frames(ensure_synthetic(tmp_path / "c", seed=4, **TINY)[0])
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    files = lambda root: sorted((root / "train" / "videos").rglob("*.webm"))  # noqa: E731
    assert [p.read_bytes() for p in files(tmp_path / "a")] == [p.read_bytes() for p in files(tmp_path / "b")]
    assert not any(np.array_equal(x, y) for x, y in zip(a, c))
    # train and test videos are drawn independently
    assert not np.array_equal(
        render_video(SyntheticParams(), "train", 0, 0), render_video(SyntheticParams(), "test", 0, 0)
    )


def test_cache_is_reused_and_refreshed_when_parameters_change(tmp_path):
    root = tmp_path / "ds"
    train, _ = ensure_synthetic(root, **TINY)
    video = read_manifest(train)[0].path
    inode = os.stat(video).st_ino
    assert ensure_synthetic(root, **TINY)[0] == train
    assert os.stat(video).st_ino == inode  # not rewritten
    ensure_synthetic(root, **{**TINY, "num_classes": 2})
    assert [e.label for e in read_manifest(train)] == [0, 0, 1, 1]
    assert not list(tmp_path.glob(".ds.tmp*")) and not list(tmp_path.glob(".ds.old*"))


def test_interrupted_generation_leaves_nothing_that_looks_complete(tmp_path, monkeypatch):
    calls = []

    def fail_on_third(job):
        calls.append(job)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(job)

    real = synthetic._make_one
    monkeypatch.setattr(synthetic, "_make_one", fail_on_third)
    with pytest.raises(KeyboardInterrupt):
        ensure_synthetic(tmp_path / "ds", **TINY)
    assert not (tmp_path / "ds").exists()
    assert not list(tmp_path.glob(".ds.tmp*"))
    monkeypatch.setattr(synthetic, "_make_one", real)
    train, _ = ensure_synthetic(tmp_path / "ds", **TINY)
    assert len(read_manifest(train)) == 6


def test_refuses_to_overwrite_a_foreign_folder(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="mine"):
        ensure_synthetic(tmp_path / "mine", **TINY)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_bad_parameters_are_named():
    with pytest.raises(ValueError, match="num_classes"):
        ensure_synthetic("/nonexistent/x", num_classes=len(MOTIONS) + 1)
    with pytest.raises(ValueError, match="codec"):
        ensure_synthetic("/nonexistent/x", codec="xvid")


@pytest.mark.parametrize("scene", SCENES)
def test_windowed_painting_matches_the_full_frame_reference(scene):
    """The fast path shades a window around each object or dot (with wrap-around on the torus, masked off the
    frame otherwise); the reference shades every pixel."""
    for size in (112, 24):
        params = SyntheticParams(num_classes=len(MOTIONS), size=size, num_frames=20, scene=scene)
        for label in range(len(MOTIONS)):
            for index in range(2):
                fast = render_video(params, "train", label, index).astype(int)
                ref = render_video(params, "train", label, index, reference=True).astype(int)
                assert np.abs(fast - ref).max() <= 1  # float32 rounding of the offsets, nothing more
                assert (fast != ref).mean() < 1e-3


# ------------------------------------------------------------------------------------ motion, not looks
def _frame_features(frame: np.ndarray) -> np.ndarray:
    """Colour mean/std and a 2x2 grid of mean colours: everything one frame shows at a coarse level."""
    x = frame.astype(np.float64)
    h, w = x.shape[:2]
    quads = [
        x[i * h // 2 : (i + 1) * h // 2, j * w // 2 : (j + 1) * w // 2].mean((0, 1))
        for i in (0, 1)
        for j in (0, 1)
    ]
    return np.concatenate([x.mean((0, 1)), x.std((0, 1)), *quads])


def _nearest_centroid_accuracy(train_x, train_y, test_x, test_y) -> float:
    mu, sd = train_x.mean(0), train_x.std(0) + 1e-9
    tx, ex = (train_x - mu) / sd, (test_x - mu) / sd
    classes = np.unique(train_y)
    cent = np.stack([tx[train_y == c].mean(0) for c in classes])
    pred = classes[np.argmin(((ex[:, None] - cent[None]) ** 2).sum(-1), axis=1)]
    return float((pred == test_y).mean())


def _shift(video: np.ndarray, t: int = 4, gap: int = 4, radius: int = 4) -> tuple[int, int]:
    """The (dx, dy) that best maps the pixels changed between frames t and t+gap (slow, obvious search)."""
    a, b = video[t].astype(np.float32), video[t + gap].astype(np.float32)
    changed = np.abs(a - b).sum(-1) > 30
    errs = {
        (dx, dy): np.abs(np.roll(a, (dy, dx), (0, 1)) - b).sum(-1)[changed].mean()
        for dy in range(-radius, radius + 1)
        for dx in range(-radius, radius + 1)
    }
    return min(errs, key=errs.get)


@pytest.mark.parametrize("scene", SCENES)
def test_single_frames_do_not_reveal_the_class(scene):
    """A classifier on single-frame features is at chance on all 8 default classes (by construction the law
    of every frame is the same for every class), while the frame-to-frame shift alone tells the four
    translation directions apart."""
    params = SyntheticParams(size=48, num_frames=16, scene=scene)
    rng = np.random.default_rng(0)
    x, y, shift_ok = {"train": [], "test": []}, {"train": [], "test": []}, []
    for split, n in (("train", 24), ("test", 12)):
        for label in range(8):
            for i in range(n):
                video = render_video(params, split, label, i)
                x[split].append(_frame_features(video[rng.integers(len(video))]))
                y[split].append(label)
                if split == "test" and label < 4:  # move_right, move_left, move_down, move_up
                    dx, dy = _shift(video)
                    pred = (0 if dx > 0 else 1) if abs(dx) >= abs(dy) else (2 if dy > 0 else 3)
                    shift_ok.append(pred == label)
    acc = _nearest_centroid_accuracy(*(np.array(v) for v in (x["train"], y["train"], x["test"], y["test"])))
    assert acc < 0.3, f"single frames classify at {acc:.2f} (chance 0.125)"
    assert np.mean(shift_ok) > 0.9


@pytest.mark.parametrize("scene", SCENES)
def test_mirror_classes_are_time_reversals(scene):
    """move_right reversed in time moves left and vice versa: the pair differs in the direction of time
    only."""
    params = SyntheticParams(size=48, num_frames=16, scene=scene)
    for i in range(6):
        right = render_video(params, "test", MOTIONS.index("move_right"), i)
        left = render_video(params, "test", MOTIONS.index("move_left"), i)
        assert _shift(right)[0] > 0 and _shift(right[::-1])[0] < 0
        assert _shift(left)[0] < 0 and _shift(left[::-1])[0] > 0
