"""The per-clip augmentation applied in torch: crop/flip/resize, colour matrix, blur, solarize, normalise.

Same parameters (drawn on the host, ``spatial.py``) and same order as the DALI graph in ``pipelines.py``;
used where it is faster. On a 2-core CPU, DALI 2.4's CPU ``fn.resize`` and ``fn.coord_transform`` cost about
10x and 5x what torch's uint8 channels-last bilinear kernel and one batched GEMM on planar pixels cost for the
same 112x112 clips, so the CPU loader decodes with DALI and augments here; the GPU loader augments in DALI.
A test checks that both give the same clips.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F


def crop_resize(video: torch.Tensor, order: np.ndarray, roi_start: np.ndarray, roi_end: np.ndarray, size: int,
                out: torch.Tensor) -> None:
    """One clip: frames ``order`` of ``video`` (F, H, W, 3) uint8, cropped to the integer ROI (x bounds swapped
    = flipped), bilinearly resized (no antialiasing, half-pixel centres, as ``fn.resize``) into ``out`` (T, S, S, 3)."""
    (y0, x0), (y1, x1) = roi_start.tolist(), roi_end.tolist()
    flip = x0 > x1
    x0, x1 = min(x0, x1), max(x0, x1)
    idx = torch.from_numpy(np.asarray(order, np.int64))
    clip = video[:, int(y0) : int(y1), int(x0) : int(x1)].index_select(0, idx)  # (T, h, w, 3), copies the crop only
    clip = clip.permute(0, 3, 1, 2)  # (T, 3, h, w) with channels-last strides: torch's fast uint8 path
    if clip.shape[-2:] != (size, size):
        if clip.is_cuda:  # CUDA has no uint8 bilinear kernel
            clip = F.interpolate(clip.float(), size=(size, size), mode="bilinear", align_corners=False)
            clip = clip.round_().clamp_(0, 255).to(torch.uint8)
        else:
            clip = F.interpolate(clip, size=(size, size), mode="bilinear", align_corners=False, antialias=False)
    if flip:
        clip = clip.flip(-1)
    out.copy_(clip.permute(0, 2, 3, 1))


def color_normalize(x: torch.Tensor, m: torch.Tensor, t: torch.Tensor, mean: Sequence[float], std: Sequence[float],
                    dtype: torch.dtype, blur_sigma: torch.Tensor | None = None, solarize: torch.Tensor | None = None,
                    blur_window: int = 0) -> torch.Tensor:
    """uint8 clips ``(B, T, S, S, 3)`` -> ``(B, 3, T, S, S)`` channels_last_3d ``dtype``.

    ``y = clip(M x + t, 0, 255)`` per clip (``m`` (B, 3, 3), ``t`` (B, 3), pixel units), then blur and solarize
    where asked, then ``(y / 255 - mean) / std``. The GEMM runs on planar pixels (vectorised along pixels, 4x
    cheaper than on interleaved RGB); the normalising pass writes the channels-last layout."""
    b, tt, h, w, _ = x.shape
    planar = x.reshape(b, -1, 3).transpose(1, 2).contiguous().to(torch.float32)  # (B, 3, P): GEMM-friendly
    m = m.to(x.device, torch.float32)
    t = t.to(x.device, torch.float32).view(b, 3, 1)
    y = torch.baddbmm(t, m, planar).clamp_(0.0, 255.0)  # (B, 3, P) colour-mapped pixels
    if blur_sigma is not None and bool((blur_sigma > 0).any()):
        y = _blur(y.view(b, 3, tt, h, w), blur_sigma.to(x.device), blur_window).view(b, 3, -1)
    if solarize is not None and bool(solarize.any()):
        sol = solarize.to(x.device).view(b, 1, 1)
        y = torch.where(sol & (y >= 128.0), 255.0 - y, y)
    std_t = torch.tensor(std, dtype=torch.float32, device=x.device).view(1, 3, 1, 1, 1)
    mean_t = torch.tensor(mean, dtype=torch.float32, device=x.device).view(1, 3, 1, 1, 1)
    out = torch.empty((b, 3, tt, h, w), dtype=dtype, device=x.device, memory_format=torch.channels_last_3d)
    # normalise, change layout and dtype in one pass
    return torch.addcmul(-mean_t / std_t, y.view(b, 3, tt, h, w), 1.0 / (255.0 * std_t), out=out) \
        if dtype == torch.float32 else out.copy_(torch.addcmul(-mean_t / std_t, y.view(b, 3, tt, h, w),
                                                                 1.0 / (255.0 * std_t)))


def _blur(y: torch.Tensor, sigma: torch.Tensor, window: int) -> torch.Tensor:
    """Separable Gaussian blur of each frame, ``window`` taps, reflect-101 borders (as ``fn.gaussian_blur``);
    ``y`` (B, 3, T, H, W) float; clips with ``sigma == 0`` untouched."""
    out = y.clone()
    r = window // 2
    taps = torch.arange(-r, r + 1, dtype=torch.float32, device=y.device)
    for i in torch.nonzero(sigma > 0).flatten().tolist():
        k = torch.exp(-0.5 * (taps / float(sigma[i])) ** 2)
        k = k / k.sum()
        frames = y[i].permute(1, 0, 2, 3).reshape(-1, 1, *y.shape[-2:])  # (T*3, 1, H, W)
        frames = F.conv2d(F.pad(frames, (r, r, 0, 0), mode="reflect"), k.view(1, 1, 1, -1))
        frames = F.conv2d(F.pad(frames, (0, 0, r, r), mode="reflect"), k.view(1, 1, -1, 1))
        out[i] = frames.view(y.shape[2], 3, *y.shape[-2:]).permute(1, 0, 2, 3)
    return out


__all__ = ["color_normalize", "crop_resize"]
