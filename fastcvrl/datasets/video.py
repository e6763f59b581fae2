"""Small video I/O helpers on PyAV: encode frames to a file, decode a file, list its keyframes.

Used by the synthetic dataset, by ``prepare --transcode`` and by the tests, which generate their own videos
(the tests' frame-index-coded clips are in ``tests/videos.py``).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from fractions import Fraction

import numpy as np

try:
    import av
except ImportError:  # importing this module (the trainer does) needs no PyAV; reading or writing a video does

    class _NoPyAV:
        def __getattr__(self, name: str):
            raise ImportError("PyAV is needed to read or write videos (pip install av)")

    av = _NoPyAV()

# codec name -> (PyAV encoder, pixel format, default container extension)
CODECS = {
    "vp9": ("libvpx-vp9", "yuv420p", ".webm"),
    "vp8": ("libvpx", "yuv420p", ".webm"),
    "mjpeg": ("mjpeg", "yuvj420p", ".avi"),
    "h264": ("libx264", "yuv420p", ".mp4"),
    "mpeg4": ("mpeg4", "yuv420p", ".avi"),
}

# No random container IDs or version strings: the same frames and settings give the same bytes.
BITEXACT = {"fflags": "+bitexact"}


def write_video(
    path: str | os.PathLike,
    frames: np.ndarray | Iterable[np.ndarray],
    fps: float = 25.0,
    codec: str = "vp9",
    gop: int | None = 16,
    quality: int | None = None,
    bframes: int = 0,
) -> str:
    """Encode RGB uint8 frames ``(T, H, W, 3)`` into ``path`` with a keyframe every ``gop`` frames.

    ``quality``: CRF for vp9/h264 (lower is better), qscale for mjpeg/mpeg4. ``bframes``: B-frames between
    reference frames (h264 only; frames then reorder: decode order differs from presentation). Writes to a
    temporary name and renames, so a killed writer never leaves a half-written file under the final name."""
    if codec not in CODECS:
        raise ValueError(f"unknown codec {codec!r}; choose one of {sorted(CODECS)}")
    path = os.fspath(path)
    root, ext = os.path.splitext(path)
    tmp = f"{root}.tmp{os.getpid()}{ext}"
    rate = Fraction(fps).limit_denominator(1001)
    it = iter(frames)
    first = next(it, None)
    if first is None:
        raise ValueError(f"{path}: no frames to write")
    h, w = first.shape[:2]
    try:
        with av.open(tmp, mode="w", container_options=BITEXACT) as out:
            stream = add_video_stream(out, codec, w, h, rate, gop, quality, bframes)
            for frame in _chain(first, it):
                vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame, dtype=np.uint8), format="rgb24")
                for packet in stream.encode(vf):
                    out.mux(packet)
            for packet in stream.encode():
                out.mux(packet)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def add_video_stream(
    out: av.container.OutputContainer,
    codec: str,
    width: int,
    height: int,
    rate: Fraction,
    gop: int | None = 16,
    quality: int | None = None,
    bframes: int = 0,
) -> av.video.stream.VideoStream:
    """Add an encoder stream to ``out`` with a keyframe exactly every ``gop`` frames (no scene-cut or
    adaptive keyframes, closed groups of pictures, no VP9 alt-ref frames), so clip starts are predictable.

    ``bframes``: H.264 B-frames (default none: a clip's run then ends at its last frame and the decoder has
    no reorder delay; docs/performance.md gives the measured trade-off)."""
    if codec not in CODECS:
        raise ValueError(f"unknown codec {codec!r}; choose one of {sorted(CODECS)}")
    encoder, pix_fmt, _ = CODECS[codec]
    stream = out.add_stream(encoder, rate=rate)
    stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
    opts: dict[str, str] = {}
    if gop:
        stream.codec_context.gop_size = int(gop)
        if codec == "h264":
            opts.update({"keyint_min": str(gop), "sc_threshold": "0"})
        if codec in ("vp9", "vp8"):
            opts.update({"kf-max-dist": str(gop), "kf-min-dist": str(gop), "auto-alt-ref": "0"})
    if codec in ("vp9", "vp8"):
        opts.update({"deadline": "realtime", "cpu-used": "8", "crf": str(quality or 20), "b": "0"})
        if codec == "vp9":
            opts["row-mt"] = "1"
    elif codec == "h264":
        opts.update({"preset": "veryfast", "crf": str(quality or 18), "bf": str(int(bframes))})
        if gop:  # without a keyframe interval: the encoder's own defaults (scene cuts included)
            opts["x264-params"] = x264_params(gop, bframes)
    elif codec in ("mjpeg", "mpeg4"):
        stream.codec_context.qmin = stream.codec_context.qmax = int(quality or 3)
    stream.options = opts
    return stream


H264_REFS = 1  # reference frames: with the B-frames, what decides NVDEC's decode-surface count


def x264_params(gop: int, bframes: int = 0) -> str:
    """The x264 settings every H.264 file with a keyframe interval shares (``prepare --transcode h264``
    among them), so that every file of one size needs the same NVDEC decoder configuration
    (``dali_pipelines.nvdec``): fixed reference frames and B-frames, closed GOPs, an IDR picture at every
    keyframe, keyframes exactly every ``gop`` frames, no scene-cut keyframes, no intra refresh."""
    p = [f"ref={H264_REFS}", f"bframes={int(bframes)}", "open-gop=0", "intra-refresh=0", "scenecut=0"]
    return ":".join(p + [f"keyint={int(gop)}", f"min-keyint={int(gop)}"])


def _chain(first: np.ndarray, rest: Iterable[np.ndarray]) -> Iterable[np.ndarray]:
    yield first
    yield from rest


def read_video(path: str | os.PathLike) -> np.ndarray:
    """Decode every frame of ``path`` to RGB uint8 ``(T, H, W, 3)`` (slow, obvious reference)."""
    with av.open(os.fspath(path)) as f:
        frames = [fr.to_ndarray(format="rgb24") for fr in f.decode(video=0)]
    if not frames:
        raise ValueError(f"{path}: no decodable video frames")
    return np.stack(frames)


def keyframe_indices(path: str | os.PathLike) -> list[int]:
    """Indices (in presentation order) of the keyframes of the first video stream (demux only)."""
    with av.open(os.fspath(path)) as f:
        stream = f.streams.video[0]
        pts = [(p.pts if p.pts is not None else p.dts, p.is_keyframe) for p in f.demux(stream) if p.size]
    pts.sort(key=lambda x: x[0])
    return [i for i, (_, key) in enumerate(pts) if key]
