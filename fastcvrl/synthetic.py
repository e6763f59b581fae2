"""A generated motion dataset for the built-in default, demos and tests: ``python -m fastcvrl.synthetic --out DIR``.

K classes that differ only by motion (translation direction, rotation sense, expansion vs contraction,
oscillation axis, ...). Everything else is drawn at random per video, from the same distribution for every
class: background texture, number of objects, their shapes, stripe/checker textures, colours, sizes, start
positions, orientations and speeds. Objects wrap around the frame edges (the frame is a torus) and every
phase (position, angle, scale) is uniform, so the distribution of any single frame is the same for every
class: a single frame says nothing about the class, and classifying needs motion.

Layout under ``root``: ``synthetic.json`` (the parameters; the commit mark), ``train/`` and ``test/``, each
with ``manifest.csv`` (``fastcvrl.manifest`` header), ``classes.txt`` and ``videos/<class>/<n>.<ext>``.
Generation is deterministic by seed, happens once (cached by the parameter stamp), and is atomic: it writes
into a temporary folder beside ``root`` and renames it into place, so an interrupted run never looks done.
"""
from __future__ import annotations

import argparse
import fcntl
import json
import math
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from fastcvrl.manifest import VideoEntry, write_classes, write_manifest
from fastcvrl.video import CODECS, write_video

FORMAT_VERSION = 1  # bump when the rendering changes, so cached datasets are regenerated
STAMP = "synthetic.json"

# Motion classes, in label order; the first ``num_classes`` are used. Pairs are mirror images or time
# reversals of each other (right/left, cw/ccw, expand/contract), the hardest cases for a frame-based model.
MOTIONS = [
    "move_right",
    "move_left",
    "move_down",
    "move_up",
    "rotate_cw",
    "rotate_ccw",
    "expand",
    "contract",
    "oscillate_horizontal",
    "oscillate_vertical",
    "move_down_right",
    "move_up_left",
]
_DIRECTIONS = {  # (dx, dy) per frame, image coordinates (y down)
    "move_right": (1.0, 0.0),
    "move_left": (-1.0, 0.0),
    "move_down": (0.0, 1.0),
    "move_up": (0.0, -1.0),
    "move_down_right": (math.sqrt(0.5), math.sqrt(0.5)),
    "move_up_left": (-math.sqrt(0.5), -math.sqrt(0.5)),
}
SHAPES = ("disc", "square", "triangle", "cross", "ellipse")
SCALE_RANGE = (0.6, 1.5)  # object scale factor, log-uniform; expand/contract sweep it as a sawtooth


@dataclass(frozen=True)
class SyntheticParams:
    num_classes: int = 8
    videos_per_class: int = 24
    test_videos_per_class: int = 8
    seed: int = 0
    codec: str = "vp9"
    size: int = 112
    num_frames: int = 64
    fps: float = 25.0
    gop: int = 16
    version: int = FORMAT_VERSION

    def check(self) -> None:
        if not 1 <= self.num_classes <= len(MOTIONS):
            raise ValueError(f"num_classes must be in 1..{len(MOTIONS)}, got {self.num_classes}")
        if self.videos_per_class < 1 or self.test_videos_per_class < 0:
            raise ValueError("videos_per_class must be >= 1 and test_videos_per_class >= 0")
        if self.codec not in CODECS:
            raise ValueError(f"unknown codec {self.codec!r}; choose one of {sorted(CODECS)}")
        if self.size < 16 or self.size % 2:
            raise ValueError(f"size must be an even number >= 16, got {self.size}")
        if self.num_frames < 1 or self.gop < 1 or self.fps <= 0:
            raise ValueError("num_frames, gop and fps must be positive")


