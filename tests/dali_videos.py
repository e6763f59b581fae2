"""Small generated videos and manifests for the DALI pipeline tests (frame-index coded, VP9 or MJPEG)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from fastcvrl.config import Config
from fastcvrl.manifest import VideoEntry, write_manifest
from fastcvrl.video import index_frames, write_video


def make_index_videos(folder: Path, lengths: list[int], *, codec: str = "vp9", gop: int = 8, size=(32, 48),
                      labels: list[int] | None = None) -> Path:
    """Index-coded videos ``v{i}`` (video id i, frame j coloured by j) and their manifest; returns its path."""
    folder.mkdir(parents=True, exist_ok=True)
    ext = ".webm" if codec in ("vp9", "vp8") else ".avi"
    entries = []
    for i, n in enumerate(lengths):
        path = folder / f"v{i}{ext}"
        if not path.exists():
            write_video(path, index_frames(n, size[0], size[1], video_id=i % 16), codec=codec, gop=gop)
        label = labels[i] if labels else i % 3
        entries.append(VideoEntry(str(path), label, n, 25.0, size[1], size[0], codec))
    manifest = folder / "manifest.csv"
    write_manifest(manifest, entries)
    return manifest


def make_static_video(path: Path, num_frames: int = 24, size=(48, 64), seed: int = 0) -> None:
    """A video whose frames are all the same smooth textured image (spatial structure, no motion)."""
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    img = np.stack([255 * xx / (w - 1), 255 * yy / (h - 1), 128 + 60 * np.sin(xx / 5.0 + seed)], -1)
    write_video(path, np.repeat(img.astype(np.uint8)[None], num_frames, 0), codec="mjpeg", gop=1)


def small_config(**data: object) -> Config:
    """Tiny clip settings: 4 x 2 clips, 16 x 16 crops, no colour jitter (index colours survive)."""
    cfg = Config()
    d = cfg.data
    d.device, d.num_threads, d.prefetch = "cpu", 2, 2
    d.num_frames, d.stride, d.crop_size = 4, 2, 16
    d.color_jitter_prob, d.grayscale_prob = 0.0, 0.0
    for k, v in data.items():
        setattr(d, k, v)
    cfg.train.batch_size = 4
    e = cfg.eval
    e.num_frames, e.stride, e.crop_size, e.short_side = 4, 2, 16, 20
    e.test_clips, e.test_crops, e.batch_size = 3, 3, 9
    return cfg


def rel(path: str | os.PathLike) -> str:
    return os.fspath(path)
