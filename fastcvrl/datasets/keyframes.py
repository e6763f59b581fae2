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
class Sps:
    """What an H.264 sequence parameter set says about the decoder NVDEC needs (ITU-T H.264 7.3.2.1.1)."""

    coded: tuple[int, int]  # whole macroblocks: what NVDEC reports as the coded size
    display: tuple[int, int]  # after the frame cropping: what DALI's cache records
    ref_frames: int  # max_num_ref_frames
    dpb_frames: int | None  # VUI max_dec_frame_buffering (None: not written; then the level decides)
    chroma_format: int  # 1: 4:2:0
    bit_depth: int  # luma

    @property
    def decoder(self) -> tuple:
        """The fields DALI's cache matches a decoder on (the surface count follows the DPB size)."""
        return (*self.coded, self.dpb_frames or self.ref_frames, self.chroma_format, self.bit_depth)


class _Bits:
    """Big-endian bit reader over an RBSP (emulation-prevention bytes removed)."""

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def u(self, n: int) -> int:
        v = 0
        for _ in range(n):
            byte = self.data[self.pos >> 3]  # IndexError past the end: a truncated SPS
            v = (v << 1) | ((byte >> (7 - (self.pos & 7))) & 1)
            self.pos += 1
        return v

    def ue(self) -> int:
        zeros = 0
        while self.u(1) == 0:
            zeros += 1
            if zeros > 31:
                raise ValueError("bad exp-Golomb code")
        return (1 << zeros) - 1 + self.u(zeros)

    def se(self) -> int:
        k = self.ue()
        return (k + 1) // 2 if k % 2 else -(k // 2)


def _rbsp(nal: bytes) -> bytes:
    return nal.replace(b"\x00\x00\x03", b"\x00\x00")


def _skip_scaling_list(b: _Bits, size: int) -> None:
    last = nxt = 8
    for _ in range(size):
        if nxt:
            nxt = (last + b.se() + 256) % 256
        last = nxt or last


def _skip_hrd(b: _Bits) -> None:
    count = b.ue() + 1
    b.u(4), b.u(4)
    for _ in range(count):
        b.ue(), b.ue(), b.u(1)
    b.u(5), b.u(5), b.u(5), b.u(5)


def parse_sps(nal: bytes) -> Sps:
    """Parse one SPS NAL unit (its header byte included); ``ValueError`` if it is not one or is cut short."""
    if not nal or nal[0] & 0x1F != 7:
        raise ValueError("not an SPS NAL unit")
    try:
        return _parse_sps(_Bits(_rbsp(nal[1:])))
    except IndexError:
        raise ValueError("SPS cut short") from None


def _parse_sps(b: _Bits) -> Sps:
    profile = b.u(8)
    b.u(8), b.u(8), b.ue()  # constraint flags, level, seq_parameter_set_id
    chroma, depth = 1, 8
    if profile in (100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135):
        chroma = b.ue()
        if chroma == 3:
            b.u(1)
        depth = b.ue() + 8
        b.ue(), b.u(1)  # chroma bit depth, qpprime_y_zero_transform_bypass
        if b.u(1):  # seq_scaling_matrix_present
            for i in range(8 if chroma != 3 else 12):
                if b.u(1):
                    _skip_scaling_list(b, 16 if i < 6 else 64)
    b.ue()  # log2_max_frame_num_minus4
    poc = b.ue()
    if poc == 0:
        b.ue()
    elif poc == 1:
        b.u(1), b.se(), b.se()
        for _ in range(b.ue()):
            b.se()
    refs = b.ue()
    b.u(1)  # gaps_in_frame_num_allowed
    w_mbs, h_units = b.ue() + 1, b.ue() + 1
    frame_mbs_only = b.u(1)
    if not frame_mbs_only:
        b.u(1)
    b.u(1)  # direct_8x8_inference
    coded = (16 * w_mbs, 16 * h_units * (2 - frame_mbs_only))
    crop = (0, 0, 0, 0)
    if b.u(1):
        crop = (b.ue(), b.ue(), b.ue(), b.ue())  # left, right, top, bottom
    cx = 1 if chroma in (0, 3) else 2
    cy = (1 if chroma in (0, 2, 3) else 2) * (2 - frame_mbs_only)
    display = (coded[0] - cx * (crop[0] + crop[1]), coded[1] - cy * (crop[2] + crop[3]))
    dpb = None
    if b.u(1):  # vui_parameters_present
        if b.u(1) and b.u(8) == 255:  # aspect ratio; extended SAR
            b.u(16), b.u(16)
        if b.u(1):
            b.u(1)
        if b.u(1):  # video signal type
            b.u(3), b.u(1)
            if b.u(1):
                b.u(8), b.u(8), b.u(8)
        if b.u(1):
            b.ue(), b.ue()
        if b.u(1):  # timing info
            b.u(32), b.u(32), b.u(1)
        nal_hrd = b.u(1)
        if nal_hrd:
            _skip_hrd(b)
        vcl_hrd = b.u(1)
        if vcl_hrd:
            _skip_hrd(b)
        if nal_hrd or vcl_hrd:
            b.u(1)
        b.u(1)  # pic_struct_present
        if b.u(1):  # bitstream_restriction
            b.u(1), b.ue(), b.ue(), b.ue(), b.ue(), b.ue()
            dpb = b.ue()
    return Sps(coded, display, refs, dpb, chroma, depth)


