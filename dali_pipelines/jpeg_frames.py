"""MJPEG on the CPU decoded as JPEG images: ``fn.decoders.image_slice`` per frame, not ``fn.decoders.video``.

Every MJPEG frame is a whole JPEG, so a clip's frames need no container and no video decoder. On a 2-core CPU
(DALI 2.4, 340 x 256 frames, one thread) ``fn.decoders.video`` takes about 0.6 ms a frame from a Matroska
stream (2.3 ms from concatenated JPEGs), the image decoder (libjpeg-turbo) about 0.35 ms: the video
decoder's own colour conversion is most of the difference. This module is the pretraining loader's MJPEG path
on the CPU with ``data.augment`` torch:

- ``JpegPretrainSource``: ``host.PretrainSource`` with the same draws (seed, epoch, video), whose cut of a
  video is the needed JPEGs back to back (``encoded``) and where each ends (``jpeg_ends``);
- ``FrameSource``: the external source of a frame-level pipeline: one row per frame (the JPEG, its video's
  slot and frame number, the frame's window, and on its first frame that video's per-video columns, packed);
- ``frames_pipeline``: decode each JPEG's window only (``fn.decoders.image_slice``); ``VideoBatches``
  regroups a run's rows per video, so the loader sees the outputs the video pipeline gives with
  ``augment="torch"`` (a ``Windows`` of frames in place of each video's ``(F, H, W, 3)`` array);
- ``crop_resize_frames``: ``torch_augment.crop_resize`` on such windows (copies the crops, never a frame).

A frame's window is the bounding box of the crops of the views that use it (``frame_windows``): a frame in
one view is decoded as exactly that view's crop, one in both as the box around both. DALI's CPU decoder
(libjpeg-turbo) stops after a window's last row and converts only its columns, and the pixels are the whole
frame's, bit for bit (``tests/test_jpeg_frames.py``). Measured on a 2-core CPU (DALI 2.4, 340 x 256 frames,
one thread): a whole frame 0.36 ms, its top half 0.24 ms, its left half 0.28 ms, a centred quarter 0.2 ms
(``docs/dali.md``, "MJPEG through the image decoder").

The frames differ from the video decoder's by a few uint8 levels at most (another JPEG decoder, another
colour conversion); ``tests/test_jpeg_frames.py`` holds the bounds.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .host import PretrainSource
from .packets import PacketIndex, TrimmedClip, VideoReadError, _read_payloads
from .torch_augment import crop_box

# slot: (N, 2) int32, each row's video in the batch and frame in it; anchor, shape: (N, 2) int32, the frame's
# window (y, x) and (height, width) in pixels; video: its columns, packed
FRAME_COLUMNS = ("jpeg", "slot", "anchor", "shape", "video")


ENABLED = True  # False: MJPEG through fn.decoders.video like the other codecs (the reference path)


def all_mjpeg(entries: Sequence[Any]) -> bool:
    """Whether the JPEG path applies: every manifest entry says MJPEG (its ``codec`` column)."""
    return ENABLED and bool(entries) and all(getattr(e, "codec", "") == "mjpeg" for e in entries)


class JpegPretrainSource(PretrainSource):
    """``PretrainSource`` whose cut is the needed JPEGs back to back; column ``jpeg_ends`` (F,) int64 says
    where each ends in ``encoded``. Draws, order and substitution are the parent's."""

    def __init__(self, *args: Any, **kw: Any):
        super().__init__(*args, **kw)
        self.columns = (*self.columns, "jpeg_ends")
        self._ends = np.zeros(0, np.int64)

    def cut(self, idx: PacketIndex, needed: np.ndarray, data: bytes | None) -> TrimmedClip:
        if idx.codec != "mjpeg" or idx.reorder is not None or not idx.keyframe.all():
            raise VideoReadError(idx.path, f"the MJPEG path got a {idx.codec} stream (manifest says mjpeg)")
        frames = np.unique(np.asarray(needed, np.int64))  # every frame a keyframe: exactly the needed ones
        payloads, nbytes = _read_payloads(idx, frames, data)
        self._ends = np.cumsum(idx.sizes[frames], dtype=np.int64)
        encoded = np.frombuffer(b"".join(payloads), np.uint8)
        positions = np.searchsorted(frames, np.asarray(needed, np.int64)).astype(np.int32)
        return TrimmedClip(encoded, positions, len(frames), nbytes)

    def sample(self, video: int) -> Any:
        s = super().sample(video)
        s.values["jpeg_ends"] = self._ends
        return s


def _rows(column: Any) -> list:
    """The per-sample arrays of a batch column (a dense ``(B, ...)`` array or a list); 0-d arrays, not
    NumPy scalars, for a ``(B,)`` column (DALI's worker processes take arrays only)."""
    return [np.asarray(row) for row in column] if isinstance(column, np.ndarray) else column


