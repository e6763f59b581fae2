"""Loader throughput: the DALI CVRL pipeline beside the PyAV + torch DataLoader baseline, and the decode
ceiling.

    python benchmarks/loader_bench.py --device cpu --json results/loader_cpu.json
    python benchmarks/loader_bench.py --device gpu --manifest data/k400/train/manifest.csv --batch-size 64
    python benchmarks/loader_bench.py --host-only        # the host source alone, no decoding (host_feed.py)
    python benchmarks/loader_bench.py --device cpu --peers decord --videos DIR --json peers.json  # peers.py

Default data: the built-in synthetic dataset (``fastcvrl.datasets.synthetic.ensure_synthetic`` defaults:
112x112, 64 frames, VP9, a keyframe every 16 frames), 112x112 crops, 16 x 2 clips, batch 8. Both loaders do
the same work per video: two clips placed by CVRL's temporal sampling, each cropped, flipped, colour-jittered
with one 3x3 colour matrix, grayscaled, normalised, handed to torch as float ``(B, 3, T, S, S)``
channels_last_3d.

Units. A *clip* is one view: T frames at stride s (a video gives two clips; a training clip in train_bench is
the same unit). ``clips/s`` counts clips delivered. The decode ceiling is the frame rate of a plain decode of
the same files (every frame of whole files, one decoder thread per process, one process per core, no colour
conversion; ``+rgb`` adds the RGB conversion of every frame), turned into clips per second by the frames a
clip cannot avoid decoding, its span:

    ceiling clips/s = decode frames/s / ((T - 1) * s + 1)        # 31 frames for 16 x 2

The ceiling is a CPU (PyAV) figure also with ``--device gpu``, where NVDEC's own ceiling is not measured.
A loader that seeks to a keyframe decodes more than the span (up to keyframe spacing - 1 more); one that
decodes both views of a video in one pass where they overlap can decode less, so fractions above 1 are
possible. ``frames/clip`` reports what each loader actually decoded.

Fairness: the baseline gets one DataLoader worker process per usable core (each decodes with one thread); DALI
gets ``num_threads`` = usable cores. Each loader is built once; each repeat iterates ``--warmup`` batches
(untimed: worker start-up, pipeline fill) then ``--iters`` timed batches, the loaders alternating order from
repeat to repeat. Memory is measured apart, each loader alone in a fresh process: the peak over its
iterations of RSS and PSS summed over that process and all its children (workers included), the process's
own torch/DALI imports part of it (PSS splits pages that forked workers share, so it is the fair sum).
CPU ms/clip is the user + system CPU time of the whole process tree (workers, DALI threads, the ceiling's
decoder processes) per clip delivered: on a machine shared with other work it moves much less than clips/s.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import av  # noqa: E402
import host_feed  # noqa: E402  (benchmarks/host_feed.py: --host-only)
import peers  # noqa: E402  (benchmarks/peers.py: --peers)
import torch  # noqa: E402
from av.video.reformatter import VideoReformatter  # noqa: E402
from baseline_loader import build_baseline_loader  # noqa: E402  (benchmarks/baseline_loader.py)
from common import (  # noqa: E402
    PeakMemory,
    environment,
    format_table,
    ratio,
    summarize,
    tree_cpu_seconds,
    tree_memory_mb,
    usable_cores,
    write_json,
)

from dali_pipelines.manifest import read_manifest  # noqa: E402
from fastcvrl.config import Config  # noqa: E402
from fastcvrl.datasets.synthetic import SCENES  # noqa: E402

DEFAULT_SYNTHETIC = (
    "~/.cache/fastcvrl/synthetic"  # DataConfig.synthetic_dir: the same cached set as the trainer
)
QUICK = dict(
    classes=2,
    videos_per_class=4,
    size=32,
    video_frames=24,
    crop=32,
    frames=4,
    stride=2,
    batch_size=2,
    warmup=1,
    iters=2,
    repeats=2,
    ceiling_frames=200,
)


PEER_DEFAULTS = dict(batch_size=32, warmup=1, iters=4, repeats=3)  # --peers: the batches of 32
PEER_QUICK = dict(copies=2, short_side=64, crop=32, frames=4, batch_size=4, iters=2, repeats=2)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--device", choices=["cpu", "gpu"], default="cpu", help="where DALI decodes and augments")
    p.add_argument("--manifest", default="", help="manifest.csv; default: the built-in synthetic dataset")
    p.add_argument(
        "--synthetic-dir",
        default=DEFAULT_SYNTHETIC,
        help="where the synthetic set lives (the trainer's default; --quick uses a -quick sibling)",
    )
    p.add_argument(
        "--scene",
        default="dots",
        choices=list(SCENES),
        help="synthetic scene (data.synthetic_scene; the trainer's default: dots)",
    )
    p.add_argument("--loaders", default="baseline,dali", help="comma-separated subset of baseline,dali")
    p.add_argument("--crop", type=int, default=112)
    p.add_argument("--frames", type=int, default=16, help="T, frames per clip")
    p.add_argument("--stride", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=8, help="videos per batch (two clips each)")
    p.add_argument(
        "--workers", type=int, default=0, help="baseline workers and DALI threads; 0 = usable cores"
    )
    p.add_argument(
        "--host-workers",
        type=int,
        default=-1,
        help="DALI loader: processes running the host source (data.host_workers; -1 = auto, 0 = in-thread)",
    )
    p.add_argument("--warmup", type=int, default=3, help="untimed batches per repeat")
    p.add_argument("--iters", type=int, default=15, help="timed batches per repeat")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--ceiling-frames", type=int, default=4000, help="frames decoded per ceiling repeat")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default="", help="write the result as one JSON line to this path")
    p.add_argument("--quick", action="store_true", help="tiny settings (tests, smoke runs)")
    p.add_argument("--memory-only", default="", help=argparse.SUPPRESS)  # internal: one loader's memory pass
    host_feed.add_arguments(p)
    peers.add_arguments(p)
    args = p.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.peers:  # the peer comparison's own defaults (peers.py), where not given
        for k, v in PEER_DEFAULTS.items():
            if getattr(args, k) == p.get_default(k):
                setattr(args, k, v)
    if args.quick and args.peers:
        for k, v in PEER_QUICK.items():
            setattr(args, k, v)
    elif args.quick:
        for k, v in QUICK.items():
            if k in ("classes", "videos_per_class", "size", "video_frames"):
                setattr(args, k, v)
            elif getattr(args, k) == p.get_default(k):
                setattr(args, k, v)
    args.workers = args.workers or usable_cores()
    return args


def dataset(args: argparse.Namespace) -> str:
    """The manifest to read: ``--manifest``, else the synthetic train split (generated once, cached)."""
    if args.manifest:
        return args.manifest
    from fastcvrl.datasets.synthetic import ensure_synthetic

    kw = {"scene": args.scene}
    root = os.path.expanduser(args.synthetic_dir)
    if (
        args.scene != "dots" and args.synthetic_dir == DEFAULT_SYNTHETIC
    ):  # leave the trainer's default set alone
        root = os.path.expanduser(f"{DEFAULT_SYNTHETIC}-{args.scene}")
    if args.quick:
        if args.synthetic_dir == DEFAULT_SYNTHETIC:  # never regenerate the trainer's cached default set
            root = os.path.expanduser(DEFAULT_SYNTHETIC + "-quick")
        kw = dict(
            scene=args.scene,
            num_classes=args.classes,
            videos_per_class=args.videos_per_class,
            size=args.size,
            num_frames=args.video_frames,
            test_videos_per_class=0,
        )
    if (
        args.device == "gpu"
    ):  # NVDEC: H.264 at 128 x 128 or more (VP9 at 112 is below its minimum), own folder
        kw.update(codec="h264", size=max(128, kw.get("size", 112)))
        root = root.rstrip("/") + "-gpu"
    train, _ = ensure_synthetic(root, **kw)
    return train


def bench_config(args: argparse.Namespace) -> Config:
    cfg = Config()
    cfg.data.device = args.device
    cfg.data.num_threads = args.workers
    cfg.data.host_workers = args.host_workers
    cfg.data.num_frames, cfg.data.stride, cfg.data.crop_size = args.frames, args.stride, args.crop
    cfg.train.batch_size = args.batch_size
    cfg.train.precision = "fp32"  # both loaders hand over float32
    return cfg


# ------------------------------------------------------------------------------------------ decode ceiling
def _decode_file(job: tuple[str, bool]) -> int:
    path, rgb = job
    n = 0
    to_rgb = VideoReformatter()
    with av.open(path) as c:
        stream = c.streams.video[0]
        stream.codec_context.thread_count = 1
        for frame in c.decode(stream):
            if rgb:
                to_rgb.reformat(frame, format="rgb24").to_ndarray()
            n += 1
    return n


def decode_ceiling(
    paths: list[str], frames_per_file: list[int], procs: int, min_frames: int, rgb: bool
) -> tuple[float, float]:
    """(frames/s, CPU ms per frame) of plain whole-file decoding over ``paths`` (cycled to at least
    ``min_frames`` frames), one process per core, one decoder thread each."""
    jobs, total, i = [], 0, 0
    while total < min_frames or len(jobs) < procs:
        jobs.append((paths[i % len(paths)], rgb))
        total += frames_per_file[i % len(paths)]
        i += 1
    with mp.get_context("fork").Pool(procs) as pool:
        pool.map(_decode_file, jobs[:procs])  # warm-up: page cache, codec init
        c0, t0 = tree_cpu_seconds(), time.perf_counter()
        decoded = sum(pool.imap_unordered(_decode_file, jobs))
        dt, cpu = time.perf_counter() - t0, tree_cpu_seconds() - c0
        return decoded / dt, 1000.0 * cpu / decoded


# ------------------------------------------------------------------------------------------ loaders
def _endless(loader, epoch0: int) -> Iterator:
    epoch = epoch0
    while True:
        loader.set_epoch(epoch)
        yield from loader
        epoch += 1


def decode_counts(loader) -> tuple[int, int] | None:
    """(frames decoded, videos delivered) so far: the baseline's counters or the DALI loader's ``stats``."""
    if hasattr(loader, "frames_decoded") and hasattr(loader, "videos"):
        return int(loader.frames_decoded), int(loader.videos)
    stats = getattr(loader, "stats", None)
    if isinstance(stats, dict) and "frames_decoded" in stats and "clips" in stats:
        return int(stats["frames_decoded"]), int(
            stats["clips"]
        )  # the pretrain loader counts samples (videos)
    return None


def time_loader(
    loader, warmup: int, iters: int, epoch0: int, sync: Callable[[], None], memory: bool = True
) -> dict[str, Any]:
    """Warm-up then timed batches of one loader; clips/s, frames decoded per clip, peak tree memory
    (``memory=False``: none, and no sampler thread reading /proc beside the timed work)."""
    with PeakMemory() if memory else _NoMemory() as mem:
        it = _endless(loader, epoch0)
        for _ in range(warmup):
            next(it)
        sync()
        before = decode_counts(loader)
        c0, t0 = tree_cpu_seconds(), time.perf_counter()
        clips = 0
        for _ in range(iters):
            v1, v2, label = next(it)
            clips += v1.shape[0] + v2.shape[0]
        sync()
        dt, cpu = time.perf_counter() - t0, tree_cpu_seconds() - c0
        after = decode_counts(loader)
        it.close()  # shuts the DataLoader workers down
        del it
    per_clip = None
    if before is not None and after is not None and after[1] > before[1]:
        per_clip = (after[0] - before[0]) / (2 * (after[1] - before[1]))  # two clips per video
    return {
        "clips_per_s": clips / dt,
        "seconds": dt,
        "frames_per_clip": per_clip,
        "cpu_ms_per_clip": 1000 * cpu / clips,
        "peak_rss_mb": mem.peak_rss_mb,
        "peak_pss_mb": mem.peak_pss_mb,
        "shapes": [list(v1.shape), list(v2.shape), list(label.shape)],
        "dtype": str(v1.dtype),
        "channels_last_3d": bool(v1.is_contiguous(memory_format=torch.channels_last_3d)),
    }


class _NoMemory:
    peak_rss_mb = peak_pss_mb = 0.0

    def __enter__(self) -> _NoMemory:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def build_loaders(names: list[str], cfg: Config, manifest: str, args: argparse.Namespace) -> dict[str, Any]:
    """name -> loader, or name -> error string where it cannot be built here (e.g. DALI not installed)."""
    device = torch.device("cuda" if args.device == "gpu" else "cpu")
    out: dict[str, Any] = {}
    for name in names:
        try:
            if name == "baseline":
                out[name] = build_baseline_loader(
                    cfg, manifest, device=device, seed=args.seed, num_workers=args.workers
                )
            elif name == "dali":
                from fastcvrl.data import build_pretrain_loader

                out[name] = build_pretrain_loader(cfg, manifest, device=device, seed=args.seed)
            else:
                raise ValueError(f"--loaders: unknown loader {name!r}; choose baseline or dali")
        except ValueError:
            raise
        except Exception as err:  # noqa: BLE001 - report, run the others
            traceback.print_exc()
            out[name] = f"{type(err).__name__}: {err}"
    return out


def memory_pass(name: str, manifest: str, args: argparse.Namespace) -> dict[str, Any]:
    """Peak memory of one loader in a fresh process (its own workers included, nothing else loaded in it
    but what the loader imports), so neither loader's memory is charged to the other."""
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        *args.argv,
        "--manifest",
        manifest,
        "--memory-only",
        name,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def memory_only(args: argparse.Namespace) -> None:
    cfg = bench_config(args)
    idle_rss, idle_pss = tree_memory_mb()
    loader = build_loaders([args.memory_only], cfg, args.manifest, args)[args.memory_only]
    if isinstance(loader, str):
        raise SystemExit(loader)
    sync = torch.cuda.synchronize if args.device == "gpu" else (lambda: None)
    r = time_loader(loader, args.warmup, min(args.iters, 8), 0, sync)
    print(
        json.dumps(
            {
                "peak_rss_mb": r["peak_rss_mb"],
                "peak_pss_mb": r["peak_pss_mb"],
                "idle_rss_mb": idle_rss,
                "idle_pss_mb": idle_pss,
            }
        )
    )


