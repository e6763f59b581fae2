"""DALI pipeline definitions: CVRL pretraining (two views), linear-evaluation training, test views.

One definition per pipeline with a ``device`` argument: ``'cpu'`` decodes with ``fn.decoders.video`` on the
CPU and augments on the CPU; ``'gpu'`` decodes on ``'mixed'`` (NVDEC) and augments on the GPU. The host
sources (``host.py``) hand each sample a trimmed stream and its augmentation parameters; the graph:

    trimmed stream ─decoders.video(frames=union of the clips' frames)─> (F, H, W, 3) uint8, one forward pass
      └ per view: sequence_rearrange(view's frames) ─> resize(ROI = crop box, flip = swapped x) to S x S
                  ─> coord_transform(3x3 colour matrix + offset) ─> [blur] ─> [solarize] ─> (T, S, S, 3) uint8

Outputs are uint8 FHWC per sample (NTHWC per batch): viewed as (N, C, T, H, W) that is channels_last_3d, so
the hand-off to torch needs no layout copy; normalisation to float/bf16 happens there, where the dtype the
trainer wants is known (DALI has no bf16). Per-sample arguments apply to every frame of a sequence
(DALI-NOTES.md), so a clip's frames share one crop, flip and colour.

``augment="torch"`` stops the graph after decoding and passes the parameters through; ``torch_augment`` then
applies the same steps. That is the CPU default (``fastcvrl.data.resolve_augment``): DALI 2.4's CPU resize
and colour-matrix kernels cost several times torch's. The GPU default keeps the whole chain in this graph.
"""
from __future__ import annotations

from typing import Any

from nvidia.dali import fn, types
from nvidia.dali import pipeline_def
from nvidia.dali.pipeline import Pipeline

from .host import LinearSource, MultiViewSource, PretrainSource
from .spatial import blur_window

DEVICES = ("cpu", "gpu")
AUGMENT = ("dali", "torch")
_SOLARIZE_TABLE = [k if k < 128 else 255 - k for k in range(256)]


def check_augment(augment: str) -> None:
    if augment not in AUGMENT:
        raise ValueError(f"augmentation backend must be one of {AUGMENT}, got {augment!r}")


def op_devices(device: str) -> tuple[str, str]:
    """(decoder device, augmentation device) for a pipeline device."""
    if device not in DEVICES:
        raise ValueError(f"pipeline device must be one of {DEVICES}, got {device!r}")
    return ("mixed", "gpu") if device == "gpu" else ("cpu", "cpu")


def _settings(batch_size: int, num_threads: int, device_id: int | None, prefetch: int, seed: int) -> dict:
    return dict(batch_size=batch_size, num_threads=num_threads, device_id=device_id,
                prefetch_queue_depth=prefetch, seed=seed)


def _decode(encoded: Any, frames: Any, device: str) -> Any:
    """Decode only ``frames`` (ascending positions in the trimmed stream): ``(F, H, W, 3)`` uint8, FHWC."""
    return fn.decoders.video(encoded, device=op_devices(device)[0], frames=frames, build_index=False)


def _crop_resize(video: Any, order: Any, roi_start: Any, roi_end: Any, size: int) -> Any:
    """One clip's frames, cropped (flipped when the x bounds are swapped) and resized: ``(T, S, S, 3)``."""
    clip = fn.sequence_rearrange(video, new_order=order)
    return fn.resize(clip, roi_start=roi_start, roi_end=roi_end, roi_relative=False, size=[size, size],
                     interp_type=types.INTERP_LINEAR, antialias=False)


def _pretrain_view(video: Any, cols: list, size: int, blur: bool, solarize: bool, order: Any) -> Any:
    roi_start, roi_end, m, t = cols[:4]
    sigma = cols[4] if blur else None
    sol = cols[-1] if solarize else None
    x = _crop_resize(video, order, roi_start, roi_end, size)
    x = fn.coord_transform(x, M=m, T=t, dtype=types.UINT8)  # colour jitter + grayscale, clipped once
    if blur:
        if sigma > 0.0:
            x = fn.gaussian_blur(x, sigma=sigma, window_size=blur_window(size))
    if solarize:
        if sol:
            x = fn.lookup_table(x, keys=list(range(256)), values=_SOLARIZE_TABLE, dtype=types.UINT8)
    return x


