"""The per-clip augmentation applied in torch: crop/flip/resize, colour jitter, blur, solarize, normalise.

Same parameters (drawn on the host, ``spatial.py``) and same order as the DALI graph in ``pipelines.py``;
used where it is faster. On a 2-core CPU, DALI 2.4's CPU ``fn.resize`` and ``fn.coord_transform`` cost about
10x and 5x what torch's uint8 channels-last bilinear kernel and a 1x1 convolution (oneDNN, channels-last)
cost for the same 112x112 clips, so the CPU loader decodes with DALI and augments here; the GPU loader
augments in DALI. Tests check that both give the same clips and that both agree with the slow NumPy
statement of the reference's colour jitter (``spatial.apply_color_reference``).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .spatial import GRAY


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


def color_normalize(clip: torch.Tensor, params: np.ndarray | None, order: np.ndarray | None, mean: Sequence[float],
                    std: Sequence[float], out: torch.Tensor, blur_sigma: float = 0.0, solarize: bool = False,
                    blur_window: int = 3) -> None:
    """``clip`` (T, 3, S, S) uint8 -> ``out`` (3, T, S, S) (a channels-last view of the batch, any float dtype).

    To [0, 1], the reference's colour jitter and grayscale (``params``, ``order`` from ``spatial.color_params``;
    ``None``: no colour change), a zero-padded Gaussian blur and solarize where asked, a clip to [0, 1], then
    ``(y - mean) / std``. Without colour, blur or solarize and with one mean and std for every channel the
    normalisation is one multiply-add on the uint8 clip."""
    out_tc = out.permute(1, 0, 2, 3)  # (T, 3, S, S), same memory order as ``clip``
    uniform = len(set(mean)) == 1 and len(set(std)) == 1
    if params is None and uniform and blur_sigma <= 0 and not solarize:
        out_tc.copy_(clip.to(torch.float32).mul_(1.0 / (255.0 * std[0])).sub_(mean[0] / std[0]))
        return
    y = clip.to(torch.float32).mul_(1.0 / 255.0)
    if params is not None:
        y = color_jitter(y, params, order)
    if blur_sigma > 0:
        y = _blur(y, blur_sigma, blur_window)
    if solarize:
        y = torch.where(y >= 0.5, 1.0 - y, y)
    y = y.clamp_(0.0, 1.0)
    std_t = torch.tensor(std, dtype=torch.float32, device=y.device).view(1, 3, 1, 1)
    mean_t = torch.tensor(mean, dtype=torch.float32, device=y.device).view(1, 3, 1, 1)
    torch.addcmul(-mean_t / std_t, y, 1.0 / std_t, out=out_tc)


def color_jitter(x: torch.Tensor, params: np.ndarray, order: np.ndarray) -> torch.Tensor:
    """The reference's colour jitter and grayscale on one clip ``x`` (T, 3, H, W) float in [0, 1]: with jitter on
    (``params[0]``), brightness, contrast (around the clip's per-channel mean), HSV saturation and HSV hue in
    ``order``, each followed by a clip to [0, 1]; then grayscale (``params[5]``). Saturation and hue use the
    closed forms of ``pipelines._saturation`` / ``_hue`` (no HSV round trip); ``spatial.apply_color_reference``
    is the slow statement they are tested against."""
    on, fb, fc, fs, dh, gray = (float(v) for v in params)
    if on > 0.5:
        x = x.contiguous()  # channel planes: the per-pixel channel max/min and the elementwise ops run 2-3x faster
        for op in np.asarray(order).tolist():
            if op == 0:
                x = x * fb
            elif op == 1:
                m = x.mean((0, 2, 3), keepdim=True)  # (1, 3, 1, 1)
                x = (x - m) * fc + m
            elif op == 2:
                v, mn = x.amax(1, keepdim=True), x.amin(1, keepdim=True)  # (T, 1, H, W)
                x = v - (v - x) * torch.clamp(v / (v - mn).clamp_min(1e-12), max=fs)
            else:
                x = _hue(x, dh)
            x = x.clamp(0.0, 1.0)
    if gray > 0.5:
        w = torch.tensor(GRAY, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        x = (x * w).sum(1, keepdim=True).expand_as(x).contiguous(memory_format=torch.channels_last)
    return x


def _hue(x: torch.Tensor, delta: float) -> torch.Tensor:
    """HSV hue plus ``delta`` turns on (T, 3, H, W) (the closed form of ``pipelines._hue``)."""
    r, g, b = x[:, 0:1], x[:, 1:2], x[:, 2:3]
    v, mn = x.amax(1, keepdim=True), x.amin(1, keepdim=True)
    chroma = v - mn
    safe = chroma.clamp_min(1e-12)
    h6 = torch.where(r == v, (g - b) / safe, torch.where(g == v, (b - r) / safe + 2.0, (r - g) / safe + 4.0))
    h6 = h6 + 6.0 * delta
    n = torch.tensor([5.0, 3.0, 1.0], dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    k = torch.remainder(n + h6, 6.0)
    return v - chroma * torch.minimum(k, 4.0 - k).clamp(0.0, 1.0)


def _blur(y: torch.Tensor, sigma: float, window: int) -> torch.Tensor:
    """Separable Gaussian blur of every frame of ``y`` (T, 3, H, W) float: ``window`` taps, zero padding (the
    reference's 'SAME' depthwise convolution)."""
    r = window // 2
    taps = torch.arange(-r, r + 1, dtype=torch.float32, device=y.device)
    k = torch.exp(-0.5 * (taps / float(sigma)) ** 2)
    k = (k / k.sum()).view(1, 1, 1, -1).expand(3, 1, 1, -1)
    frames = F.conv2d(y, k, padding=(0, r), groups=3)
    return F.conv2d(frames, k.transpose(2, 3), padding=(r, 0), groups=3)


__all__ = ["color_jitter", "color_normalize", "crop_resize"]
