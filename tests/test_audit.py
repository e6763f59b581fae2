"""``python -m fastcvrl.prepare --audit MANIFEST``: counts and verdicts per codec and size, exit status."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from dali_pipelines.manifest import VideoEntry, write_manifest
from fastcvrl.datasets.prepare import main
from fastcvrl.datasets.video import write_video
from tests.videos import index_frames

REPO = Path(__file__).resolve().parents[1]


def _dataset(tmp_path, sizes, gop=16, frames=40):
    """One H.264 file per ``(width, height)`` and a manifest listing them."""
    entries = []
    for i, (w, h) in enumerate(sizes):
        p = write_video(tmp_path / f"v{i}.mp4", index_frames(frames, h, w, i % 16), codec="h264", gop=gop)
        entries.append(VideoEntry(str(p), 0, frames, 25.0, w, h, "h264"))
    write_manifest(tmp_path / "manifest.csv", entries)
    return tmp_path / "manifest.csv"


def test_aligned_dataset_passes(tmp_path, capsys):
    m = _dataset(tmp_path, [(448, 256), (336, 256), (448, 256)])
    assert main(["--audit", str(m), "--workers", "1"]) == 0
    out = capsys.readouterr().out
    assert "GPU path at full speed" in out
    assert "448x256" in out and " 16  ok" in out.replace("   ", " ")  # longest keyframe interval read: 16


def test_456x256_rows_fail_with_the_count_and_the_fix(tmp_path, capsys):
    m = _dataset(tmp_path, [(456, 256), (456, 256), (448, 256)])
    assert main(["--audit", str(m), "--workers", "1"]) == 1
    out = capsys.readouterr().out.splitlines()
    row = next(line for line in out if line.startswith("h264") and "456x256" in line)
    assert "464x256" in row and "new decoder per sample" in row and " 2 " in row
    assert "2 with a new decoder per sample" in out[-2]
    assert out[-1].startswith("fix: python -m fastcvrl.prepare SOURCE --out NEW_DIR --transcode h264")


def test_long_keyframe_interval_is_found_by_probing(tmp_path, capsys):
    m = _dataset(tmp_path, [(448, 256)], gop=60, frames=70)
    assert main(["--audit", str(m), "--workers", "1"]) == 1
    out = capsys.readouterr().out
    assert "slow: long keyframe interval" in out and " 60 " in out
    assert main(["--audit", str(m), "--no-probe"]) == 0  # the manifest alone cannot see it


def test_missing_manifest_is_one_line_exit_2(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "fastcvrl.prepare", "--audit", str(tmp_path / "nope.csv")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "nope.csv" in r.stderr, r.stderr
    assert r.stderr.startswith("error: manifest not found")
