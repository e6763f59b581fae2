"""The CVRL per-view augmentation recipe: what is drawn for each view, in which order, with what probability.

One draw per clip, the same for every frame of it, each view drawn independently, on the host from the
video's own generator (``default_rng([seed, epoch, video, purpose])``), so that a clip's augmentation depends
only on (seed, epoch, video) and the same numbers drive the DALI graph (``recipe_graph``), the torch twin
(``torch_augment``) and any baseline. The rules are the reference's (TF Model Garden
``official/projects/video_ssl``; Qian et al. 2021, Appendix A): the crop of ``sample_distorted_bounding_box``
(``spatial.random_resized_crop``), flip p 0.5, colour jitter p 0.8 (brightness, contrast, saturation 0.8,
hue 0.2, in a random order), grayscale p 0.2, Gaussian blur (sigma 0.1-2, zero padding) and solarize with
per-view probabilities (the reference: blur 1.0 / 0.1, solarize 0 / 0.2).
"""

from __future__ import annotations

import numpy as np

GRAY = np.array([0.2989, 0.5870, 0.1140])  # tf.image.rgb_to_grayscale, the reference's grayscale
JITTER_OPS = ("brightness", "contrast", "saturation", "hue")


def color_params(
    rng: np.random.Generator,
    jitter_prob: float = 0.8,
    strength: tuple[float, float, float, float] = (0.8, 0.8, 0.8, 0.2),
    grayscale_prob: float = 0.2,
) -> tuple[np.ndarray, np.ndarray]:
    """One clip's colour draw, as the reference's ``random_color_jitter_3d``: ``params`` (6,) float32
    ``[jitter on, brightness factor, contrast factor, saturation factor, hue delta, grayscale on]`` and
    ``order`` (4,) int32, the ``JITTER_OPS`` indices in the order they apply. Factors are uniform in
    ``[max(0, 1 - s), 1 + s]``, the hue delta in ``[-h, h]`` (a fraction of a full turn); with jitter off
    the factors are 1 and the delta 0 (identity)."""
    b, c, s, h = strength
    u = rng.random(6).tolist()  # Python floats: the same float64 arithmetic without NumPy scalar calls
    on = u[0] < jitter_prob
    f = [
        max(0.0, 1 - b) + (1 + b - max(0.0, 1 - b)) * u[2],
        max(0.0, 1 - c) + (1 + c - max(0.0, 1 - c)) * u[3],
        max(0.0, 1 - s) + (1 + s - max(0.0, 1 - s)) * u[4],
        -h + 2 * h * u[5],
    ]
    order = rng.permutation(4).astype(np.int32)
    if not on:
        f = [1.0, 1.0, 1.0, 0.0]
    params = np.array([float(on), *f, float(u[1] < grayscale_prob)], np.float32)
    return params, order


def blur_sigma(rng: np.random.Generator, prob: float, lo: float = 0.1, hi: float = 2.0) -> float:
    """Gaussian blur sigma (SimCLR: uniform 0.1-2.0) with probability ``prob``, else 0 (no blur)."""
    u, s = rng.random(2).tolist()
    return float(lo + (hi - lo) * s) if u < prob else 0.0


def blur_window(size: int) -> int:
    """The reference's blur kernel: ``size // 10`` taps rounded up to odd (23 at 224, 11 at 112)."""
    return 2 * ((size // 10) // 2) + 1


def check_view_probs(name: str, probs: list[float]) -> None:
    """Raise ``ValueError`` naming the key unless ``probs`` is two probabilities (view 1, view 2)."""
    if len(probs) != 2 or not all(0.0 <= float(p) <= 1.0 for p in probs):
        raise ValueError(f"data.{name} must be two probabilities in [0, 1] (view 1, view 2), got {probs!r}")
