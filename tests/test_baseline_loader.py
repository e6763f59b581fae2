"""The PyAV + DataLoader baseline loader: right frames, per-clip consistent augmentation, fast path =
reference."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("av")  # absent on a bare GPU image: skip, not a collection error
import torch
from videos import decode_index, index_frames

from dali_pipelines import recipe, spatial, temporal
from dali_pipelines.host import META, PretrainSource
from dali_pipelines.manifest import VideoEntry, write_manifest
from fastcvrl.config import Config
from fastcvrl.datasets.video import write_video

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from baseline_loader import (
    PRETRAIN_STREAM,
    ClipAug,
    augment_clip,
    build_baseline_loader,
    decode_frames,
    draw_video,
)  # noqa: E402

T, S, GOP = 6, 2, 8
CPU = torch.device("cpu")


def _cfg(color: bool = True, batch: int = 2) -> Config:
    cfg = Config()
    cfg.data.num_frames, cfg.data.stride, cfg.data.crop_size = T, S, 24
    if not color:
        cfg.data.color_jitter_prob = cfg.data.grayscale_prob = 0.0
    cfg.train.batch_size = batch
    return cfg


@pytest.fixture(scope="module")
def index_manifest(tmp_path_factory) -> tuple[str, dict[int, int]]:
    """Four index-coded VP9 videos (one shorter than a clip), keyframe every GOP frames; label = video id."""
    d = tmp_path_factory.mktemp("idx")
    lengths = {0: 64, 1: 40, 2: 90, 3: 7}
    entries = []
    for vid, n in lengths.items():
        path = write_video(d / f"v{vid}.webm", index_frames(n, 32, 48, vid), codec="vp9", gop=GOP)
        entries.append(VideoEntry(str(path), vid, n, 25.0, 48, 32, "vp9"))
    write_manifest(d / "manifest.csv", entries)
    return str(d / "manifest.csv"), lengths


def _decode_views(view: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(B,3,T,H,W) in [0,1] -> (frame index, video id) arrays (B,T)."""
    return decode_index(view.permute(0, 2, 3, 4, 1).numpy() * 255.0)


