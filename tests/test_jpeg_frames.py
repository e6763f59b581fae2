"""The MJPEG path on the CPU (``dali_pipelines/jpeg_frames.py``) against the video decoder's path."""

from __future__ import annotations

import io
import tempfile
from pathlib import Path

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


def _slow_windows(n, views):
    """The slow statement of ``frame_windows``: per frame, loop over the views, grow the box pixel bound by
    pixel bound."""
    out = []
    for k in range(n):
        box = None
        for order, roi_start, roi_end in views:
            if k not in set(np.asarray(order).tolist()):
                continue
            (y0, x0), (y1, x1) = roi_start.tolist(), roi_end.tolist()
            crop = [int(y0), int(min(x0, x1)), int(y1), int(max(x0, x1))]
            if box is None:
                box = crop
            else:
                box = [min(box[0], crop[0]), min(box[1], crop[1]), max(box[2], crop[2]), max(box[3], crop[3])]
        out.append([0, 0, 1, 1] if box is None else [box[0], box[1], box[2] - box[0], box[3] - box[1]])
    return np.array(out, np.int32)


def _random_views(rng, n, h, w, t):
    views = []
    for _ in range(2):
        y0, x0 = rng.uniform(0, h - 2), rng.uniform(0, w - 2)
        y1, x1 = rng.uniform(y0 + 1, h), rng.uniform(x0 + 1, w)
        roi_start, roi_end = np.array([y0, x0], np.float32), np.array([y1, x1], np.float32)
        if rng.random() < 0.5:  # flipped: the x bounds swapped
            roi_start[1], roi_end[1] = roi_end[1], roi_start[1]
        views.append((rng.integers(0, n, t), roi_start, roi_end))
    return views


def test_frame_windows_are_the_bounding_boxes_of_the_crops_that_use_each_frame():
    rng = np.random.default_rng(1)
    for _ in range(200):
        n = int(rng.integers(1, 12))
        views = _random_views(rng, n, 40, 56, int(rng.integers(1, 8)))
        got = jpeg_frames.frame_windows(n, views)
        assert got.dtype == np.int32 and got.shape == (n, 4)
        assert np.array_equal(got, _slow_windows(n, views))


def test_windowed_frames_crop_and_resize_as_the_whole_video():
    """Each frame cut to its window (what the pipeline decodes), offsets in ``Windows``: the same clips as
    ``crop_resize`` of the whole video, bit for bit."""
    rng = np.random.default_rng(2)
    for _ in range(30):
        n = int(rng.integers(2, 10))
        video = torch.from_numpy(rng.integers(0, 256, (n, 40, 56, 3), dtype=np.uint8))
        views = _random_views(rng, n, 40, 56, 6)
        win = jpeg_frames.frame_windows(n, views)
        cut = [video[k, y : y + h, x : x + w].clone() for k, (y, x, h, w) in enumerate(win.tolist())]
        frames = jpeg_frames.Windows(cut, win[:, :2].tolist())
        for order, roi_start, roi_end in views:
            size = int(rng.choice([8, 16]))
            want = torch_augment.crop_resize(video, order, roi_start, roi_end, size)
            assert torch.equal(jpeg_frames.crop_resize_frames(frames, order, roi_start, roi_end, size), want)


def test_window_decoding_gives_the_whole_frames_pixels():
    """``fn.decoders.image_slice`` on MJPEG frames written by the project's encoder (4:2:0, sizes not a
    multiple of the 16-pixel MCU): every random window equals that part of the whole decoded frame, bit for
    bit; a window shifted by one pixel does not (the check can see a misplaced window)."""
    from nvidia.dali import fn, pipeline_def, types

    from fastcvrl.datasets.video import write_video

    rng = np.random.default_rng(3)
    smooth = rng.integers(0, 256, (6, 10, 13, 3)).repeat(8, 1).repeat(8, 2)[:, :75, :99]
    frames = np.clip(smooth + rng.integers(-40, 41, smooth.shape), 0, 255).astype(np.uint8)
    path = write_video(Path(tempfile.mkdtemp()) / "noise.avi", frames, codec="mjpeg", gop=1)
    with av.open(path) as c:
        jpegs = [np.frombuffer(bytes(p), np.uint8) for p in c.demux(video=0) if p.size]
    batch = [jpegs[i % len(jpegs)] for i in range(48)]
    anchor, shape = [], []
    for _ in batch:
        y, x = int(rng.integers(0, 74)), int(rng.integers(0, 98))
        anchor.append([y, x])
        shape.append([int(rng.integers(1, 76 - y)), int(rng.integers(1, 100 - x))])
    anchor, shape = np.array(anchor, np.int32), np.array(shape, np.int32)

    @pipeline_def(batch_size=len(batch), num_threads=1, device_id=None)
    def graph():
        e = fn.external_source(source=lambda: batch, batch=True)
        a = fn.external_source(source=lambda: anchor, batch=True)
        s = fn.external_source(source=lambda: shape, batch=True)
        whole = fn.decoders.image(e, output_type=types.RGB)
        window = fn.decoders.image_slice(
            e, a, s, output_type=types.RGB, axis_names="HW", normalized_anchor=False, normalized_shape=False
        )
        return whole, window

    pipe = graph()
    whole, window = pipe.run()
    moved = 0
    for i, ((y, x), (h, w)) in enumerate(zip(anchor.tolist(), shape.tolist())):
        full, got = np.asarray(whole[i]), np.asarray(window[i])
        assert full.shape == (75, 99, 3)
        assert np.array_equal(got, full[y : y + h, x : x + w]), (y, x, h, w)
        if y + h < 75:
            moved += not np.array_equal(got, full[y + 1 : y + 1 + h, x : x + w])
    assert moved > 10


