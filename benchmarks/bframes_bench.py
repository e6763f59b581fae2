"""Which H.264 settings ``prepare --transcode h264`` should use for clip decoding: B-frames or not, keyframe
spacing.

    python benchmarks/bframes_bench.py [--videos DIR] [--gops 8 16 32] [--bframes 0 3] [--json OUT]

Each source video (``--videos DIR``; without it, synthetic ones) is transcoded by prepare's transcoder at
short side 256 for every (keyframe spacing, B-frames) pair. Then the pretraining source plans CVRL clips (two
16 x 2 views per video, the recipe's gap distribution, ``--plans`` epochs over the files) and trims each
video's packets as the pipelines do. Reported per setting:

- ``bytes/frame``: file size per frame (storage and reading);
- ``frames/clip``: packets handed to the decoder per clip (what NVDEC decodes: its cost on the GPU, where
  frames per second is the unit of its throughput);
- ``decode ms/clip``: PyAV decoding the trimmed streams on one CPU thread, a CPU proxy for decode work per
  clip (B-frames are cheaper to decode than P-frames); the GPU's own figure needs ``device_check.sh``;
- ``host ms/video``: trimming alone (CPU time).

Before timing, every trimmed stream's needed frames are checked against a full decode of the file.
Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time
from pathlib import Path

import av
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import environment, format_table, write_json  # noqa: E402

from dali_pipelines.host import PretrainSource  # noqa: E402
from dali_pipelines.manifest import VideoEntry  # noqa: E402
from dali_pipelines.packets import build_index, trim  # noqa: E402
from fastcvrl.config import Config  # noqa: E402
from fastcvrl.data import pretrain_settings  # noqa: E402
from fastcvrl.datasets.transcode import Transcode, transcode_video  # noqa: E402


def _decode(encoded: np.ndarray) -> list[np.ndarray]:
    with av.open(io.BytesIO(encoded.tobytes())) as c:
        c.streams.video[0].codec_context.thread_count = 1
        return [f.to_ndarray(format="gray") for f in c.decode(video=0)]


def _transcode(src: str, dst: str, gop: int, bframes: int) -> int:
    probe = transcode_video(src, dst, Transcode("h264", 256, gop, bframes=bframes), threads=1)
    if not probe.ok:
        raise SystemExit(f"cannot transcode {src}: {probe.reason} {probe.detail}")
    return probe.num_frames


def _synthetic_sources(work: Path) -> list[str]:
    """Three 250-frame videos of smooth moving noise at 320 x 256 (a 10 s clip at 25 fps), written to
    ``work``."""
    from fastcvrl.datasets.video import write_video

    rng = np.random.default_rng(0)
    out = []
    for k in range(3):
        base = rng.integers(0, 255, (40, 40, 3)).astype(np.uint8)
        frames = np.stack(
            [np.kron(np.roll(base, t, axis=1), np.ones((8, 8, 1), np.uint8)) for t in range(250)]
        )
        out.append(str(write_video(work / f"synthetic{k}.mp4", frames[:, :256, :320], codec="h264", gop=250)))
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--videos", type=Path, default=None, help="folder of source videos (default: synthetic videos)"
    )
    ap.add_argument("--gops", type=int, nargs="+", default=[8, 16, 32])
    ap.add_argument("--bframes", type=int, nargs="+", default=[0, 3])
    ap.add_argument("--plans", type=int, default=8, help="epochs of clip plans over the files")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="bframes-"))
    if args.videos is None:
        sources = _synthetic_sources(work)
        print(f"videos: {len(sources)} synthetic 250-frame videos (--videos DIR to use yours)", flush=True)
    else:
        sources = sorted(
            str(p) for p in args.videos.glob("*") if p.suffix.lower() in (".mp4", ".avi", ".mkv", ".webm")
        )
        if not sources:
            raise SystemExit(f"error: no videos in {args.videos}")
        print(f"videos: {len(sources)} from {args.videos}", flush=True)
    cfg = Config().data
    rows, result = [], {"benchmark": "h264_bframes", "sources": sources, "settings": {}}
    for gop in args.gops:
        for bf in args.bframes:
            files = [(str(work / f"g{gop}b{bf}_{Path(s).stem}.mp4"), s) for s in sources]
            entries = [VideoEntry(d, 0, _transcode(s, d, gop, bf), 25.0, 0, 0, "h264") for d, s in files]
            full = {}
            for e in entries:
                with av.open(e.path) as c:
                    full[e.path] = [f.to_ndarray(format="gray") for f in c.decode(video=0)]
            source = PretrainSource(entries, 1, pretrain_settings(Config()), seed=0)
            plans = []  # (index, union of the clip frames) per video per epoch
            for epoch in range(args.plans):
                source.set_epoch(epoch)
                for v in range(len(entries)):
                    s = source.sample(v)
                    idx = source.index(v)
                    n = source.length(v, idx)
                    starts = s["meta"][2:4]
                    clips = [(st + cfg.stride * np.arange(cfg.num_frames)) % n for st in starts]
                    plans.append((idx, np.unique(np.concatenate(clips))))
            for idx, union in plans[: len(entries) * 2]:  # correctness before timing
                tc = trim(idx, union)
                got = _decode(tc.encoded)
                want = full[idx.path]
                assert all(np.array_equal(got[p], want[f]) for p, f in zip(tc.positions, union)), idx.path
            c0 = time.process_time()
            trimmed = [trim(idx, union) for idx, union in plans]
            host = time.process_time() - c0
            c0 = time.process_time()
            for tc in trimmed:
                _decode(tc.encoded)
            dec = time.process_time() - c0
            frames = sum(e.num_frames for e in entries)
            size = sum(os.path.getsize(e.path) for e in entries)
            clips = 2 * len(plans)
            key = f"gop{gop}_bf{bf}"
            result["settings"][key] = {
                "bytes_per_frame": size / frames,
                "frames_per_clip": sum(t.frames_decoded for t in trimmed) / clips,
                "decode_ms_per_clip": 1000 * dec / clips,
                "host_ms_per_video": 1000 * host / len(plans),
                "reorders": any(build_index(e.path).reorder is not None for e in entries),
            }
            r = result["settings"][key]
            rows.append(
                [
                    gop,
                    bf,
                    r["bytes_per_frame"],
                    r["frames_per_clip"],
                    r["decode_ms_per_clip"],
                    r["host_ms_per_video"],
                ]
            )
    result["env"] = environment()
    env = result["env"]
    print(
        f"H.264 (CRF 18, veryfast) at short side 256, {len(sources)} clips x {args.plans} plans; "
        f"{env['cpu']}, "
        f"load average {env['loadavg_1m']:.2f} (CPU times: steadier than wall time on a shared machine)"
    )
    print(
        format_table(
            ["GOP", "B-frames", "bytes/frame", "frames/clip", "decode ms/clip (CPU)", "host ms/video"], rows
        )
    )
    print(write_json(result, args.json))
    return result


if __name__ == "__main__":
    main()
