"""Where a video's keyframes are, and (H.264) whether each is an IDR picture: from the packets, no decoding.

A clip cut at a keyframe decodes alone only if that keyframe is an IDR picture (H.264 NAL unit type 5): a
non-IDR I picture of an open GOP lets the B-pictures after it reference pictures before it, which a trimmed
stream lacks (NVDEC then hands back fewer pictures than asked and DALI's output holds frames never written).
``prepare --transcode h264`` checks every output with ``check_idr_gop``; ``prepare --audit`` reads the
longest keyframe interval of each file with ``keyframe_info``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import av

IDR, NON_IDR_SLICE = 5, 1  # H.264 NAL unit types (ITU-T H.264 Table 7-1)
SLICE_TYPES = frozenset({1, 2, 3, 4, 5})  # coded slices: one picture per packet has at least one


@dataclass(frozen=True)
class KeyframeInfo:
    """Keyframes of the first video stream, by presentation index."""

    frames: int  # packets with data (frames)
    keyframes: tuple[int, ...]  # presentation indices of the packets flagged as keyframes
    idr: tuple[int, ...] | None  # presentation indices of packets holding an IDR slice; None: not H.264
    pix_fmt: str  # the stream's pixel format (chroma format and bit depth: part of a decoder configuration)

    @property
    def longest_interval(self) -> int:
        """The most frames from one keyframe to the next (or to the end), at least 1."""
        bounds = list(self.keyframes) + [self.frames]
        gaps = [b - a for a, b in zip(bounds, bounds[1:])]
        head = self.keyframes[0] if self.keyframes else self.frames  # frames before the first keyframe
        return max([head, *gaps, 1])

    @property
    def non_idr_keyframes(self) -> int:
        """Keyframes that are not IDR pictures (0 for codecs other than H.264)."""
        return 0 if self.idr is None else len(set(self.keyframes) - set(self.idr))


def nal_unit_types(data: bytes, length_size: int = 0) -> list[int]:
    """The NAL unit types in one H.264 packet: length-prefixed (MP4/Matroska ``avcC``: ``length_size``
    1, 2 or 4 bytes) or, with ``length_size`` 0, Annex B start codes. A truncated length ends the list."""
    out: list[int] = []
    if length_size:
        i = 0
        while i + length_size < len(data):
            n = int.from_bytes(data[i : i + length_size], "big")
            i += length_size
            if n <= 0 or i + n > len(data):
                break
            out.append(data[i] & 0x1F)
            i += n
        return out
    i = data.find(b"\x00\x00\x01")
    while i >= 0 and i + 3 < len(data):
        out.append(data[i + 3] & 0x1F)
        i = data.find(b"\x00\x00\x01", i + 3)
    return out


def avcc_length_size(extradata: bytes | None) -> int:
    """NAL length-field size from an ``avcC`` record (first byte 1), or 0 for Annex B (no ``avcC``)."""
    if extradata and len(extradata) >= 5 and extradata[0] == 1:
        return (extradata[4] & 0x03) + 1
    return 0


def keyframe_info(path: str | os.PathLike) -> KeyframeInfo:
    """Demux (no decoding) the first video stream of ``path``: keyframes and, for H.264, the IDR pictures."""
    with av.open(os.fspath(path), metadata_errors="ignore") as f:
        stream = f.streams.video[0]
        h264 = stream.codec_context.name == "h264"
        size = avcc_length_size(stream.codec_context.extradata) if h264 else 0
        rows = []
        for p in f.demux(stream):
            if not p.size:
                continue
            t = p.pts if p.pts is not None else p.dts
            idr = h264 and IDR in nal_unit_types(bytes(p), size)
            rows.append((t if t is not None else len(rows), p.is_keyframe, idr))
        pix_fmt = stream.codec_context.pix_fmt or ""
    rows.sort(key=lambda r: r[0])
    keys = tuple(i for i, r in enumerate(rows) if r[1])
    idrs = tuple(i for i, r in enumerate(rows) if r[2]) if h264 else None
    return KeyframeInfo(len(rows), keys, idrs, pix_fmt)


def check_idr_gop(info: KeyframeInfo, gop: int) -> str:
    """ "" when the keyframes are exactly every ``gop`` frames from frame 0 and (H.264) each is an IDR picture
    and no other picture is; else what differs, in a few words."""
    want = tuple(range(0, info.frames, gop))
    if info.keyframes != want:
        got = ", ".join(map(str, info.keyframes[:6])) + (" ..." if len(info.keyframes) > 6 else "")
        return f"keyframes at {got}, expected every {gop} frames from 0"
    if info.idr is not None and info.idr != info.keyframes:
        bad = sorted(set(info.keyframes) ^ set(info.idr))
        return f"{len(bad)} keyframe(s) and IDR pictures differ (first at frame {bad[0]})"
    return ""
