"""Which videos DALI's decoders accept, checked from the manifest before any work (pure Python, no DALI).

    problems = undecodable(entries, "gpu")           # [(entry, reason), ...]
    check_decodable(entries, "gpu", "train/manifest.csv")   # raises UndecodableError naming a few, then a
    count

CPU (``fn.decoders.video(device="cpu")``, DALI 2.4's bundled libavcodec): VP8, VP9 and MJPEG only; H.264,
HEVC, MPEG-4 and AV1 are disabled there ("Codec 27 (h264) is not supported by the CPU variant").

GPU (``device="mixed"``, NVDEC): DALI 2.4's shipped binary selects only H.264, HEVC, VP8, VP9, AV1 and MPEG-4
streams (its source also lists MJPEG, the binary does not: MJPEG and MPEG-2 end in "Failed to create video
decoder"). NVDEC refuses frames below the decoder's minimum coded size (``cuvidGetDecoderCaps``), which the
table ``NVDEC_MIN_SIZE`` holds from NVIDIA's Video Codec SDK support matrix; ``nvdec_min_size`` asks the
driver itself where a GPU and ``libnvcuvid`` are at hand. Two cases decode on some machines only and are
accepted with a warning: AV1 (NVDEC has it from Ampere on) and MPEG-4 Part 2 from AVI (packed B-frames need
the ``mpeg4_unpack_bframes`` filter, which the Matroska remux of a trimmed clip does not carry).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from collections.abc import Iterable, Sequence

CPU_CODECS = frozenset({"vp8", "vp9", "mjpeg"})
GPU_CODECS = frozenset({"h264", "hevc", "vp8", "vp9", "av1", "mpeg4"})
# (min width, min height) in pixels per codec, 8-bit 4:2:0 (NVDEC support matrix, Turing..Hopper)
NVDEC_MIN_SIZE = {
    "h264": (48, 16),
    "hevc": (144, 144),
    "vp8": (48, 16),
    "vp9": (128, 128),
    "av1": (128, 128),
    "mpeg4": (48, 16),
}
GPU_CAVEATS = {
    "av1": "AV1 decodes on NVDEC from Ampere (A100, RTX 30xx) on; older GPUs fail at the first batch",
    "mpeg4": "MPEG-4 Part 2 from AVI may carry packed B-frames that decode wrongly once remuxed; "
    "prefer --transcode h264",
}
# decoder names PyAV may record for the same codec
ALIASES = {
    "libdav1d": "av1",
    "libaom-av1": "av1",
    "av1_cuvid": "av1",
    "h265": "hevc",
    "libvpx": "vp8",
    "libvpx-vp9": "vp9",
    "avc": "h264",
}
TRANSCODE_TO = {"cpu": "vp9", "gpu": "h264"}
SHOWN = 5  # offenders named in a message; the rest are counted


class UndecodableError(ValueError):
    """Videos of a manifest that the chosen decoder cannot decode; the message names them and the fix."""


def codec_name(codec: str) -> str:
    c = (codec or "").strip().lower()
    return ALIASES.get(c, c)


def refusal(
    codec: str, width: int, height: int, device: str, min_size: dict[str, tuple[int, int]] | None = None
) -> str | None:
    """Why the ``device`` decoder refuses a ``codec`` video of ``width`` x ``height``, or None if it accepts
    it."""
    c = codec_name(codec)
    if device == "cpu":
        if c not in CPU_CODECS:
            return f"{c or 'unknown codec'}: DALI's CPU decoder takes {', '.join(sorted(CPU_CODECS))} only"
        return None
    if device != "gpu":
        raise ValueError(f"decoder device must be cpu or gpu, got {device!r}")
    if c not in GPU_CODECS:
        return f"{c or 'unknown codec'}: DALI's GPU decoder takes {', '.join(sorted(GPU_CODECS))} only"
    mw, mh = (min_size or NVDEC_MIN_SIZE).get(c, NVDEC_MIN_SIZE[c])
    if width < mw or height < mh:
        return f"{c} below NVDEC's {mw}x{mh} minimum"
    return None


def undecodable(entries: Iterable, device: str, min_size: dict[str, tuple[int, int]] | None = None) -> list:
    """``[(entry, reason)]`` for the manifest entries (``codec``, ``width``, ``height``) ``device``
    refuses."""
    out = []
    for e in entries:
        why = refusal(e.codec, int(e.width), int(e.height), device, min_size)
        if why is not None:
            out.append((e, why))
    return out


def caveats(entries: Iterable, device: str) -> list[str]:
    """Warnings for codecs the GPU decodes on some machines only (one line per codec present)."""
    if device != "gpu":
        return []
    found = {codec_name(e.codec) for e in entries}
    return [f"{GPU_CAVEATS[c]} ({c} videos in the manifest)" for c in sorted(found & set(GPU_CAVEATS))]


def check_decodable(
    entries: Sequence, device: str, manifest: str, min_size: dict[str, tuple[int, int]] | None = None
) -> list[str]:
    """Raise ``UndecodableError`` if any entry cannot be decoded on ``device``: the first ``SHOWN`` named with
    the reason, then a count, and the ``prepare --transcode`` command that fixes them. Returns the caveats."""
    bad = undecodable(entries, device, min_size)
    if bad:
        groups: dict[str, list] = {}  # reason -> entries
        for e, why in bad:
            groups.setdefault(why, []).append(e)
        shown = "; ".join(f"{why}: {_names(es, 'below' in why)}" for why, es in list(groups.items())[:3])
        more = f"; and {len(groups) - 3} more reasons" if len(groups) > 3 else ""
        codec = TRANSCODE_TO[device]
        folder = os.path.dirname(os.path.abspath(manifest))
        where = "the GPU (data.device=gpu)" if device == "gpu" else "the CPU (data.device=cpu)"
        size = " --short-side 144" if device == "gpu" and any("below NVDEC" in w for _, w in bad) else ""
        raise UndecodableError(
            f"{manifest}: {len(bad)} of {len(entries)} videos cannot be decoded on {where}. {shown}{more}. "
            "Re-encode the collection: python -m fastcvrl.prepare SOURCE --out NEW_DIR --transcode "
            f"{codec}{size} "
            f"--classes {os.path.join(folder, 'classes.txt')} (SOURCE: what {manifest} was prepared from)"
            + (", or decode on the GPU (data.device=gpu)" if device == "cpu" else "")
        )
    return caveats(entries, device)


def _names(entries: list, sizes: bool) -> str:
    """The first ``SHOWN`` file names (with their sizes where the size is the problem), then a count."""
    names = [
        os.path.basename(e.path) + (f" ({e.width}x{e.height})" if sizes else "") for e in entries[:SHOWN]
    ]
    return ", ".join(names) + (f" and {len(entries) - SHOWN} more" if len(entries) > SHOWN else "")


# ------------------------------------------------------------------------- the driver's own limits
_CODEC_ENUM = {"mpeg4": 2, "h264": 4, "hevc": 8, "vp8": 9, "vp9": 10, "av1": 11}  # cudaVideoCodec


class _DecodeCaps(ctypes.Structure):
    """``CUVIDDECODECAPS`` (cuviddec.h)."""

    _fields_ = [
        ("eCodecType", ctypes.c_int),
        ("eChromaFormat", ctypes.c_int),
        ("nBitDepthMinus8", ctypes.c_uint),
        ("reserved1", ctypes.c_uint * 3),
        ("bIsSupported", ctypes.c_ubyte),
        ("nNumNVDECs", ctypes.c_ubyte),
        ("nOutputFormatMask", ctypes.c_ushort),
        ("nMaxWidth", ctypes.c_uint),
        ("nMaxHeight", ctypes.c_uint),
        ("nMaxMBCount", ctypes.c_uint),
        ("nMinWidth", ctypes.c_ushort),
        ("nMinHeight", ctypes.c_ushort),
        ("bIsHistogramSupported", ctypes.c_ubyte),
        ("nCounterBitDepth", ctypes.c_ubyte),
        ("nMaxHistogramBins", ctypes.c_ushort),
        ("reserved3", ctypes.c_uint * 10),
    ]


def find_nvcuvid() -> str | None:
    """The NVDEC library's name or path if the dynamic loader can find it (it ships with the driver)."""
    for name in ("libnvcuvid.so.1", "libnvcuvid.so", ctypes.util.find_library("nvcuvid")):
        if not name:
            continue
        try:
            ctypes.CDLL(name)
            return name
        except OSError:
            continue
    return None


