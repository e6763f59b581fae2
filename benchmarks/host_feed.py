"""The host source alone (``loader_bench.py --host-only``): clips/s of the pretraining source without
decoding.

    python benchmarks/loader_bench.py --host-only [--host-videos DIR] [--max-workers N] [--json OUT]

What is timed is what the pipelines' host side does per batch: epoch order, CVRL clip plans (two 16 x 2
views, crops, colour), cutting each video's packets down to the runs the clips need and writing them into a
small in-memory container (``dali_pipelines/packets.py``). Nothing is decoded.

Data: the clips in ``--videos DIR`` (without it, with ``--quick``, or where DIR has none: small synthetic
videos), transcoded by this benchmark with ``prepare``'s own transcoder to each of H.264, VP9 and MJPEG at
short side 256 with a keyframe every 16 frames (``prepare --transcode``'s defaults), cached under
``~/.cache/fastcvrl/host-bench``. Each file is listed ``--host-copies`` times under distinct names (links) so
an epoch has enough videos for whole batches (default 64 copies x 4 clips = 256 videos, 8 batches of 32);
every file is indexed in an untimed first epoch (the steady state of training).

Two measurements per codec, ``--repeats`` each (median):

- ``direct``: the source called in this process, one batch after another: one core's rate, the figure the
  ``host_clips_per_s`` key reports;
- ``workers k``: the source in DALI's parallel external source with k worker processes, in a pipeline that
  has nothing else in it (the pipeline thread still copies each batch out of shared memory), for k = 1..
  ``--max-workers`` (H.264 only unless ``--scaling-codecs`` says more): ``host_scaling``.

Also the CPU time per video of the direct path (``time.process_time``: steadier than wall time on a machine
shared with other work) and the peak PSS/RSS of the process tree (workers included) while the workers run.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from common import PeakMemory, environment, format_table, summarize, tree_cpu_seconds, usable_cores  # noqa: E402

CODECS = ("h264", "vp9", "mjpeg")
CACHE = "~/.cache/fastcvrl/host-bench"


def add_arguments(p: Any) -> None:
    p.add_argument(
        "--host-only",
        action="store_true",
        help="measure the host source alone (no decoding) for H.264, VP9 and MJPEG; see host_feed.py",
    )
    p.add_argument(
        "--videos",
        "--host-videos",
        dest="host_videos",
        default="",
        help="--host-only: folder of source videos (transcoded by the benchmark); default: small "
        "synthetic videos",
    )
    p.add_argument("--host-copies", type=int, default=64, help="--host-only: times each file is listed")
    p.add_argument("--host-batch", type=int, default=32, help="--host-only: videos per batch")
    p.add_argument("--host-epochs", type=int, default=3, help="--host-only: timed epochs per repeat")
    p.add_argument(
        "--max-workers", type=int, default=0, help="--host-only: 1..N worker processes; 0 = usable cores"
    )
    p.add_argument("--scaling-codecs", default="h264", help="--host-only: codecs measured with workers")


def _sources(args: Any, work: Path) -> list[str]:
    """Source videos: the real clips, or (``--quick`` or none found) small synthetic ones."""
    folder = Path(args.host_videos) if args.host_videos else None
    exts = (".mp4", ".avi", ".mkv", ".webm", ".mov")
    found = sorted(str(p) for p in folder.glob("*") if p.suffix.lower() in exts) if folder else []
    if found and not args.quick:
        print(f"--host-only: {len(found)} videos from {folder}", flush=True)
        return found
    why = "--quick" if args.quick else f"no videos in {folder}" if folder else "no --videos DIR"
    print(f"--host-only: {why}; measuring on small synthetic clips", flush=True)
    from fastcvrl.datasets.video import write_video

    rng = np.random.default_rng(0)
    out = []
    for i in range(2):
        path = work / f"synthetic{i}.mp4"
        if not path.exists():
            frames = rng.integers(0, 256, (40, 48, 64, 3), dtype=np.uint8)
            write_video(path, frames, codec="h264", gop=None)
        out.append(str(path))
    return out


def _transcoded(
    codec: str, sources: list[str], cache: Path, short_side: int, gop: int
) -> list[tuple[str, int]]:
    """(path, frames) of each source transcoded by prepare's transcoder (cached)."""
    from fastcvrl.datasets.transcode import Transcode, transcode_video
    from fastcvrl.datasets.video import CODECS as EXT

    folder = cache / f"{codec}-s{short_side}-g{gop}"
    out = []
    for src in sources:
        dst = folder / (Path(src).stem + EXT[codec][2])
        if dst.exists():
            from dali_pipelines.packets import build_index

            out.append((str(dst), build_index(str(dst)).num_frames))
            continue
        # the small synthetic stand-ins (48 x 64) are scaled up to the real clips' size on purpose
        probe = transcode_video(
            src, str(dst), Transcode(codec, short_side, gop, allow_upscale=True), threads=1
        )
        if not probe.ok:
            raise SystemExit(f"--host-only: cannot transcode {src} to {codec}: {probe.reason} {probe.detail}")
        out.append((str(dst), probe.num_frames))
    return out


