"""A minimal Matroska writer for trimmed packet runs (no FFmpeg muxer, no source file opened).

The trimmed stream of a clip is a few dozen packets of one video track; writing it with a muxer means
building the stream's codec parameters (extradata) from the source each time. Everything a demuxer needs is
already in the packet index (codec, size, extradata), so the container is written directly: an EBML
header, a Segment with Info (1 ms ticks), one TrackEntry (``CodecPrivate`` = the extradata, e.g. H.264's
``avcC``) and Clusters of SimpleBlocks in decode order, each block stamped with its frame's presentation
rank (25 fps), so decoders that reorder frames (B-frames) present them in the right order.

Layout reference: the Matroska/EBML specifications (RFC 8794, RFC 9559). Elements are written with their
sizes known (the whole file is built in memory).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

import numpy as np

CODEC_IDS = {  # PyAV codec name -> Matroska CodecID
    "h264": "V_MPEG4/ISO/AVC",
    "hevc": "V_MPEGH/ISO/HEVC",
    "mpeg4": "V_MPEG4/ISO/ASP",
    "mpeg2video": "V_MPEG2",
    "av1": "V_AV1",
    "vp8": "V_VP8",
    "vp9": "V_VP9",
    "mjpeg": "V_MJPEG",
}
FRAME_MS = 40  # one frame per 40 ms (25 fps): only the order of the stamps matters to the decoder
_CLUSTER_FRAMES = 256  # block stamps are int16 ms relative to their cluster: 256 * 40 ms stays far inside


def _size(n: int) -> bytes:
    """EBML variable-size integer: 8 bytes, marker 0x01 (valid for any size below 2^56 - 1)."""
    return b"\x01" + n.to_bytes(7, "big")


def _el(eid: bytes, payload: bytes) -> bytes:
    return eid + _size(len(payload)) + payload


def _uint(eid: bytes, v: int) -> bytes:
    return _el(eid, v.to_bytes(max(1, (v.bit_length() + 7) // 8), "big"))


_HEADER = _el(
    b"\x1a\x45\xdf\xa3",
    b"".join(
        [
            _uint(b"\x42\x86", 1),  # EBMLVersion
            _uint(b"\x42\xf7", 1),  # EBMLReadVersion
            _uint(b"\x42\xf2", 4),  # EBMLMaxIDLength
            _uint(b"\x42\xf3", 8),  # EBMLMaxSizeLength
            _el(b"\x42\x82", b"matroska"),  # DocType
            _uint(b"\x42\x87", 4),  # DocTypeVersion
            _uint(b"\x42\x85", 2),  # DocTypeReadVersion
        ]
    ),
)
_INFO = _el(
    b"\x15\x49\xa9\x66",
    _uint(b"\x2a\xd7\xb1", 1_000_000) + _el(b"\x4d\x80", b"fastcvrl") + _el(b"\x57\x41", b"fastcvrl"),
)  # TimestampScale 1 ms, MuxingApp, WritingApp


def tracks(codec: str, width: int, height: int, extradata: bytes | None) -> bytes:
    """The Tracks element of a one-video-track file (the part that is the same for every clip of a file)."""
    if codec not in CODEC_IDS:
        raise ValueError(f"no Matroska codec id for {codec!r}")
    entry = [
        _uint(b"\xd7", 1),  # TrackNumber
        _uint(b"\x73\xc5", 1),  # TrackUID
        _uint(b"\x83", 1),  # TrackType: video
        _uint(b"\x9c", 0),  # FlagLacing: off
        _el(b"\x86", CODEC_IDS[codec].encode()),  # CodecID
        _uint(b"\x23\xe3\x83", FRAME_MS * 1_000_000),  # DefaultDuration (ns)
        _el(b"\xe0", _uint(b"\xb0", width) + _uint(b"\xba", height)),  # Video: PixelWidth, PixelHeight
    ]
    if extradata:
        entry.append(_el(b"\x63\xa2", extradata))  # CodecPrivate
    return _el(b"\x16\x54\xae\x6b", _el(b"\xae", b"".join(entry)))


_BLOCK = np.dtype([("id", "u1"), ("size", ">u8"), ("track", "u1"), ("stamp", ">i2"), ("flags", "u1")])  # 13 B


def write_packets(
    tracks_element: bytes, payloads: Sequence, sizes: np.ndarray, rank: np.ndarray, key: np.ndarray
) -> bytes:
    """A Matroska file of ``payloads`` (decode order, bytes-like, ``sizes`` (P,) their lengths);
    ``tracks_element``: ``tracks(...)`` of the file (built once per file); ``rank``: (P,) presentation
    position of each packet in the trimmed stream (0..P-1); ``key``: (P,) keyframe flags. Byte-identical to
    ``write`` (the plain reference), with the block headers built as one array instead of one ``struct.pack``
    each."""
    n = len(payloads)
    stamps = np.asarray(rank, np.int64) * FRAME_MS
    hdr = np.empty(n, _BLOCK)
    hdr["id"], hdr["track"] = 0xA3, 0x81
    hdr["size"] = np.asarray(sizes, np.uint64) + np.uint64((1 << 56) + 4)
    hdr["flags"] = np.where(np.asarray(key, bool), 0x80, 0)
    parts = [_HEADER, b"\x18\x53\x80\x67", b"", _INFO, tracks_element]  # [2]: the Segment's size, set below
    segment = len(_INFO) + len(tracks_element)
    for c0 in range(0, n, _CLUSTER_FRAMES):
        c1 = min(c0 + _CLUSTER_FRAMES, n)
        base = int(stamps[c0:c1].min())
        hdr["stamp"][c0:c1] = stamps[c0:c1] - base
        raw = hdr[c0:c1].tobytes()
        blocks = [b""] * (2 * (c1 - c0))
        blocks[0::2] = [raw[i : i + 13] for i in range(0, len(raw), 13)]
        blocks[1::2] = payloads[c0:c1]
        stamp = _uint(b"\xe7", base)
        cluster = len(stamp) + len(raw) + int(np.sum(sizes[c0:c1]))
        parts += [b"\x1f\x43\xb6\x75", _size(cluster), stamp, *blocks]
        segment += 4 + 8 + cluster  # ID, 8-byte size, payload
    parts[2] = _size(segment)
    return b"".join(parts)  # one copy of the payloads


def write(
    codec: str,
    width: int,
    height: int,
    extradata: bytes | None,
    payloads: Sequence[bytes],
    rank: np.ndarray,
    key: np.ndarray,
) -> bytes:
    """Reference writer (one element at a time): a Matroska file of ``payloads`` (decode order); ``rank``:
    (P,) presentation position of each packet in the trimmed stream (0..P-1); ``key``: (P,) keyframe flags."""
    parts = [_INFO, tracks(codec, width, height, extradata)]
    stamps = (np.asarray(rank, np.int64) * FRAME_MS).tolist()
    keys = np.asarray(key, bool).tolist()
    for c0 in range(0, len(payloads), _CLUSTER_FRAMES):
        base = min(stamps[c0 : c0 + _CLUSTER_FRAMES])
        blocks = [_uint(b"\xe7", base)]  # cluster Timestamp
        for i in range(c0, min(c0 + _CLUSTER_FRAMES, len(payloads))):
            head = struct.pack(
                ">BhB", 0x81, stamps[i] - base, 0x80 if keys[i] else 0
            )  # track 1, stamp, flags
            blocks.append(b"\xa3" + _size(len(head) + len(payloads[i])) + head)  # SimpleBlock
            blocks.append(bytes(payloads[i]))
        parts.append(_el(b"\x1f\x43\xb6\x75", b"".join(blocks)))
    return _HEADER + _el(b"\x18\x53\x80\x67", b"".join(parts))
