"""CVRL temporal sampling on the host: where the two clips of a video start (NumPy, no DALI).

CVRL (Qian et al., CVPR 2021, Sec. 3.2 and the reference ``sample_ssl_sequence``): a clip is ``T`` frames at
stride ``s``. With ``L`` frames and ``M = L - (T-1)*s`` possible starts, the gap between the two starts is
drawn from a density that decreases with the gap (``M - gap`` for the default ``linear`` rule; ``1 -
(gap/M)^p`` in general; ``uniform`` as the ablation), the first start is uniform on ``[0, M - gap)``, the
second is ``first + gap`` and the order of the two is swapped at random. A video shorter than one clip (``L <=
(T-1)*s``) has ``M = L``: its two starts are independent uniforms on ``[0, L)`` and its clips loop its frames,
as the reference code does.

Gaps are continuous draws floored to whole frames, so ``P(gap = k) = F((k+1)/M) - F(k/M)`` with ``F`` the
CDF of the rule on ``[0, 1]`` (``gap_pmf``), which is what the statistical test checks against.
"""

from __future__ import annotations

import math

import numpy as np

GAP_RULES = ("linear", "power", "uniform")


def num_starts(num_frames: int, clip_frames: int, stride: int) -> int:
    """``M``: the number of valid clip starts (``L`` itself for videos shorter than one clip, which loop)."""
    if num_frames <= 0:
        raise ValueError(f"num_frames must be positive, got {num_frames}")
    reach = (clip_frames - 1) * stride
    return num_frames - reach if num_frames > reach else num_frames


def check_rule(rule: str, power: float = 1.0) -> None:
    """Raise ``ValueError`` naming the value for an unknown rule or a non-positive power."""
    _power(rule, power)


def _power(rule: str, power: float) -> float:
    if rule not in GAP_RULES:
        raise ValueError(f"unknown gap distribution {rule!r}; choose one of {GAP_RULES}")
    if rule == "linear":
        return 1.0
    if power <= 0:
        raise ValueError(f"gap_power must be positive, got {power}")
    return float(power)


def gap_cdf(x: np.ndarray, rule: str = "linear", power: float = 1.0) -> np.ndarray:
    """CDF on ``x = gap / M`` in ``[0, 1]`` of the density proportional to ``1 - x^p`` (or uniform)."""
    x = np.clip(np.asarray(x, dtype=np.float64), 0.0, 1.0)
    if rule == "uniform":
        _power(rule, power)
        return x
    p = _power(rule, power)
    return ((p + 1.0) * x - x ** (p + 1.0)) / p


def gap_pmf(m: int, rule: str = "linear", power: float = 1.0) -> np.ndarray:
    """``P(gap = k)`` for ``k = 0..M-1`` (continuous draw floored to whole frames)."""
    edges = np.arange(m + 1, dtype=np.float64) / m
    return np.diff(gap_cdf(edges, rule, power))


def _inverse_cdf(u: np.ndarray, rule: str, power: float) -> np.ndarray:
    """``x`` in ``[0, 1)`` with ``gap_cdf(x) = u``: closed form for linear/uniform, bisection otherwise."""
    if rule == "uniform":
        _power(rule, power)
        return u
    p = _power(rule, power)
    if p == 1.0:
        return 1.0 - np.sqrt(1.0 - u)
    lo, hi = np.zeros_like(u), np.ones_like(u)
    for _ in range(50):  # F is increasing on [0, 1]; 50 halvings reach float64 resolution
        mid = 0.5 * (lo + hi)
        below = gap_cdf(mid, rule, p) < u
        lo = np.where(below, mid, lo)
        hi = np.where(below, hi, mid)
    return 0.5 * (lo + hi)


def sample_starts(
    rng: np.random.Generator,
    num_frames: np.ndarray | int,
    clip_frames: int,
    stride: int,
    rule: str = "linear",
    power: float = 1.0,
) -> np.ndarray:
    """Start frames of the two views, ``(N, 2)`` int64, one row per video of ``num_frames`` (``(N,)``).

    Three uniforms per video (gap, first start, swap; for a video shorter than one clip the first two are the
    two starts), so a video's draws do not depend on the others'.
    """
    if np.ndim(num_frames) == 0 and rule in ("linear", "uniform"):
        return np.array([starts_one(rng, int(num_frames), clip_frames, stride, rule)], dtype=np.int64)
    lengths = np.atleast_1d(np.asarray(num_frames, dtype=np.int64))
    m = np.array([num_starts(int(n), clip_frames, stride) for n in lengths], dtype=np.int64)
    u = rng.random((len(lengths), 3))
    gap = np.minimum(np.floor(_inverse_cdf(u[:, 0], rule, power) * m).astype(np.int64), m - 1)
    first = np.minimum(np.floor(u[:, 1] * (m - gap)).astype(np.int64), m - gap - 1)
    starts = np.stack([first, first + gap], axis=1)
    swap = u[:, 2] < 0.5
    starts[swap] = starts[swap][:, ::-1]
    short = m == lengths  # shorter than one clip: two independent uniform starts, as the reference
    starts[short] = np.minimum(np.floor(u[short, :2] * m[short, None]).astype(np.int64), m[short, None] - 1)
    return starts


def starts_one(
    rng: np.random.Generator, num_frames: int, clip_frames: int, stride: int, rule: str = "linear"
) -> tuple[int, int]:
    """``sample_starts`` for one video and the ``linear`` or ``uniform`` rule, in Python scalars: the same
    three uniforms and the same float64 arithmetic (``math.sqrt`` and ``np.sqrt`` both round correctly), so
    the same starts, without a dozen NumPy calls on one-element arrays."""
    if rule not in ("linear", "uniform"):
        raise ValueError(f"starts_one takes the linear or uniform rule, got {rule!r}")
    m = num_starts(num_frames, clip_frames, stride)
    u0, u1, u2 = rng.random(3).tolist()
    if m == num_frames:  # shorter than one clip: two independent uniform starts, as the reference
        return min(math.floor(u0 * m), m - 1), min(math.floor(u1 * m), m - 1)
    x = 1.0 - math.sqrt(1.0 - u0) if rule == "linear" else u0
    gap = min(math.floor(x * m), m - 1)
    first = min(math.floor(u1 * (m - gap)), m - gap - 1)
    return (first + gap, first) if u2 < 0.5 else (first, first + gap)


def clip_indices(start: int, num_frames: int, clip_frames: int, stride: int) -> np.ndarray:
    """Frame indices of one clip, ``(T,)``; videos shorter than the clip loop their frames."""
    return (start + stride * np.arange(clip_frames, dtype=np.int64)) % num_frames


def uniform_start(rng: np.random.Generator, num_frames: int, clip_frames: int, stride: int) -> int:
    """One clip per video (linear-evaluation training): a start uniform over the valid starts."""
    return int(rng.integers(num_starts(num_frames, clip_frames, stride)))


def even_starts(num_frames: int, clip_frames: int, stride: int, num_clips: int) -> np.ndarray:
    """``num_clips`` starts evenly spaced over the valid starts, first and last included (test-time views)."""
    m = num_starts(num_frames, clip_frames, stride)
    if num_clips == 1:
        return np.array([(m - 1) // 2], dtype=np.int64)
    return np.round(np.linspace(0, m - 1, num_clips)).astype(np.int64)