def _entries(files: list[tuple[str, int]], copies: int, folder: Path) -> list[Any]:
    """``copies`` manifest entries per file, each under its own name (a link), so each is indexed apart."""
    from dali_pipelines.manifest import VideoEntry

    folder.mkdir(parents=True, exist_ok=True)
    entries = []
    for path, frames in files:
        for k in range(copies):
            link = folder / f"c{k}_{Path(path).name}"
            if not link.exists():
                os.symlink(path, link)
            entries.append(VideoEntry(str(link), 0, frames, 25.0, 0, 0, ""))
    return entries


def _direct(source: Any, epochs: int, first_epoch: int) -> dict[str, float]:
    """The source called in this process for ``epochs`` whole epochs: clips/s and CPU ms per video."""
    videos = 0
    c0, t0 = time.process_time(), time.perf_counter()
    for e in range(first_epoch, first_epoch + epochs):
        source.set_epoch(e)
        for step in range(len(source)):
            source(step)
            videos += source.batch_size
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {
        "clips_per_s": 2 * videos / wall,
        "cpu_ms_per_video": 1000 * cpu / videos,
        "cpu_clips_per_s": 2 * videos / cpu if cpu > 0 else None,
    }


def _with_workers(source: Any, workers: int, epochs: int, first_epoch: int) -> dict[str, float]:
    """The source in DALI's parallel external source with ``workers`` processes: built, two untimed epochs
    (worker start; peak memory of the process tree sampled over them), then ``epochs`` timed epochs."""
    from nvidia.dali import fn, pipeline_def

    @pipeline_def(
        batch_size=source.batch_size,
        num_threads=1,
        device_id=None,
        prefetch_queue_depth=2,
        py_num_workers=workers,
        py_start_method="fork",
    )
    def host_only():
        return tuple(
            fn.external_source(
                source=worker_copy,
                num_outputs=source.num_outputs,
                batch=True,
                batch_info=True,
                parallel=True,
                prefetch_queue_depth=workers + 1,
            )
        )

    source.set_epoch(first_epoch)
    worker_copy = source.for_workers()
    pipe = host_only()
    pipe.build()

    def epoch() -> int:
        n = 0
        try:
            while True:
                pipe.run()  # noqa: F821 (bound above; ruff misreads the decorated def)
                n += source.batch_size
        except StopIteration:
            pipe.reset()  # noqa: F821
        return n

    with PeakMemory() as mem:  # memory apart from the timing: the sampler reads /proc, CPU time of its own
        epoch()  # untimed: worker start
        epoch()
    c0, m0, t0 = tree_cpu_seconds(), time.process_time(), time.perf_counter()
    videos = sum(epoch() for _ in range(epochs))
    wall = time.perf_counter() - t0
    tree, main = tree_cpu_seconds() - c0, time.process_time() - m0
    pool = getattr(pipe, "_py_pool", None)
    pipe._shutdown()
    if pool is not None:
        pool.close()
    del pipe
    return {
        "clips_per_s": 2 * videos / wall,
        "peak_pss_mb": mem.peak_pss_mb,
        "peak_rss_mb": mem.peak_rss_mb,
        "cpu_ms_per_video": 1000 * tree / videos,
        "main_cpu_ms_per_video": 1000 * main / videos,
    }


