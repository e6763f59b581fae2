"""Host-side trimming: the cut stream holds exactly the runs from a keyframe to the last packet each needed
frame requires, decodes on its own to the right frames (PyAV as the reference decoder; H.264 with and without
B-frames), is written without opening the source again, and bad files are named."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest

av = pytest.importorskip("av")  # absent on a bare GPU image: skip, not a collection error

from videos import decode_index, index_frames

from dali_pipelines.packets import VideoReadError, build_index, keep_runs, trim
from fastcvrl.datasets.video import keyframe_indices, write_video


@pytest.fixture(scope="module", params=["vp9", "mjpeg", "h264", "h264-bframes"])
def video(request, tmp_path_factory):
    codec, _, bf = request.param.partition("-")
    ext = {"vp9": ".webm", "mjpeg": ".avi", "h264": ".mp4"}[codec]
    path = tmp_path_factory.mktemp("pk") / f"v{ext}"
    write_video(path, index_frames(90, 16, 16, video_id=5), codec=codec, gop=10, bframes=3 if bf else 0)
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
        packet = idx.packet_of_frame
        assert all(idx.keyframe[s] for s, _ in runs)  # every run starts at a keyframe
        assert all(
            e in packet[needed] for _, e in runs
        )  # and ends at a needed frame's packet, not the GOP's end
        assert tc.frames_decoded == len(frames) == sum(e - s + 1 for s, e in runs)
        groups = np.unique(np.searchsorted(keys, needed, side="right"))  # groups of pictures touched
        assert tc.frames_decoded <= len(groups) * np.diff(keys).max()
        assert tc.bytes_read < os.path.getsize(video)


def test_bframes_reorder_and_runs_stop_short_of_the_group_end(tmp_path):
    path = str(tmp_path / "b.mp4")
    write_video(path, index_frames(64, 16, 16, video_id=2), codec="h264", gop=16, bframes=3)
    idx = build_index(path)
    assert idx.reorder is not None  # decode order differs from presentation order
    for f in range(64):  # a single frame: from its keyframe to its own packet, every frame the right one
        tc = trim(idx, np.array([f]))
        frames = _decode(tc.encoded)
        assert decode_index(frames[tc.positions])[0].tolist() == [f]
        key = (f // 16) * 16
        assert tc.frames_decoded == idx.packet_of_frame[f] - idx.packet_of_frame[key] + 1 <= 16
    gop_ends = sum(trim(idx, np.array([f])).frames_decoded == 16 for f in range(64))
    assert gop_ends < 64 // 4  # most frames need less than their whole group of pictures


def test_trimming_opens_no_container(video, monkeypatch):
    idx = build_index(video)

    def no_open(*a, **k):
        raise AssertionError("a container was opened to trim a clip")

    monkeypatch.setattr(av, "open", no_open)
    tc = trim(idx, np.array([3, 5, 40, 42]))
    monkeypatch.undo()
    assert decode_index(_decode(tc.encoded)[tc.positions])[0].tolist() == [3, 5, 40, 42]


def test_dali_decodes_the_matroska_writer(tmp_path):
    """DALI's own demuxer reads the Matroska written by ``matroska.write`` (VP9 payloads: decodable on
    CPU)."""
    from nvidia.dali import fn, pipeline_def

    from dali_pipelines import matroska
    from dali_pipelines.packets import _read_payloads

    path = str(tmp_path / "m.webm")
    write_video(path, index_frames(48, 32, 32, video_id=4), codec="vp9", gop=8)
    idx = build_index(path)
    packets = np.arange(16, 30)  # a run from the keyframe at 16
    payloads, _ = _read_payloads(idx, packets, None)
    enc = np.frombuffer(
        matroska.write(
            "vp9",
            idx.width,
            idx.height,
            idx.extradata,
            payloads,
            np.arange(len(packets)),
            idx.keyframe[packets],
        ),
        np.uint8,
    )
    want = np.array([1, 3, 13], np.int32)

    @pipeline_def(batch_size=1, num_threads=1, device_id=None)
    def pipe():
        e = fn.external_source(source=lambda: [enc], batch=True)
        f = fn.external_source(source=lambda: [want], batch=True)
        return fn.decoders.video(e, device="cpu", frames=f, build_index=False)

    (out,) = pipe().run()
    got, vid = decode_index(np.asarray(out[0]))
    assert got.tolist() == (16 + want).tolist() and (vid == 4).all()


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


def test_fast_paths_agree_with_their_references(video):
    from dali_pipelines import matroska
    from dali_pipelines.packets import _read_payloads, keep_runs_reference

    idx = build_index(video)
    rng = np.random.default_rng(3)
    for _ in range(20):
        needed = rng.integers(0, 90, rng.integers(1, 12))
        assert keep_runs(idx, needed) == keep_runs_reference(idx, needed)
    packets = np.arange(10, 37)
    payloads, _ = _read_payloads(idx, packets, None)
    rank = np.argsort(np.argsort(idx.frame_of_packet[packets]))
    key = idx.keyframe[packets]
    fast = matroska.write_packets(idx.matroska_tracks, payloads, idx.sizes[packets], rank, key)
    assert fast == matroska.write(idx.codec, idx.width, idx.height, idx.extradata, payloads, rank, key)


def test_distant_runs_are_read_apart(video, monkeypatch):
    import dali_pipelines.packets as packets

    idx = build_index(video)
    needed = np.array([3, 5, 80, 82])
    whole = trim(idx, needed)
    monkeypatch.setattr(packets, "READ_GAP", 0)  # every gap splits the reads
    apart = trim(idx, needed)
    assert apart.encoded.tobytes() == whole.encoded.tobytes()
    kept = np.concatenate([np.arange(a, b + 1) for a, b in keep_runs(idx, needed)])
    assert whole.bytes_read >= apart.bytes_read >= int(idx.sizes[kept].sum())
    assert decode_index(_decode(apart.encoded)[apart.positions])[0].tolist() == needed.tolist()


@pytest.mark.gpu
@pytest.mark.parametrize("bframes", [0, 3])
def test_nvdec_decodes_trimmed_h264_to_the_needed_frames(tmp_path, bframes):
    """The GPU ('mixed') decoder on trimmed H.264 Matroska, with and without B-frames: every frame the right
    one (the CPU backend has no H.264, so only a GPU machine can run this)."""
    from nvidia.dali import fn, pipeline_def

    path = str(tmp_path / "g.mp4")
    write_video(path, index_frames(96, 64, 64, video_id=6), codec="h264", gop=16, bframes=bframes)
    idx = build_index(path)
    cases = [np.array([3, 5, 7]), np.array([17, 19, 60, 62]), np.array([95]), np.arange(30, 50, 2)]
    clips = [trim(idx, n) for n in cases]

    @pipeline_def(batch_size=len(clips), num_threads=1, device_id=0)
    def pipe():
        e = fn.external_source(source=lambda: [c.encoded for c in clips], batch=True)
        f = fn.external_source(source=lambda: [c.positions for c in clips], batch=True)
        return fn.decoders.video(e, device="mixed", frames=f, build_index=False)

    (out,) = pipe().run()
    out = out.as_cpu()
    for i, needed in enumerate(cases):
        got, vid = decode_index(np.asarray(out[i]))
        assert got.tolist() == needed.tolist() and (vid == 6).all()


def test_ranged_reads_return_the_payloads_in_any_order(video, monkeypatch):
    """``_ranged_reads`` (Python-list grouping) against slices of the whole file: payloads in decode order,
    out of file order and with every gap splitting the reads, each view the right bytes."""
    import dali_pipelines.packets as packets

    idx = build_index(video)
    with open(video, "rb") as f:
        data = f.read()
    rng = np.random.default_rng(5)
    for gap in (packets.READ_GAP, 0, 200):
        monkeypatch.setattr(packets, "READ_GAP", gap)
        for _ in range(10):
            chosen = rng.choice(idx.num_frames, rng.integers(1, 20), replace=False)
            offsets = idx.offsets[chosen].astype(np.int64)
            ends = offsets + idx.sizes[chosen]
            views, nbytes = packets._ranged_reads(video, offsets, ends)
            assert [bytes(v) for v in views] == [data[o:e] for o, e in zip(offsets.tolist(), ends.tolist())]
            assert int(idx.sizes[chosen].sum()) <= nbytes <= int(ends.max() - offsets.min())