def _host_workers(setting: int) -> int | None:
    """The DALI loader's host worker processes for ``--host-workers`` (None where DALI is not installed)."""
    try:
        from dali_pipelines.settings import resolve_host_workers
    except ImportError:
        return None
    return resolve_host_workers(setting)


def run(args: argparse.Namespace) -> dict[str, Any]:
    manifest = dataset(args)
    entries = read_manifest(manifest)
    cfg = bench_config(args)
    span = (args.frames - 1) * args.stride + 1
    idle_rss, idle_pss = tree_memory_mb()
    sync = torch.cuda.synchronize if args.device == "gpu" else (lambda: None)

    names = [n.strip() for n in args.loaders.split(",") if n.strip()]
    loaders = build_loaders(names, cfg, manifest, args)
    runs: dict[str, list[dict]] = {n: [] for n in names if not isinstance(loaders[n], str)}
    ceiling: list[tuple[float, float]] = []
    ceiling_rgb: list[tuple[float, float]] = []
    paths, nframes = [e.path for e in entries], [e.num_frames for e in entries]
    for rep in range(args.repeats):
        ceiling.append(decode_ceiling(paths, nframes, args.workers, args.ceiling_frames, rgb=False))
        ceiling_rgb.append(decode_ceiling(paths, nframes, args.workers, args.ceiling_frames, rgb=True))
        order = list(runs) if rep % 2 == 0 else list(runs)[::-1]
        for name in order:
            runs[name].append(time_loader(loaders[name], args.warmup, args.iters, 1000 * rep, sync))

    memory = {name: memory_pass(name, manifest, args) for name in runs}
    fps = summarize([c[0] for c in ceiling])
    fps_rgb = summarize([c[0] for c in ceiling_rgb])
    ceil_clips = fps["median"] / span
    result: dict[str, Any] = {
        "benchmark": "loader",
        "device": args.device,
        "manifest": manifest,
        "videos": len(entries),
        "settings": {
            "frames": args.frames,
            "stride": args.stride,
            "crop": args.crop,
            "batch_size": args.batch_size,
            "workers": args.workers,
            "warmup": args.warmup,
            "iters": args.iters,
            "repeats": args.repeats,
            "host_workers": _host_workers(args.host_workers),
        },
        "ceiling": {
            "frames_per_s": fps,
            "rgb_frames_per_s": fps_rgb,
            "frames_per_clip": span,
            "clips_per_s": ceil_clips,
            "formula": "decode frames/s / ((T-1)*s+1)",
            "cpu_ms_per_frame": summarize([c[1] for c in ceiling])["median"],
            "rgb_cpu_ms_per_frame": summarize([c[1] for c in ceiling_rgb])["median"],
        },
        "idle_memory_mb": {"rss": idle_rss, "pss": idle_pss},
        "loaders": {},
        "env": environment(),
    }
    for name in names:
        if isinstance(loaders[name], str):
            result["loaders"][name] = {"error": loaders[name]}
            continue
        rs = runs[name]
        cps = summarize([r["clips_per_s"] for r in rs])
        fpc = [r["frames_per_clip"] for r in rs if r["frames_per_clip"] is not None]
        result["loaders"][name] = {
            "clips_per_s": cps,
            "fraction_of_ceiling": cps["median"] / ceil_clips,
            "cpu_ms_per_clip": summarize([r["cpu_ms_per_clip"] for r in rs]),
            "frames_per_clip": sum(fpc) / len(fpc) if fpc else None,
            "memory_mb": memory[name],  # own process: peak_pss_mb, peak_rss_mb, idle_*_mb
            "inprocess_peak_pss_mb": max(r["peak_pss_mb"] for r in rs),  # with the other loader alive too
            "shapes": rs[0]["shapes"],
            "dtype": rs[0]["dtype"],
            "channels_last_3d": rs[0]["channels_last_3d"],
        }
    ok = {n: v for n, v in result["loaders"].items() if "error" not in v}
    if "baseline" in ok and "dali" in ok:
        result["dali_over_baseline"] = (
            ok["dali"]["clips_per_s"]["median"] / ok["baseline"]["clips_per_s"]["median"]
        )
        # None where DALI's CPU time stayed below the clock's resolution (a --quick run's few tiny clips)
        result["baseline_over_dali_cpu"] = ratio(
            ok["baseline"]["cpu_ms_per_clip"]["median"], ok["dali"]["cpu_ms_per_clip"]["median"]
        )
    return result


