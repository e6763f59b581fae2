"""The per-clip augmentation applied in torch: crop/flip/resize, colour jitter, blur, solarize, normalise.

Same parameters (drawn on the host, ``spatial.py``) and same order as the DALI graph in ``pipelines.py``;
used where it is faster. On a 2-core CPU, DALI 2.4's CPU ``fn.resize`` and ``fn.coord_transform`` cost about
10x and 5x what torch's uint8 channels-last bilinear kernel and a 1x1 convolution (oneDNN, channels-last)
cost for the same 112x112 clips, so the CPU loader decodes with DALI and augments here; the GPU loader
augments in DALI. Tests check that both give the same clips and that both agree with the slow NumPy
statement of the reference's colour jitter (``spatial.apply_color_reference``).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .spatial import GRAY


def crop_box(roi_start: np.ndarray, roi_end: np.ndarray) -> tuple[int, int, int, int, bool]:
    """The integer crop of a view's ROI (``roi_start``, ``roi_end``: (y, x) floats, the x bounds swapped for a
    flipped view): rows ``y0:y1`` and columns ``x0:x1`` (each bound truncated), and whether it is flipped."""
    (y0, x0), (y1, x1) = roi_start.tolist(), roi_end.tolist()
    return int(y0), int(min(x0, x1)), int(y1), int(max(x0, x1)), x0 > x1


def crop_resize(
    video: torch.Tensor, order: np.ndarray, roi_start: np.ndarray, roi_end: np.ndarray, size: int
) -> torch.Tensor:
    """One clip: frames ``order`` of ``video`` (F, H, W, 3) uint8, cropped to the integer ROI (x bounds
    swapped = flipped), bilinearly resized (no antialiasing, half-pixel centres, as ``fn.resize``). Returns
    ``(T, 3, S, S)`` uint8 with channels-last strides (the memory of a ``(T, S, S, 3)`` clip)."""
    y0, x0, y1, x1, flip = crop_box(roi_start, roi_end)
    idx = torch.from_numpy(np.asarray(order, np.int64)).to(video.device)
    clip = video[:, y0:y1, x0:x1].index_select(0, idx)  # (T, h, w, 3): copies the crop only
    clip = clip.permute(0, 3, 1, 2)  # (T, 3, h, w), channels-last strides: torch's fast uint8 path
    if clip.shape[-2:] != (size, size):
        if clip.is_cuda:  # CUDA has no uint8 bilinear kernel
            clip = F.interpolate(clip.float(), size=(size, size), mode="bilinear", align_corners=False)
            clip = clip.round_().clamp_(0, 255).to(torch.uint8)
        else:
            clip = F.interpolate(
                clip, size=(size, size), mode="bilinear", align_corners=False, antialias=False
            )
    return clip.flip(-1) if flip else clip


def color_normalize(
    clip: torch.Tensor,
    params: np.ndarray | None,
    order: np.ndarray | None,
    mean: Sequence[float],
    std: Sequence[float],
    out: torch.Tensor,
    blur_sigma: float = 0.0,
    solarize: bool = False,
    blur_window: int = 3,
) -> None:
    """``clip`` (T, 3, S, S) uint8 -> ``out`` (3, T, S, S) (a channels-last view of the batch, any float
    dtype).

    To [0, 1], the reference's colour jitter and grayscale (``params``, ``order`` from
    ``recipe.color_params``;
    ``None``: no colour change), a zero-padded Gaussian blur and solarize where asked, a clip to [0, 1], then
    ``(y - mean) / std``. Without colour, blur or solarize and with one mean and std for every channel the
    normalisation is one multiply-add on the uint8 clip."""
    out_tc = out.permute(1, 0, 2, 3)  # (T, 3, S, S), same memory order as ``clip``
    uniform = len(set(mean)) == 1 and len(set(std)) == 1
    if params is None and uniform and blur_sigma <= 0 and not solarize:
        out_tc.copy_(clip.to(torch.float32).mul_(1.0 / (255.0 * std[0])).sub_(mean[0] / std[0]))
        return
    # (T, 3, S, S) channel planes: the per-pixel channel max/min and the plane ops run several times faster
    y = _scratch("clip", clip.shape, torch.float32, clip.device).copy_(clip).mul_(1.0 / 255.0)
    if params is not None:
        y = _color_jitter_(y, params, order)
    if blur_sigma > 0:
        y = _blur(y, blur_sigma, blur_window)
    if (
        solarize
    ):  # 1 - y from 0.5 on: y - max(2y - 1, 0), exact, and several times cheaper than torch.where here
        y = y.sub_(
            torch.mul(y, 2.0, out=_scratch("solarize", y.shape, y.dtype, y.device)).sub_(1.0).clamp_(min=0.0)
        )
    y = y.clamp_(0.0, 1.0)
    std_t = torch.tensor(std, dtype=torch.float32, device=y.device).view(1, 3, 1, 1)
    mean_t = torch.tensor(mean, dtype=torch.float32, device=y.device).view(1, 3, 1, 1)
    torch.addcmul(-mean_t / std_t, y, 1.0 / std_t, out=out_tc)


def color_jitter(x: torch.Tensor, params: np.ndarray, order: np.ndarray) -> torch.Tensor:
    """The reference's colour jitter and grayscale on one clip ``x`` (T, 3, H, W) float in [0, 1]: with jitter
    on (``params[0]``), brightness, contrast (around the clip's per-channel mean), HSV saturation and HSV hue
    in ``order``, each followed by a clip to [0, 1]; then grayscale (``params[5]``). Returns a new (T, 3, H,
    W) tensor with contiguous channel planes; ``x`` is left alone. Saturation and hue use the closed forms of
    ``recipe_graph._saturation`` / ``_hue`` (no HSV round trip); ``spatial.apply_color_reference`` is the slow
    statement they are tested against."""
    return _color_jitter_(torch.empty(x.shape, dtype=x.dtype, device=x.device).copy_(x), params, order)


_SCRATCH = threading.local()


def _scratch(name: str, shape: Sequence[int], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A work tensor of ``shape`` kept per thread and name between calls (its contents are garbage).

    On the CPU a fresh tensor of a clip's size is fresh pages from the kernel: the page faults cost about as
    much as the arithmetic on it. The buffer grows to the largest shape asked for (a few clips' worth per
    thread)."""
    cache = _SCRATCH.__dict__
    n = math.prod(shape)
    buf = cache.get(name)
    if buf is None or buf.numel() < n or buf.dtype != dtype or buf.device != device:
        buf = cache[name] = torch.empty(n, dtype=dtype, device=device)
    return buf[:n].view(shape)


def _planes(x: torch.Tensor, n: int) -> list[torch.Tensor]:
    """``n`` scratch planes (T, 1, H, W) for the clip ``x`` (T, 3, H, W)."""
    t, _, h, w = x.shape
    return list(_scratch("planes", (n, t, 1, h, w), x.dtype, x.device).unbind(0))


def _color_jitter_(x: torch.Tensor, params: np.ndarray, order: np.ndarray) -> torch.Tensor:
    """``color_jitter`` in place on contiguous channel planes ``x`` (T, 3, H, W); returns ``x``.

    Every op is in place or writes (T, 1, H, W) planes: full-size temporaries and boolean masks (torch.where,
    comparisons) cost several times the arithmetic on one CPU thread. Saturation and hue next to each other in
    ``order`` run as one op: both keep the HSV value, hue keeps the chroma and saturation the hue, so the pair
    is the hue rotation with the chroma scaled (the clip between them changes nothing: both stay in [0,
    1])."""
    on, fb, fc, fs, dh, gray = (float(v) for v in params)
    if on > 0.5:
        ops = np.asarray(order).tolist()
        i = 0
        while i < len(ops):
            op = ops[i]
            if op == 0:
                x.mul_(fb)
            elif op == 1:  # (x - m) * f + m = x * f + m * (1 - f), m the per-channel mean (1, 3, 1, 1)
                m = x.mean((0, 2, 3), keepdim=True)
                x.mul_(fc).add_(m.mul_(1.0 - fc))
            else:
                pair = i + 1 < len(ops) and {op, ops[i + 1]} == {2, 3}
                for part in x.split(_frames_per_part(x)):  # a few frames at a time: the planes stay in cache
                    if pair:
                        _hue_(part, dh, fs)
                    elif op == 2:
                        _saturation_(part, fs)
                    else:
                        _hue_(part, dh)
                i += pair
            x.clamp_(0.0, 1.0)
            i += 1
    if gray > 0.5:
        w = GRAY.tolist()
        (g,) = _planes(x, 1)
        torch.mul(x[:, 0:1], w[0], out=g).add_(x[:, 1:2], alpha=w[1]).add_(
            x[:, 2:3], alpha=w[2]
        )  # (T, 1, H, W)
        x.copy_(g.expand_as(x))
    return x


def _frames_per_part(x: torch.Tensor) -> int:
    """Frames of ``x`` (T, 3, H, W) per part for the per-pixel HSV ops: about 64k pixels, whose planes fit in
    a CPU core's L2 cache (about 15% faster than whole clips at 16 x 112 x 112, one thread, measured)."""
    return max(1, (1 << 16) // (x.shape[2] * x.shape[3])) if x.device.type == "cpu" else x.shape[0]


def _saturation_(x: torch.Tensor, factor: float) -> None:
    """HSV saturation times ``factor`` (capped at 1) in place on (T, 3, H, W) planes, in closed form: value
    ``v`` and hue stay, each channel moves away from ``v`` by ``k = min(v / chroma, factor)``:
    ``v - (v - x) * k``, computed as ``x + (1 - k) * (v - x)`` (one lerp)."""
    v, k = _planes(x, 2)  # (T, 1, H, W)
    torch.amax(x, 1, keepdim=True, out=v)
    torch.amin(x, 1, keepdim=True, out=k)
    torch.sub(v, k, out=k).clamp_(
        min=1e-12
    )  # chroma (clamp_min_ and clamp_max_ run several times slower than clamp_)
    torch.div(v, k, out=k).clamp_(max=factor).neg_().add_(1.0)  # 1 - k
    x.lerp_(v.expand_as(x), k.expand_as(x))


def _hue_(x: torch.Tensor, delta: float, saturation: float | None = None) -> None:
    """HSV hue plus ``delta`` turns in place on (T, 3, H, W) planes, in closed form
    (``recipe_graph._hue``); with ``saturation``, the HSV saturation times it (capped at 1) as well: the
    chroma becomes ``min(chroma * f, v)``.

    Hue in sixths ``h6`` (-1 to 5) from the channel that holds the max (ties: R, then G, then B, as TF), then
    channel ``c`` is ``v - chroma * clamp(min(k, 4 - k), 0, 1)``, ``k = (n_c + h6 + 6 delta) mod 6`` with
    ``n`` = (5, 3, 1). The masks are 0/1 floats (``sign(max - channel)``) and select by ``lerp`` (exact with
    weights 0 and 1); the modulo is folded into the shape: with ``s_c = (n_c + 6 delta) mod 6`` on the host,
    ``k' = h6 + s_c`` lies in [-1, 11) and its distance to the nearest of 2 and 8 (2 + 6Z) is ``|3 - |k' -
    5||``; ``clamp(2 - that, 0, 1)`` is the same triangle as ``clamp(min(k, 4 - k), 0, 1)``."""
    r, g, b = x[:, 0:1], x[:, 1:2], x[:, 2:3]  # (T, 1, H, W) views
    v, chroma, not_r, not_g, h6, t = _planes(x, 6)  # (T, 1, H, W) each
    torch.amax(x, 1, keepdim=True, out=v)
    torch.amin(x, 1, keepdim=True, out=chroma)
    torch.sub(v, chroma, out=chroma)
    torch.sub(v, r, out=not_r).sign_()  # 0 where R holds the max, else 1
    torch.sub(v, g, out=not_g).sign_()
    torch.sub(b, r, out=h6).lerp_(torch.sub(r, g, out=t), not_g)  # G max: b - r; else r - g (B max)
    h6, t = torch.sub(g, b, out=t).lerp_(h6, not_r), h6  # R max: g - b
    sector = not_g.add_(1.0).mul_(not_r)  # 0 (R max), 1 (G), 2 (B)
    h6.div_(torch.clamp(chroma, min=1e-12, out=t)).add_(sector, alpha=2.0)
    if saturation is not None:
        torch.minimum(chroma.mul_(saturation), v, out=chroma)
    s = [(n + 6.0 * delta) % 6.0 - 5.0 for n in (5.0, 3.0, 1.0)]  # host scalars in [-5, 1]
    torch.add(h6, torch.tensor(s, dtype=x.dtype, device=x.device).view(1, 3, 1, 1), out=x)  # k' - 5
    x.abs_().sub_(3.0).abs_().sub_(2.0).clamp_(-1.0, 0.0)  # -clamp(2 - |3 - |k' - 5||, 0, 1)
    x.mul_(chroma).add_(v)


def _blur(y: torch.Tensor, sigma: float, window: int) -> torch.Tensor:
    """Separable Gaussian blur of every frame of ``y`` (T, 3, H, W) float: ``window`` taps, zero padding (the
    reference's 'SAME' depthwise convolution)."""
    r = window // 2
    taps = torch.arange(-r, r + 1, dtype=torch.float32, device=y.device)
    k = torch.exp(-0.5 * (taps / float(sigma)) ** 2)
    k = (k / k.sum()).view(1, 1, 1, -1).expand(3, 1, 1, -1)
    frames = F.conv2d(y, k, padding=(0, r), groups=3)
    return F.conv2d(frames, k.transpose(2, 3), padding=(r, 0), groups=3)


__all__ = ["color_jitter", "color_normalize", "crop_box", "crop_resize"]
