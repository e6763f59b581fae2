"""A generated motion dataset for the built-in default, demos and tests: ``python -m fastcvrl.synthetic --out
DIR``.

K classes that differ only by motion (translation direction, rotation sense, expansion vs contraction,
oscillation axis, ...), in one of two scenes; the distribution of any single frame is the same for every
class, so a single frame says nothing about the class and classifying needs motion.

- ``dots`` (the default): a random-dot kinematogram. Short-lived coloured dots on a plain background follow
  the class's flow field with a speed (and centre) drawn per video; each dot is reborn at a random place when
  its lifetime ends, so two clips of a video share their motion and nothing else. This is the scene on which
  CVRL's objective has to learn motion: its positive pairs agree on motion only.
- ``objects``: one or two textured shapes on a smooth random background, with shapes, textures, colours,
  sizes, positions, orientations and speeds drawn per video. Objects wrap around the frame edges (a torus)
  and every phase is uniform. Here the two clips of a video also share the video's whole appearance, the
  easier cue: contrastive pretraining learns to tell videos apart by appearance, which says nothing about the
  class (see docs/learning.md).

The second class of each mirror pair (left, up, anticlockwise, contract) is rendered in the dots scene as
the first played backwards, so the pair differs in the direction of time only.

Layout under ``root``: ``synthetic.json`` (the parameters; the commit mark), ``train/`` and ``test/``, each
with ``manifest.csv`` (``dali_pipelines.manifest`` header), ``classes.txt`` and ``videos/<class>/<n>.<ext>``.
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

from dali_pipelines.cores import usable_cores
from dali_pipelines.manifest import VideoEntry
from fastcvrl.datasets.manifest import write_classes, write_manifest
from fastcvrl.datasets.video import CODECS, write_video

FORMAT_VERSION = 2  # bump when the rendering changes, so cached datasets are regenerated
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
SYNTHETIC_CODECS = ("vp9", "h264", "mjpeg")  # vp9: DALI's CPU decoder; h264: NVDEC on any GPU (>= 48x16)
SCENES = ("dots", "objects")  # see the dots section; "objects": textured shapes on a textured background
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
    scene: str = "dots"
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
        if self.scene not in SCENES:
            raise ValueError(f"unknown scene {self.scene!r}; choose one of {list(SCENES)}")
        if self.num_frames < 1 or self.gop < 1 or self.fps <= 0:
            raise ValueError("num_frames, gop and fps must be positive")


# ------------------------------------------------------------------------------------------- rendering
def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Static smooth colour noise: a coarse random grid upsampled bilinearly, ``(H, W, 3)`` float in
    0..255."""
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


@dataclass
class _Object:
    """One moving object: appearance constants and per-frame pose, arrays ``(T,)`` float32."""

    shape: str
    colors: np.ndarray  # (2, 3) float32
    texture: int  # 0 stripes, 1 checker
    freq: float
    tex_phase: float
    cx: np.ndarray
    cy: np.ndarray
    angle: np.ndarray
    scale: np.ndarray  # pixels per object unit


def _draw_scene(
    params: SyntheticParams, label: int, rng: np.random.Generator
) -> tuple[np.ndarray, list[_Object]]:
    """The random draws of one video: background ``(H, W, 3)`` and 1 or 2 objects moving as ``label`` says."""
    size, t_len = params.size, params.num_frames
    motion = MOTIONS[label]
    px = size / 112.0  # speeds and sizes are stated for 112-pixel frames
    background = _background(rng, size).astype(np.float32)
    t = np.arange(t_len, dtype=np.float64)  # (T,)
    objects = []
    for _ in range(int(rng.integers(1, 3))):
        # appearance: same distribution for every class
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
        radius = rng.uniform(12, 22) * px
        colors = rng.uniform(0, 255, (2, 3)).astype(np.float32)
        texture = int(rng.integers(2))
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
        f32 = lambda a: np.asarray(a, np.float32)  # noqa: E731
        objects.append(
            _Object(
                shape,
                colors,
                texture,
                freq,
                tex_phase,
                f32(np.mod(cx, size)),
                f32(np.mod(cy, size)),
                f32(angle),
                f32(radius * np.exp(log_scale)),
            )
        )
    return background, objects