def print_table(result: dict[str, Any]) -> None:
    s, env, c = result["settings"], result["env"], result["ceiling"]
    print(f"loader benchmark: {result['videos']} videos from {result['manifest']}")
    print(
        f"  {s['frames']}x{s['stride']} clips, {s['crop']}x{s['crop']} crops, batch {s['batch_size']} videos "
        f"(2 clips each), {s['workers']} workers/threads, {s.get('host_workers')} host worker processes "
        "(DALI), "
        f"{s['warmup']} warm-up + {s['iters']} timed batches "
        f"x {s['repeats']} repeats"
    )
    print(
        f"  {env['cpu']} ({env['cores']} usable cores), GPU: {env['gpu'] or 'none'}; torch {env['torch']}, "
        f"DALI {env['dali']}, PyAV {env['av']}; load average {env['loadavg_1m']:.2f} at the end"
    )
    span = c["frames_per_clip"]
    rows = [
        [
            "decode ceiling (no rgb)",
            c["clips_per_s"],
            None,
            c["frames_per_s"]["spread"],
            1.0,
            float(span),
            c["cpu_ms_per_frame"] * span,
            None,
            None,
        ],
        [
            "decode ceiling (+rgb)",
            c["rgb_frames_per_s"]["median"] / span,
            None,
            c["rgb_frames_per_s"]["spread"],
            c["rgb_frames_per_s"]["median"] / c["frames_per_s"]["median"],
            float(span),
            c["rgb_cpu_ms_per_frame"] * span,
            None,
            None,
        ],
    ]
    for name, r in result["loaders"].items():
        label = f"{name} ({result['device']})" if name == "dali" else f"{name} (PyAV+DataLoader)"
        if "error" in r:
            rows.append([label, "unavailable", None, None, None, None, None, None, None])
            continue
        cps = r["clips_per_s"]
        mem = r["memory_mb"]
        rows.append(
            [
                label,
                cps["median"],
                cps["median"] / 2,
                cps["spread"],
                r["fraction_of_ceiling"],
                r["frames_per_clip"],
                r["cpu_ms_per_clip"]["median"],
                mem.get("peak_pss_mb"),
                mem.get("peak_rss_mb"),
            ]
        )
    print(
        format_table(
            [
                "loader",
                "clips/s",
                "videos/s",
                "spread",
                "of ceiling",
                "frames/clip",
                "CPU ms/clip",
                "peak PSS MB",
                "peak RSS MB",
            ],
            rows,
        )
    )
    print(
        f"  ceiling: {c['frames_per_s']['median']:.0f} decoded frames/s "
        f"({c['rgb_frames_per_s']['median']:.0f} "
        f"with RGB conversion) / {c['frames_per_clip']} frames per clip; spread = (max-min)/median over "
        "repeats; "
        f"idle process memory {result['idle_memory_mb']['pss']:.0f} MB PSS;\n  peak memory: each loader "
        "alone in a fresh process, summed over it and its workers"
    )
    for name, r in result["loaders"].items():
        if "error" in r:
            print(f"  {name} unavailable: {r['error']}")
    print(
        "  CPU ms/clip: CPU time of the whole process tree per clip delivered (steadier than clips/s when "
        "other work shares the cores)"
    )
    if "dali_over_baseline" in result:
        cpu = result["baseline_over_dali_cpu"]
        print(
            f"  DALI / baseline clips/s: {result['dali_over_baseline']:.2f}x; CPU time per clip, baseline / "
            "DALI: "
            + (f"{cpu:.2f}x" if cpu is not None else "n/a (DALI's CPU time below the clock's resolution)")
        )


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    args = parse_args(argv)
    if args.memory_only:
        memory_only(args)
        return None
    if args.peers:
        if args.device != "cpu":
            raise SystemExit("--peers compares CPU loaders: use --device cpu")
        result = peers.run(args)
        peers.print_table(result)
        if args.plot:
            peers.write_svg(result, args.plot)
        line = write_json(result, args.json)
        print(line)
        return result
    if args.host_only:
        result = host_feed.run(args)
        host_feed.print_table(result)
        line = write_json(result, args.json)
        print(line)
        return result
    result = run(args)
    print_table(result)
    line = write_json(result, args.json)
    print(line)
    return result


if __name__ == "__main__":
    main()
