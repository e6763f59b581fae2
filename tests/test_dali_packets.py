"""Host-side trimming: the cut stream holds exactly the runs from a keyframe to each needed frame, decodes on
its own to the right frames (PyAV as the reference decoder), and bad files are named."""
from __future__ import annotations

import io
import os

import av
import numpy as np
import pytest

from dali_pipelines.packets import VideoReadError, build_index, keep_runs, trim
from fastcvrl.datasets.video import decode_index, index_frames, keyframe_indices, write_video


@pytest.fixture(scope="module", params=["vp9", "mjpeg", "h264"])
def video(request, tmp_path_factory):
    ext = {"vp9": ".webm", "mjpeg": ".avi", "h264": ".mp4"}[request.param]
    path = tmp_path_factory.mktemp("pk") / f"v{ext}"
    write_video(path, index_frames(90, 16, 16, video_id=5), codec=request.param, gop=10)
    return str(path)


def _decode(encoded: np.ndarray) -> np.ndarray:
    with av.open(io.BytesIO(encoded.tobytes())) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


def test_index_matches_the_file(video):
    idx = build_index(video)
    assert idx.num_frames == 90
    assert idx.keyframes.tolist() == keyframe_indices(video)
    assert idx.offsets is not None  # payloads located: later reads are plain ranged reads
    with open(video, "rb") as f:
        data = f.read()
    with av.open(video) as c:
        packets = [bytes(p) for p in c.demux(video=0) if p.size]
    assert all(data[o : o + s] == p for o, s, p in zip(idx.offsets, idx.sizes, packets))


def test_trimmed_stream_decodes_to_the_needed_frames(video):
    idx = build_index(video)
    keys = idx.keyframes
    rng = np.random.default_rng(0)
    for _ in range(6):
        a, b = sorted(rng.integers(0, 90 - 8, 2))
        needed = np.concatenate([a + 2 * np.arange(4), b + 2 * np.arange(4)])
        tc = trim(idx, needed)
        frames = _decode(tc.encoded)
        got, vid = decode_index(frames[tc.positions])
        assert got.tolist() == needed.tolist() and (vid == 5).all()
        runs = keep_runs(idx, needed)
        assert all(r[0] in keys for r in runs)  # every run starts at a keyframe
        assert tc.frames_decoded == len(frames) == sum(e - s + 1 for s, e in runs)
        if idx.codec != "h264":  # no reordering: runs end at the needed frames, at most one GOP-1 extra each
            assert tc.frames_decoded <= len(np.unique(needed)) + len(runs) * (np.diff(keys).max() - 1)
        assert tc.bytes_read < os.path.getsize(video)


def test_overlapping_windows_share_one_run(video):
    idx = build_index(video)
    needed = np.concatenate([31 + 2 * np.arange(8), 35 + 2 * np.arange(8)])  # 31..45 and 35..49
    runs = keep_runs(idx, needed)
    assert len(runs) == 1 or idx.codec == "mjpeg"  # MJPEG: every frame a keyframe, only needed frames kept
    union_span, spacing = 49 - 31 + 1, 10
    assert trim(idx, needed).frames_decoded <= union_span + spacing - 1


@pytest.mark.parametrize("content", [b"", b"not a video at all" * 50])
def test_unreadable_file_names_the_file(tmp_path, content):
    path = tmp_path / "broken.webm"
    path.write_bytes(content)
    with pytest.raises(VideoReadError, match="broken.webm"):
        build_index(str(path))
    with pytest.raises(VideoReadError, match="missing.webm"):
        build_index(str(tmp_path / "missing.webm"))


def test_truncated_file_names_the_file(tmp_path, video):
    data = open(video, "rb").read()
    path = tmp_path / ("cut" + os.path.splitext(video)[1])
    path.write_bytes(data[: len(data) // 2])
    try:
        idx = build_index(str(path))
    except VideoReadError as e:
        assert "cut" in str(e)
        return
    assert idx.num_frames < 90  # demuxing stops where the file does; the index only lists what is there
