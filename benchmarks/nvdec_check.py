"""NVDEC at Kinetics sizes, measured: three parts, each printing one JSON line that says what ran and, where a
part could not run, why.

    python benchmarks/nvdec_check.py frames    --videos DIR   # (a) NVDEC vs PyAV, frame by frame
    python benchmarks/nvdec_check.py speed     --videos DIR   # (b) decode-only clips/s, aligned vs not
    python benchmarks/nvdec_check.py creations --videos DIR   # (c) cuvidCreateDecoder calls, 50 steps
    ... --dry-run   # on the CPU: the same code with VP9 on DALI's CPU decoder, small; says it was a dry run

(a) The real clips in ``--videos`` transcoded by ``prepare``'s rule (H.264, short side 256, both sides
    multiples of 16, GOP 16) and frame-index-coded videos of several sizes (two streams per size, so a reused
    decoder meets another stream; one size not a multiple of 16), decoded together in one pipeline for
    several iterations in shuffled order, each sample the whole stream trimmed as the loader trims it.
    Passes when every clip has PyAV's frame count, the mean absolute difference is at most 3/255, no frame
    differs grossly (an unwritten frame) and every index-coded frame reads back its own index.
(b) The same clips resized to 16-aligned sizes (336 x 256, 448 x 256) and to today's even sizes (340 x 256,
    456 x 256), 16-frame stride-2 clips trimmed on the host beforehand (so only decoding is timed), at
    ``--threads`` 4, 8, 16, 32: clips/s per size class and thread count; and one clip at a time on one
    thread, whose median time at even sizes less that at aligned sizes estimates a decoder creation (a
    figure that needs no profiler).
(c) ``nsys profile --trace=cuda,nvtx,nvvideo`` around 50 training steps on the aligned set; the trace's
    ``cuvidCreateDecoder`` calls, against the expected bound of decode threads x decoder configurations.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from dali_pipelines import nvdec  # noqa: E402
from dali_pipelines.cores import resolve_num_threads  # noqa: E402
from dali_pipelines.manifest import VideoEntry  # noqa: E402
from fastcvrl.datasets.manifest import write_manifest  # noqa: E402

INDEX_SIZES = [(448, 256), (336, 256), (256, 256), (456, 256)]  # (w, h); the last is not 16-aligned
ALIGNED, EVEN = [(336, 256), (448, 256)], [(340, 256), (456, 256)]  # 4:3 and 16:9 at short side 256


def machine() -> dict:
    """What ran it: the GPU (or "CPU"), the load average."""
    try:
        import torch

        gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU"
    except Exception:  # torch absent: the JSON still says what it can
        gpu = "unknown"
    return {"device": gpu, "load": [round(x, 2) for x in os.getloadavg()]}


def emit(result: dict, out: str | None) -> None:
    """One JSON line on stdout (and into ``out``)."""
    line = json.dumps({**result, **machine()}, sort_keys=True)
    print(line, flush=True)
    if out:
        with open(out, "a") as f:
            f.write(line + "\n")


def dali_missing(dry_run: bool) -> str:
    """Why DALI's decoder cannot run here ("" when it can): no DALI, or (not a dry run) no CUDA."""
    try:
        import nvidia.dali  # noqa: F401
    except ImportError as e:
        return f"nvidia.dali not importable ({e})"
    if not dry_run:
        import torch

        if not torch.cuda.is_available():
            return "no CUDA GPU here (use --dry-run for the CPU variant)"
    return ""


def real_clips(folder: str | None) -> list[Path]:
    """The video files in ``folder`` (none when it is not given or absent)."""
    if not folder or not os.path.isdir(folder):
        return []
    return sorted(p for p in Path(folder).iterdir() if p.suffix in (".mp4", ".avi", ".mkv", ".webm"))


