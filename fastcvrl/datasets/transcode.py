"""Re-encoding one video for fast clip decoding (``prepare --transcode``): every frame kept, in order, a
keyframe every ``gop`` frames (H.264: each an IDR picture), the short side scaled (H.264: both sides
multiples of 16, for NVDEC's decoder reuse); the output verified before it is renamed into place. A video
whose output size breaks a rule (``check_output_size``) is rejected as ``unsupported size``, not written."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from fractions import Fraction

import av
import numpy as np
from av.video.reformatter import ColorRange, VideoReformatter

from dali_pipelines import nvdec
from fastcvrl.atomic import temp_path
from fastcvrl.datasets.keyframes import check_idr_gop, keyframe_info
from fastcvrl.datasets.video import BITEXACT, CODECS, add_video_stream
from fastcvrl.datasets.videoprobe import Probe, display_rotation, probe_video

TRANSCODE_CODECS = ("h264", "vp9", "mjpeg")


@dataclass(frozen=True)
class Transcode:
    codec: str  # h264 | vp9 | mjpeg
    short_side: int = 256  # 0 keeps the size (rounded down to even for 4:2:0)
    gop: int = 16  # keyframe interval in frames
    quality: int | None = None  # CRF (h264, vp9) or qscale (mjpeg); None = fastcvrl.datasets.video's defaults
    # H.264 B-frames: files about 12% smaller at the same CRF for the same frames decoded per clip, since a
    # trimmed run ends at the last packet a clip needs (docs/performance.md, "Which H.264 settings"); other
    # codecs: unused
    bframes: int = 3
    # scale a video up more than MAX_UPSCALE times (off: such videos are rejected as "unsupported size")
    allow_upscale: bool = False
    # the output rules (sizes, encoder settings) of this version: a journal of other rules is not reused
    rules: int = 2


MAX_UPSCALE = 2.0  # UCF-101's 240-line videos to 256 are fine; 1 x 1 to 64 x 64 is not a video any more
SIZE_REASON = "unsupported size"  # the rejection of a video whose output size is refused


class SizeRefused(ValueError):
    """The output size of a video breaks a rule (upscale, NVDEC's limits); the message says which."""


def output_size(width: int, height: int, short_side: int, codec: str = "") -> tuple[int, int]:
    """The output size of a ``width`` x ``height`` video for ``codec``.

    H.264: both sides multiples of 16 (``nvdec.ALIGN``), so NVDEC's coded size equals the display size and
    its decoders are reused (``dali_pipelines.nvdec``): the short side is ``short_side`` rounded to a
    multiple of 16, the long side the multiple of 16 nearest the aspect-preserving length; ``short_side``
    0 rounds each side down to a multiple of 16. Other codecs: the short side is ``short_side`` (0: kept),
    both sides even (4:2:0 chroma needs it)."""
    a = nvdec.ALIGN if codec == "h264" else 2
    if short_side <= 0:
        if a == 2:
            return max(2, int(round(width / 2)) * 2), max(2, int(round(height / 2)) * 2)
        return max(a, width // a * a), max(a, height // a * a)
    short = max(a, int(round(short_side / a)) * a) if a > 2 else short_side
    s = short / min(width, height)
    w, h = width * s, height * s
    return max(a, int(round(w / a)) * a), max(a, int(round(h / a)) * a)


def check_output_size(width: int, height: int, opts: Transcode) -> tuple[int, int]:
    """``output_size`` for ``opts``, or ``SizeRefused``: an upscale beyond ``MAX_UPSCALE`` without
    ``opts.allow_upscale``, or (H.264) an output NVDEC would not decode (``nvdec.size_refusal``)."""
    w, h = output_size(width, height, opts.short_side, opts.codec)
    scale = min(w, h) / max(1, min(width, height))
    if scale > MAX_UPSCALE and not opts.allow_upscale:
        raise SizeRefused(
            f"{width}x{height} would be scaled up {scale:.1f}x to {w}x{h}, more than {MAX_UPSCALE:g}x "
            "(--allow-upscale to allow it)"
        )
    if opts.codec == "h264":
        why = nvdec.size_refusal("h264", w, h)
        if why:
            raise SizeRefused(f"{width}x{height} -> {w}x{h}: {why}")
    return w, h


def transcode_video(src: str, dst: str, opts: Transcode, threads: int = 0) -> Probe:
    """Re-encode every frame of ``src``, in order, into ``dst``; returns the probe of ``dst``, or of ``src``
    when the source is unusable. The output is verified (decoded frame count equal to the source's) before it
    is renamed into place, so ``dst`` either is complete or does not exist. ``threads``: codec threads each
    for the decoder and the encoder (0: FFmpeg's choice)."""
    try:
        with av.open(src, metadata_errors="ignore") as f:
            s = f.streams.video[0]
            rate = Fraction(s.average_rate or s.guessed_rate or 25).limit_denominator(1001)
    except Exception:  # probe_video below reports why
        rate = Fraction(25)
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    tmp = str(temp_path(dst, keep_suffix=True))  # the one temporary-name rule (fastcvrl.atomic)
    pix_fmt = CODECS[opts.codec][1]
    dst_range = ColorRange.JPEG if pix_fmt.startswith("yuvj") else ColorRange.MPEG
    scaler = VideoReformatter()
    state: dict = {}

    def encode(frame: av.VideoFrame) -> None:
        # Rotation metadata (a phone's portrait video) is applied: the output is stored upright, at the
        # displayed size, and carries no rotation of its own (the loaders do not read one).
        src_range = frame.color_range
        if src_range not in (ColorRange.MPEG, ColorRange.JPEG):
            src_range = ColorRange.JPEG if frame.format.name.startswith("yuvj") else ColorRange.MPEG
        rotation = display_rotation(frame)
        if rotation:
            rgb = scaler.reformat(
                frame, format="rgb24", src_color_range=src_range, dst_color_range=ColorRange.JPEG, threads=1
            ).to_ndarray()
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(np.rot90(rgb, rotation // 90)), "rgb24")
            src_range = ColorRange.JPEG
        if not state:
            w, h = check_output_size(frame.width, frame.height, opts)  # SizeRefused: rejected below
            state["out"] = av.open(tmp, mode="w", container_options=BITEXACT)
            state["stream"] = add_video_stream(
                state["out"], opts.codec, w, h, rate, opts.gop, opts.quality, opts.bframes
            )
            state["stream"].codec_context.thread_count = threads
            state["size"], state["n"] = (w, h), 0
        w, h = state["size"]
        # The source's range is said explicitly (above): swscale otherwise takes full-range input as limited.
        f2 = scaler.reformat(
            frame,
            w,
            h,
            pix_fmt,
            interpolation="AREA",
            src_color_range=src_range,
            dst_color_range=dst_range,
            threads=1,
        )
        f2.pts, f2.time_base = state["n"], 1 / rate  # constant frame rate: frame i at i / rate
        f2.pict_type = av.video.frame.PictureType.NONE  # else encoders keep the source's keyframes too
        state["n"] += 1
        for packet in state["stream"].encode(f2):
            state["out"].mux(packet)

    try:
        try:
            probe = probe_video(src, on_frame=encode, threads=threads)
        except SizeRefused as e:  # at the first frame: nothing written
            return Probe(src, reason=SIZE_REASON, detail=str(e))
        if state:
            if probe.ok:
                for packet in state["stream"].encode():
                    state["out"].mux(packet)
            state["out"].close()
            state.clear()
        if not probe.ok:
            return probe
        if not os.path.isfile(tmp):  # removed under us: not the video's fault (an error, retried next run)
            raise FileNotFoundError(f"the output {tmp} vanished before it was checked")
        out = probe_video(tmp, threads=threads)
        if not out.ok or out.num_frames != probe.num_frames:
            why = out.detail or f"{out.num_frames} frames written, {probe.num_frames} read"
            return replace(probe, reason="transcode failed", detail=why)
        if opts.gop and opts.codec in ("h264", "vp9"):  # keyframes every gop frames, each an IDR (H.264)
            why = check_idr_gop(keyframe_info(tmp), opts.gop)
            if why:
                return replace(probe, reason="transcode failed", detail=why)
        os.replace(tmp, dst)
        return replace(out, path=dst)
    finally:
        if state:
            state["out"].close()
        if os.path.exists(tmp):
            os.remove(tmp)
