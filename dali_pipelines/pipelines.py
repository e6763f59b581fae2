"""DALI pipeline definitions: CVRL pretraining (two views), linear-evaluation training, test views.

One definition per pipeline with a ``device`` argument: ``'cpu'`` decodes with ``fn.decoders.video`` on the
CPU and augments on the CPU; ``'gpu'`` decodes on ``'mixed'`` (NVDEC) and augments on the GPU. The host
sources (``host.py``) hand each sample a trimmed stream and its augmentation parameters; the graph:

    trimmed stream ─decoders.video(frames=union of the clips' frames)─> (F, H, W, 3) uint8, one forward pass
      └ per view: sequence_rearrange(view's frames) ─> resize(ROI = crop box, flip = swapped x) to S x S
                  ─> to float ─> colour jitter (4 ops, clip's order) [─> grayscale] [─> blur] [─> solarize]
                  ─> clip, round ─> (T, S, S, 3) uint8

Outputs are uint8 FHWC per sample (NTHWC per batch): viewed as (N, C, T, H, W) that is channels_last_3d, so
the hand-off to torch needs no layout copy; normalisation to float/bf16 happens there, where the dtype the
trainer wants is known (DALI has no bf16). Per-sample arguments apply to every frame of a sequence
(docs/dali.md), so a clip's frames share one crop, flip and colour.

``augment="torch"`` stops the graph after decoding and passes the parameters through; ``torch_augment`` then
applies the same steps. That is the CPU default (``dali_pipelines.loaders.resolve_augment``): DALI 2.4's CPU
resize
and colour-matrix kernels cost several times torch's. The GPU default keeps the whole chain in this graph.
"""

from __future__ import annotations

from typing import Any

import nvidia.dali.math as dmath
from nvidia.dali import fn, pipeline_def, types
from nvidia.dali.pipeline import Pipeline

from .host import LinearSource, MultiViewSource, PretrainSource, VideoSource
from .spatial import GRAY, blur_window

DEVICES = ("cpu", "gpu")
AUGMENT = ("dali", "torch")
_GRAY = [float(w) for w in GRAY] * 3  # 3x3, every output channel the grey


def check_augment(augment: str) -> None:
    if augment not in AUGMENT:
        raise ValueError(f"augmentation backend must be one of {AUGMENT}, got {augment!r}")


def op_devices(device: str) -> tuple[str, str]:
    """(decoder device, augmentation device) for a pipeline device."""
    if device not in DEVICES:
        raise ValueError(f"pipeline device must be one of {DEVICES}, got {device!r}")
    return ("mixed", "gpu") if device == "gpu" else ("cpu", "cpu")


def _settings(
    batch_size: int,
    num_threads: int,
    device_id: int | None,
    prefetch: int,
    seed: int,
    host_workers: int = 0,
    start_method: str = "fork",
) -> dict:
    """Pipeline arguments. ``host_workers`` > 0: the source runs in that many worker processes (DALI's
    parallel external source), started with ``start_method`` (``spawn`` once CUDA is initialised here)."""
    kw = dict(
        batch_size=batch_size,
        num_threads=num_threads,
        device_id=device_id,
        prefetch_queue_depth=prefetch,
        seed=seed,
    )
    if host_workers < 0:
        raise ValueError(f"host_workers must be >= 0, got {host_workers}")
    if host_workers:
        kw.update(py_num_workers=host_workers, py_start_method=start_method)
    return kw


def _source_columns(source: VideoSource, host_workers: int) -> dict[str, Any]:
    """The source's outputs by name. With workers, each prepares whole batches, ``host_workers + 1`` of them
    in
    flight so that every worker stays busy while the pipeline consumes one."""
    kw = dict(parallel=True, prefetch_queue_depth=host_workers + 1) if host_workers else dict(parallel=False)
    outs = fn.external_source(
        source=source, num_outputs=source.num_outputs, batch=True, batch_info=True, **kw
    )
    return dict(zip(source.columns, outs))


def _decode(encoded: Any, frames: Any, device: str) -> Any:
    """Decode only ``frames`` (ascending positions in the trimmed stream): ``(F, H, W, 3)`` uint8, FHWC."""
    return fn.decoders.video(encoded, device=op_devices(device)[0], frames=frames, build_index=False)