def _shade(obj: _Object, ox: np.ndarray, oy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Alpha ``(T, h, w, 1)`` and colour ``(T, h, w, 3)`` of ``obj`` at pixel offsets ``ox``, ``oy`` from its
    centre (arrays broadcasting to ``(T, h, w)``)."""
    cos, sin = np.cos(obj.angle)[:, None, None], np.sin(obj.angle)[:, None, None]
    inv = 1.0 / obj.scale[:, None, None]
    u = (cos * ox + sin * oy) * inv  # object coordinates (rotate by -angle)
    v = (-sin * ox + cos * oy) * inv
    dist = _shape_distance(obj.shape, u, v)
    alpha = np.clip((1 - dist) * obj.scale[:, None, None] + np.float32(0.5), 0, 1)  # ~1 px antialiased edge
    k, phase = np.float32(obj.freq * math.pi), np.float32(obj.tex_phase)
    pattern = np.sin(k * u + phase) > 0 if obj.texture == 0 else np.sin(k * u + phase) * np.sin(k * v) > 0
    color = np.where(pattern[..., None], obj.colors[0], obj.colors[1])
    return alpha[..., None], color


def _paint_reference(frame: np.ndarray, obj: _Object) -> None:
    """Slow, obvious: shade every pixel of every frame, offsets wrapped around the torus."""
    size = frame.shape[1]
    coords = np.arange(size, dtype=np.float32) + np.float32(0.5)
    half, full = np.float32(size / 2), np.float32(size)
    ox = np.mod(coords[None, None, :] - obj.cx[:, None, None] + half, full) - half  # (T, 1, W)
    oy = np.mod(coords[None, :, None] - obj.cy[:, None, None] + half, full) - half  # (T, H, 1)
    alpha, color = _shade(obj, ox, oy)
    frame += alpha * (color - frame)


def _window(x: np.ndarray, y: np.ndarray, b: int, frame: np.ndarray) -> tuple[np.ndarray, ...]:
    """A ``b`` x ``b`` pixel window around the point ``(x[t], y[t])`` of every frame ``t`` of ``frame``
    ``(T, H, W, 3)``: unwrapped columns ``cx`` and rows ``cy`` ``(T, b)``, the offsets of their pixel centres
    from the point ``ox`` ``(T, 1, b)`` and ``oy`` ``(T, b, 1)``, and flat indices ``(T, b, b)`` into
    ``frame.reshape(-1, 3)`` that wrap around the frame edges (flat indices gather ~4x faster than 3 index
    arrays)."""
    t_len, size = frame.shape[:2]
    j = np.arange(b)
    cx = (np.floor(x).astype(np.int64) - b // 2)[:, None] + j  # (T, b)
    cy = (np.floor(y).astype(np.int64) - b // 2)[:, None] + j
    ox = (cx.astype(np.float32) + np.float32(0.5) - x[:, None])[:, None, :]  # (T, 1, b)
    oy = (cy.astype(np.float32) + np.float32(0.5) - y[:, None])[:, :, None]  # (T, b, 1)
    index = ((np.arange(t_len)[:, None] * size + np.mod(cy, size)) * size)[:, :, None] + np.mod(cx, size)[
        :, None, :
    ]
    return cx, cy, ox, oy, index


def _blend(frame: np.ndarray, index: np.ndarray, alpha: np.ndarray, color: np.ndarray) -> None:
    """Gather the window pixels at ``index``, blend ``color`` over them by ``alpha``, scatter them back."""
    pixels = frame.reshape(-1, 3)  # a view: (T*H*W, 3)
    patch = np.take(pixels, index, axis=0)  # (T, b, b, 3)
    patch += alpha * (color - patch)
    pixels[index] = patch


def _paint(frame: np.ndarray, obj: _Object) -> None:
    """Fast: shade only a window around the object in each frame (gathered and scattered with wrap-around).

    Every pixel with alpha > 0 lies within 1.14 scale + 0.5 px of the centre (the square's corner is the
    farthest point of any shape), so the window changes nothing ``_paint_reference`` would not."""
    reach = 1.14 * float(obj.scale.max()) + 2.0
    _, _, ox, oy, index = _window(obj.cx, obj.cy, min(frame.shape[1], 2 * math.ceil(reach)), frame)
    alpha, color = _shade(obj, ox, oy)
    _blend(frame, index, alpha, color)


# ------------------------------------------------------------------------------------- the dots scene
# A random-dot kinematogram (the psychophysics stimulus for motion perception): short-lived dots on a plain
# background, all following the class's flow field. Every dot lives DOT_LIFETIME frames, then is reborn at a
# random place, so two clips of one video a few frames apart share no dot: what they share is the motion
# (direction, speed, centre). Appearance (dot colours and sizes, drawn per dot) is the same for every video.
DOT_DENSITY = 1 / 100  # visible dots per pixel, on average
DOT_RADIUS = (1.6, 2.8)  # pixels at 112 pixels
DOT_LIFETIME = (8, 24)  # frames, uniform per dot
DOT_BACKGROUND = 40.0  # grey level of the background
# The second of each mirror pair is rendered as the first played backwards: the pair then differs in the
# direction of time only, and every single frame has exactly the same law in both classes.
_REVERSED = {
    "move_left": "move_right",
    "move_up": "move_down",
    "rotate_ccw": "rotate_cw",
    "contract": "expand",
    "move_up_left": "move_down_right",
}


@dataclass
class _Dots:
    """Dot centres ``x``, ``y`` ``(N, T)`` float32 pixels, radii ``(N,)``, colours ``(N, 3)``; ``torus``: the
    frame wraps around (translations), else dots outside it are not drawn."""

    x: np.ndarray
    y: np.ndarray
    radius: np.ndarray
    colors: np.ndarray
    torus: bool


def _draw_dots(params: SyntheticParams, motion: str, rng: np.random.Generator) -> _Dots:
    """The random draws of one dots video moving as ``motion`` says (never a reversed class)."""
    size, t_len = params.size, params.num_frames
    px = size / 112.0
    t = np.arange(t_len, dtype=np.float64)[None, :]  # (1, T)
    centre = rng.uniform(0.25 * size, 0.75 * size, 2)
    if motion in _DIRECTIONS:
        speed = rng.uniform(1.0, 2.5) * px  # pixels per frame
    elif motion == "rotate_cw":
        omega = math.radians(rng.uniform(2.0, 4.0))  # per frame; y is down, so +angle turns clockwise
    elif motion == "expand":
        rate = rng.uniform(0.02, 0.04)  # log-scale per frame
    elif motion.startswith("oscillate"):
        amp, period, phase = rng.uniform(6, 14) * px, rng.uniform(12, 28), rng.uniform(0, 2 * math.pi)
    # how many dot slots: visible density DOT_DENSITY wherever the frame is
    n = DOT_DENSITY * size * size
    if motion == "rotate_cw":  # born uniformly in the disc around the centre that covers the frame
        corners = np.hypot(np.array([0, size]) - centre[0], np.array([[0], [size]]) - centre[1])  # (2, 2)
        reach = float(corners.max()) + DOT_RADIUS[1] * px
        n = DOT_DENSITY * math.pi * reach * reach
    elif motion == "expand":  # born in the frame; density falls as exp(-2 rate age) while they live
        mean_life = sum(DOT_LIFETIME) / 2
        n /= (1 - math.exp(-2 * rate * mean_life)) / (2 * rate * mean_life)
    n = max(1, int(round(n)))
    life = rng.uniform(*DOT_LIFETIME, (n, 1))  # (N, 1)
    start = rng.uniform(0, 1, (n, 1)) * life
    generation = np.floor((t + start) / life)  # (N, T)
    age = t + start - generation * life
    gens = int(generation.max()) + 1
    if motion == "rotate_cw":
        rho = reach * np.sqrt(rng.uniform(0, 1, (n, gens)))
        theta = rng.uniform(0, 2 * math.pi, (n, gens))
        bx, by = centre[0] + rho * np.cos(theta), centre[1] + rho * np.sin(theta)
    else:
        bx, by = rng.uniform(0, size, (2, n, gens))
    g = generation.astype(np.int64)
    bx, by = np.take_along_axis(bx, g, 1), np.take_along_axis(by, g, 1)  # (N, T) birth places
    torus = True
    if motion in _DIRECTIONS:
        dx, dy = _DIRECTIONS[motion]
        x, y = bx + speed * dx * age, by + speed * dy * age
    elif motion == "rotate_cw":
        c, s = np.cos(omega * age), np.sin(omega * age)
        ux, uy = bx - centre[0], by - centre[1]
        x, y, torus = centre[0] + c * ux - s * uy, centre[1] + s * ux + c * uy, False
    elif motion == "expand":
        grow = np.exp(rate * age)
        x, y, torus = centre[0] + grow * (bx - centre[0]), centre[1] + grow * (by - centre[1]), False
    else:  # oscillate: a common sinusoidal displacement since birth
        wave = amp * (
            np.sin(2 * math.pi * t / period + phase) - np.sin(2 * math.pi * (t - age) / period + phase)
        )
        x, y = (bx + wave, by) if motion == "oscillate_horizontal" else (bx, by + wave)
    if torus:
        x, y = np.mod(x, size), np.mod(y, size)
    radius = rng.uniform(*DOT_RADIUS, n) * px
    colors = rng.uniform(80, 255, (n, 3))
    f32 = lambda a: np.asarray(a, np.float32)  # noqa: E731
    return _Dots(f32(x), f32(y), f32(radius), f32(colors), torus)


def _paint_dots_reference(frame: np.ndarray, dots: _Dots) -> None:
    """Slow, obvious: every dot shaded over every pixel of every frame, in dot order."""
    size = frame.shape[1]
    coords = np.arange(size, dtype=np.float32) + np.float32(0.5)
    half, full = np.float32(size / 2), np.float32(size)
    for i in range(len(dots.radius)):
        ox = coords[None, None, :] - dots.x[i][:, None, None]  # (T, 1, W)
        oy = coords[None, :, None] - dots.y[i][:, None, None]  # (T, H, 1)
        if dots.torus:
            ox, oy = np.mod(ox + half, full) - half, np.mod(oy + half, full) - half
        alpha = np.clip(dots.radius[i] + np.float32(0.5) - np.sqrt(ox * ox + oy * oy), 0, 1)[..., None]
        frame += alpha * (dots.colors[i] - frame)


def _paint_dots(frame: np.ndarray, dots: _Dots) -> None:
    """Fast: each dot shaded in a small window around it (wrapping on the torus, masked off the frame
    otherwise); pixels outside the window have alpha 0 in the reference too."""
    size = frame.shape[1]
    for i in range(len(dots.radius)):
        b = min(size, 2 * math.ceil(float(dots.radius[i]) + 1.5) + 1)
        cx, cy, ox, oy, index = _window(dots.x[i], dots.y[i], b, frame)
        alpha = np.clip(dots.radius[i] + np.float32(0.5) - np.sqrt(ox * ox + oy * oy), 0, 1)  # (T, b, b)
        if not dots.torus:
            inside = ((cy >= 0) & (cy < size))[:, :, None] & ((cx >= 0) & (cx < size))[:, None, :]
            if not inside.any():
                continue
            alpha = alpha * inside
        _blend(frame, index, alpha[..., None], dots.colors[i])


def _render(
    params: SyntheticParams, label: int, rng: np.random.Generator, reference: bool = False
) -> np.ndarray:
    """One video of class ``label``: ``(T, H, W, 3)`` uint8."""
    if params.scene == "dots":
        motion = MOTIONS[label]
        dots = _draw_dots(params, _REVERSED.get(motion, motion), rng)
        frame = np.full((params.num_frames, params.size, params.size, 3), DOT_BACKGROUND, np.float32)
        (_paint_dots_reference if reference else _paint_dots)(frame, dots)
        if motion in _REVERSED:
            frame = frame[::-1]
    else:
        background, objects = _draw_scene(params, label, rng)
        frame = np.broadcast_to(
            background, (params.num_frames, *background.shape)
        ).copy()  # (T, H, W, 3) float32
        for obj in objects:
            (_paint_reference if reference else _paint)(frame, obj)
    frame += np.float32(0.5)  # round to nearest below
    return np.clip(frame, 0, 255, out=frame).astype(np.uint8)


def render_video(
    params: SyntheticParams, split: str, label: int, index: int, reference: bool = False
) -> np.ndarray:
    """The frames ``(T, H, W, 3)`` uint8 of video ``index`` of class ``label`` in ``split``; depends only on
    these and the seed. ``reference`` paints every pixel (slow) instead of a window around each object."""
    split_id = {"train": 0, "test": 1}[split]
    rng = np.random.default_rng([params.seed, split_id, label, index, params.version])
    return _render(params, label, rng, reference)


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
                    VideoEntry(
                        str(path),
                        label,
                        params.num_frames,
                        params.fps,
                        params.size,
                        params.size,
                        params.codec,
                    )
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
    scene: str = "dots",
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
        num_classes,
        videos_per_class,
        test_videos_per_class,
        seed,
        codec,
        size,
        num_frames,
        float(fps),
        gop,
        scene,
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
                    f"{root} exists and is not a synthetic dataset (no {STAMP}); choose another folder or "
                    "remove it"
                )
        start = time.perf_counter()
        tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp", dir=root.parent))
        try:
            _generate(tmp, params, workers or min(usable_cores(), 8))
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
            print(
                f"generated {n} synthetic videos in {root} in {time.perf_counter() - start:.1f} s", flush=True
            )
    return manifests


def main(argv: list[str] | None = None) -> int:
    from fastcvrl.commands import HelpFormatter, prog

    ap = argparse.ArgumentParser(
        prog=prog("fastcvrl-synthetic", "fastcvrl.synthetic"),
        description=__doc__.split("\n")[0],
        formatter_class=HelpFormatter,
    )
    ap.add_argument("--out", required=True, help="dataset folder (created; reused when parameters match)")
    ap.add_argument("--classes", type=int, default=8, help=f"number of motion classes, 1..{len(MOTIONS)}")
    ap.add_argument("--videos-per-class", type=int, default=24, help="training videos per class")
    ap.add_argument("--test-videos-per-class", type=int, default=None, help="default: a third of the above")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--codec",
        default="vp9",
        choices=list(SYNTHETIC_CODECS),
        help="vp9 (DALI's CPU decoder, the CPU default) or h264 (NVDEC, the GPU default)",
    )
    ap.add_argument("--size", type=int, default=112, help="frame height and width in pixels")
    ap.add_argument("--frames", type=int, default=64, help="frames per video")
    ap.add_argument("--fps", type=float, default=25.0)
    ap.add_argument("--gop", type=int, default=16, help="keyframe interval in frames")
    ap.add_argument(
        "--scene",
        default="dots",
        choices=list(SCENES),
        help="dots: a random-dot kinematogram (default); objects: textured shapes on a textured background",
    )
    ap.add_argument("--workers", type=int, default=None, help="encoding processes (default: CPU count)")
    a = ap.parse_args(argv)
    try:
        train, test = ensure_synthetic(
            a.out,
            a.classes,
            a.videos_per_class,
            a.seed,
            a.codec,
            a.size,
            a.frames,
            a.test_videos_per_class,
            a.fps,
            a.gop,
            a.scene,
            a.workers,
            verbose=True,
        )
    except (ValueError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"train manifest: {train}\ntest manifest:  {test}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
