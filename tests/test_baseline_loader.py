"""The PyAV + DataLoader baseline loader: right frames, per-clip consistent augmentation, fast path = reference."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from fastcvrl.baseline_loader import (
    ClipAug,
    augment_clip,
    build_baseline_loader,
    clip_indices,
    colour_matrix,
    crop_box,
    decode_frames,
    draw_clip_aug,
    grayscale_matrix,
    sample_view_starts,
)
from fastcvrl.config import Config
from fastcvrl.manifest import VideoEntry, write_manifest
from fastcvrl.video import decode_index, index_frames, write_video

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
        idx = clip_indices(start, T, S, 90)
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
    # long videos decode at most the keyframe distance more than the two spans; the 7-frame one loops over all 7
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


def test_static_video_stays_static_and_views_differ(tmp_path):
    rng = np.random.default_rng(0)
    texture = np.kron(rng.integers(0, 256, (8, 12, 3)), np.ones((4, 4, 1))).astype(np.uint8)[None]
    path = write_video(tmp_path / "static.webm", np.repeat(texture, 30, axis=0), codec="vp9", gop=GOP, quality=4)
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
    for _ in range(5):
        out = augment_clip(frames, draw_clip_aug(rng, 40, 50, cfg), 24, cfg.mean, cfg.std)
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


def _jitter_pixelwise(rgb: np.ndarray, b: float, c: float, s: float, h: float, gray: bool) -> np.ndarray:
    """The jitter as a sequence of ops on each pixel: YIQ hue rotation and saturation, contrast about 0.5,
    brightness, grayscale."""
    out = np.empty_like(rgb)
    for i, px in enumerate(rgb.reshape(-1, 3)):
        r, g, bl = px
        y = 0.299 * r + 0.587 * g + 0.114 * bl
        ii = 0.596 * r - 0.274 * g - 0.322 * bl
        q = 0.211 * r - 0.523 * g + 0.312 * bl
        th = 2 * math.pi * h
        ii, q = s * (ii * math.cos(th) - q * math.sin(th)), s * (ii * math.sin(th) + q * math.cos(th))
        yiq = np.array([y, ii, q])
        px = np.linalg.solve(np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]]), yiq)
        px = (px - 0.5) * c + 0.5
        px = px * b
        if gray:
            px = np.full(3, 0.299 * px[0] + 0.587 * px[1] + 0.114 * px[2])
        out.reshape(-1, 3)[i] = px
    return out


@pytest.mark.parametrize("flip,gray", [(False, False), (True, True)])
def test_augment_clip_matches_reference(flip, gray):
    rng = np.random.default_rng(2)
    frames = rng.integers(0, 256, (2, 20, 26, 3), dtype=np.uint8)
    jitter = (1.3, 0.7, 1.4, 0.15)
    a, off = colour_matrix(*jitter)
    if gray:
        a, off = grayscale_matrix() @ a, grayscale_matrix() @ off
    aug = ClipAug(top=3, left=5, height=13, width=17, flip=flip, matrix=a, offset=off)
    mean, std = [0.4, 0.5, 0.6], [0.2, 0.25, 0.3]
    fast = augment_clip(torch.from_numpy(frames), aug, 9, mean, std).numpy()
    for t in range(2):
        ref = _bilinear(frames[t, 3:16, 5:22].astype(np.float64), 9) / 255.0
        if flip:
            ref = ref[:, ::-1]
        ref = np.clip(_jitter_pixelwise(ref, *jitter, gray), 0.0, 1.0)
        ref = (ref - np.array(mean)) / np.array(std)
        np.testing.assert_allclose(fast[t], ref, atol=2e-5)


def test_colour_matrix_identity_and_grey():
    a, b = colour_matrix(1.0, 1.0, 1.0, 0.0)
    np.testing.assert_allclose(a, np.eye(3), atol=1e-12)
    np.testing.assert_allclose(b, 0.0)
    a, b = colour_matrix(1.0, 1.0, 0.0, 0.1)  # no saturation: every channel is the luma
    np.testing.assert_allclose(a, grayscale_matrix(), atol=1e-3)


# ------------------------------------------------------------------------------- sampling statistics
def test_crop_box_inside_frame_with_area_and_aspect_in_range():
    rng = np.random.default_rng(3)
    for _ in range(500):
        top, left, h, w = crop_box(rng, 64, 80)
        assert 0 <= top and top + h <= 64 and 0 <= left and left + w <= 80
        ok = 0.3 * 0.9 <= h * w / (64 * 80) <= 1.0 and 0.5 * 0.85 <= w / h <= 2.0 * 1.15
        centre = (h, w) == (64, 80)  # fallback
        assert ok or centre


def test_gap_follows_linear_rule():
    rng = np.random.default_rng(4)
    L = 200
    m = L - (T - 1) * S
    gaps, firsts = [], []
    for _ in range(3000):
        a, b = sample_view_starts(rng, L, T, S, "linear")
        assert 0 <= a < m and 0 <= b < m
        gaps.append(abs(a - b))
        firsts.append(min(a, b))
    # density proportional to M - g on [0, M): CDF 1 - (1 - g/M)^2, tested on the integer floor
    g = np.array(gaps) + np.random.default_rng(5).uniform(size=len(gaps))
    p = stats.kstest(g, lambda x: 1 - (1 - np.clip(x, 0, m) / m) ** 2).pvalue
    assert p > 1e-3, p
    assert sample_view_starts(rng, 5, T, S) == (0, 0)  # shorter than a clip: loop from the start


def test_corrupt_video_is_reported_and_skipped(index_manifest, tmp_path, capsys):
    manifest, _ = index_manifest
    bad = tmp_path / "bad.webm"
    bad.write_bytes(b"\x1a\x45\xdf\xa3" + bytes(range(256)) * 8)
    good = str(manifest).replace("manifest.csv", "v0.webm")
    write_manifest(tmp_path / "m.csv", [VideoEntry(str(bad), 9, 64, 25.0, 48, 32, "vp9"),
                                        VideoEntry(good, 0, 64, 25.0, 48, 32, "vp9")])
    cfg = _cfg(color=False, batch=2)
    loader = build_baseline_loader(cfg, str(tmp_path / "m.csv"), device=CPU, num_workers=0)
    _, _, label = next(iter(loader))
    assert label.tolist() == [0, 0]
    assert "bad.webm" in capsys.readouterr().out