def test_handed_over_frames_outlive_later_runs(mjpeg_manifest):
    """The frames ``VideoBatches`` hands over keep DALI's memory alive: later runs do not overwrite a frame
    torch still holds."""
    cfg = small_config()
    source = jpeg_frames.JpegPretrainSource(read_manifest(mjpeg_manifest), 2, pretrain_settings(cfg), seed=0)
    frames = jpeg_frames.FrameSource(source)
    pipe = jpeg_frames.VideoBatches(jpeg_frames.frames_pipeline(frames, max_frames=2 * 2 * 4), frames)
    pipe.pipe.build()
    videos, *_ = pipe.run()
    kept = [[f.clone() for f in v] for v in videos]
    for _ in range(3):
        pipe.run()
    assert all(torch.equal(a, b) for v, k in zip(videos, kept) for a, b in zip(v, k))
    assert all(isinstance(v, jpeg_frames.Windows) and len(v.origins) == len(v) for v in videos)


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


def _spoil_mjpeg(folder: Path, how: str) -> tuple[Path, str]:
    """Eight MJPEG videos, every frame of the fourth spoiled in place (``how``: ``noise`` over its
    entropy-coded data, or ``size``: a valid 16 x 16 JPEG in a 48 x 32 stream); the manifest and that file."""
    from dali_pipelines.packets import build_index
    from fastcvrl.datasets.video import write_video

    manifest = make_index_videos(folder, [20] * 8, codec="mjpeg", gop=1)
    path = str(folder / "v3.avi")
    small = write_video(folder / "small.avi", np.full((1, 16, 16, 3), 128, np.uint8), codec="mjpeg", gop=1)
    with av.open(small) as c:
        tiny = next(bytes(p) for p in c.demux(video=0) if p.size)
    idx = build_index(path)
    data = bytearray(Path(path).read_bytes())
    rng = np.random.default_rng(0)
    for o, s in zip(idx.offsets.tolist(), idx.sizes.tolist()):
        if how == "noise":
            data[o + 200 : o + s] = rng.integers(0, 256, s - 200, dtype=np.uint8).tobytes()
        else:
            assert len(tiny) <= s
            data[o : o + s] = tiny + bytes(s - len(tiny))  # bytes after a JPEG's end marker are ignored
    Path(path).write_bytes(bytes(data))
    return manifest, path


@pytest.mark.parametrize("how", ["noise", "size"])
def test_a_spoiled_mjpeg_video_is_named_and_skipped(tmp_path, caplog, how):
    """On the JPEG path a video whose frames do not decode, or decode to another size than its stream's
    (the windows would fall outside them), is named and replaced, and both epochs complete; without
    skipping, the error names that file only."""
    import logging

    from dali_pipelines.packets import VideoReadError
    from fastcvrl.data import build_pretrain_loader

    manifest, bad = _spoil_mjpeg(tmp_path, how)
    loader = build_pretrain_loader(small_config(), str(manifest), device="cpu", seed=0)
    assert isinstance(loader.source, jpeg_frames.JpegPretrainSource)
    seen = 0
    with caplog.at_level(logging.WARNING, logger="dali_pipelines"):
        for epoch in (0, 1):
            loader.set_epoch(epoch)
            seen += sum(len(batch[2]) for batch in loader)
    loader.close()
    assert seen == 16 and loader.source.bad == {3}
    named = [r.getMessage() for r in caplog.records if bad in r.getMessage()]
    assert len(named) == 1 and ("16x16" in named[0]) == (how == "size")
    strict = build_pretrain_loader(small_config(skip_corrupt=False), str(manifest), device="cpu", seed=0)
    with pytest.raises(VideoReadError) as e:
        for _ in strict:
            pass
    strict.close()
    assert e.value.path == bad
    assert not any(x.path in str(e.value) for x in read_manifest(manifest) if x.path != bad)