def textured(num_frames: int, height: int, width: int, seed: int) -> np.ndarray:
    """Smooth moving texture (a stand-in for real footage when none is at hand): ``(T, H, W, 3)`` uint8."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    out = np.empty((num_frames, height, width, 3), np.uint8)
    for t in range(num_frames):
        a = xx / 9.0 + t * 0.3 + seed
        out[t, ..., 0] = 128 + 100 * np.sin(a)
        out[t, ..., 1] = 128 + 100 * np.cos(yy / 7.0 - t * 0.2)
        out[t, ..., 2] = 128 + 60 * np.sin((xx + yy) / 13.0 + seed)
    return out


def resized(frames: np.ndarray, width: int, height: int) -> np.ndarray:
    """``frames`` scaled to ``width`` x ``height`` (area filter, as ``prepare`` scales)."""
    import av

    out = [
        av.VideoFrame.from_ndarray(f, format="rgb24")
        .reformat(width=width, height=height, format="rgb24", interpolation="AREA")
        .to_ndarray()
        for f in frames
    ]
    return np.stack(out)


# ------------------------------------------------------------------------------------------- decoding
def decode_pipeline(samples: list, device: str, threads: int, batch: int) -> Any:
    """A pipeline decoding ``samples`` (``(encoded uint8 array, positions int32 array)``) ``batch`` at a
    time, cycling; ``device`` "gpu" decodes on NVDEC ("mixed"), "cpu" on DALI's CPU decoder."""
    from nvidia.dali import fn, pipeline_def

    state = {"i": 0}

    def source():
        picked = [samples[(state["i"] + k) % len(samples)] for k in range(batch)]
        state["i"] += batch
        return [s[0] for s in picked], [s[1] for s in picked]

    @pipeline_def(
        batch_size=batch,
        num_threads=threads,
        device_id=0 if device == "gpu" else None,
        prefetch_queue_depth=2,
    )
    def pipe():
        enc, pos = fn.external_source(source=source, num_outputs=2, batch=True)
        return fn.decoders.video(
            enc, device="mixed" if device == "gpu" else "cpu", frames=pos, build_index=False
        )

    return pipe()


def _host_frames(out) -> list[np.ndarray]:
    tl = out.as_cpu() if hasattr(out, "as_cpu") else out
    return [np.asarray(tl[i]) for i in range(len(tl))]