@pipeline_def(enable_conditionals=True)
def _pretrain_graph(source: PretrainSource, device: str, crop_size: int, blur: bool, solarize: bool, augment: str):
    cols = fn.external_source(source=source, num_outputs=source.num_outputs, batch=True, batch_info=True,
                              parallel=False)
    encoded, frames, order1, order2 = cols[:4]
    k = source.view_columns
    video = _decode(encoded, frames, device)
    if augment == "torch":  # decoded frames and every parameter column, for torch_augment
        return (video, *cols[2:])
    v1 = _pretrain_view(video, cols[4 : 4 + k], crop_size, blur, solarize, order1)
    v2 = _pretrain_view(video, cols[4 + k : 4 + 2 * k], crop_size, blur, solarize, order2)
    return v1, v2, cols[-2], cols[-1]


def pretrain_pipeline(source: PretrainSource, *, device: str, crop_size: int, batch_size: int,
                      num_threads: int = 2, device_id: int | None = None, prefetch: int = 2, seed: int = 0,
                      blur: bool = False, solarize: bool = False, augment: str = "dali") -> Pipeline:
    """CVRL pretraining: outputs ``view1, view2`` (N, T, S, S, 3) uint8, ``label`` (N,), ``meta`` (N, 5).

    ``augment="torch"``: decode only; outputs the decoded frames ``(F, H, W, 3)`` per video followed by the
    source's columns from ``order1`` on (``torch_augment`` applies them)."""
    op_devices(device)
    check_augment(augment)
    return _pretrain_graph(source, device, crop_size, blur, solarize, augment,
                           **_settings(batch_size, num_threads, device_id, prefetch, seed))


@pipeline_def
def _linear_graph(source: LinearSource, device: str, crop_size: int, augment: str):
    encoded, frames, order, roi_start, roi_end, label, meta = fn.external_source(
        source=source, num_outputs=source.num_outputs, batch=True, batch_info=True, parallel=False)
    video = _decode(encoded, frames, device)
    if augment == "torch":
        return video, order, roi_start, roi_end, label, meta
    return _crop_resize(video, order, roi_start, roi_end, crop_size), label, meta


def linear_pipeline(source: LinearSource, *, device: str, crop_size: int, batch_size: int, num_threads: int = 2,
                    device_id: int | None = None, prefetch: int = 2, seed: int = 0, augment: str = "dali") -> Pipeline:
    """Linear evaluation: one clip per video, crop and flip only: ``clip`` (N, T, S, S, 3), ``label``, ``meta``
    (``augment="torch"``: decoded frames, ``order``, ``roi_start``, ``roi_end``, ``label``, ``meta``)."""
    op_devices(device)
    check_augment(augment)
    return _linear_graph(source, device, crop_size, augment,
                         **_settings(batch_size, num_threads, device_id, prefetch, seed))


@pipeline_def
def _multiview_graph(source: MultiViewSource, device: str, crop_size: int, short_side: int, num_crops: int):
    encoded, frames, order, anchors, label, meta = fn.external_source(
        source=source, num_outputs=source.num_outputs, batch=True, batch_info=True, parallel=False)
    video = _decode(encoded, frames, device)
    video = fn.resize(video, resize_shorter=short_side, interp_type=types.INTERP_LINEAR, antialias=True)
    clips = fn.sequence_rearrange(video, new_order=order)  # (clips*T, h, w, 3)
    crops = [fn.crop(clips, crop=[crop_size, crop_size], crop_pos_y=anchors[k, 0], crop_pos_x=anchors[k, 1],
                     out_of_bounds_policy="pad") for k in range(num_crops)]
    return fn.stack(*crops), label, meta


def multiview_pipeline(source: MultiViewSource, *, device: str, crop_size: int, short_side: int, num_crops: int,
                       batch_size: int, num_threads: int = 2, device_id: int | None = None, prefetch: int = 2,
                       seed: int = 0) -> Pipeline:
    """Test views: resize the short side to ``short_side``, then ``num_crops`` crops of ``crop_size`` of every
    clip, spread along the long side (the reference: 3 crops of 256 at short side 256, ``eval.test_crop_size``).

    Output ``views`` per video: (crops, clips*T, S, S, 3) uint8 (all views of a video together), ``label``,
    ``meta``."""
    op_devices(device)
    return _multiview_graph(source, device, crop_size, short_side, num_crops,
                            **_settings(batch_size, num_threads, device_id, prefetch, seed))