def stream_sps(extradata: bytes | None, first_packet: bytes = b"", length_size: int = 0) -> Sps | None:
    """The stream's first SPS: from the ``avcC`` record, else from the first packet (Annex B or
    length-prefixed); None if neither holds one."""
    if extradata and len(extradata) >= 8 and extradata[0] == 1 and extradata[5] & 0x1F:
        n = int.from_bytes(extradata[6:8], "big")
        return parse_sps(bytes(extradata[8 : 8 + n]))
    for nal in _nal_units(first_packet, length_size):
        if nal and nal[0] & 0x1F == 7:
            return parse_sps(nal)
    return None


@dataclass(frozen=True)
class KeyframeInfo:
    """Keyframes of the first video stream, by presentation index."""

    frames: int  # packets with data (frames)
    keyframes: tuple[int, ...]  # presentation indices of the packets flagged as keyframes
    idr: tuple[int, ...] | None  # presentation indices of packets holding an IDR slice; None: not H.264
    pix_fmt: str  # the stream's pixel format (chroma format and bit depth: part of a decoder configuration)
    sps: Sps | None = None  # H.264: the first sequence parameter set

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


def _nal_units(data: bytes, length_size: int = 0) -> list[bytes]:
    """The NAL units of one H.264 packet: length-prefixed (MP4/Matroska ``avcC``: ``length_size`` 1, 2 or 4
    bytes) or, with ``length_size`` 0, Annex B start codes. A truncated length ends the list."""
    out: list[bytes] = []
    if length_size:
        i = 0
        while i + length_size < len(data):
            n = int.from_bytes(data[i : i + length_size], "big")
            i += length_size
            if n <= 0 or i + n > len(data):
                break
            out.append(data[i : i + n])
            i += n
        return out
    starts = []
    i = data.find(b"\x00\x00\x01")
    while i >= 0 and i + 3 < len(data):
        starts.append(i + 3)
        i = data.find(b"\x00\x00\x01", i + 3)
    for a, b in zip(starts, starts[1:] + [len(data) + 3]):
        out.append(data[a : b - 3].rstrip(b"\x00") if b <= len(data) else data[a:])
    return out


def nal_unit_types(data: bytes, length_size: int = 0) -> list[int]:
    """The NAL unit types in one H.264 packet (``_nal_units``' framing)."""
    return [n[0] & 0x1F for n in _nal_units(data, length_size) if n]


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
        rows, first = [], b""
        for p in f.demux(stream):
            if not p.size:
                continue
            t = p.pts if p.pts is not None else p.dts
            data = bytes(p) if h264 else b""
            first = first or data
            idr = h264 and IDR in nal_unit_types(data, size)
            rows.append((t if t is not None else len(rows), p.is_keyframe, idr))
        pix_fmt = stream.codec_context.pix_fmt or ""
        sps = None
        if h264:
            try:
                sps = stream_sps(stream.codec_context.extradata, first, size)
            except ValueError:
                sps = None  # an SPS this parser does not read: the manifest's size stands in
    rows.sort(key=lambda r: r[0])
    keys = tuple(i for i, r in enumerate(rows) if r[1])
    idrs = tuple(i for i, r in enumerate(rows) if r[2]) if h264 else None
    return KeyframeInfo(len(rows), keys, idrs, pix_fmt, sps)


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
