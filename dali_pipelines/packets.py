"""Host-side demuxing: hand the video decoder only the packets a clip needs (PyAV demux, no decoding).

DALI 2.4's ``fn.decoders.video`` does not seek: it decodes from the first frame of its input (docs/dali.md),
so a clip late in a video would cost the whole prefix. Instead, for each sample we cut the stream down to the
runs of packets from the keyframe before each needed frame to the last packet needed to present it (decode
order: with B-frames that is short of the end of the group of pictures), and wrap them in a small in-memory
container (IVF for VP8/VP9, Matroska written by ``matroska.py`` otherwise; MJPEG too: DALI's CPU decoder
takes about 4x longer a frame from concatenated JPEGs, the raw MJPEG demuxer's input). Runs start at
keyframes, so the cut stream decodes on its own, and overlapping views share one run: every frame is decoded
at most once.

The packet index of each file (payload byte offsets, sizes, keyframe flags, codec parameters and extradata)
is built once per process by one demux pass and cached, so later samples read only the byte range they need
with one ``read`` per video and write the container without opening the source again.
"""

from __future__ import annotations

import bisect
import io
import os
import struct
from dataclasses import dataclass
from functools import cached_property

import av
import numpy as np

from . import matroska
from .manifest import fingerprint_bytes


class VideoReadError(RuntimeError):
    """A video that cannot be demuxed, read or decoded; the message names the file."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = path


class VideoChangedError(VideoReadError):
    """A file whose bytes no longer match its manifest fingerprint (replaced after ``prepare``)."""


_IVF_FOURCC = {"vp8": b"VP80", "vp9": b"VP90"}


@dataclass(frozen=True)
class PacketIndex:
    """Packets of a file's first video stream, in decode order (empty packets dropped). Compact (about 9 bytes
    a packet) because every video of a dataset stays indexed for the whole run."""

    path: str
    codec: str  # PyAV codec name: vp9, vp8, mjpeg, h264, ...
    width: int
    height: int
    offsets: np.ndarray | None  # (P,) uint32/int64 payload byte offsets in the file; None: not locatable
    sizes: np.ndarray  # (P,) uint32
    keyframe: np.ndarray  # (P,) bool
    reorder: (
        np.ndarray | None
    )  # (P,) int32 presentation index of each packet; None: decode order = presentation
    extradata: bytes | None

    @property
    def num_frames(self) -> int:
        return len(self.sizes)

    @property
    def frame_of_packet(self) -> np.ndarray:
        """Presentation index of each packet (decode order)."""
        return np.arange(self.num_frames) if self.reorder is None else self.reorder

    @cached_property
    def packet_of_frame(self) -> np.ndarray:
        """Decode-order packet of each presentation index (the inverse of ``frame_of_packet``)."""
        out = np.arange(self.num_frames)
        if self.reorder is not None:
            out[self.reorder] = np.arange(self.num_frames)
        return out

    @cached_property
    def key_packets(self) -> np.ndarray:
        """Decode-order indices of the keyframe packets, ascending (packet 0 is one)."""
        return np.flatnonzero(self.keyframe)

    @property
    def keyframes(self) -> np.ndarray:
        """Presentation indices of the keyframes, ascending."""
        return np.sort(self.frame_of_packet[self.keyframe])

    @cached_property
    def matroska_tracks(self) -> bytes:
        """The Tracks element of this file's trimmed Matroska streams (the same for every clip)."""
        return matroska.tracks(self.codec, self.width, self.height, self.extradata)


def build_index(path: str) -> PacketIndex:
    """Demux ``path`` once (no decoding) and locate each packet's payload in the file."""
    return index_and_bytes(path)[0]


