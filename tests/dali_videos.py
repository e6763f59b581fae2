"""Small generated videos and manifests for the DALI pipeline tests (frame-index coded, VP9 or MJPEG)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from videos import index_frames

from dali_pipelines.manifest import VideoEntry
from fastcvrl.config import Config
from fastcvrl.datasets.manifest import write_manifest
from fastcvrl.datasets.video import write_video


def make_index_videos(
    folder: Path,
    lengths: list[int],
    *,
    codec: str = "vp9",
    gop: int = 8,
    size=(32, 48),
    labels: list[int] | None = None,
) -> Path:
    """Index-coded videos ``v{i}`` (video id i, frame j coloured by j) and their manifest; returns its
    path."""
    folder.mkdir(parents=True, exist_ok=True)
    ext = {"vp9": ".webm", "vp8": ".webm", "h264": ".mp4"}.get(codec, ".avi")
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


def corrupt_payload(path: str, first: int, last: int) -> None:
    """Overwrite the payload of the non-key packets first..last with noise: the file still demuxes and indexes
    the same way (keyframes intact), but decoding fails."""
    from dali_pipelines.packets import build_index

    idx = build_index(path)
    data = bytearray(open(path, "rb").read())
    rng = np.random.default_rng(0)
    for k in range(first, last + 1):
        if idx.keyframe[k]:
            continue
        o, s = int(idx.offsets[k]), int(idx.sizes[k])
        data[o : o + s] = rng.integers(0, 256, s, dtype=np.uint8).tobytes()
    open(path, "wb").write(bytes(data))


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
    d.host_workers = 0  # the serial in-thread source, whatever the machine's cores (worker tests set it)
    d.num_frames, d.stride, d.crop_size = 4, 2, 16
    d.color_jitter_prob, d.grayscale_prob = 0.0, 0.0
    for k, v in data.items():
        setattr(d, k, v)
    cfg.train.batch_size = 4
    e = cfg.eval
    e.num_frames, e.stride, e.crop_size, e.short_side, e.test_crop_size = 4, 2, 16, 20, 16
    e.test_clips, e.test_crops, e.batch_size = 3, 3, 9
    return cfg


def op_devices(serialized: bytes) -> dict[str, set[str]]:
    """Operator name -> devices, from DALI's serialized PipelineDef (protobuf wire format: ops are field 5;
    an OpDef's name is field 1, its arguments field 4, an argument's name field 1 and string value field
    5)."""
    out: dict[str, set[str]] = {}
    for field, op in _fields(serialized):
        if field != 5:
            continue
        parts = _fields(op)
        name = next(v for f, v in parts if f == 1).decode()
        for f, arg in parts:
            a = dict(_fields(arg)) if f == 4 else {}
            if a.get(1) == b"device":
                out.setdefault(name, set()).add(a[5].decode())
    return out


def _fields(buf: bytes) -> list[tuple[int, bytes | int]]:
    out, i = [], 0
    while i < len(buf):
        key, i = _varint(buf, i)
        field, wire = key >> 3, key & 7
        if wire == 0:
            val, i = _varint(buf, i)
        elif wire == 2:
            n, i = _varint(buf, i)
            val, i = buf[i : i + n], i + n
        elif wire in (1, 5):
            n = 8 if wire == 1 else 4
            val, i = buf[i : i + n], i + n
        else:
            raise ValueError(f"unexpected protobuf wire type {wire}")
        out.append((field, val))
    return out


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    shift = val = 0
    while True:
        b = buf[i]
        i += 1
        val |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return val, i