class FrameSource:
    """Frame-level external source over a ``JpegPretrainSource`` (which keeps the epochs, steps and worker
    copies): columns ``FRAME_COLUMNS``, one row per frame: the JPEG, its slot (video in the batch, frame in
    the video), its window (``frame_windows``) and, on a video's first frame only, that video's columns from
    ``order1`` on packed into bytes (``layout``; empty on the other rows). Few outputs, the small ones dense
    ``(N, 2)`` arrays: DALI's external source costs about 2 us per sample and output given a list of
    arrays, 0.4 ms a clip had every column travelled on every frame that way. Picklable like the source."""

    def __init__(self, source: JpegPretrainSource):
        self.source = source
        first = source.column("order1")
        names = tuple(c for c in source.columns[first:] if c != "jpeg_ends")
        self.layout = self._probe(names)  # ((name, dtype, shape), ...) of the packed columns
        self.video_columns = names
        self.columns = FRAME_COLUMNS

    def _probe(self, names: tuple[str, ...]) -> tuple[tuple[str, np.dtype, tuple[int, ...]], ...]:
        """The dtypes and shapes of the per-video columns (the same for every video), from one sample of a
        copy (``for_workers``: the source's own caches and first reads stay as they are)."""
        probe = self.source.for_workers()
        for video in range(len(probe.entries)):
            try:
                s = probe.sample(video)
            except VideoReadError:
                continue
            return tuple((n, np.asarray(s[n]).dtype, np.asarray(s[n]).shape) for n in names)
        raise VideoReadError(self.source.entries[0].path, "no readable video to lay the columns out from")

    def pack(self, rows: list[list], b: int) -> np.ndarray:
        """Video ``b``'s per-video columns (``rows``: per column, per video) as one uint8 array."""
        parts = []
        for (name, dtype, shape), col in zip(self.layout, rows):
            a = np.asarray(col[b])
            if a.shape != shape or a.dtype != dtype:
                raise ValueError(f"column {name}: {a.dtype}{a.shape}, the layout says {dtype}{shape}")
            parts.append(a.tobytes())
        return np.frombuffer(b"".join(parts), np.uint8)

    def unpack(self, packed: np.ndarray) -> dict[str, np.ndarray]:
        """``pack``'s inverse: name -> array."""
        out, at = {}, 0
        raw = np.ascontiguousarray(packed).tobytes()
        for name, dtype, shape in self.layout:
            n = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            out[name] = np.frombuffer(raw[at : at + n], dtype).reshape(shape)
            at += n
        return out

    def __call__(self, info: Any) -> tuple[Any, ...]:
        cols = dict(zip(self.source.columns, self.source(info)))
        jpegs: list = []
        windows: list = []
        packed: list = []
        per_video = [_rows(cols[c]) for c in self.video_columns]
        views = [tuple(_rows(cols[f"{c}{v}"]) for c in ("order", "roi_start", "roi_end")) for v in (1, 2)]
        empty = np.zeros(0, np.uint8)
        for b, (buf, ends) in enumerate(zip(_rows(cols["encoded"]), _rows(cols["jpeg_ends"]))):
            starts = np.concatenate([[0], ends[:-1]]).tolist()
            n = len(starts)
            jpegs += [buf[a:e] for a, e in zip(starts, ends.tolist())]
            windows.append(frame_windows(n, [(o[b], r0[b], r1[b]) for o, r0, r1 in views]))
            packed += [self.pack(per_video, b)] + [empty] * (n - 1)
        sizes = [len(w) for w in windows]
        slot = np.empty((len(jpegs), 2), np.int32)
        slot[:, 0] = np.repeat(np.arange(len(sizes)), sizes)
        slot[:, 1] = np.concatenate([np.arange(n) for n in sizes]) if sizes else 0
        window = np.concatenate(windows) if windows else np.zeros((0, 4), np.int32)
        return jpegs, slot, np.ascontiguousarray(window[:, :2]), np.ascontiguousarray(window[:, 2:]), packed