def run(args: Any) -> dict[str, Any]:
    from dali_pipelines.host import PretrainSource
    from fastcvrl.config import Config
    from fastcvrl.data import pretrain_settings

    quick = bool(args.quick)
    copies, batch, epochs = (4, 4, 1) if quick else (args.host_copies, args.host_batch, args.host_epochs)
    max_workers = args.max_workers or (2 if quick else usable_cores())
    scaling = [c.strip() for c in args.scaling_codecs.split(",") if c.strip()]
    work = Path(tempfile.mkdtemp(prefix="host-bench-")) if quick else Path(os.path.expanduser(CACHE))
    work.mkdir(parents=True, exist_ok=True)
    sources = _sources(args, work)
    cfg = Config().data  # CVRL's recipe: 16 x 2 clips, crops and colour drawn per view
    result: dict[str, Any] = {
        "benchmark": "loader_host",
        "sources": sources,
        "settings": {
            "short_side": 256,
            "gop": 16,
            "batch_size": batch,
            "copies": copies,
            "epochs": epochs,
            "repeats": args.repeats,
            "frames": cfg.num_frames,
            "stride": cfg.stride,
            "max_workers": max_workers,
        },
        "codecs": {},
        "host_clips_per_s": {},
        "host_scaling": {},
    }
    for codec in CODECS:
        files = _transcoded(codec, sources, work / "transcoded", 256, 16)
        entries = _entries(files, copies, work / "links" / codec)
        source = PretrainSource(entries, batch, pretrain_settings(Config()), seed=args.seed)
        _direct(source, 1, 0)  # untimed: every file indexed once, as in the steady state of training
        direct = [_direct(source, epochs, 1 + r * epochs) for r in range(args.repeats)]
        row: dict[str, Any] = {
            "videos": len(entries),
            "frames_per_video": [f for _, f in files],
            "direct": {
                "clips_per_s": summarize([d["clips_per_s"] for d in direct]),
                "cpu_ms_per_video": summarize([d["cpu_ms_per_video"] for d in direct])["median"],
            },
        }
        result["host_clips_per_s"][codec] = row["direct"]["clips_per_s"]["median"]
        if codec in scaling:
            row["workers"] = {}
            for k in range(1, max_workers + 1):
                runs = [_with_workers(source, k, epochs, 100 + r * (epochs + 1)) for r in range(args.repeats)]
                row["workers"][str(k)] = {
                    "clips_per_s": summarize([r["clips_per_s"] for r in runs]),
                    "cpu_ms_per_video": summarize([r["cpu_ms_per_video"] for r in runs])["median"],
                    "main_cpu_ms_per_video": summarize([r["main_cpu_ms_per_video"] for r in runs])["median"],
                    "peak_pss_mb": max(r["peak_pss_mb"] for r in runs),
                    "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
                }
            if codec == "h264":
                result["host_scaling"] = {k: v["clips_per_s"]["median"] for k, v in row["workers"].items()}
        result["codecs"][codec] = row
    result["env"] = environment()
    if quick:
        shutil.rmtree(work, ignore_errors=True)
    return result


def print_table(result: dict[str, Any]) -> None:
    s, env = result["settings"], result["env"]
    print(
        f"host source alone (no decoding): {len(result['sources'])} source clips x {s['copies']} copies, "
        f"short side {s['short_side']}, keyframe every {s['gop']}; batches of {s['batch_size']} videos, "
        f"{s['frames']} x {s['stride']} clips (2 per video); {s['epochs']} epochs x {s['repeats']} repeats"
    )
    print(f"  {env['cpu']} ({env['cores']} usable cores); load average {env['loadavg_1m']:.2f} at the end")
    rows = []
    for codec, r in result["codecs"].items():
        d = r["direct"]
        rows.append(
            [
                codec,
                "direct (this process)",
                d["clips_per_s"]["median"],
                d["clips_per_s"]["spread"],
                d["cpu_ms_per_video"],
                d["cpu_ms_per_video"],
                2000 / d["cpu_ms_per_video"],
                None,
                None,
            ]
        )
        for k, w in r.get("workers", {}).items():
            rows.append(
                [
                    codec,
                    f"{k} worker(s)",
                    w["clips_per_s"]["median"],
                    w["clips_per_s"]["spread"],
                    w["cpu_ms_per_video"],
                    w["main_cpu_ms_per_video"],
                    2000 / w["cpu_ms_per_video"],
                    w["peak_pss_mb"],
                    w["peak_rss_mb"],
                ]
            )
    print(
        format_table(
            [
                "codec",
                "where",
                "clips/s",
                "spread",
                "CPU ms/video",
                "of it here",
                "clips/CPU-s",
                "peak PSS MB",
                "peak RSS MB",
            ],
            rows,
        )
    )
    base = result["host_scaling"].get("1")
    if base:
        print(
            "  H.264 scaling over 1 worker: "
            + ", ".join(f"{k}: {v / base:.2f}x" for k, v in result["host_scaling"].items())
        )
    print(
        "  spread = (max-min)/median over repeats; CPU ms/video: all processes (workers included), 'of it "
        "here':"
        " the part this (the training) process pays; clips/CPU-s: clips per second of one busy core;\n  peak "
        "memory: this process and its workers (PSS splits shared pages)"
    )