def trimmed(path: str, needed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The loader's host trim (``dali_pipelines.packets.trim``) of ``path`` to the frames ``needed``."""
    from dali_pipelines.packets import build_index, trim

    t = trim(build_index(path), needed)
    return t.encoded, t.positions


# ------------------------------------------------------------------------------------------- (a) frames
def part_frames(a: argparse.Namespace, work: Path) -> dict:
    """(a): NVDEC's frames against PyAV's (module docstring)."""
    from fastcvrl.datasets.transcode import Transcode, transcode_video
    from fastcvrl.datasets.video import read_video, write_video
    from tests.videos import decode_index, index_frames

    res = {"check": "nvdec_frames", "dry_run": a.dry_run}
    why = dali_missing(a.dry_run)
    if why:
        return {**res, "ran": False, "why_not": why}
    codec, device = ("vp9", "cpu") if a.dry_run else ("h264", "gpu")
    files: list[tuple[str, int | None]] = []  # (path, video id of an index-coded video, else None)
    clips = real_clips(a.videos)
    res["real_clips"] = len(clips)
    if not clips:
        res["real_clips_missing"] = f"no clips in {a.videos!r}"
    for src in clips:
        dst = str(work / "frames" / (src.stem + (".webm" if codec == "vp9" else ".mp4")))
        p = transcode_video(str(src), dst, Transcode(codec, 256, 16), threads=1)
        if p.ok:
            files.append((dst, None))
        else:
            res.setdefault("transcode_failed", []).append(f"{src.name}: {p.reason} {p.detail}")
    n_frames = 24 if a.dry_run else 48
    vid = 0
    for w, h in INDEX_SIZES:
        for _ in range(2):
            path = work / "frames" / f"index{vid}_{w}x{h}{'.webm' if codec == 'vp9' else '.mp4'}"
            write_video(
                path, index_frames(n_frames, h, w, vid), codec=codec, gop=16, bframes=3 * (codec == "h264")
            )
            files.append((str(path), vid))
            vid += 1
    res["files"] = len(files)
    refs, samples = {}, []
    for p, _ in files:
        ref = read_video(p)
        if a.max_frames:
            ref = ref[: a.max_frames]
        refs[p] = ref
        samples.append(trimmed(p, np.arange(len(ref))))
    res["sizes"] = sorted({f"{r.shape[2]}x{r.shape[1]}" for r in refs.values()})
    iterations = 1 if a.dry_run else 3
    worst, total, count, gross, wrong_count, wrong_index = 0.0, 0.0, 0, 0, [], []
    rng = random.Random(0)
    for _ in range(iterations):
        order = list(range(len(files)))
        rng.shuffle(order)
        pipe = decode_pipeline([samples[i] for i in order], device, 4, len(order))
        (out,) = pipe.run()
        for k, frames in zip(order, _host_frames(out)):
            path, video_id = files[k]
            ref = refs[path]
            if frames.shape != ref.shape:
                wrong_count.append(f"{Path(path).name}: {frames.shape} vs PyAV {ref.shape}")
                continue
            mad = np.abs(frames.astype(np.int16) - ref.astype(np.int16)).mean(axis=(1, 2, 3))
            worst, total, count = max(worst, float(mad.max())), total + float(mad.sum()), count + len(mad)
            gross += int((mad > 20).sum())
            if video_id is not None:
                idx, ids = decode_index(frames)
                if idx.tolist() != list(range(len(frames))) or set(ids.tolist()) != {video_id}:
                    wrong_index.append(Path(path).name)
        del pipe
    mean = total / max(count, 1)
    res.update(
        ran=True,
        codec=codec,
        iterations=iterations,
        frames_compared=count,
        mean_abs_diff=round(mean, 3),
        worst_frame_mean_abs_diff=round(worst, 3),
        frames_grossly_different=gross,
        frame_count_mismatches=wrong_count,
        index_mismatches=wrong_index,
    )
    res["pass"] = bool(count and not wrong_count and not wrong_index and not gross and mean <= 3.0)
    return res


# ------------------------------------------------------------------------------------------- (b) speed
def speed_sets(a: argparse.Namespace, work: Path, codec: str) -> dict[str, list[str]]:
    """{"aligned": [paths], "even": [paths]}: the same clips at 16-aligned and at today's even sizes."""
    from fastcvrl.datasets.video import read_video, write_video

    sources = [read_video(p) for p in real_clips(a.videos)]
    n = 48 if a.dry_run else 96
    if not sources:
        sources = [textured(n, 256, 340, 0), textured(n, 256, 456, 1)]
    sources = [s[:n] for s in sources if len(s) >= 40]
    ext = ".webm" if codec == "vp9" else ".mp4"
    sets: dict[str, list[str]] = {"aligned": [], "even": []}
    for i, frames in enumerate(sources):
        for name, sizes in (("aligned", ALIGNED), ("even", EVEN)):
            w, h = sizes[i % 2]
            path = work / "speed" / f"{name}{i}_{w}x{h}{ext}"
            path.parent.mkdir(parents=True, exist_ok=True)
            write_video(path, resized(frames, w, h), codec=codec, gop=16, bframes=3 * (codec == "h264"))
            sets[name].append(str(path))
    return sets


def part_speed(a: argparse.Namespace, work: Path) -> dict:
    """(b): decode-only clips/s at aligned and even sizes per thread count, and one clip's time."""
    res = {"check": "nvdec_speed", "dry_run": a.dry_run}
    why = dali_missing(a.dry_run)
    if why:
        return {**res, "ran": False, "why_not": why}
    codec, device = ("vp9", "cpu") if a.dry_run else ("h264", "gpu")
    sets = speed_sets(a, work, codec)
    res["clips_per_set"] = {k: len(v) for k, v in sets.items()}
    rng = np.random.default_rng(0)
    rows, latency = [], {}
    for name, paths in sets.items():
        from fastcvrl.datasets.video import read_video

        lengths = {p: len(read_video(p)) for p in paths}
        samples = []
        for k in range(64):
            p = paths[k % len(paths)]
            start = int(rng.integers(0, lengths[p] - 31))
            samples.append(trimmed(p, start + 2 * np.arange(16)))
        for threads in a.threads:
            pipe = decode_pipeline(samples, device, threads, a.batch)
            for _ in range(2):  # warm-up: the first decoders are created here
                pipe.run()
            _sync(device)
            t0, batches = time.perf_counter(), 0
            while time.perf_counter() - t0 < a.seconds:
                pipe.run()
                batches += 1
            _sync(device)
            dt = time.perf_counter() - t0
            rows.append({"set": name, "threads": threads, "clips_per_s": round(batches * a.batch / dt, 1)})
            del pipe
        # one thread, one clip a batch: a sample's whole cost, decoder creation included where reuse fails
        pipe = decode_pipeline(samples, device, 1, 1)
        pipe.run()
        times = []
        for _ in range(10 if a.dry_run else 40):
            t0 = time.perf_counter()
            pipe.run()
            _sync(device)
            times.append(time.perf_counter() - t0)
        latency[name] = round(1000 * float(np.median(times)), 2)
        del pipe
    res.update(ran=True, codec=codec, batch=a.batch, seconds_each=a.seconds, rows=rows, ms_per_clip=latency)
    # aligned and even sizes differ by 1-2% in pixels: the rest of the difference is the decoder creation
    res["creation_ms_estimate"] = None if a.dry_run else round(latency["even"] - latency["aligned"], 2)
    return res


def _sync(device: str) -> None:
    if device == "gpu":
        import torch

        torch.cuda.synchronize()


# ------------------------------------------------------------------------------------------- (c) creations
def count_calls(sqlite_path: str, name: str = "cuvidCreateDecoder") -> int | None:
    """Rows of any table of an nsys SQLite export whose name (``nameId`` into ``StringIds``) is ``name``;
    None when the export has no such string table."""
    con = sqlite3.connect(sqlite_path)
    try:
        tables = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        if "StringIds" not in tables:
            return None
        ids = [r[0] for r in con.execute("SELECT id FROM StringIds WHERE value = ?", (name,))]
        if not ids:
            return 0
        total = 0
        marks = ",".join("?" * len(ids))
        for t in tables:
            cols = [r[1] for r in con.execute(f"PRAGMA table_info('{t}')")]
            if "nameId" in cols:
                total += con.execute(f"SELECT COUNT(*) FROM '{t}' WHERE nameId IN ({marks})", ids).fetchone()[
                    0
                ]
        return total
    finally:
        con.close()


def find_nsys() -> str | None:
    """Nsight Systems' ``nsys``: on the PATH, else where NVIDIA's installers put it."""
    import glob

    found = shutil.which("nsys")
    for pattern in (
        "/opt/nvidia/nsight-systems*/bin/nsys",
        "/usr/local/cuda*/bin/nsys",
        "/opt/nvidia/nsight-compute/*/host/target-linux-x64/nsys",
    ):
        found = found or next(iter(sorted(glob.glob(pattern))), None)
    return found


def part_creations(a: argparse.Namespace, work: Path) -> dict:
    """(c): ``cuvidCreateDecoder`` calls in a traced training run against threads x configurations."""
    res = {"check": "nvdec_decoder_creations", "dry_run": a.dry_run, "steps": a.steps}
    nsys = find_nsys()
    res["nsys"] = nsys or "not found"
    why = dali_missing(a.dry_run) or (
        "" if nsys or a.dry_run else "nsys (Nsight Systems) is not on this machine"
    )
    if why:
        return {**res, "ran": False, "why_not": why}
    codec = "vp9" if a.dry_run else "h264"
    paths = speed_sets(a, work, codec)["aligned"] if not (work / "speed").is_dir() else None
    if paths is None:
        paths = sorted(str(p) for p in (work / "speed").glob("aligned*"))
    from fastcvrl.datasets.video import read_video

    entries = []
    for p in paths:
        f = read_video(p)
        entries.append(VideoEntry(p, 0, len(f), 25.0, f.shape[2], f.shape[1], codec))
    rows = [entries[i % len(entries)] for i in range(max(64, len(entries)))]
    manifest = work / "creations" / "manifest.csv"
    manifest.parent.mkdir(parents=True, exist_ok=True)
    write_manifest(manifest, rows)
    threads = resolve_num_threads("auto", "gpu")
    configs = nvdec.summarize(nvdec.audit(rows), threads).configs
    res.update(threads=threads, configurations=configs, expected_at_most=threads * configs)
    train = [
        sys.executable,
        str(REPO / "fastcvrl" / "train.py"),
        f"--data.train_manifest={manifest}",
        "--model.arch=r3d_tiny",
        "--data.num_threads=auto",
        f"--train.batch_size={4 if a.dry_run else 16}",
        f"--data.num_frames={4 if a.dry_run else 16}",
        f"--data.crop_size={32 if a.dry_run else 112}",
        f"--train.max_steps={2 if a.dry_run else a.steps}",
        "--train.log_every=10",
        "--train.knn_every=0",
        f"--train.out_dir={work / 'creations' / 'run'}",
        "--data.device=" + ("cpu" if a.dry_run else "gpu"),
    ]
    if a.dry_run:  # the training command runs (CPU, 2 steps); nsys is not needed to show the command starts
        r = subprocess.run(train, capture_output=True, text=True, timeout=a.timeout, cwd=REPO)
        tail = (r.stdout + r.stderr).strip().splitlines()[-1:] or [""]
        return {
            **res,
            "ran": False,
            "why_not": "dry run: no GPU",
            "train_exit": r.returncode,
            "train_tail": tail[0],
        }
    report = work / "creations" / "trace"
    cmd = [
        nsys,
        "profile",
        "--trace=cuda,nvtx,nvvideo",
        "--sample=none",
        "-o",
        str(report),
        "--force-overwrite=true",
    ]
    r = subprocess.run(cmd + train, capture_output=True, text=True, timeout=a.timeout, cwd=REPO)
    if r.returncode != 0:
        tail = (r.stdout + r.stderr).strip().splitlines()[-3:]
        return {**res, "ran": False, "why_not": f"nsys profile exit {r.returncode}: {' | '.join(tail)}"}
    e = subprocess.run(
        [
            nsys,
            "export",
            "--type=sqlite",
            "-o",
            f"{report}.sqlite",
            "--force-overwrite=true",
            f"{report}.nsys-rep",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if e.returncode != 0:
        return {**res, "ran": False, "why_not": f"nsys export exit {e.returncode}: {e.stderr.strip()[-200:]}"}
    n = count_calls(f"{report}.sqlite")
    if n is None:
        return {**res, "ran": False, "why_not": "the export has no StringIds table (nsys version?)"}
    return {**res, "ran": True, "creations": n, "pass": n <= threads * configs}


def main(argv: list[str] | None = None) -> int:
    """Run one part, print its JSON line; exit 0 when it ran and passed (dry run: when it ran to its end)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("part", choices=("frames", "speed", "creations"))
    ap.add_argument("--videos", default=os.environ.get("FASTCVRL_SHARED_VIDEOS"), help="real clips (folder)")
    ap.add_argument("--work", default=None, help="scratch folder (default: a temporary one)")
    ap.add_argument("--json", default=None, help="append the JSON line to this file too")
    ap.add_argument("--dry-run", action="store_true", help="CPU: VP9 on DALI's CPU decoder, small")
    ap.add_argument("--threads", default="4,8,16,32", help="speed: decode thread counts")
    ap.add_argument("--batch", type=int, default=16, help="speed: clips per batch")
    ap.add_argument("--seconds", type=float, default=4.0, help="speed: seconds timed per row")
    ap.add_argument("--max-frames", type=int, default=0, help="frames: compare at most this many per clip")
    ap.add_argument("--steps", type=int, default=50, help="creations: training steps traced")
    ap.add_argument("--timeout", type=float, default=240.0, help="creations: seconds for the traced run")
    a = ap.parse_args(argv)
    a.threads = [int(t) for t in a.threads.split(",")]
    if a.dry_run:
        a.threads, a.seconds, a.batch, a.max_frames = [1, 2], min(a.seconds, 1.0), 4, a.max_frames or 24
    work = Path(a.work or tempfile.mkdtemp(prefix="nvdec_check_"))
    (work / "frames").mkdir(parents=True, exist_ok=True)
    part = {"frames": part_frames, "speed": part_speed, "creations": part_creations}[a.part]
    try:
        res = part(a, work)
    except Exception as e:  # the part could not run: say why, in the same one JSON line
        res = {
            "check": f"nvdec_{a.part}",
            "dry_run": a.dry_run,
            "ran": False,
            "why_not": f"{type(e).__name__}: {e}",
        }
    emit(res, a.json)
    if not a.work:
        shutil.rmtree(work, ignore_errors=True)
    if a.dry_run:  # the part's code ran to its end on the CPU
        return 0 if res.get("ran") or res.get("train_exit") == 0 else 1
    return 0 if res.get("ran") and res.get("pass", True) else 1


if __name__ == "__main__":
    sys.exit(main())
