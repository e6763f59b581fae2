"""Per-clip spatial augmentation parameters drawn on the host (NumPy, no DALI), one draw per clip.

Drawing on the host makes every clip's augmentation a deterministic function of (seed, epoch, video), lets
the same numbers drive the CPU and GPU pipelines and any baseline loader, and gives the tests a NumPy
statement of each rule. The DALI graph only applies them: a crop box (flip = swapped x bounds) to
``fn.resize`` and a 3x3 colour matrix plus offset to ``fn.coord_transform``, identical for every frame.

CVRL (Qian et al. 2021, Appendix A) follows SimCLR: random resized crop (area 0.3-1, aspect 0.5-2), flip
p 0.5, colour jitter p 0.8 (brightness, contrast, saturation 0.8, hue 0.2, in random order), grayscale
p 0.2, and optionally Gaussian blur (sigma 0.1-2) and solarize. Colour jitter here is composed as one affine
colour map: brightness scales, contrast scales around mid-grey 0.5 (as DALI's ``brightness_contrast``; the
TF reference uses the frame mean), saturation blends with the luma grey, hue rotates chroma in YIQ. The
composition is clipped once at the end (by the uint8 output), not after every step.
"""
from __future__ import annotations

import math

import numpy as np

LUMA = np.array([0.299, 0.587, 0.114])
_RGB2YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_YIQ2RGB = np.linalg.inv(_RGB2YIQ)


def random_resized_crop(
    rng: np.random.Generator,
    height: int,
    width: int,
    area: tuple[float, float] = (0.3, 1.0),
    aspect: tuple[float, float] = (0.5, 2.0),
    attempts: int = 10,
) -> np.ndarray:
    """Crop box ``[y0, x0, y1, x1]`` in whole pixels (float32): area fraction uniform, aspect log-uniform,
    position uniform (as torchvision's RandomResizedCrop); the whole frame if no draw fits in ``attempts``."""
    total = float(height * width)
    log_lo, log_hi = math.log(aspect[0]), math.log(aspect[1])
    for _ in range(attempts):
        a = total * rng.uniform(area[0], area[1])
        r = math.exp(rng.uniform(log_lo, log_hi))
        w = int(round(math.sqrt(a * r)))
        h = int(round(math.sqrt(a / r)))
        if 0 < w <= width and 0 < h <= height:
            y0 = int(rng.integers(0, height - h + 1))
            x0 = int(rng.integers(0, width - w + 1))
            return np.array([y0, x0, y0 + h, x0 + w], np.float32)
    return np.array([0, 0, height, width], np.float32)


def crop_roi(box: np.ndarray, flip: bool) -> tuple[np.ndarray, np.ndarray]:
    """``fn.resize`` ROI ``(start, end)`` in (y, x) order; a horizontal flip swaps the x bounds."""
    y0, x0, y1, x1 = (float(v) for v in box)
    if flip:
        x0, x1 = x1, x0
    return np.array([y0, x0], np.float32), np.array([y1, x1], np.float32)


def _affine(m: np.ndarray, t: np.ndarray | float = 0.0) -> np.ndarray:
    a = np.eye(4)
    a[:3, :3] = m
    a[:3, 3] = t
    return a


def brightness(f: float) -> np.ndarray:
    return _affine(np.eye(3) * f)


def contrast(f: float) -> np.ndarray:
    return _affine(np.eye(3) * f, 0.5 * (1.0 - f))


def saturation(f: float) -> np.ndarray:
    return _affine(f * np.eye(3) + (1.0 - f) * np.outer(np.ones(3), LUMA))


def hue(delta: float) -> np.ndarray:
    """Rotate chroma by ``delta`` of a full turn (``tf.image.adjust_hue``'s unit) in YIQ space."""
    c, s = math.cos(2 * math.pi * delta), math.sin(2 * math.pi * delta)
    rot = np.array([[1, 0, 0], [0, c, -s], [0, s, c]])
    return _affine(_YIQ2RGB @ rot @ _RGB2YIQ)


def grayscale() -> np.ndarray:
    return _affine(np.outer(np.ones(3), LUMA))


def color_transform(
    rng: np.random.Generator,
    jitter_prob: float = 0.8,
    strength: tuple[float, float, float, float] = (0.8, 0.8, 0.8, 0.2),
    grayscale_prob: float = 0.2,
) -> np.ndarray:
    """One clip's colour map as a 4x4 affine matrix on RGB in [0, 1] (``y = A x + t``)."""
    b, c, s, h = strength
    out = np.eye(4)
    u = rng.random(6)
    if u[0] < jitter_prob:
        ops = [
            brightness(rng.uniform(max(0.0, 1 - b), 1 + b)),
            contrast(rng.uniform(max(0.0, 1 - c), 1 + c)),
            saturation(rng.uniform(max(0.0, 1 - s), 1 + s)),
            hue(rng.uniform(-h, h)),
        ]
        for i in rng.permutation(4):  # random order, as the reference color_jitter_rand
            out = ops[i] @ out
    if u[1] < grayscale_prob:
        out = grayscale() @ out
    return out


def pixel_affine(affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(M (3,3), T (3,))`` float32 for ``fn.coord_transform`` on 0..255 pixels: ``y = M x + T``."""
    return affine[:3, :3].astype(np.float32), (255.0 * affine[:3, 3]).astype(np.float32)


def apply_color_reference(rgb: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """NumPy reference: the colour map on uint8 pixels ``(..., 3)``, rounded and clipped like a uint8 output."""
    m, t = pixel_affine(affine)
    y = np.asarray(rgb, np.float64) @ m.T.astype(np.float64) + t
    return np.clip(np.round(y), 0, 255).astype(np.uint8)


def blur_sigma(rng: np.random.Generator, prob: float, lo: float = 0.1, hi: float = 2.0) -> float:
    """Gaussian blur sigma (SimCLR: uniform 0.1-2.0) with probability ``prob``, else 0 (no blur)."""
    u, s = rng.random(2)
    return float(lo + (hi - lo) * s) if u < prob else 0.0


def blur_window(size: int) -> int:
    """SimCLR's blur kernel: 10% of the image side, odd."""
    k = max(3, size // 10)
    return k if k % 2 else k + 1


def eval_crop_anchors(height: int, width: int, num_crops: int) -> np.ndarray:
    """``(num_crops, 2)`` relative (y, x) crop anchors: evenly along the long side, centred on the short side."""
    along = np.linspace(0.0, 1.0, num_crops) if num_crops > 1 else np.array([0.5])
    centre = np.full(num_crops, 0.5)
    pos = np.stack([centre, along], 1) if width >= height else np.stack([along, centre], 1)
    return pos.astype(np.float32)