def _crop_resize(video: Any, order: Any, roi_start: Any, roi_end: Any, size: int) -> Any:
    """One clip's frames, cropped (flipped when the x bounds are swapped) and resized: ``(T, S, S, 3)``."""
    clip = fn.sequence_rearrange(video, new_order=order)
    return fn.resize(
        clip,
        roi_start=roi_start,
        roi_end=roi_end,
        roi_relative=False,
        size=[size, size],
        interp_type=types.INTERP_LINEAR,
        antialias=False,
    )


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
    channel
    (ties resolved R, G, B as TF's kernel), shifted, then each channel ``v - chroma * clamp(min(k, 4 - k), 0,
    1)``
    with ``k = (n + hue) mod 6``, ``n`` = 5, 3, 1 for R, G, B."""
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
        x = _fhwc(x * p[1])
    elif op == 1:
        mean = fn.reductions.mean(x, axes=[0, 1, 2])  # (3,): the clip's per-channel mean
        x = _fhwc((x - mean) * p[2] + mean)
    elif op == 2:
        x = _fhwc(_saturation(x, p[3]))
    else:
        x = _fhwc(_hue(x, p[4]))
    return dmath.clamp(x, 0.0, 1.0)


def _fhwc(x: Any) -> Any:
    """Restore the FHWC layout (arithmetic and stacking drop it; the branches of a conditional must agree)."""
    return fn.reshape(x, layout="FHWC")


def _color(x: Any, params: Any, order: Any, values: Any) -> Any:
    """The reference's colour jitter (four ops in the clip's random ``order``, a clip after each) and
    grayscale
    on a float clip in [0, 1]. ``params`` (CPU) decides the branches, ``values`` (on the op device) scales."""
    if params[0] > 0.5:
        for i in range(4):
            x = _jitter_op(x, order[i], values)
    if params[5] > 0.5:
        x = _fhwc(fn.coord_transform(x, M=_GRAY))
    return x


def _blur(x: Any, sigma: Any, size: int) -> Any:
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
    return _fhwc(fn.slice(x, start=[r, r], shape=[size, size], axes=[1, 2]))


def _pretrain_view(
    video: Any, cols: list, size: int, blur: bool, solarize: bool, order: Any, device: str
) -> Any:
    roi_start, roi_end, params, color_order = cols[:4]
    sigma = cols[4] if blur else None
    sol = cols[-1] if solarize else None
    x = _crop_resize(video, order, roi_start, roi_end, size)
    x = _fhwc(fn.cast(x, dtype=types.FLOAT) * (1.0 / 255.0))  # (T, S, S, 3) in [0, 1]
    x = _color(x, params, color_order, params.gpu() if device == "gpu" else params)
    if blur:
        if sigma > 0.0:
            x = _blur(x, sigma, size)
    if solarize:
        if sol:
            x = _fhwc(x + (x >= 0.5) * (1.0 - 2.0 * x))
    return fn.cast(dmath.clamp(x, 0.0, 1.0) * 255.0, dtype=types.UINT8)


def pretrain_outputs(source: PretrainSource, augment: str) -> tuple[str, ...]:
    """Names of ``pretrain_pipeline``'s outputs, in order."""
    if augment == "torch":  # decoded frames and every parameter column, for torch_augment
        return ("video", *source.columns[source.column("order1") :])
    return ("view1", "view2", "label", "meta")


@pipeline_def(enable_conditionals=True)
def _pretrain_graph(
    source: PretrainSource,
    device: str,
    crop_size: int,
    blur: bool,
    solarize: bool,
    augment: str,
    host_workers: int,
):
    cols = _source_columns(source, host_workers)
    video = _decode(cols["encoded"], cols["frames"], device)
    if augment == "torch":
        return tuple(video if name == "video" else cols[name] for name in pretrain_outputs(source, augment))
    v1 = _pretrain_view(
        video, [cols[n] for n in source.view_names(1)], crop_size, blur, solarize, cols["order1"], device
    )
    v2 = _pretrain_view(
        video, [cols[n] for n in source.view_names(2)], crop_size, blur, solarize, cols["order2"], device
    )
    return v1, v2, cols["label"], cols["meta"]


