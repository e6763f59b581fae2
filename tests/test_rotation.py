"""Videos keep their meaning: rotation metadata (a phone's portrait video) is applied by ``prepare
--transcode`` (the output upright, at the displayed size, with no rotation of its own) and, without
transcoding, the video is rejected as ``rotated`` with the fix, never trained on sideways."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

av = pytest.importorskip("av")

from dali_pipelines.manifest import read_manifest  # noqa: E402
from fastcvrl.datasets.prepare import prepare  # noqa: E402
from fastcvrl.datasets.transcode import Transcode  # noqa: E402
from fastcvrl.datasets.video import read_video  # noqa: E402
from fastcvrl.datasets.videoprobe import probe_video  # noqa: E402

QUIET = dict(quiet=True, log=lambda *_: None)
H, W = 32, 64  # stored size: landscape; displayed after a 90-degree rotation: 64 high, 32 wide


def _picture() -> np.ndarray:
    """A picture whose orientation is unambiguous: a bright top-left quadrant, a mid-grey right half."""
    img = np.full((H, W, 3), 20, np.uint8)
    img[:, W // 2 :] = 128
    img[: H // 2, : W // 4] = 235
    return img


def _rotated_video(path: Path, degrees: int, frames: int = 12) -> Path:
    with av.open(str(path), "w") as out:
        s = out.add_stream("libvpx-vp9", rate=25)
        s.width, s.height, s.pix_fmt = W, H, "yuv420p"
        s.set_display_rotation(degrees)
        for i in range(frames):
            f = av.VideoFrame.from_ndarray(_picture(), format="rgb24")
            f.pts = i
            for p in s.encode(f):
                out.mux(p)
        for p in s.encode():
            out.mux(p)
    return path


@pytest.fixture()
def rotated(tmp_path) -> Path:
    src = tmp_path / "src"
    (src / "k").mkdir(parents=True)
    for deg in (0, 90, 180, 270):
        _rotated_video(src / "k" / f"r{deg}.webm", deg)
    return src


def test_probe_reads_the_rotation(rotated):
    assert [probe_video(rotated / "k" / f"r{d}.webm").rotation for d in (0, 90, 180, 270)] == [
        0,
        90,
        180,
        270,
    ]


def test_without_transcoding_a_rotated_video_is_rejected_with_the_fix(rotated, tmp_path):
    s = prepare(rotated, tmp_path / "out", workers=1, **QUIET)
    assert s.usable == 1 and s.rejected == {"rotated": 3}
    with open(tmp_path / "out" / "rejected.csv", newline="") as f:
        rows = {Path(r["path"]).name: r for r in csv.DictReader(f)}
    assert set(rows) == {"r90.webm", "r180.webm", "r270.webm"}
    assert all("--transcode" in r["detail"] for r in rows.values())


def test_a_transcode_stores_the_displayed_picture_upright(rotated, tmp_path):
    s = prepare(rotated, tmp_path / "out", transcode=Transcode("vp9", 0, 4), workers=1, **QUIET)
    assert s.usable == 4
    for e in read_manifest(tmp_path / "out" / "manifest.csv"):
        deg = int(Path(e.path).stem[1:])
        want = np.rot90(_picture(), deg // 90)  # counter-clockwise, as the display matrix says
        assert (e.height, e.width) == want.shape[:2]  # the displayed size
        got = read_video(e.path)
        assert got.shape[1:3] == want.shape[:2]
        err = np.abs(got[len(got) // 2].astype(int) - want.astype(int)).mean()
        assert err < 12, (deg, err)  # upright: the wrong turn of the same shape gives about 108
        assert probe_video(e.path).rotation == 0  # and no rotation left to apply twice
