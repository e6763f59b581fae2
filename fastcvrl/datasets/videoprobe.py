"""Check one video file with PyAV: decoded frame count, fps, size and codec, or the reason it is unusable.

The frame count comes from decoding every frame (headers lie: edit lists, truncation, variable frame rate);
frames are not converted to RGB, which is most of the cost of a full decode. A file is rejected with one of
these reasons (the detail says more):

- ``missing``: the path does not exist (a list or annotation file names a video that is not there);
- ``broken link``: a symbolic link that loops or points at nothing (the detail says which, and where to);
- ``special file``: a FIFO, socket or device (or a link to one), not a regular file;
- ``empty``: zero bytes;
- ``unreadable``: not a container FFmpeg can open, or no frame decodes;
- ``no video stream``: e.g. an audio file;
- ``zero frames``: a video stream without a single frame;
- ``truncated``: the file was cut short: an MP4/MOV box or the AVI RIFF chunk runs past the end of the file,
  decoding fails after some frames, fewer than ``1 - TRUNCATION_TOLERANCE`` of the frames the container's
  index declares decode, or (containers without a frame count, e.g. WebM) the decoded frames' timestamps
  cover less than that fraction of the declared duration (timestamps, not counts: variable frame rate).

``fps`` is the container's nominal rate unless the decoded timestamps say otherwise by more than 5% (variable
frame rate), then their average rate.
- ``too short``: fewer frames than the caller's ``min_frames``.
- ``unsupported size`` (``prepare --transcode`` only): the output size breaks a rule (an upscale beyond 2x,
  NVDEC's limits for H.264); nothing is written.

``prepare`` adds ``bad name`` (a file name that is not valid UTF-8: the manifest is UTF-8 text) and ``bad
class name`` (a class folder named with a control character, or only white space), and, without
``--transcode``, ``rotated`` (rotation metadata the loaders would not apply; a transcode applies it).
"""

from __future__ import annotations

import errno
import os
import stat
import struct
from collections.abc import Callable
from dataclasses import dataclass

import av

TRUNCATION_TOLERANCE = 0.05  # fraction of the declared frames that may be missing (edit lists, B-frame delay)
TRUNCATION_SLACK = 2  # frames always allowed missing, for very short videos
REASONS = (
    "missing",
    "broken link",
    "special file",
    "empty",
    "unreadable",
    "no video stream",
    "zero frames",
    "truncated",
    "too short",
    "timeout",
    "unsupported size",
    "bad name",
    "bad class name",
    "rotated",
)


@dataclass(frozen=True)
class Probe:
    """What probing found. ``reason`` is "" for a usable video, else one of ``REASONS``."""

    path: str
    num_frames: int = 0
    fps: float = 0.0
    width: int = 0
    height: int = 0
    codec: str = ""
    keyframes: int = 0  # decoded keyframes: num_frames / keyframes is the mean keyframe interval
    fingerprint: str = ""  # dali_pipelines.manifest.file_fingerprint of the usable file (prepare's workers)
    rotation: int = 0  # display rotation, degrees counter-clockwise (0, 90, 180, 270), from the first frame
    reason: str = ""
    detail: str = ""

    @property
    def ok(self) -> bool:
        return not self.reason


def _reject(path: str, reason: str, detail: str = "", **found) -> Probe:
    return Probe(path, reason=reason, detail=detail, **found)


def _container_cut_short(path: str, size: int) -> str:
    """A detail string when the file's own top-level structure says it continues past its end, else ""."""
    with open(path, "rb") as f:
        head = f.read(12)
        if head[:4] == b"RIFF" and len(head) >= 8:  # AVI, WAV: the RIFF chunk declares its length
            declared = struct.unpack("<I", head[4:8])[0] + 8
            return f"RIFF chunk declares {declared} bytes, the file has {size}" if declared > size else ""
        if head[4:8] in (b"ftyp", b"moov", b"mdat", b"free", b"wide", b"skip"):  # MP4 / MOV boxes
            pos = 0
            while pos + 8 <= size:
                f.seek(pos)
                box = f.read(16)
                length, kind = struct.unpack(">I4s", box[:8])
                if length == 1 and len(box) >= 16:
                    length = struct.unpack(">Q", box[8:16])[0]
                elif length == 0:  # the last box runs to the end of the file
                    break
                if length < 8:
                    return f"invalid MP4 box size {length} at byte {pos}"
                if pos + length > size:
                    name = kind.decode("latin-1")
                    return (
                        f"MP4 box '{name}' at byte {pos} declares {length} bytes, "
                        f"the file ends {size - pos} bytes later"
                    )
                pos += length
    return ""


def _broken_link_detail(path: str) -> str:
    """Why the symbolic link ``path`` leads nowhere: a loop, or the (missing) target it names."""
    try:
        os.stat(path)
    except OSError as e:
        if e.errno == errno.ELOOP:
            return "symbolic link loop"
    try:
        return f"dangling symbolic link to {os.readlink(path)}"
    except OSError as e:
        return f"symbolic link that cannot be followed ({e.strerror})"


def display_rotation(frame: av.VideoFrame) -> int:
    """The frame's display rotation (its container's display matrix), counter-clockwise degrees rounded to a
    multiple of 90 (flips are not read)."""
    try:
        degrees = float(frame.rotation or 0)
    except (AttributeError, TypeError, ValueError):
        return 0
    return int(round(degrees / 90.0)) * 90 % 360


