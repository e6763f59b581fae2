"""What a short keyframe interval buys in clip decoding (``prepare --transcode ... --gop 16``), on CPU with
PyAV.

    python benchmarks/gop_bench.py [--videos DIR] [--codecs vp9 h264] [--clips 16] [--repeats 3]
                                   [--short-side 256] [--json OUT]

Each source video (``--videos DIR``; without it, or where DIR has none, synthetic 250-frame videos)
is transcoded with prepare's own transcoder twice per codec at the same short side: once with the encoder's
default keyframe placement (``default``) and once with a keyframe every 16 frames (``gop16``). Then, for the
same random clip positions, a CVRL clip (16 frames at stride 2) is decoded with PyAV on one thread in two
ways:

- ``seek``: open, seek to the keyframe before the clip, decode up to the clip's last frame (what a loader that
  seeks does; what DALI does when handed only the packets from that keyframe on);
- ``start``: open and decode from the first frame (what DALI 2.4's CPU decoder does with a whole file).

The clip's 16 frames are converted to RGB in both. Every decoded clip is checked against a full decode
(same frames, same order) before anything is timed. Timing: a warm-up of 8 clips, then
``--repeats`` timed passes; the table gives medians over passes of the mean time per clip, and the frames
decoded per clip. Prints a table and one JSON line (with the environment).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import av
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import environment, format_table, summarize, write_json  # noqa: E402

from fastcvrl.datasets.transcode import Transcode, transcode_video  # noqa: E402
from fastcvrl.datasets.video import CODECS, keyframe_indices, read_video, write_video  # noqa: E402

T, STRIDE = 16, 2  # CVRL's pretraining clip


def decode_clip(path: str, start: int, seek: bool) -> tuple[int, list[np.ndarray]]:
    """Frames ``start, start+2, ..., start+30`` of ``path`` as RGB; returns (frames decoded, clip)."""
    with av.open(path) as f:
        s = f.streams.video[0]
        s.codec_context.thread_count = 1
        fps = float(s.average_rate)
        t0 = float(s.start_time * s.time_base) if s.start_time is not None else 0.0
        if seek and start > 0:
            # backward=True: the keyframe at or before this timestamp (in stream time_base units)
            f.seek(int((t0 + start / fps) / s.time_base), stream=s, backward=True, any_frame=False)
        wanted = range(start, start + T * STRIDE, STRIDE)
        clip, n = [], 0
        for frame in f.decode(s):
            n += 1
            i = round((frame.time - t0) * fps)
            if i in wanted:
                clip.append(frame.to_ndarray(format="rgb24"))
            if i >= wanted[-1]:
                break
    return n, clip


def _sources(folder: Path | None, scratch: Path) -> list[Path]:
    """The videos in ``folder``, else three synthetic ones written to ``scratch``; says which it uses."""
    if folder and folder.is_dir():
        found = sorted(p for p in folder.iterdir() if p.suffix in (".mp4", ".avi", ".webm", ".mkv"))
        if found:
            print(f"videos: {len(found)} from {folder}", flush=True)
            return found
    print(
        f"videos: {'no videos in ' + str(folder) + '; ' if folder else ''}3 synthetic 250-frame videos "
        "(--videos DIR to use yours)",
        flush=True,
    )
    rng = np.random.default_rng(0)
    out = []
    for k in range(3):  # smooth moving noise, 250 frames (a 10 s Kinetics clip at 25 fps)
        base = rng.integers(0, 255, (40, 40, 3)).astype(np.uint8)
        frames = np.stack(
            [np.kron(np.roll(base, t, axis=1), np.ones((8, 8, 1), np.uint8)) for t in range(250)]
        )
        out.append(
            Path(write_video(scratch / f"synthetic{k}.mp4", frames[:, :256, :320], codec="h264", gop=250))
        )
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--videos", type=Path, default=None, help="folder of source videos (default: synthetic videos)"
    )
    ap.add_argument("--codecs", nargs="+", default=["vp9", "h264"], choices=["vp9", "h264"])
    ap.add_argument("--clips", type=int, default=16, help="random clip positions per video")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--short-side", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, help="also write the JSON line here")
    a = ap.parse_args(argv)

    scratch = Path(tempfile.mkdtemp(prefix="gop_bench"))
    sources = _sources(a.videos, scratch)
    rng = np.random.default_rng(a.seed)
    variants = {}  # (codec, gop name) -> list of (path, frames, clip starts)
    for codec in a.codecs:
        for name, gop in (("default", None), ("gop16", 16)):
            vids = []
            for src in sources:
                dst = scratch / f"{src.stem}.{codec}.{name}{CODECS[codec][2]}"
                probe = transcode_video(str(src), str(dst), Transcode(codec, a.short_side, gop))
                if not probe.ok:
                    print(f"skipping {src}: {probe.reason} ({probe.detail})", file=sys.stderr)
                    continue
                vids.append(str(dst))
            variants[(codec, name)] = vids
    # the same clip positions for every variant of a source
    lengths = {src.stem: None for src in sources}
    starts = {}
    for vids in variants.values():
        for v in vids:
            stem = Path(v).name.split(".")[0]
            if stem not in starts:
                n = len(read_video(v))
                lengths[stem] = n
                span = n - (T - 1) * STRIDE
                starts[stem] = rng.integers(0, span, a.clips).tolist() if span > 0 else []

    rows, results = [], []
    for (codec, name), vids in variants.items():
        jobs = [(v, s) for v in vids for s in starts[Path(v).name.split(".")[0]]]
        for v in vids:  # correctness first: every clip equals the slice of a full decode
            full = read_video(v)
            for s in starts[Path(v).name.split(".")[0]][:5]:
                for seek in (True, False):
                    _, clip = decode_clip(v, s, seek)
                    assert np.array_equal(np.stack(clip), full[s : s + T * STRIDE : STRIDE]), (v, s, seek)
        keys = [np.diff(keyframe_indices(v) + [lengths[Path(v).name.split(".")[0]]]).mean() for v in vids]
        size_kb = np.mean([os.path.getsize(v) for v in vids]) / 1024
        entry = {
            "codec": codec,
            "keyframes": name,
            "mean_keyframe_interval": float(np.mean(keys)),
            "mean_size_kb": float(size_kb),
            "clips": len(jobs),
        }
        for mode, seek in (("seek", True), ("start", False)):
            for v, s in jobs[:: max(1, len(jobs) // 8)]:  # warm-up
                decode_clip(v, s, seek)
            per_pass, decoded = [], []
            for _ in range(a.repeats):
                t = time.perf_counter()
                counts = [decode_clip(v, s, seek)[0] for v, s in jobs]
                per_pass.append((time.perf_counter() - t) / len(jobs) * 1e3)
                decoded = counts
            entry[f"{mode}_ms_per_clip"] = summarize(per_pass)
            entry[f"{mode}_frames_decoded_per_clip"] = float(np.mean(decoded))
        results.append(entry)
        rows.append(
            [
                codec,
                name,
                entry["mean_keyframe_interval"],
                entry["mean_size_kb"],
                entry["seek_ms_per_clip"]["median"],
                entry["seek_frames_decoded_per_clip"],
                entry["start_ms_per_clip"]["median"],
                entry["start_frames_decoded_per_clip"],
            ]
        )
    print(
        f"{len(sources)} source videos ({', '.join(f'{k}: {v} frames' for k, v in lengths.items())}), "
        f"{a.clips} clips of {T}x{STRIDE} each, short side {a.short_side}, PyAV one thread per decode"
    )
    print(
        format_table(
            [
                "codec",
                "keyframes",
                "key_interval",
                "size_kB",
                "seek_ms/clip",
                "seek_frames/clip",
                "start_ms/clip",
                "start_frames/clip",
            ],
            rows,
        )
    )
    for codec in a.codecs:
        d = next(r for r in results if r["codec"] == codec and r["keyframes"] == "default")
        g = next(r for r in results if r["codec"] == codec and r["keyframes"] == "gop16")
        print(
            f"{codec}: gop16 vs default, seek: "
            f"{d['seek_ms_per_clip']['median'] / g['seek_ms_per_clip']['median']:.2f}x faster; "
            "gop16 seek vs default from start: "
            f"{d['start_ms_per_clip']['median'] / g['seek_ms_per_clip']['median']:.2f}x"
        )
    print(
        write_json(
            {
                "benchmark": "gop_bench",
                "results": results,
                "env": environment(),
                "args": {k: str(v) for k, v in vars(a).items()},
            },
            a.json,
        )
    )
    for p in scratch.iterdir():
        p.unlink()
    scratch.rmdir()
    return 0


if __name__ == "__main__":
    sys.exit(main())