# ------------------------------------------------------------------------------------------- rendering
def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Static smooth colour noise: a coarse random grid upsampled bilinearly, ``(H, W, 3)`` float in 0..255."""
    cells = int(rng.integers(3, 9))
    grid = rng.uniform(0, 255, (cells + 1, cells + 1, 3)) * rng.uniform(0.3, 1.0) + rng.uniform(0, 80)
    pos = np.linspace(0, cells, size, endpoint=False)
    i = pos.astype(np.int64)
    f = (pos - i)[:, None]
    rows = grid[i] * (1 - f[..., None]) + grid[i + 1] * f[..., None]  # (H, cells+1, 3)
    out = rows[:, i] * (1 - f[None, :, :]) + rows[:, i + 1] * f[None, :, :]  # (H, W, 3)
    return np.clip(out, 0, 255)


def _shape_distance(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """A distance-like field that is < 1 inside the unit-sized shape, in object coordinates."""
    if shape == "disc":
        return np.sqrt(u * u + v * v)
    if shape == "square":
        return np.maximum(np.abs(u), np.abs(v)) / 0.8
    if shape == "ellipse":
        return np.sqrt(u * u + (v / 0.55) ** 2)
    if shape == "cross":
        return np.minimum(np.maximum(np.abs(u), np.abs(v) / 0.35), np.maximum(np.abs(u) / 0.35, np.abs(v)))
    # triangle: intersection of three half-planes, centred on the origin
    normals = ((0.0, 1.0), (math.sqrt(3) / 2, -0.5), (-math.sqrt(3) / 2, -0.5))  # inradius 0.5
    return np.maximum.reduce([(u * a + v * b) / 0.5 for a, b in normals])


def _render(params: SyntheticParams, label: int, rng: np.random.Generator) -> np.ndarray:
    """One video of class ``label``: ``(T, H, W, 3)`` uint8. All tensors vectorised over time."""
    size, t_len = params.size, params.num_frames
    motion = MOTIONS[label]
    px = size / 112.0  # speeds and sizes are stated for 112-pixel frames
    bg = _background(rng, size).astype(np.float32)
    frame = np.broadcast_to(bg, (t_len, size, size, 3)).copy()  # (T, H, W, 3) float32
    t = np.arange(t_len, dtype=np.float64)  # (T,)
    coords = np.arange(size, dtype=np.float32) + 0.5
    yy, xx = coords[None, :, None], coords[None, None, :]  # (1, H, 1), (1, 1, W)
    for _ in range(int(rng.integers(1, 3))):
        # appearance: same distribution for every class
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
        radius = rng.uniform(12, 22) * px
        colors = rng.uniform(0, 255, (2, 3))
        texture = int(rng.integers(2))  # 0 stripes, 1 checker
        freq = rng.uniform(2.0, 4.5)
        tex_phase = rng.uniform(0, 2 * math.pi)
        # phases uniform (torus position, angle, log-scale): every frame has the same law in every class
        cx0, cy0 = rng.uniform(0, size, 2)
        angle0 = rng.uniform(0, 2 * math.pi)
        lo, hi = math.log(SCALE_RANGE[0]), math.log(SCALE_RANGE[1])
        scale_phase = rng.uniform(0, 1)
        cx = np.full(t_len, cx0)
        cy = np.full(t_len, cy0)
        angle = np.full(t_len, angle0)
        log_scale = np.full(t_len, lo + (hi - lo) * scale_phase)
        if motion in _DIRECTIONS:
            speed = rng.uniform(0.6, 1.8) * px  # pixels per frame
            dx, dy = _DIRECTIONS[motion]
            cx, cy = cx0 + speed * dx * t, cy0 + speed * dy * t
        elif motion in ("rotate_cw", "rotate_ccw"):
            omega = math.radians(rng.uniform(3.0, 8.0))  # per frame; y is down, so +angle turns clockwise
            angle = angle0 + (omega if motion == "rotate_cw" else -omega) * t
        elif motion in ("expand", "contract"):
            rate = rng.uniform(1 / 48, 1 / 24)  # sawtooth cycles per frame
            sign = 1.0 if motion == "expand" else -1.0
            log_scale = lo + (hi - lo) * np.mod(scale_phase + sign * rate * t, 1.0)
        elif motion in ("oscillate_horizontal", "oscillate_vertical"):
            amp = rng.uniform(6, 14) * px
            period = rng.uniform(12, 28)
            wave = amp * np.sin(2 * math.pi * t / period + rng.uniform(0, 2 * math.pi))
            if motion == "oscillate_horizontal":
                cx = cx0 + wave
            else:
                cy = cy0 + wave
        scale = (radius * np.exp(log_scale)).astype(np.float32)  # (T,) pixels per object unit
        cx, cy, angle = (np.asarray(a, np.float32) for a in (cx, cy, angle))
        # wrapped offsets of every pixel from the object centre: (T, H, W)
        half = np.float32(size / 2)
        ox = np.mod(xx - cx[:, None, None] + half, np.float32(size)) - half
        oy = np.mod(yy - cy[:, None, None] + half, np.float32(size)) - half
        cos, sin = np.cos(angle)[:, None, None], np.sin(angle)[:, None, None]
        inv = 1.0 / scale[:, None, None]
        u = (cos * ox + sin * oy) * inv  # object coordinates (rotate by -angle)
        v = (-sin * ox + cos * oy) * inv
        dist = _shape_distance(shape, u, v)
        alpha = np.clip((1 - dist) * scale[:, None, None] + np.float32(0.5), 0, 1)  # ~1 px antialiased edge
        if texture == 0:
            pattern = np.sin(np.float32(freq * math.pi) * u + np.float32(tex_phase)) > 0
        else:
            pattern = (np.sin(np.float32(freq * math.pi) * u + np.float32(tex_phase)) * np.sin(np.float32(freq * math.pi) * v)) > 0
        color = np.where(pattern[..., None], colors[0].astype(np.float32), colors[1].astype(np.float32))
        a = alpha[..., None]
        frame = frame * (1 - a) + color * a
    return np.clip(frame + 0.5, 0, 255).astype(np.uint8)


def render_video(params: SyntheticParams, split: str, label: int, index: int) -> np.ndarray:
    """The frames of video ``index`` of class ``label`` in ``split``; depends only on these and the seed."""
    split_id = {"train": 0, "test": 1}[split]
    rng = np.random.default_rng([params.seed, split_id, label, index, params.version])
    return _render(params, label, rng)


def _make_one(job: tuple[SyntheticParams, str, int, int, str]) -> str:
    params, split, label, index, path = job
    frames = render_video(params, split, label, index)
    write_video(path, frames, fps=params.fps, codec=params.codec, gop=params.gop)
    return path


# ------------------------------------------------------------------------------------------- the dataset
def _stamp_ok(root: Path, params: SyntheticParams) -> bool:
    stamp = root / STAMP
    if not stamp.is_file():
        return False
    try:
        saved = json.loads(stamp.read_text())
    except (OSError, ValueError):
        return False
    if saved != asdict(params):
        return False
    return all((root / s / "manifest.csv").is_file() for s in ("train", "test"))


def _generate(tmp: Path, params: SyntheticParams, workers: int) -> None:
    ext = CODECS[params.codec][2]
    jobs, entries = [], {"train": [], "test": []}
    for split, per_class in (("train", params.videos_per_class), ("test", params.test_videos_per_class)):
        (tmp / split).mkdir(parents=True)
        for label in range(params.num_classes):
            folder = tmp / split / "videos" / MOTIONS[label]
            folder.mkdir(parents=True)
            for index in range(per_class):
                path = folder / f"{index:04d}{ext}"
                jobs.append((params, split, label, index, str(path)))
                entries[split].append(
                    VideoEntry(str(path), label, params.num_frames, params.fps, params.size, params.size, params.codec)
                )
    if workers > 1 and len(jobs) > 1:
        with get_context("fork" if sys.platform == "linux" else "spawn").Pool(workers) as pool:
            for _ in pool.imap_unordered(_make_one, jobs, chunksize=4):
                pass
    else:
        for job in jobs:
            _make_one(job)
    for split in ("train", "test"):
        write_classes(tmp / split / "classes.txt", MOTIONS[: params.num_classes])
        if entries[split]:
            write_manifest(tmp / split / "manifest.csv", entries[split])
        else:  # a header-only manifest for an empty test split
            (tmp / split / "manifest.csv").write_text("path,label,num_frames,fps,width,height,codec\n")
    (tmp / STAMP).write_text(json.dumps(asdict(params), indent=1) + "\n")  # written last: the commit mark


def ensure_synthetic(
    root: str | os.PathLike,
    num_classes: int = 8,
    videos_per_class: int = 24,
    seed: int = 0,
    codec: str = "vp9",
    size: int = 112,
    num_frames: int = 64,
    test_videos_per_class: int | None = None,
    fps: float = 25.0,
    gop: int = 16,
    workers: int | None = None,
    verbose: bool = False,
) -> tuple[str, str]:
    """Generate the dataset under ``root`` unless the same parameters are already there; return the
    ``(train, test)`` manifest paths.

    ``test_videos_per_class`` defaults to a third of ``videos_per_class`` (at least 1). Concurrent callers
    (e.g. every rank of a torchrun job) serialise on a lock file beside ``root``; one generates, the others
    reuse. A ``root`` that exists without a stamp is never deleted (it may not be ours): that is an error.
    """
    if test_videos_per_class is None:
        test_videos_per_class = max(1, videos_per_class // 3)
    params = SyntheticParams(
        num_classes, videos_per_class, test_videos_per_class, seed, codec, size, num_frames, float(fps), gop
    )
    params.check()
    root = Path(os.path.expanduser(os.fspath(root))).absolute()
    manifests = (str(root / "train" / "manifest.csv"), str(root / "test" / "manifest.csv"))
    if _stamp_ok(root, params):
        return manifests
    root.parent.mkdir(parents=True, exist_ok=True)
    with open(root.parent / f".{root.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if _stamp_ok(root, params):  # another process generated it while we waited
            return manifests
        if root.exists() and not (root / STAMP).is_file():
            if not root.is_dir() or any(root.iterdir()):
                raise FileExistsError(
                    f"{root} exists and is not a synthetic dataset (no {STAMP}); choose another folder or remove it"
                )
        start = time.perf_counter()
        tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp", dir=root.parent))
        try:
            _generate(tmp, params, workers or min(os.cpu_count() or 1, 8))
            if root.exists():  # stale (other parameters) or empty: move aside, swap in, then delete
                old = Path(tempfile.mkdtemp(prefix=f".{root.name}.old", dir=root.parent))
                os.replace(root, old / "d")
                os.replace(tmp, root)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, root)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        if verbose:
            n = params.num_classes * (params.videos_per_class + params.test_videos_per_class)
            print(f"generated {n} synthetic videos in {root} in {time.perf_counter() - start:.1f} s", flush=True)
    return manifests


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m fastcvrl.synthetic", description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="dataset folder (created; reused when parameters match)")
    ap.add_argument("--classes", type=int, default=8, help=f"number of motion classes, 1..{len(MOTIONS)}")
    ap.add_argument("--videos-per-class", type=int, default=24, help="training videos per class")
    ap.add_argument("--test-videos-per-class", type=int, default=None, help="default: a third of the above")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--codec", default="vp9", choices=["vp9", "mjpeg", "h264"])
    ap.add_argument("--size", type=int, default=112, help="frame height and width in pixels")
    ap.add_argument("--frames", type=int, default=64, help="frames per video")
    ap.add_argument("--fps", type=float, default=25.0)
    ap.add_argument("--gop", type=int, default=16, help="keyframe interval in frames")
    ap.add_argument("--workers", type=int, default=None, help="encoding processes (default: CPU count)")
    a = ap.parse_args(argv)
    try:
        train, test = ensure_synthetic(
            a.out, a.classes, a.videos_per_class, a.seed, a.codec, a.size, a.frames,
            a.test_videos_per_class, a.fps, a.gop, a.workers, verbose=True,
        )
    except (ValueError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"train manifest: {train}\ntest manifest:  {test}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