def _declared_duration(container, stream) -> float:
    """Seconds the container claims for the stream (else for the file); 0.0 when it does not say."""
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    if container.duration:
        return container.duration / av.time_base
    return 0.0


def probe_video(
    path: str | os.PathLike,
    min_frames: int = 1,
    on_frame: Callable[[av.VideoFrame], None] | None = None,
    threads: int = 0,
) -> Probe:
    """Decode every frame of the first video stream of ``path``; never raises for a bad file.

    ``on_frame`` receives each decoded frame in presentation order (``prepare --transcode`` encodes them
    as they come); if the file then turns out unusable, the caller discards what it made. ``threads``:
    decoder threads (0: FFmpeg's choice, one per core; 1 when many files are probed in parallel processes).
    """
    path = os.fspath(path)
    if os.path.islink(path) and not os.path.exists(path):
        return _reject(path, "broken link", _broken_link_detail(path))
    if not os.path.exists(path):
        return _reject(path, "missing", "no such file")
    if os.path.isdir(path):
        return _reject(path, "unreadable", "is a folder")
    try:
        mode = os.stat(path).st_mode
    except OSError:
        mode = stat.S_IFREG  # reported below
    if not stat.S_ISREG(mode):
        kinds = {stat.S_IFIFO: "FIFO", stat.S_IFSOCK: "socket", stat.S_IFCHR: "character device"}
        kind = kinds.get(stat.S_IFMT(mode), "block device" if stat.S_ISBLK(mode) else "special file")
        link = f" (a symbolic link to {os.readlink(path)})" if os.path.islink(path) else ""
        return _reject(path, "special file", f"a {kind}{link}, not a regular file")
    try:
        size = os.path.getsize(path)
        if size == 0:
            return _reject(path, "empty", "0 bytes")
        cut = _container_cut_short(path, size)
    except OSError as e:
        return _reject(path, "unreadable", f"{type(e).__name__}: {e}")
    if cut:
        return _reject(path, "truncated", cut)
    try:
        container = av.open(path, metadata_errors="ignore")
    except (av.FFmpegError, OSError, UnicodeDecodeError, ValueError) as e:
        return _reject(path, "unreadable", f"cannot open: {e}")
    with container:
        streams = [
            s for s in container.streams.video if not s.disposition & av.stream.Disposition.attached_pic
        ]
        if not streams:
            kinds = ", ".join(sorted({s.type for s in container.streams})) or "none"
            return _reject(path, "no video stream", f"streams: {kinds}")
        stream = streams[0]
        codec = stream.codec_context.name
        stream.codec_context.thread_count = threads
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        declared_frames = int(stream.frames or 0)  # from the container's index (MP4, AVI); 0 if none
        declared_seconds = _declared_duration(container, stream)
        n, keyframes, width, height, error, rotation = 0, 0, 0, 0, "", 0
        first_time, last_time = None, None
        frames = container.decode(stream)
        while True:
            try:
                frame = next(frames)
            except StopIteration:
                break
            except av.FFmpegError as e:  # only decoding errors: on_frame's own errors propagate
                error = f"{type(e).__name__}: {e}"
                break
            if n == 0:
                width, height, first_time = frame.width, frame.height, frame.time
                rotation = display_rotation(frame)
            last_time = frame.time
            n += 1
            keyframes += bool(frame.key_frame)
            if on_frame is not None:
                on_frame(frame)
        fps = float(rate) if rate else 0.0
        span = (last_time - first_time) if n > 1 and first_time is not None and last_time is not None else 0.0
        if span > 0 and (not fps or abs((n - 1) / span - fps) > 0.05 * fps):
            fps = (n - 1) / span  # variable frame rate (or a wrong nominal rate): the measured average
        found = dict(
            num_frames=n,
            keyframes=keyframes,
            width=width,
            height=height,
            codec=codec,
            fps=round(fps, 4),
            rotation=rotation,
        )
        if error and n == 0:
            return _reject(path, "unreadable", f"no frame decodes ({error})", **found)
        if error:
            return _reject(path, "truncated", f"decoding failed after {n} frames ({error})", **found)
        if n == 0:
            return _reject(path, "zero frames", f"the {codec} stream has no decodable frame", **found)
        if declared_frames and n < declared_frames * (1 - TRUNCATION_TOLERANCE) - TRUNCATION_SLACK:
            return _reject(
                path, "truncated", f"{n} frames decode, the container declares {declared_frames}", **found
            )
        covered = span + (1 / fps if fps else 0.0)  # the last frame lasts one frame period
        if (
            not declared_frames
            and declared_seconds
            and fps
            and first_time is not None
            and covered < declared_seconds * (1 - TRUNCATION_TOLERANCE) - TRUNCATION_SLACK / fps
        ):
            return _reject(
                path,
                "truncated",
                f"decoded frames cover {covered:.2f} s, the container declares {declared_seconds:.2f} s",
                **found,
            )
        if n < min_frames:
            return _reject(path, "too short", f"{n} frames, fewer than the {min_frames} asked for", **found)
        return Probe(path, **found)
