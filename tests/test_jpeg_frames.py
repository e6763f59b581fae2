"""The MJPEG path on the CPU (``dali_pipelines/jpeg_frames.py``) against the video decoder's path."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

av = pytest.importorskip("av")  # absent on a bare GPU image: skip, not a collection error
pytest.importorskip("nvidia.dali")
from dali_videos import make_index_videos, small_config

from dali_pipelines import jpeg_frames, torch_augment
from dali_pipelines.host import PretrainSource
from dali_pipelines.manifest import read_manifest
from fastcvrl.data import pretrain_settings


def test_crop_resize_frames_equals_crop_resize_of_the_stacked_video():
    """The per-frame crop (the fast path: copies only the crops) against the kernel on the stacked video."""
    rng = np.random.default_rng(0)
    frames = [torch.from_numpy(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)) for _ in range(9)]
    video = torch.stack(frames)
    for _ in range(20):
        y0, x0 = rng.integers(0, 20), rng.integers(0, 28)
        y1, x1 = y0 + rng.integers(1, 21), x0 + rng.integers(1, 29)
        roi_start, roi_end = np.array([y0, x0], np.float32), np.array([y1, x1], np.float32)
        if rng.random() < 0.5:  # flipped: the x bounds swapped
            roi_start[1], roi_end[1] = roi_end[1], roi_start[1]
        order = rng.integers(0, 9, 6)
        size = int(rng.choice([8, 16]))
        want = torch_augment.crop_resize(video, order, roi_start, roi_end, size)
        got = jpeg_frames.crop_resize_frames(frames, order, roi_start, roi_end, size)
        assert got.shape == want.shape == (6, 3, size, size)
        assert torch.equal(got, want)


@pytest.fixture(scope="module")
def mjpeg_manifest(tmp_path_factory):
    return make_index_videos(tmp_path_factory.mktemp("jpeg"), [20, 9, 30, 14] * 2, codec="mjpeg", gop=1)


def _frames_of_jpegs(encoded: np.ndarray, ends: np.ndarray) -> np.ndarray:
    starts = np.concatenate([[0], ends[:-1]])
    out = []
    for a, e in zip(starts, ends):
        with av.open(io.BytesIO(encoded[a:e].tobytes()), format="mjpeg") as c:
            out.append(next(c.decode(video=0)).to_ndarray(format="rgb24"))
    return np.stack(out)


def test_jpeg_source_draws_what_the_video_source_draws(mjpeg_manifest):
    """Same clips, crops, colour, labels and bookkeeping as ``PretrainSource``; its JPEGs are the frames the
    trimmed stream holds, in the same order."""
    cfg = small_config(color_jitter_prob=0.8)
    entries = read_manifest(mjpeg_manifest)
    plain = PretrainSource(entries, 4, pretrain_settings(cfg), seed=3)
    jpeg = jpeg_frames.JpegPretrainSource(entries, 4, pretrain_settings(cfg), seed=3)
    assert jpeg.columns == (*plain.columns, "jpeg_ends")
    for epoch in (0, 1):
        plain.set_epoch(epoch)
        jpeg.set_epoch(epoch)
        for step in range(len(plain)):
            for a, b in zip(plain.batch(step), jpeg.batch(step)):
                for name in plain.columns:
                    if name != "encoded":
                        assert np.array_equal(a[name], b[name]), name
                with av.open(io.BytesIO(a.encoded.tobytes())) as c:
                    trimmed = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])
                ends = b["jpeg_ends"]
                assert ends[-1] == len(b.encoded) and len(ends) == len(trimmed)
                assert np.array_equal(_frames_of_jpegs(b.encoded, ends), trimmed)


def test_frame_source_rows_regroup_to_the_videos(mjpeg_manifest):
    """One row per frame: the JPEGs in order, slots (video, frame), and each video's columns packed on its
    first row (empty on the others), unpacked to the source's own values."""
    cfg = small_config()
    source = jpeg_frames.JpegPretrainSource(read_manifest(mjpeg_manifest), 4, pretrain_settings(cfg), seed=0)
    frames = jpeg_frames.FrameSource(source)
    rows = dict(zip(frames.columns, frames(0)))
    samples = source.recent[0]
    slot = np.stack(rows["slot"])
    assert len(slot) == sum(len(s["jpeg_ends"]) for s in samples)
    for b, s in enumerate(samples):
        mine = np.flatnonzero(slot[:, 0] == b)
        assert slot[mine, 1].tolist() == list(range(len(s["jpeg_ends"])))
        assert b"".join(rows["jpeg"][i].tobytes() for i in mine) == s.encoded.tobytes()
        assert all(len(rows["video"][i]) == 0 for i in mine[1:])
        unpacked = frames.unpack(rows["video"][mine[0]])
        assert list(unpacked) == list(frames.video_columns)
        for name in frames.video_columns:
            assert np.array_equal(unpacked[name], s[name]) and unpacked[name].dtype == s[name].dtype, name


@pytest.mark.parametrize("host_workers", [0, 1])
def test_jpeg_loader_matches_the_video_decoder_loader(mjpeg_manifest, monkeypatch, host_workers):
    """The whole loader on the JPEG path against the video decoder's path (the reference): the same labels
    and clips; pixels within the two JPEG decoders' difference (a few uint8 levels before normalising)."""
    from fastcvrl.data import build_pretrain_loader

    cfg = small_config(color_jitter_prob=0.8, grayscale_prob=0.2, crop_size=24, host_workers=host_workers)
    cfg.data.mean, cfg.data.std = [0.0] * 3, [1.0] * 3  # views in [0, 1]: differences read as levels / 255

    def epochs(enabled: bool) -> list:
        monkeypatch.setattr(jpeg_frames, "ENABLED", enabled)
        loader = build_pretrain_loader(cfg, str(mjpeg_manifest), device="cpu", seed=5)
        assert isinstance(loader.source, jpeg_frames.JpegPretrainSource) == enabled
        out = []
        for epoch in (0, 1):
            loader.set_epoch(epoch)
            out += [(b, loader.last_meta.copy()) for b in loader]
        loader.close()
        return out

    fast, slow = epochs(True), epochs(False)
    assert len(fast) == len(slow) == 4
    for (a, meta_a), (b, meta_b) in zip(fast, slow):
        assert torch.equal(a[2], b[2])  # labels
        assert np.array_equal(meta_a, meta_b)  # videos, starts, frames decoded
        for x, y in zip(a[:2], b[:2]):
            assert x.shape == y.shape == (4, 3, 4, 24, 24)
            assert x.is_contiguous(memory_format=torch.channels_last_3d)
            diff = (x - y).abs()
            assert float(diff.max()) <= 8 / 255 and float(diff.mean()) <= 1.5 / 255