def nvdec_caps(device_id: int = 0, codecs: Iterable[str] = tuple(_CODEC_ENUM)) -> dict[str, dict] | None:
    """The driver's decoder caps per codec (8-bit 4:2:0) on GPU ``device_id``: ``{codec: {supported, min_size,
    max_size}}``, or None where no driver, GPU or ``libnvcuvid`` is reachable. Uses the device's primary
    context (the one torch and DALI share), so it costs no extra context."""
    try:
        cuda, cuvid = ctypes.CDLL("libcuda.so.1"), ctypes.CDLL(find_nvcuvid() or "libnvcuvid.so.1")
    except OSError:
        return None
    dev, ctx = ctypes.c_int(), ctypes.c_void_p()
    if cuda.cuInit(0) or cuda.cuDeviceGet(ctypes.byref(dev), device_id):
        return None
    if cuda.cuDevicePrimaryCtxRetain(ctypes.byref(ctx), dev):
        return None
    out: dict[str, dict] = {}
    try:
        if cuda.cuCtxPushCurrent_v2(ctx):
            return None
        try:
            for c in codecs:
                caps = _DecodeCaps(
                    eCodecType=_CODEC_ENUM[c], eChromaFormat=1, nBitDepthMinus8=0
                )  # 4:2:0, 8 bit
                if cuvid.cuvidGetDecoderCaps(ctypes.byref(caps)):
                    continue
                out[c] = {
                    "supported": bool(caps.bIsSupported),
                    "min_size": (caps.nMinWidth, caps.nMinHeight),
                    "max_size": (caps.nMaxWidth, caps.nMaxHeight),
                }
        finally:
            cuda.cuCtxPopCurrent_v2(ctypes.byref(ctypes.c_void_p()))
    finally:
        cuda.cuDevicePrimaryCtxRelease_v2(dev)
    return out or None


def nvdec_min_size(device_id: int = 0) -> dict[str, tuple[int, int]]:
    """Minimum sizes per codec: the driver's where it answers, else the table (``NVDEC_MIN_SIZE``)."""
    try:
        caps = nvdec_caps(device_id) or {}
    except (OSError, AttributeError, ValueError):  # an older driver without one of the entry points
        caps = {}
    return {
        c: tuple(caps[c]["min_size"]) if c in caps and caps[c]["supported"] else NVDEC_MIN_SIZE[c]
        for c in NVDEC_MIN_SIZE
    }
