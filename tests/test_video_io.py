"""PyAV helpers and the manifest format that every other part builds on."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from videos import decode_index, index_frames

from dali_pipelines.manifest import HEADER, ManifestError, ManifestWarning, VideoEntry, read_manifest
from fastcvrl.datasets.manifest import write_manifest
from fastcvrl.datasets.video import keyframe_indices, read_video, write_video


@pytest.mark.parametrize(
    "codec, ext", [("vp9", ".webm"), ("mjpeg", ".avi"), ("h264", ".mp4"), ("vp8", ".mkv")]
)
def test_index_video_round_trip(tmp_path, codec, ext):
    frames = index_frames(40, 32, 48, video_id=7)
    path = write_video(tmp_path / f"v{ext}", frames, codec=codec, gop=8)
    decoded = read_video(path)
    assert decoded.shape == (40, 32, 48, 3)
    idx, vid = decode_index(decoded)
    np.testing.assert_array_equal(idx, np.arange(40))
    assert set(vid.tolist()) == {7}
    keys = keyframe_indices(path)
    if codec == "mjpeg":
        assert keys == list(range(40))  # intra-only
    else:
        assert keys == list(range(0, 40, 8))


def test_decode_index_survives_crop_and_channels_first():
    frames = index_frames(20, 16, 16, video_id=3).astype(np.float32)
    idx, vid = decode_index(frames[:, 2:9, 5:14])
    np.testing.assert_array_equal(idx, np.arange(20))
    idx2, _ = decode_index(np.moveaxis(frames, -1, 1), channels_last=False)
    np.testing.assert_array_equal(idx2, np.arange(20))


def test_write_video_rejects_unknown_codec_and_leaves_nothing(tmp_path):
    with pytest.raises(ValueError, match="codec"):
        write_video(tmp_path / "x.webm", index_frames(2, 16, 16), codec="nope")
    assert list(tmp_path.iterdir()) == []


def test_manifest_round_trip_relative_paths(tmp_path):
    (tmp_path / "a").mkdir()
    video = tmp_path / "a" / "v.webm"
    video.write_bytes(b"x")
    entries = [VideoEntry(str(video), 3, 40, 29.97, 64, 48, "vp9")]
    write_manifest(tmp_path / "manifest.csv", entries)
    lines = (tmp_path / "manifest.csv").read_text().splitlines()
    assert lines[0] == ",".join(HEADER) and lines[1].startswith("a/v.webm,3,40,29.97")
    assert read_manifest(tmp_path / "manifest.csv") == entries


@pytest.mark.parametrize(
    "body, match",
    [
        ("path,label\nv.webm,1\n", "header"),
        (",".join(HEADER) + "\nv.webm,one,40,25,64,48,vp9\n", ":2: bad label"),
        (",".join(HEADER) + "\nv.webm,1,0,25,64,48,vp9\n", "num_frames"),
        (",".join(HEADER) + "\nv.webm,1,40,25\n", "expected 7 fields"),
        (",".join(HEADER) + "\n", "no videos"),
        (",".join(HEADER) + "\ngone.webm,1,40,25,64,48,vp9\n", "missing: .*gone.webm"),
    ],
)
def test_manifest_errors_name_file_and_line(tmp_path, body, match):
    m = tmp_path / "manifest.csv"
    m.write_text(body)
    with pytest.raises(ManifestError, match=match) as e:
        read_manifest(m)
    assert str(m) in str(e.value)


def test_manifest_duplicate_rows_warn_naming_them(tmp_path):
    for name in ("a.webm", "b.webm", "c.webm"):
        (tmp_path / name).write_bytes(b"x")
    row = "{},{},40,25,64,48,vp9\n"
    m = tmp_path / "manifest.csv"
    # b twice (once by an absolute path: the same file), a once, c three times
    m.write_text(
        ",".join(HEADER)
        + "\n"
        + row.format("b.webm", 1)
        + row.format("a.webm", 0)
        + row.format("c.webm", 2)
        + row.format(tmp_path / "b.webm", 1)
        + row.format("c.webm", 2)
        + row.format("./c.webm", 2)
    )
    with pytest.warns(ManifestWarning) as record:
        entries = read_manifest(m)
    assert len(record) == 1
    msg = str(record[0].message)
    assert str(m) in msg and "2 video(s) listed more than once" in msg
    assert f"{tmp_path / 'b.webm'} (lines 2, 5)" in msg and f"{tmp_path / 'c.webm'} (lines 4, 6, 7)" in msg
    assert "a.webm" not in msg
    assert len(entries) == 6  # each row is kept as listed
    m.write_text(",".join(HEADER) + "\n" + row.format("a.webm", 0) + row.format("b.webm", 0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning without duplicates
        assert len(read_manifest(m)) == 2