def pretrain_pipeline(
    source: PretrainSource,
    *,
    device: str,
    crop_size: int,
    batch_size: int,
    num_threads: int = 2,
    device_id: int | None = None,
    prefetch: int = 2,
    seed: int = 0,
    blur: bool = False,
    solarize: bool = False,
    augment: str = "dali",
    host_workers: int = 0,
    start_method: str = "fork",
) -> Pipeline:
    """CVRL pretraining: outputs ``view1, view2`` (N, T, S, S, 3) uint8, ``label`` (N,), ``meta``
    (N, len(META_FIELDS)); ``pretrain_outputs`` names them.

    ``augment="torch"``: decode only; outputs the decoded frames ``(F, H, W, 3)`` per video followed by the
    source's columns from ``order1`` on (``torch_augment`` applies them). ``host_workers``: see ``_settings``
    (the source must then be a worker copy, ``VideoSource.for_workers``)."""
    op_devices(device)
    check_augment(augment)
    return _pretrain_graph(
        source,
        device,
        crop_size,
        blur,
        solarize,
        augment,
        host_workers,
        **_settings(batch_size, num_threads, device_id, prefetch, seed, host_workers, start_method),
    )


@pipeline_def
def _linear_graph(source: LinearSource, device: str, crop_size: int, augment: str, host_workers: int):
    c = _source_columns(source, host_workers)
    video = _decode(c["encoded"], c["frames"], device)
    if augment == "torch":
        return video, c["order"], c["roi_start"], c["roi_end"], c["label"], c["meta"]
    return _crop_resize(video, c["order"], c["roi_start"], c["roi_end"], crop_size), c["label"], c["meta"]


def linear_pipeline(
    source: LinearSource,
    *,
    device: str,
    crop_size: int,
    batch_size: int,
    num_threads: int = 2,
    device_id: int | None = None,
    prefetch: int = 2,
    seed: int = 0,
    augment: str = "dali",
    host_workers: int = 0,
    start_method: str = "fork",
) -> Pipeline:
    """Linear evaluation: one clip per video, crop and flip only: ``clip`` (N, T, S, S, 3), ``label``,
    ``meta``
    (``augment="torch"``: decoded frames, ``order``, ``roi_start``, ``roi_end``, ``label``, ``meta``)."""
    op_devices(device)
    check_augment(augment)
    return _linear_graph(
        source,
        device,
        crop_size,
        augment,
        host_workers,
        **_settings(batch_size, num_threads, device_id, prefetch, seed, host_workers, start_method),
    )


@pipeline_def
def _multiview_graph(
    source: MultiViewSource, device: str, crop_size: int, short_side: int, num_crops: int, host_workers: int
):
    c = _source_columns(source, host_workers)
    order, anchors, label, meta = c["order"], c["anchors"], c["label"], c["meta"]
    video = _decode(c["encoded"], c["frames"], device)
    video = fn.resize(video, resize_shorter=short_side, interp_type=types.INTERP_LINEAR, antialias=True)
    clips = fn.sequence_rearrange(video, new_order=order)  # (clips*T, h, w, 3)
    crops = [
        fn.crop(
            clips,
            crop=[crop_size, crop_size],
            crop_pos_y=anchors[k, 0],
            crop_pos_x=anchors[k, 1],
            out_of_bounds_policy="pad",
        )
        for k in range(num_crops)
    ]
    return fn.stack(*crops), label, meta


def multiview_pipeline(
    source: MultiViewSource,
    *,
    device: str,
    crop_size: int,
    short_side: int,
    num_crops: int,
    batch_size: int,
    num_threads: int = 2,
    device_id: int | None = None,
    prefetch: int = 2,
    seed: int = 0,
    host_workers: int = 0,
    start_method: str = "fork",
) -> Pipeline:
    """Test views: resize the short side to ``short_side``, then ``num_crops`` crops of ``crop_size`` of every
    clip, spread along the long side (the reference: 3 crops of 256 at short side 256,
    ``eval.test_crop_size``).

    Output ``views`` per video: (crops, clips*T, S, S, 3) uint8 (all views of a video together), ``label``,
    ``meta``."""
    op_devices(device)
    return _multiview_graph(
        source,
        device,
        crop_size,
        short_side,
        num_crops,
        host_workers,
        **_settings(batch_size, num_threads, device_id, prefetch, seed, host_workers, start_method),
    )


def decode_one(encoded: Any, frames: Any, *, device: str, device_id: int | None = None) -> None:
    """Decode one trimmed stream alone (``frames``: its positions) on ``device``, as the graphs do; raises
    what the decoder raises. The loader's failure path uses it to find the one sample of a failed batch that
    the decoder refuses (e.g. "Failed to create video decoder"), where the host re-check decodes them all."""
    op_devices(device)

    @pipeline_def(batch_size=1, num_threads=1, device_id=device_id, prefetch_queue_depth=1)
    def _one():
        enc, pos = fn.external_source(source=lambda: ([encoded], [frames]), num_outputs=2, batch=True)
        return _decode(enc, pos, device)

    pipe = _one()
    pipe.run()
