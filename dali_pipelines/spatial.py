"""Crop geometry of the recipe (NumPy, no DALI) and slow NumPy statements of the reference's ops.

``random_resized_crop`` is TF's ``sample_distorted_bounding_box`` exactly (aspect uniform in 0.5-2, height
uniform between the area bounds' heights, 100 attempts); ``crop_roi`` turns a box and a flip into
``fn.resize``'s ROI; ``eval_crop_anchors`` places the test crops. What is drawn per view, in which order and
with which probability is ``dali_pipelines.recipe``. The ``*_reference`` functions state the reference's
colour jitter, grayscale, blur and solarize in plain NumPy: the DALI graph and the torch twin are tested
against them (and they against TF's own ops where TensorFlow is installed).
"""

from __future__ import annotations

import functools
import math
import struct

import numpy as np

from .recipe import GRAY

_F32 = struct.Struct("<f")
_EPS32 = float(np.float32(1e-7))


def _f32(x: float) -> float:
    """``x`` rounded to the nearest float32. TF's kernel computes in float: an op on float32 values done in
    double and rounded once is the float32 op exactly (+, -, *, /, sqrt: double has more than 2 x 24 + 2
    bits)."""
    return _F32.unpack(_F32.pack(x))[0]


@functools.lru_cache(maxsize=256)
def _area_bounds(
    height: int, width: int, area: tuple[float, float], min_covered: float
) -> tuple[float, float, float]:
    """The attempt's float32 area bounds ``(lo, hi)`` and least covered area for one frame size (cached)."""
    f = _f32
    return (
        f(f(f(area[0]) * width) * height),
        f(f(f(area[1]) * width) * height),
        f(f(min_covered) * f(height * width)),
    )


def crop_attempt(
    height: int,
    width: int,
    aspect: float,
    u_height: float,
    u_y: float,
    u_x: float,
    area: tuple[float, float] = (0.3, 1.0),
    min_covered: float = 0.1,
) -> list[int] | None:
    """One attempt of TF's ``GenerateRandomCrop``, in Python scalars (no NumPy call: a few microseconds).

    ``aspect`` is width / height (a float32 value); ``u_height``, ``u_y``, ``u_x`` are uniforms in [0, 1)
    standing for TF's ``Uniform(n)`` (an integer in ``[0, n)``) draws. Returns ``[y0, x0, y1, x1]`` or
    ``None`` when the attempt fails: the height is uniform over the integer heights between those of the area
    bounds at this aspect (nudged by one pixel where rounding leaves the area outside them), the width
    ``rint(height * aspect)``, the offset uniform over ``[0, H - h)`` (TF never places a crop flush with the
    far edge unless it spans the frame); it fails when its area is outside the bounds or it covers less than
    ``min_covered`` of the frame (the reference's whole-image box). ``round`` is ``rint`` (half to even)."""
    f, r = _f32, aspect  # float32 where TF's kernel computes in float, double where it computes in double
    lo, hi, least = _area_bounds(height, width, tuple(area), min_covered)
    h = round(f(math.sqrt(f(lo / r))))
    hmax = round(f(math.sqrt(f(hi / r))))
    if round(f(hmax * r)) > width:  # the largest height would give a crop wider than the frame
        hmax = int((width + 0.5 - _EPS32) / r)
        if round(f(hmax * r)) > width:
            hmax -= 1
    hmax = min(hmax, height)
    h = min(h, hmax)
    h += int(u_height * (hmax - h + 1))  # uniform on [h, hmax]
    w = round(f(h * r))
    if f(w * h) < lo:
        h += 1
        w = round(f(h * r))
    if f(w * h) > hi:
        h -= 1
        w = round(f(h * r))
    a = f(w * h)
    if not (lo <= a <= hi and 0 < w <= width and 0 < h <= height) or w * h < least:
        return None
    y0 = int(u_y * (height - h)) if h < height else 0
    x0 = int(u_x * (width - w)) if w < width else 0
    return [y0, x0, y0 + h, x0 + w]


def random_resized_crop(
    rng: np.random.Generator,
    height: int,
    width: int,
    area: tuple[float, float] = (0.3, 1.0),
    aspect: tuple[float, float] = (0.5, 2.0),
    attempts: int = 100,
) -> np.ndarray:
    """Crop box ``[y0, x0, y1, x1]`` in whole pixels (float32), as the reference's
    ``tf.image.sample_distorted_bounding_box`` (whole image as the box, ``min_object_covered`` 0.1):
    per attempt the aspect ratio (width / height) is uniform in ``aspect``, then the height uniform between
    the heights that give the area bounds, then the offset uniform (``crop_attempt``); the first of
    ``attempts`` that fits, else the whole frame. All attempts' uniforms are drawn at once (one generator
    call, ``(attempts, 4)``: aspect, height, y, x), but only attempts up to the first that fits are evaluated
    (at the recipe's bounds nearly every first attempt fits)."""
    height, width = int(height), int(width)
    u = rng.random((attempts, 4))
    a0, span = _f32(aspect[0]), _f32(aspect[1] - aspect[0])
    area = tuple(area)
    for i in range(attempts):
        ua, uh, uy, ux = u[i].tolist()  # one row at a time: nearly always only the first is needed
        r = _f32(a0 + _f32(span * _f32(ua)))  # float32 arithmetic, as TF's RandFloat() * (max - min) + min
        box = crop_attempt(height, width, r, uh, uy, ux, area)
        if box is not None:
            return np.array(box, np.float32)
    return np.array([0, 0, height, width], np.float32)


