"""Will NVDEC decode a dataset, and at full speed? The rules, from the manifest alone (pure Python, no DALI).

DALI's ``fn.decoders.video(device="mixed")`` builds a frames decoder per sample and asks a per-GPU cache for
an NVDEC decoder (``NVDECCache::GetDecoder`` in DALI's ``dali/operators/video/frames_decoder_gpu.cc``, read
for 2.4: docs/dali.md says what was checked).
A free cached decoder is reused only when its recorded width and height equal the new stream's *coded* size
(and codec, decode-surface count, chroma format and bit depth match); the cache records the *display* size.
So a stream whose coded size differs from its display size never meets a decoder it may reuse: every sample
pays a ``cuvidCreateDecoder`` (tens of ms) and the cache, at most ``CACHE_SIZE`` decoders, churns. H.264
codes whole 16 x 16 macroblocks: coded == display exactly when both sides are multiples of 16
(``prepare --transcode h264`` writes such sizes). See docs/dali.md, "NVDEC decoder reuse".

    groups = audit(entries)                   # one Group per (codec, width, height)
    report = summarize(groups, threads=8)     # counts, verdicts, the fix
    line = gpu_warning(entries, 8, "m.csv")   # the trainer's one warning line ("" when fine)

``coded_size`` for codecs other than H.264 and MPEG-4 Part 2 (16 x 16 macroblocks) assumes the codec's
smallest coding block (8); ``prepare`` writes H.264 only for the GPU.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from dali_pipelines.codecs import NVDEC_MIN_SIZE, UndecodableError, codec_name, refusal

ALIGN = 16  # H.264 macroblock: both sides multiples of this make coded == display
CODED_ALIGN = {"h264": 16, "mpeg4": 16, "vp8": 16, "hevc": 8, "vp9": 8, "av1": 8}
# (max width, max height) per codec, 8-bit 4:2:0 (NVIDIA's Video Codec SDK support matrix, Turing..Hopper);
# ``codecs.nvdec_caps`` asks the driver where a GPU is at hand
NVDEC_MAX_SIZE = {
    "h264": (4096, 4096),
    "hevc": (8192, 8192),
    "vp8": (4096, 4096),
    "vp9": (8192, 8192),
    "av1": (8192, 8192),
    "mpeg4": (2032, 2032),
}
NVDEC_MAX_MB = {"h264": 65536}  # macroblocks (w * h / 256) per frame, ``caps.nMaxMBCount``
CACHE_SIZE = 100  # DALI's NVDECCache::CACHE_SIZE_LIMIT
LONG_GOP = 32  # frames: a longer keyframe interval makes a clip decode from far back (prepare's hint too)


def coded_size(codec: str, width: int, height: int) -> tuple[int, int]:
    """The size NVDEC reports as coded for a ``width`` x ``height`` stream: each side rounded up to the
    codec's coding block (``CODED_ALIGN``)."""
    a = CODED_ALIGN.get(codec_name(codec), 1)
    return -(-int(width) // a) * a, -(-int(height) // a) * a


def reuses(codec: str, width: int, height: int) -> bool:
    """Whether DALI's cache can hand a decoder of this stream to the next one of the same size: coded size ==
    display size."""
    return coded_size(codec, width, height) == (int(width), int(height))


def size_refusal(
    codec: str,
    width: int,
    height: int,
    min_size: Mapping[str, tuple[int, int]] | None = None,
    max_size: Mapping[str, tuple[int, int]] | None = None,
) -> str | None:
    """Why NVDEC refuses a ``codec`` frame of ``width`` x ``height`` (below the minimum, above the maximum
    or the macroblock count, checked on the coded size as DALI does), or None. There is no aspect limit of
    its own: the sides' limits bound it (H.264: 48 x 16 up to 4096 x 4096)."""
    c = codec_name(codec)
    if c not in NVDEC_MIN_SIZE:
        return None
    w, h = coded_size(c, width, height)
    mw, mh = (min_size or NVDEC_MIN_SIZE).get(c, NVDEC_MIN_SIZE[c])
    if w < mw or h < mh:
        return f"{c} below NVDEC's {mw}x{mh} minimum"
    xw, xh = (max_size or NVDEC_MAX_SIZE).get(c, NVDEC_MAX_SIZE[c])
    if w > xw or h > xh:
        return f"{c} above NVDEC's {xw}x{xh} maximum"
    mb = NVDEC_MAX_MB.get(c)
    if mb and w * h // 256 > mb:
        return f"{c} above NVDEC's {mb} macroblocks per frame"
    return None


@dataclass(frozen=True)
class StreamFacts:
    """What reading a file adds to the manifest's codec and size (``fastcvrl.datasets.keyframes``)."""

    longest_gop: int  # frames from one keyframe to the next, at most
    non_idr: int = 0  # H.264 keyframes that are not IDR pictures
    coded: tuple[int, int] | None = None  # H.264: from the sequence parameter set
    display: tuple[int, int] | None = None
    decoder: tuple = ()  # the rest of the decoder configuration (DPB frames, chroma, bit depth; or pix_fmt)


@dataclass
class Group:
    """The videos of one codec and size, and what NVDEC makes of them."""

    codec: str
    width: int
    height: int
    count: int = 0
    refusal: str | None = None  # why NVDEC (or DALI) refuses them; None: decoded
    reused: bool = True  # decoders reused between samples (coded == display)
    longest_gop: int | None = None  # frames; None: not known (the manifest does not say, not probed)
    non_idr: int = 0  # H.264 keyframes that are not IDR pictures (a clip cut there needs earlier pictures)
    configs: set = field(default_factory=set)  # decoder configurations: (codec, coded w, coded h, extra...)
    read: int = 0  # videos whose files were read (``StreamFacts``)
    stream_sized: bool = False  # ``reused`` decided by coded and display sizes read from the streams

    @property
    def verdict(self) -> str:
        """ok, or the first thing wrong: refused, slow (no reuse; long keyframe interval), wrong (non-IDR)."""
        if self.refusal:
            return "refused"
        if not self.reused:
            return "slow: new decoder per sample"
        if self.non_idr:
            return "wrong: keyframes not IDR"
        if self.longest_gop is not None and self.longest_gop > LONG_GOP:
            return "slow: long keyframe interval"
        return "ok"


def audit(
    entries: Iterable,
    facts: Mapping[str, StreamFacts] | None = None,
    min_size: Mapping[str, tuple[int, int]] | None = None,
) -> list[Group]:
    """Group manifest ``entries`` (``path``, ``codec``, ``width``, ``height``) by codec and size, with
    NVDEC's verdict per group. ``facts``: per path, what reading the file found, where it was read; a coded
    and display size read from the stream decide reuse in place of the manifest's size."""
    groups: dict[tuple, Group] = {}
    for e in entries:
        c, w, h = codec_name(e.codec), int(e.width), int(e.height)
        g = groups.get((c, w, h))
        if g is None:
            why = refusal(c, w, h, "gpu", dict(min_size) if min_size else None) or size_refusal(
                c, w, h, min_size
            )
            g = groups[(c, w, h)] = Group(c, w, h, refusal=why, reused=reuses(c, w, h))
        g.count += 1
        f = (facts or {}).get(e.path)
        if f is None:
            g.configs.add((c, *coded_size(c, w, h)))
            continue
        g.longest_gop = max(g.longest_gop or 0, f.longest_gop)
        g.non_idr += f.non_idr
        if f.coded and f.display:  # the stream's own word on coded against display size wins
            g.reused = (g.reused if g.stream_sized else True) and f.coded == f.display
            g.stream_sized = True
        g.read += 1
        g.configs.add((c, *(f.coded or coded_size(c, w, h)), *f.decoder))
    return sorted(groups.values(), key=lambda g: (-g.count, g.codec, g.width, g.height))


@dataclass(frozen=True)
class Report:
    """The audit's totals: ``ok`` when the GPU path would run at full speed."""

    videos: int
    refused: int  # videos NVDEC does not decode
    slow: int  # videos decoded with a new decoder per sample (sizes that defeat reuse)
    wrong: int  # H.264 videos with non-IDR keyframes
    long_gop: int  # videos in groups whose keyframe interval exceeds LONG_GOP
    configs: int  # distinct decoder configurations among the decoded videos
    threads: int  # decode threads per pipeline the figures assume
    fix: str  # the prepare command that fixes what is wrong, "" when nothing is

    @property
    def over_cache(self) -> bool:
        """More configurations x threads than the cache holds: decoders are evicted and created again."""
        return self.configs * self.threads > CACHE_SIZE

    @property
    def ok(self) -> bool:
        """Nothing refused, slow or wrong, and the configurations fit the cache."""
        return not (self.refused or self.slow or self.wrong or self.long_gop or self.over_cache)

    def warning(self) -> str:
        """One line for a GPU run: the count of videos that will decode slowly, and the fix ("" if none)."""
        parts = []
        if self.slow:
            parts.append(
                f"{self.slow} of {self.videos} videos have sizes that are not multiples of {ALIGN} (NVDEC's "
                "coded size differs from the display size): DALI creates a new decoder for every sample"
            )
        if self.over_cache:
            parts.append(
                f"{self.configs} distinct decoder configurations x {self.threads} decode threads exceed "
                f"DALI's cache of {CACHE_SIZE} decoders"
            )
        if not parts:
            return ""
        return "; ".join(parts) + f". Fix: {self.fix}"


def fix_command(manifest: str = "MANIFEST") -> str:
    """The ``prepare`` command that rewrites a collection into sizes and keyframes NVDEC decodes fast."""
    return (
        "python -m fastcvrl.prepare SOURCE --out NEW_DIR --transcode h264 --short-side 256 --gop 16 "
        f"(SOURCE: what {manifest} was prepared from)"
    )


def summarize(groups: list[Group], threads: int, manifest: str = "MANIFEST") -> Report:
    """Totals over ``audit``'s groups for a pipeline of ``threads`` decode threads."""
    decoded = [g for g in groups if not g.refusal]
    configs = set().union(*(g.configs for g in decoded)) if decoded else set()
    r = Report(
        videos=sum(g.count for g in groups),
        refused=sum(g.count for g in groups if g.refusal),
        slow=sum(g.count for g in decoded if not g.reused),
        wrong=sum(g.count for g in decoded if g.non_idr),
        long_gop=sum(g.count for g in decoded if g.longest_gop is not None and g.longest_gop > LONG_GOP),
        configs=len(configs),
        threads=int(threads),
        fix="",
    )
    if r.refused or r.slow or r.wrong or r.long_gop or r.over_cache:
        r = Report(**{**r.__dict__, "fix": fix_command(manifest)})
    return r


def gpu_warning(entries: Iterable, threads: int, manifest: str) -> str:
    """The trainer's check at start (the manifest only, no file reads): one line naming the videos whose
    sizes defeat decoder reuse, or the configurations beyond the cache, and the fix; "" when there are none.
    Raises ``codecs.UndecodableError`` for sizes above NVDEC's maximum (``codecs.check_decodable``, run
    first, refuses codecs and sizes below the minimum)."""
    entries = list(entries)
    too_large = [e for e in entries if "above" in (size_refusal(e.codec, e.width, e.height) or "")]
    if too_large:
        names = ", ".join(f"{os.path.basename(e.path)} ({e.width}x{e.height})" for e in too_large[:5])
        more = f" and {len(too_large) - 5} more" if len(too_large) > 5 else ""
        why = size_refusal(too_large[0].codec, too_large[0].width, too_large[0].height)
        raise UndecodableError(
            f"{manifest}: {len(too_large)} of {len(entries)} videos cannot be decoded on the GPU "
            f"(data.device=gpu): {why}: {names}{more}. Re-encode the collection: {fix_command(manifest)}"
        )
    line = summarize(audit(entries), threads, manifest).warning()
    return f"{manifest}: {line}" if line else ""


def format_report(groups: list[Group], report: Report) -> list[str]:
    """The audit as lines: a table per codec and size, then the totals and the fix."""
    lines = [f"{'codec':6} {'size':>11} {'coded':>11} {'videos':>7} {'gop':>5}  verdict"]
    for g in groups:
        cw, ch = coded_size(g.codec, g.width, g.height)
        gop = "?" if g.longest_gop is None else str(g.longest_gop)
        why = f" ({g.refusal})" if g.refusal else ""
        lines.append(
            f"{g.codec:6} {g.width:>5}x{g.height:<5} {cw:>5}x{ch:<5} {g.count:>7} {gop:>5}  {g.verdict}{why}"
        )
    lines.append(
        f"{report.videos} videos: {report.refused} refused by NVDEC, {report.slow} with a new decoder per "
        f"sample, {report.wrong} with non-IDR keyframes, {report.long_gop} with keyframe intervals over "
        f"{LONG_GOP}; {report.configs} decoder configurations x {report.threads} threads "
        f"(DALI's cache holds {CACHE_SIZE})"
    )
    lines.append("GPU path at full speed" if report.ok else f"fix: {report.fix}")
    return lines