def index_and_bytes(path: str, fingerprint: str = "") -> tuple[PacketIndex, bytes]:
    """``build_index`` plus the file's bytes (one read serves both the index and the first clip).
    ``fingerprint``: the manifest's ``file_fingerprint`` of the file (``""``: not checked); a file whose
    bytes no longer match it (replaced after ``prepare``) is a ``VideoReadError`` saying so, computed from
    the bytes read here (no extra read)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
        if fingerprint and fingerprint_bytes(data) != fingerprint:
            raise VideoChangedError(
                path,
                f"changed since the manifest was written ({len(data)} bytes, fingerprint "
                f"{fingerprint_bytes(data)}; the manifest says {fingerprint}): prepare it again",
            )
        with av.open(io.BytesIO(data)) as container:
            if not container.streams.video:
                raise VideoReadError(path, "no video stream")
            stream = container.streams.video[0]
            ctx = stream.codec_context
            rows, located = [], True
            for p in container.demux(stream):
                if not p.size:
                    continue
                pts = p.pts if p.pts is not None else p.dts
                offset = -1
                if located and p.pos is not None and p.pos >= 0:
                    payload = bytes(p)
                    j = data.find(payload[:64], p.pos, p.pos + 128)
                    if j >= 0 and data[j : j + p.size] == payload:
                        offset = j
                located &= offset >= 0
                rows.append((offset, p.size, bool(p.is_keyframe), pts if pts is not None else len(rows)))
            codec, width, height = ctx.name, ctx.width, ctx.height
            if codec not in matroska.CODEC_IDS:
                raise VideoReadError(
                    path, f"codec {codec} cannot be trimmed (supported: {sorted(matroska.CODEC_IDS)})"
                )
            extradata = bytes(ctx.extradata) if ctx.extradata else None
    except VideoReadError:
        raise
    except (av.FFmpegError, OSError, ValueError) as e:
        raise VideoReadError(path, f"cannot demux ({type(e).__name__}: {e})") from e
    if not rows:
        raise VideoReadError(path, "no video packets")
    offsets, sizes, key, pts = (np.array(c) for c in zip(*rows))
    if not key[0]:
        raise VideoReadError(path, "the first packet is not a keyframe")
    frame_of_packet = np.empty(len(pts), np.int32)
    frame_of_packet[np.argsort(pts, kind="stable")] = np.arange(len(pts))
    reorder = None if np.array_equal(frame_of_packet, np.arange(len(pts))) else frame_of_packet
    offsets = (
        (offsets.astype(np.uint32) if offsets.max() < 2**32 else offsets.astype(np.int64))
        if located
        else None
    )
    index = PacketIndex(
        path,
        codec,
        int(width),
        int(height),
        offsets,
        sizes.astype(np.uint32),
        key.astype(bool),
        reorder,
        extradata,
    )
    return index, data


def keep_runs(index: PacketIndex, needed: np.ndarray) -> list[tuple[int, int]]:
    """Packet runs ``[first, last]`` (decode order, inclusive) to hand the decoder so every ``needed`` frame
    (presentation indices) is presented.

    Each run starts at the keyframe packet at or before a needed frame's packet and ends at the last needed
    packet of that group of pictures: in decode order every reference of a packet comes before it (closed
    groups of pictures), so nothing past the last needed packet is decoded, also for codecs that reorder
    frames (B-frames). Runs that touch are merged. Without reordering decode order is presentation order,
    so the runs are also frame runs. ``keep_runs_reference`` is the same rule as a plain loop.
    """
    first, last = _runs(index, needed)
    return list(zip(first, last))


def _runs(index: PacketIndex, needed: np.ndarray) -> tuple[list[int], list[int]]:
    """``keep_runs`` as two lists (first packets, last packets). Python lists and ``bisect``: a clip needs a
    few dozen packets, too few for array calls to pay off."""
    frames = sorted(set(np.asarray(needed, dtype=np.int64).tolist()))
    if frames[0] < 0 or frames[-1] >= index.num_frames:
        raise ValueError(f"{index.path}: frames {frames[0]}..{frames[-1]} outside 0..{index.num_frames - 1}")
    packets = frames if index.reorder is None else sorted(index.packet_of_frame[frames].tolist())
    keys = index.key_packets.tolist()
    first: list[int] = []
    last: list[int] = []
    for p in packets:  # ascending
        start = keys[bisect.bisect_right(keys, p) - 1]  # the keyframe packet at or before p
        if first and start <= last[-1] + 1:  # reaches the previous run: extend it
            last[-1] = p
        else:
            first.append(start)
            last.append(p)
    return first, last


def keep_runs_reference(index: PacketIndex, needed: np.ndarray) -> list[tuple[int, int]]:
    """Slow reference for ``keep_runs``: one needed frame at a time, merging into the previous run."""
    packets = sorted(int(index.packet_of_frame[f]) for f in set(np.asarray(needed).tolist()))
    keys = np.flatnonzero(index.keyframe).tolist()
    runs: list[list[int]] = []
    for p in packets:
        s = max(k for k in keys if k <= p)
        if runs and s <= runs[-1][1] + 1:
            runs[-1][1] = max(runs[-1][1], p)
        else:
            runs.append([s, p])
    return [(a, b) for a, b in runs]


@dataclass
class TrimmedClip:
    """An in-memory container holding only the packets to decode, and where the needed frames landed."""

    encoded: np.ndarray  # (bytes,) uint8
    positions: np.ndarray  # (len(needed),) int32: position in the trimmed stream of each needed frame
    frames_decoded: int  # packets handed to the decoder: an upper bound on the frames it decodes
    bytes_read: int


def trim(index: PacketIndex, needed: np.ndarray, data: bytes | None = None) -> TrimmedClip:
    """Cut ``index.path`` down to the runs that reach ``needed`` (presentation indices, any order, repeats).

    ``data``: the file's bytes if already in memory; otherwise one read of the needed byte range. No container
    is opened when the index located the payloads (the usual case).
    """
    needed = np.asarray(needed, dtype=np.int64)
    first, last = _runs(index, needed)
    packets = np.array([p for a, b in zip(first, last) for p in range(a, b + 1)], np.int64)  # decode order
    if index.reorder is None:
        kept_frames, rank = packets, None  # presentation order is decode order
    else:
        shown = index.reorder[packets]  # presentation index of each kept packet
        kept_frames = np.sort(shown)  # what the trimmed stream presents, in order
        rank = np.searchsorted(kept_frames, shown)
    positions = np.searchsorted(kept_frames, needed).astype(np.int32)
    payloads, nbytes = _read_payloads(index, packets, data)
    if index.codec in _IVF_FOURCC and index.reorder is None:
        encoded = _ivf(index, payloads, index.sizes[packets])
    else:  # MJPEG too: DALI's CPU decoder takes 2.3 ms a 340 x 256 frame from raw JPEGs, 0.6 from Matroska
        encoded = matroska.write_packets(
            index.matroska_tracks,
            payloads,
            index.sizes[packets],
            np.arange(len(packets)) if rank is None else rank,
            index.keyframe[packets],
        )
    return TrimmedClip(np.frombuffer(encoded, np.uint8), positions, len(packets), nbytes)


def _read_payloads(index: PacketIndex, packets: np.ndarray, data: bytes | None) -> tuple[list, int]:
    """Payloads of ``packets`` (decode order) as buffers: ranged reads of the file, one per stretch of nearby
    packets (or views of ``data``, the whole file already in memory), or a demux pass where the payloads could
    not be located."""
    try:
        if index.offsets is not None:
            offsets = index.offsets[packets].astype(np.int64)
            ends = offsets + index.sizes[packets]
            if data is not None:
                view = memoryview(data)
                return [view[o:e] for o, e in zip(offsets.tolist(), ends.tolist())], len(data)
            return _ranged_reads(index.path, offsets, ends)
        wanted = set(packets.tolist())
        out: dict[int, bytes] = {}
        with av.open(io.BytesIO(data) if data is not None else index.path) as container:
            i = 0
            for p in container.demux(container.streams.video[0]):
                if not p.size:
                    continue
                if i in wanted:
                    out[i] = bytes(p)
                i += 1
        return [out[int(i)] for i in packets], len(data) if data is not None else os.path.getsize(index.path)
    except VideoReadError:
        raise
    except (av.FFmpegError, OSError, KeyError) as e:
        raise VideoReadError(index.path, f"cannot read packets ({type(e).__name__}: {e})") from e


READ_GAP = 1 << 18  # bytes: packets closer than this in the file are read together, farther ones apart


def _ranged_reads(path: str, offsets: np.ndarray, ends: np.ndarray) -> tuple[list, int]:
    """Views of the byte ranges ``[offsets, ends)`` (P,) from ``path``: one ``pread`` per group of ranges that
    lie within ``READ_GAP`` of each other (two distant clips: two reads, not the whole stretch between).
    Python lists, not NumPy calls: a clip has a few dozen packets, too few for array calls to pay off."""
    o, e = offsets.tolist(), ends.tolist()
    order = list(range(len(o)))
    if o != sorted(o):  # payloads out of file order: read them by ascending offset (a stable sort)
        order.sort(key=o.__getitem__)
    groups: list[tuple[int, int, int]] = []  # (first, last + 1) in ``order``, and the end of each read
    first, reach = 0, e[order[0]]
    for k in range(1, len(order)):
        i = order[k]
        if o[i] - reach > READ_GAP:
            groups.append((first, k, reach))
            first = k
        if e[i] > reach:
            reach = e[i]
    groups.append((first, len(order), reach))
    views: list = [None] * len(o)
    nbytes = 0
    fd = os.open(path, os.O_RDONLY)
    try:
        for a, b, hi in groups:
            lo = o[order[a]]
            chunk = os.pread(fd, hi - lo, lo)
            if len(chunk) != hi - lo:
                raise VideoReadError(path, "file is shorter than its packet index (changed on disk?)")
            nbytes += hi - lo
            view = memoryview(chunk)
            for i in order[a:b]:
                views[i] = view[o[i] - lo : e[i] - lo]
    finally:
        os.close(fd)
    return views, nbytes


_IVF_FRAME = np.dtype([("size", "<u4"), ("pts", "<u8")])  # IVF's 12-byte frame header


def _ivf(index: PacketIndex, payloads: list, sizes: np.ndarray) -> bytes:
    """IVF: a 32-byte file header, then a 12-byte header (size, pts) before each frame (``sizes`` (P,): the
    payloads' lengths)."""
    head = struct.pack(
        "<4sHH4sHHIIII",
        b"DKIF",
        0,
        32,
        _IVF_FOURCC[index.codec],
        index.width,
        index.height,
        25,
        1,
        len(payloads),
        0,
    )
    n = len(payloads)
    hdr = np.empty(n, _IVF_FRAME)
    hdr["size"] = sizes
    hdr["pts"] = np.arange(n)
    raw = hdr.tobytes()
    parts = [head] * (2 * n + 1)  # the file header, then a frame header and its payload per frame
    parts[1::2] = [raw[i : i + 12] for i in range(0, 12 * n, 12)]
    parts[2::2] = payloads
    return b"".join(parts)