def crop_roi(box: np.ndarray, flip: bool) -> tuple[np.ndarray, np.ndarray]:
    """``fn.resize`` ROI ``(start, end)`` in (y, x) order; a horizontal flip swaps the x bounds."""
    y0, x0, y1, x1 = np.asarray(box).tolist()  # Python numbers: no NumPy scalar per coordinate
    if flip:
        x0, x1 = x1, x0
    return np.array([y0, x0], np.float32), np.array([y1, x1], np.float32)


def _rgb_to_hsv(x: np.ndarray) -> np.ndarray:
    """Textbook RGB -> HSV on ``(..., 3)`` in [0, 1], hue in [0, 1) (the tie order of TF's kernel: R, G,
    B)."""
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    v = x.max(-1)
    c = v - x.min(-1)
    safe = np.where(c > 0, c, 1.0)
    h = np.where(r == v, (g - b) / safe, np.where(g == v, 2.0 + (b - r) / safe, 4.0 + (r - g) / safe))
    h = np.where(c > 0, (h / 6.0) % 1.0, 0.0)
    s = np.where(v > 0, c / np.where(v > 0, v, 1.0), 0.0)
    return np.stack([h, s, v], -1)


def _hsv_to_rgb(hsv: np.ndarray) -> np.ndarray:
    """Textbook HSV -> RGB by sector of the hue circle."""
    h, s, v = hsv[..., 0], hsv[..., 1], hsv[..., 2]
    h6 = (h % 1.0) * 6.0
    sector = np.floor(h6).astype(np.int64) % 6
    f = h6 - np.floor(h6)
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    table = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)]
    out = np.zeros(h.shape + (3,))
    for k, rgb in enumerate(table):
        out[sector == k] = np.stack(rgb, -1)[sector == k]
    return out


def apply_color_reference(clip: np.ndarray, params: np.ndarray, order: np.ndarray) -> np.ndarray:
    """Slow NumPy statement of the reference's colour jitter and grayscale on one clip ``(T, H, W, 3)`` float
    in [0, 1] (float64 out): with jitter on, the four ops in ``order``, each followed by a clip to [0, 1]:
    brightness ``x * f``; contrast ``(x - m) * f + m`` with ``m`` the clip's per-channel mean; saturation ``S
    * f`` (capped at 1) in HSV; hue ``H + delta`` (wrapping) in HSV. Then grayscale (``GRAY`` weights, 3
    channels) when drawn."""
    x = np.asarray(clip, np.float64)
    on, fb, fc, fs, dh, gray = (float(v) for v in params)
    if on:
        for op in order:
            if op == 0:
                x = x * fb
            elif op == 1:
                m = x.reshape(-1, 3).mean(0)
                x = (x - m) * fc + m
            elif op == 2:
                hsv = _rgb_to_hsv(x)
                hsv[..., 1] = np.clip(hsv[..., 1] * fs, 0.0, 1.0)
                x = _hsv_to_rgb(hsv)
            else:
                hsv = _rgb_to_hsv(x)
                hsv[..., 0] = (hsv[..., 0] + dh) % 1.0
                x = _hsv_to_rgb(hsv)
            x = np.clip(x, 0.0, 1.0)
    if gray:
        x = np.repeat((x @ GRAY)[..., None], 3, -1)
    return x


def blur_reference(clip: np.ndarray, sigma: float, window: int) -> np.ndarray:
    """Slow NumPy statement of the reference's blur on ``(T, H, W, 3)``: separable Gaussian, zero padding."""
    r = window // 2
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    k /= k.sum()
    x = np.pad(np.asarray(clip, np.float64), ((0, 0), (r, r), (r, r), (0, 0)))
    h, w = clip.shape[1:3]
    rows = sum(k[i] * x[:, :, i : i + w] for i in range(window))  # (T, H + 2r, W, 3)
    return sum(k[i] * rows[:, i : i + h] for i in range(window))


def solarize_reference(clip: np.ndarray) -> np.ndarray:
    """The reference's solarize: ``x`` below 0.5, ``1 - x`` from 0.5 on."""
    return np.where(clip < 0.5, clip, 1.0 - clip)


def eval_crop_anchors(height: int, width: int, num_crops: int) -> np.ndarray:
    """``(num_crops, 2)`` relative (y, x) crop anchors: evenly along the long side, centred on the short
    side."""
    along = np.linspace(0.0, 1.0, num_crops) if num_crops > 1 else np.array([0.5])
    centre = np.full(num_crops, 0.5)
    pos = np.stack([centre, along], 1) if width >= height else np.stack([along, centre], 1)
    return pos.astype(np.float32)
