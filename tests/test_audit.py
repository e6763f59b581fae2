"""``python -m fastcvrl.prepare --audit MANIFEST``: counts and verdicts per codec and size, exit status."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

pytest.importorskip("av")  # prepare imports PyAV: absent on a bare GPU image, skip

from dali_pipelines.manifest import VideoEntry
from fastcvrl.datasets.manifest import write_manifest
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


# ------------------------------------------------------------------------------------------- the trainer
def _resolve(tmp_path, monkeypatch, sizes, *overrides):
    """``train.resolve_data`` for a GPU run on a manifest of ``sizes`` (files exist, never read), CUDA
    stubbed."""
    import torch

    from fastcvrl import preflight, train
    from fastcvrl.config import load_config

    entries = []
    for i, (w, h) in enumerate(sizes):
        (tmp_path / f"v{i}.mp4").write_bytes(b"not read")
        entries.append(VideoEntry(str(tmp_path / f"v{i}.mp4"), 0, 64, 25.0, w, h, "h264"))
    write_manifest(tmp_path / "manifest.csv", entries)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(preflight, "nvdec_min_size", lambda dev: None)
    cfg = load_config(
        None,
        [
            f"--data.train_manifest={tmp_path / 'manifest.csv'}",
            "--data.device=gpu",
            "--train.batch_size=2",
            *overrides,
        ],
    )
    return train.resolve_data(cfg, SimpleNamespace(local_rank=0))


def test_a_gpu_run_on_456x256_rows_warns_in_one_line(tmp_path, monkeypatch, capsys):
    assert _resolve(tmp_path, monkeypatch, [(456, 256)] * 3 + [(448, 256)]).endswith("manifest.csv")
    out = capsys.readouterr().out.strip().splitlines()
    warn = [line for line in out if line.startswith("warning:")]
    assert len(warn) == 1, out
    assert "3 of 4 videos" in warn[0] and "--transcode h264 --short-side 256" in warn[0]


def test_a_gpu_run_warns_when_configurations_x_threads_exceed_the_cache(tmp_path, monkeypatch, capsys):
    sizes = [(256 + 16 * i, 256) for i in range(7)]
    _resolve(tmp_path, monkeypatch, sizes, "--data.num_threads=16")  # 7 x 16 > 100
    (warn,) = [line for line in capsys.readouterr().out.splitlines() if line.startswith("warning:")]
    assert "7 distinct decoder configurations x 16 decode threads" in warn


def test_a_gpu_run_on_aligned_sizes_says_nothing(tmp_path, monkeypatch, capsys):
    _resolve(tmp_path, monkeypatch, [(448, 256), (336, 256)], "--data.num_threads=8")
    assert "warning" not in capsys.readouterr().out


def test_a_gpu_run_on_sizes_above_nvdec_maximum_stops_in_one_line(tmp_path, monkeypatch, capsys):
    import pytest

    from dali_pipelines.codecs import UndecodableError

    with pytest.raises(UndecodableError) as e:
        _resolve(tmp_path, monkeypatch, [(448, 256), (8192, 256)])
    msg = str(e.value)
    assert "1 of 2 videos" in msg and "v1.mp4 (8192x256)" in msg and "4096x4096 maximum" in msg
    assert "--transcode h264" in msg and "\n" not in msg
