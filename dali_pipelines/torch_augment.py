"""The per-clip augmentation applied in torch: crop/flip/resize, colour matrix, blur, solarize, normalise.

Same parameters (drawn on the host, ``spatial.py``) and same order as the DALI graph in ``pipelines.py``;
used where it is faster. On a 2-core CPU, DALI 2.4's CPU ``fn.resize`` and ``fn.coord_transform`` cost about
10x and 5x what torch's uint8 channels-last bilinear kernel and a 1x1 convolution (oneDNN, channels-last)
cost for the same 112x112 clips, so the CPU loader decodes with DALI and augments here; the GPU loader
augments in DALI. A test checks that both give the same clips.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F


def crop_resize(video: torch.Tensor, order: np.ndarray, roi_start: np.ndarray, roi_end: np.ndarray,
                size: int) -> torch.Tensor:
    """One clip: frames ``order`` of ``video`` (F, H, W, 3) uint8, cropped to the integer ROI (x bounds swapped
    = flipped), bilinearly resized (no antialiasing, half-pixel centres, as ``fn.resize``).
    Returns ``(T, 3, S, S)`` uint8 with channels-last strides (the memory of a ``(T, S, S, 3)`` clip)."""
    (y0, x0), (y1, x1) = roi_start.tolist(), roi_end.tolist()
    flip = x0 > x1
    x0, x1 = min(x0, x1), max(x0, x1)
    idx = torch.from_numpy(np.asarray(order, np.int64)).to(video.device)
    clip = video[:, int(y0) : int(y1), int(x0) : int(x1)].index_select(0, idx)  # (T, h, w, 3): copies the crop only
    clip = clip.permute(0, 3, 1, 2)  # (T, 3, h, w), channels-last strides: torch's fast uint8 path
    if clip.shape[-2:] != (size, size):
        if clip.is_cuda:  # CUDA has no uint8 bilinear kernel
            clip = F.interpolate(clip.float(), size=(size, size), mode="bilinear", align_corners=False)
            clip = clip.round_().clamp_(0, 255).to(torch.uint8)
        else:
            clip = F.interpolate(clip, size=(size, size), mode="bilinear", align_corners=False, antialias=False)
    return clip.flip(-1) if flip else clip


def color_normalize(clip: torch.Tensor, m: torch.Tensor | None, t: torch.Tensor | None, mean: Sequence[float],
                    std: Sequence[float], out: torch.Tensor, blur_sigma: float = 0.0, solarize: bool = False,
                    blur_window: int = 3) -> None:
    """``clip`` (T, 3, S, S) uint8 -> ``out`` (3, T, S, S) (a channels-last view of the batch, any float dtype).

    ``y = clip(M x + t, 0, 255)`` (``m`` (3, 3), ``t`` (3,), pixel units; ``None``: no colour change), then a
    Gaussian blur and solarize where asked, then ``(y / 255 - mean) / std``. The colour map is a 1x1
    convolution on channels-last frames; with the same mean and std for every channel the normalisation folds
    into it and its clip bounds, so the clip costs one conversion, one convolution, one clamp and one copy."""
    x = clip.to(torch.float32)
    if m is None:
        m, t = torch.eye(3), torch.zeros(3)
    w = m.to(x.device, torch.float32).view(3, 3, 1, 1)
    b = t.to(x.device, torch.float32).view(3)
    out_tc = out.permute(1, 0, 2, 3)  # (T, 3, S, S), same memory order as ``x``
    uniform = len(set(mean)) == 1 and len(set(std)) == 1
    if uniform and blur_sigma <= 0 and not solarize:
        s, mu = 1.0 / (255.0 * std[0]), mean[0] / std[0]
        y = F.conv2d(x, w * s, b * s - mu).clamp_(-mu, 1.0 / std[0] - mu)
        out_tc.copy_(y)
        return
    y = F.conv2d(x, w, b).clamp_(0.0, 255.0)
    if blur_sigma > 0:
        y = _blur(y, blur_sigma, blur_window)
    if solarize:
        y = torch.where(y >= 128.0, 255.0 - y, y)
    std_t = torch.tensor(std, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    mean_t = torch.tensor(mean, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    torch.addcmul(-mean_t / std_t, y, 1.0 / (255.0 * std_t), out=out_tc)


def _blur(y: torch.Tensor, sigma: float, window: int) -> torch.Tensor:
    """Separable Gaussian blur of every frame of ``y`` (T, 3, H, W) float: ``window`` taps, reflect-101 borders
    (as ``fn.gaussian_blur``)."""
    r = window // 2
    taps = torch.arange(-r, r + 1, dtype=torch.float32, device=y.device)
    k = torch.exp(-0.5 * (taps / float(sigma)) ** 2)
    k = (k / k.sum()).view(1, 1, 1, -1).expand(3, 1, 1, -1)
    frames = F.conv2d(F.pad(y, (r, r, 0, 0), mode="reflect"), k, groups=3)
    return F.conv2d(F.pad(frames, (0, 0, r, r), mode="reflect"), k.transpose(2, 3), groups=3)


__all__ = ["color_normalize", "crop_resize"]