def frame_windows(n: int, views: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> np.ndarray:
    """``(n, 4)`` int32 windows ``(y, x, height, width)`` of a video's ``n`` decoded frames: per frame, the
    bounding box of the integer crops (``torch_augment.crop_box``) of the ``views`` ((order, roi_start,
    roi_end) each; ``order``: the view's frames as positions among the ``n``) that use it; ``(0, 0, 1, 1)``
    for a frame no view uses, at least one pixel each way."""
    lo = np.full((n, 2), np.iinfo(np.int32).max, np.int64)
    hi = np.zeros((n, 2), np.int64)
    for order, roi_start, roi_end in views:
        y0, x0, y1, x1, _ = crop_box(roi_start, roi_end)
        used = np.asarray(order, np.int64)
        lo[used] = np.minimum(lo[used], (y0, x0))
        hi[used] = np.maximum(hi[used], (y1, x1))
    unused = lo[:, 0] > hi[:, 0]
    lo[unused], hi[unused] = 0, 1
    return np.concatenate([lo, np.maximum(hi - lo, 1)], axis=1).astype(np.int32)


def frames_pipeline(
    frame_source: FrameSource,
    *,
    max_frames: int,
    num_threads: int = 2,
    prefetch: int = 2,
    seed: int = 0,
    host_workers: int = 0,
    start_method: str = "fork",
    **_ignored: Any,
) -> Any:
    """A CPU pipeline over ``frame_source``: outputs each frame's decoded window (h, w, 3) uint8, then the
    slots, the windows' anchors and the packed per-video columns, one row per frame; batches of up to
    ``max_frames`` rows (each run: one batch of videos)."""
    from nvidia.dali import fn, pipeline_def, types

    kw = dict(batch_size=max_frames, num_threads=num_threads, device_id=None, prefetch_queue_depth=prefetch)
    if host_workers:
        kw.update(py_num_workers=host_workers, py_start_method=start_method)
    src = dict(parallel=True, prefetch_queue_depth=host_workers + 1) if host_workers else {}

    @pipeline_def(seed=seed, **kw)
    def graph():
        jpeg, slot, anchor, shape, packed = fn.external_source(
            source=frame_source, num_outputs=len(frame_source.columns), batch=True, batch_info=True, **src
        )
        window = fn.decoders.image_slice(
            jpeg,
            anchor,
            shape,
            device="cpu",
            output_type=types.RGB,
            axis_names="HW",
            normalized_anchor=False,
            normalized_shape=False,
        )
        return window, slot, anchor, packed

    return graph()


class _Dense:
    """A dense per-video column in the shape the loader reads DALI outputs (``as_tensor()``)."""

    def __init__(self, array: np.ndarray):
        self.array = array

    def as_tensor(self) -> np.ndarray:
        return self.array


class Windows(list):
    """A video's decoded frames (``(h, w, 3)`` uint8 tensors, in the order of its decoded frames), each the
    window of its frame whose top-left corner is ``origins[k]`` ((y, x) in the frame)."""

    def __init__(self, frames: Sequence[torch.Tensor], origins: Sequence[tuple[int, int]]):
        super().__init__(frames)
        self.origins = list(origins)


class VideoBatches:
    """Wraps ``frames_pipeline``: ``run()`` gives per video what ``pretrain_pipeline(augment="torch")``
    gives (``video`` as ``Windows``, then ``order1`` ... ``meta``); the rest goes to the pipeline."""

    def __init__(self, pipe: Any, frame_source: FrameSource):
        self.pipe, self.frames = pipe, frame_source

    def run(self) -> tuple:
        images, slots, anchors, packed = self.pipe.run()
        slot = np.asarray(slots.as_tensor())  # (N, 2)
        origin = np.asarray(anchors.as_tensor()).tolist()  # (N, 2)
        first = np.flatnonzero(slot[:, 1] == 0).tolist()
        ends = first[1:] + [len(slot)]
        # NumPy's buffer protocol, not DLPack: the same memory (kept alive by the array), a quarter the cost
        frames = [torch.from_numpy(np.asarray(images[i])) for i in range(len(slot))]
        videos = [Windows(frames[a:e], origin[a:e]) for a, e in zip(first, ends)]
        cols = [self.frames.unpack(np.asarray(packed[i])) for i in first]
        return (videos, *(_Dense(np.stack([c[n] for c in cols])) for n in self.frames.video_columns))

    def reset(self) -> None:
        self.pipe.reset()

    def __getattr__(self, name: str) -> Any:  # _shutdown, _py_pool: the loader closes the pipeline itself
        return getattr(self.pipe, name)


def crop_resize_frames(
    frames: Sequence[torch.Tensor], order: np.ndarray, roi_start: np.ndarray, roi_end: np.ndarray, size: int
) -> torch.Tensor:
    """``torch_augment.crop_resize`` of the video whose frames are ``frames`` ((H, W, 3) uint8 each, on the
    CPU; ``Windows``: each a window of its frame holding the crop), copying only the crops (the stacked
    video would be a copy of every frame). Returns ``(T, 3, S, S)`` uint8 with channels-last strides."""
    y0, x0, y1, x1, flip = crop_box(roi_start, roi_end)
    origins = getattr(frames, "origins", None) or [(0, 0)] * len(frames)  # whole frames: windows at (0, 0)
    crops, size_ = [], (y1 - y0, x1 - x0)
    for j in np.asarray(order).tolist():
        f, (oy, ox) = frames[j], origins[j]
        # a frame of this view only is decoded as exactly its crop: no slicing
        whole = oy == y0 and ox == x0 and f.shape[:2] == size_
        crops.append(f if whole else f[y0 - oy : y1 - oy, x0 - ox : x1 - ox])
    clip = torch.stack(crops).permute(0, 3, 1, 2)  # (T, 3, h, w), channels-last strides: the fast uint8 path
    if clip.shape[-2:] != (size, size):
        clip = F.interpolate(clip, size=(size, size), mode="bilinear", align_corners=False, antialias=False)
    return clip.flip(-1) if flip else clip