def test_decode_frames_seeks_to_keyframe_before_clip(index_manifest):
    manifest, _ = index_manifest
    path = str(manifest).replace("manifest.csv", "v2.webm")
    for start in (0, 13, 40, 63):
        idx = temporal.clip_indices(start, 90, T, S)
        frames, decoded = decode_frames(path, idx)
        got, vid = decode_index(frames)
        assert got.tolist() == idx.tolist() and set(vid.tolist()) == {2}
        # from the keyframe at or before `start` to the clip's last frame, nothing more
        assert decoded == idx[-1] - (start // GOP) * GOP + 1


def test_loader_clips_are_T_frames_s_apart_from_the_right_video(index_manifest):
    manifest, lengths = index_manifest
    loader = build_baseline_loader(_cfg(color=False), manifest, device=CPU, num_workers=2)
    assert len(loader) == 2
    seen = []
    for v1, v2, label in loader:
        assert v1.shape == v2.shape == (2, 3, T, 24, 24) and v1.dtype == torch.float32
        assert v1.is_contiguous(memory_format=torch.channels_last_3d)
        for view in (v1, v2):
            idx, vid = _decode_views(view)
            for b in range(len(label)):
                n = lengths[int(label[b])]
                assert (vid[b] == int(label[b])).all()
                assert ((np.diff(idx[b]) - S) % n == 0).all(), idx[b]  # stride s, looping short videos
        seen += label.tolist()
    assert sorted(seen) == [0, 1, 2, 3]
    per_clip = loader.frames_decoded / loader.videos
    span = (T - 1) * S + 1
    assert loader.videos == 4 and per_clip >= 2 * T
    # long videos decode at most the keyframe distance more than the two spans; the 7-frame one loops over all
    # 7
    assert loader.frames_decoded <= 3 * 2 * (span + GOP - 1) + 2 * 7


def test_epochs_are_deterministic_and_differ(index_manifest):
    manifest, _ = index_manifest

    def epoch(e: int) -> list[torch.Tensor]:
        loader = build_baseline_loader(_cfg(), manifest, device=CPU, num_workers=0, seed=3)
        loader.set_epoch(e)
        return [t for batch in loader for t in batch]

    a, b, c = epoch(1), epoch(1), epoch(2)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(x.shape == y.shape and torch.equal(x, y) for x, y in zip(a, c))
    # resuming mid-epoch: iter_from(k) gives batches k.. of the epoch
    loader = build_baseline_loader(_cfg(), manifest, device=CPU, num_workers=0, seed=3)
    loader.set_epoch(1)
    rest = [t for batch in loader.iter_from(1) for t in batch]
    assert len(rest) == len(a) - 3 and all(torch.equal(x, y) for x, y in zip(a[3:], rest))


@pytest.mark.filterwarnings(
    "ignore::dali_pipelines.manifest.ManifestWarning"
)  # one video twice: a batch of two, on purpose
def test_static_video_stays_static_and_views_differ(tmp_path):
    rng = np.random.default_rng(0)
    texture = np.kron(rng.integers(0, 256, (8, 12, 3)), np.ones((4, 4, 1))).astype(np.uint8)[None]
    path = write_video(
        tmp_path / "static.webm", np.repeat(texture, 30, axis=0), codec="vp9", gop=GOP, quality=4
    )
    entries = [VideoEntry(str(path), 0, 30, 25.0, 48, 32, "vp9")] * 2
    write_manifest(tmp_path / "m.csv", entries)
    loader = build_baseline_loader(_cfg(), str(tmp_path / "m.csv"), device=CPU, num_workers=0)
    v1, v2, _ = next(iter(loader))
    for view in (v1, v2):
        spread = (view - view[:, :, :1]).abs().amax()
        assert spread < 0.06, spread  # codec noise only: every frame got the same crop, flip and colour
    assert (v1 - v2).abs().mean() > 0.02  # the two views got different augmentations
    assert (v1[0] - v1[1]).abs().mean() > 0.02  # and so did the two clips of the batch


def test_augment_clip_identical_frames_give_identical_outputs():
    rng = np.random.default_rng(1)
    frame = torch.from_numpy(rng.integers(0, 256, (1, 40, 50, 3), dtype=np.uint8))
    frames = frame.expand(5, -1, -1, -1).contiguous()
    cfg = _cfg().data
    for _ in range(3):
        for aug in draw_video(rng, 30, 40, 50, cfg)[1]:
            out = augment_clip(frames, aug, 24, cfg.mean, cfg.std)
            assert torch.equal(out, out[:1].expand_as(out))


# ------------------------------------------------------------------------------- slow, obvious references
def _bilinear(img: np.ndarray, size: int) -> np.ndarray:
    """Per-pixel bilinear resize (half-pixel centres, edge clamped) of (h, w, 3) to (size, size, 3)."""
    h, w, _ = img.shape
    out = np.zeros((size, size, 3))
    for oy in range(size):
        sy = max((oy + 0.5) * h / size - 0.5, 0.0)
        y0 = min(int(math.floor(sy)), h - 1)
        y1, fy = min(y0 + 1, h - 1), sy - y0
        for ox in range(size):
            sx = max((ox + 0.5) * w / size - 0.5, 0.0)
            x0 = min(int(math.floor(sx)), w - 1)
            x1, fx = min(x0 + 1, w - 1), sx - x0
            top = (1 - fx) * img[y0, x0] + fx * img[y0, x1]
            bottom = (1 - fx) * img[y1, x0] + fx * img[y1, x1]
            out[oy, ox] = (1 - fy) * top + fy * bottom
    return out


@pytest.mark.parametrize("flip,gray", [(False, False), (True, True)])
def test_augment_clip_matches_reference(flip, gray):
    rng = np.random.default_rng(2)
    frames = rng.integers(0, 256, (2, 20, 26, 3), dtype=np.uint8)
    color, order = recipe.color_params(rng, 1.0, (0.8, 0.8, 0.8, 0.2), 1.0 if gray else 0.0)
    aug = ClipAug(top=3, left=5, height=13, width=17, flip=flip, color=color, order=order)
    mean, std = [0.4, 0.5, 0.6], [0.2, 0.25, 0.3]
    fast = augment_clip(torch.from_numpy(frames), aug, 9, mean, std).numpy()
    ref = np.stack([_bilinear(frames[t, 3:16, 5:22].astype(np.float64), 9) / 255.0 for t in range(2)])
    if flip:
        ref = ref[:, :, ::-1]
    ref = spatial.apply_color_reference(ref, aug.color, aug.order)  # the whole clip: contrast uses its mean
    ref = (np.clip(ref, 0.0, 1.0) - np.array(mean)) / np.array(std)
    np.testing.assert_allclose(fast, ref, atol=5e-5)
    if gray:
        np.testing.assert_allclose(fast[..., 0] * 0.2 + 0.4, fast[..., 1] * 0.25 + 0.5, atol=1e-5)


# ------------------------------------------------------------------------------- same work as the DALI
# pipeline
def test_draws_match_the_dali_source(index_manifest):
    """Same (seed, epoch, video) -> the same clip starts, crop, flip and colour as the DALI pipeline's host
    side."""
    from dali_pipelines.manifest import read_manifest

    manifest, _ = index_manifest
    entries = read_manifest(manifest)
    cfg = _cfg().data
    source = PretrainSource(entries, 2, cfg, seed=5)
    for epoch in (0, 3):
        source.set_epoch(epoch)
        for video, e in enumerate(entries):
            sample = source.sample(video)
            meta = sample["meta"]
            starts, augs = draw_video(
                np.random.default_rng([5, epoch, video, PRETRAIN_STREAM]),
                e.num_frames,
                e.height,
                e.width,
                cfg,
            )
            assert starts == (int(meta[META["start1"]]), int(meta[META["start2"]]))
            for v, aug in enumerate(augs):
                roi_start, roi_end, color, order = (
                    sample[f"{n}{v + 1}"] for n in ("roi_start", "roi_end", "color", "color_order")
                )
                x0, x1 = sorted((float(roi_start[1]), float(roi_end[1])))
                assert (float(roi_end[1]) < float(roi_start[1])) == aug.flip
                assert abs(roi_start[0] - aug.top) <= 0.5 and abs(x0 - aug.left) <= 0.5
                assert abs(roi_end[0] - roi_start[0] - aug.height) <= 1.0 and abs(x1 - x0 - aug.width) <= 1.0
                assert np.array_equal(color, aug.color) and np.array_equal(order, aug.order)


def test_same_batches_as_the_dali_loader(index_manifest):
    """Both loaders deliver the same frames of the same videos in the same order (colour off: index
    coding)."""
    pytest.importorskip("nvidia.dali")
    from dali_pipelines.loaders import build_pretrain_loader

    manifest, _ = index_manifest
    cfg = _cfg(color=False)
    cfg.data.device, cfg.data.num_threads = "cpu", 1
    base = build_baseline_loader(cfg, manifest, device=CPU, num_workers=0, seed=2)
    dali = build_pretrain_loader(cfg, manifest, device=CPU, seed=2)
    for epoch in (0, 1):
        base.set_epoch(epoch)
        dali.set_epoch(epoch)
        batches = list(zip(base, dali))
        assert len(batches) == len(base) == len(dali)
        for (b1, b2, bl), (d1, d2, dl) in batches:
            assert torch.equal(bl, dl)
            for bv, dv in ((b1, d1), (b2, d2)):
                assert bv.shape == dv.shape
                bi, bvid = _decode_views(bv)
                di, dvid = _decode_views(dv.float())
                assert np.array_equal(bi, di) and np.array_equal(bvid, dvid)
    assert (
        base.frames_decoded > dali.stats["frames_decoded"]
    )  # two seeks per video vs one pass over both clips


def test_corrupt_video_is_reported_and_skipped(index_manifest, tmp_path, capsys):
    manifest, _ = index_manifest
    bad = tmp_path / "bad.webm"
    bad.write_bytes(b"\x1a\x45\xdf\xa3" + bytes(range(256)) * 8)
    good = str(manifest).replace("manifest.csv", "v0.webm")
    write_manifest(
        tmp_path / "m.csv",
        [VideoEntry(str(bad), 9, 64, 25.0, 48, 32, "vp9"), VideoEntry(good, 0, 64, 25.0, 48, 32, "vp9")],
    )
    cfg = _cfg(color=False, batch=2)
    loader = build_baseline_loader(cfg, str(tmp_path / "m.csv"), device=CPU, num_workers=0)
    _, _, label = next(iter(loader))
    assert label.tolist() == [0, 0]
    assert "bad.webm" in capsys.readouterr().out
