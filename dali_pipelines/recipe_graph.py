"""The recipe's colour, blur and solarize as DALI graph operations (the graph side of ``recipe``).

Each op is the reference's, in closed form with elementwise arithmetic (no HSV round trip): saturation and hue
as ``spatial.apply_color_reference`` states them, the zero-padded blur of ``spatial.blur_reference``. The
host draws the parameters (``recipe.draw_view``); these only apply them, per sample, the same to every frame.
The torch twin of the same ops is ``torch_augment``.
"""

from __future__ import annotations

from typing import Any

import nvidia.dali.math as dmath
from nvidia.dali import fn

from .recipe import GRAY, blur_window

_GRAY = [float(w) for w in GRAY] * 3  # 3x3, every output channel the grey


def _channel_max_min(x: Any) -> tuple[Any, Any]:
    """Per-pixel max and min over the channels of ``(T, S, S, 3)``: two ``(T, S, S, 1)``."""
    return fn.reductions.max(x, axes=[3], keep_dims=True), fn.reductions.min(x, axes=[3], keep_dims=True)


def _saturation(x: Any, f: Any) -> Any:
    """HSV saturation times ``f`` (capped at 1) with hue and value kept, in closed form: a channel ``c`` of a
    pixel with value ``v`` (its max) and chroma ``v - min`` becomes ``v - (v - c) * min(f, v / chroma)``."""
    v, mn = _channel_max_min(x)
    return v - (v - x) * dmath.min(f, v / dmath.max(v - mn, 1e-12))


def _hue(x: Any, delta: Any) -> Any:
    """HSV hue plus ``delta`` turns (wrapping), saturation and value kept: the hue in sixths from the max
    channel (ties resolved R, G, B as TF's kernel), shifted, then each channel ``v - chroma * clamp(min(k, 4 -
    k), 0, 1)`` with ``k = (n + hue) mod 6``, ``n`` = 5, 3, 1 for R, G, B."""
    r, g, b = x[:, :, :, 0], x[:, :, :, 1], x[:, :, :, 2]  # (T, S, S) each
    v = dmath.max(r, dmath.max(g, b))
    chroma = v - dmath.min(r, dmath.min(g, b))
    safe = dmath.max(chroma, 1e-12)
    is_r = (r == v) * 1.0
    is_g = (g == v) * (1.0 - is_r)
    h6 = (
        is_r * ((g - b) / safe) + is_g * ((b - r) / safe + 2.0) + (1.0 - is_r - is_g) * ((r - g) / safe + 4.0)
    )
    h6 = h6 + 6.0 * delta
    chans = []
    for n in (5.0, 3.0, 1.0):
        k = n + h6
        k = k - 6.0 * dmath.floor(k / 6.0)
        chans.append(v - chroma * dmath.clamp(dmath.min(k, 4.0 - k), 0.0, 1.0))
    return fn.stack(*chans, axis=3)


def _jitter_op(x: Any, op: Any, p: Any) -> Any:
    """``JITTER_OPS[op]`` (a per-sample index) with the clip's factors ``p``, then a clip to [0, 1]."""
    if op == 0:
        x = fhwc(x * p[1])
    elif op == 1:
        mean = fn.reductions.mean(x, axes=[0, 1, 2])  # (3,): the clip's per-channel mean
        x = fhwc((x - mean) * p[2] + mean)
    elif op == 2:
        x = fhwc(_saturation(x, p[3]))
    else:
        x = fhwc(_hue(x, p[4]))
    return dmath.clamp(x, 0.0, 1.0)


def fhwc(x: Any) -> Any:
    """Restore the FHWC layout (arithmetic and stacking drop it; the branches of a conditional must agree)."""
    return fn.reshape(x, layout="FHWC")


def color(x: Any, params: Any, order: Any, values: Any) -> Any:
    """The reference's colour jitter (four ops in the clip's random ``order``, a clip after each) and
    grayscale on a float clip in [0, 1]. ``params`` (CPU) decides the branches, ``values`` (on the op device)
    scales."""
    if params[0] > 0.5:
        for i in range(4):
            x = _jitter_op(x, order[i], values)
    if params[5] > 0.5:
        x = fhwc(fn.coord_transform(x, M=_GRAY))
    return x


def blur(x: Any, sigma: Any, size: int) -> Any:
    """Separable Gaussian blur with zero padding (the reference's 'SAME' convolution): pad ``r`` zeros, blur
    (``fn.gaussian_blur`` mirrors its borders, which then only see the zeros), cut the padding off."""
    window = blur_window(size)
    r = window // 2
    x = fn.slice(
        x,
        start=[-r, -r],
        shape=[size + 2 * r, size + 2 * r],
        axes=[1, 2],
        out_of_bounds_policy="pad",
        fill_values=0.0,
    )
    x = fn.gaussian_blur(x, sigma=sigma, window_size=window)
    return fhwc(fn.slice(x, start=[r, r], shape=[size, size], axes=[1, 2]))
