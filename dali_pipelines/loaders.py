"""Torch-side loaders over the DALI pipelines: the data path's public surface, with its typed settings.

    loader = build_pretrain_loader(settings, manifest, rank=r, world_size=w, device=device, seed=seed)
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        for view1, view2, label in loader:   # (B, 3, T, S, S) channels_last_3d on `device`, label (B,) int64
            ...

Hand-off. With ``Runtime.augment="dali"`` (the GPU default) DALI hands over uint8 N-T-H-W-C batches; viewed as
(N, C, T, H, W) they are already channels_last_3d, so the hand-off is zero-copy on the CPU (DLPack) and one
same-layout device-to-device copy on the GPU, never a layout change; normalising to the trainer's dtype
(float32 / bf16 / fp16) is one multiply-add that keeps the layout. With ``augment="torch"`` (the CPU
default, ``settings.resolve_augment``) DALI hands over each video's decoded frames zero-copy and
``torch_augment`` writes every clip straight into a channels_last_3d batch.

A video the decoder fails on mid-epoch is named in a warning, dropped from the shard and the pipeline rebuilt
to resume at the same step (``Runtime.skip_corrupt``); with skipping off the error names the file. The file
is found by a host re-check (PyAV decodes each recent sample's trimmed stream), else, for a stream PyAV
decodes but DALI's decoder refuses before decoding (a codec or size it does not take: "Failed to create video
decoder", "not supported by the CPU variant"), by decoding each recent sample alone on the loader's decoder.
Training batches stay whole (another video of the shard fills the place); evaluation loaders (which keep every
video) drop the stand-in instead, so they deliver each readable video exactly once (``loader.source.bad``: the
rest).

Host work. With ``Runtime.host_workers`` > 0 (``settings.resolve_host_workers`` sizes it from the cores this
rank may use) the sources run in DALI's parallel external source, whole batches per worker process, started by
``fork`` while CUDA is not initialised in this process and by ``spawn`` once it is (a forked CUDA context is
unusable). Batches are the same as with the serial in-thread path (0; tests and debugging): a sample depends
only on the seed, the epoch and the video.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import av
import numpy as np
import torch

from dali_pipelines import jpeg_frames, torch_augment
from dali_pipelines.host import (
    META_FIELDS,
    SUBSTITUTE,
    LinearSource,
    MultiViewSource,
    PretrainSource,
    VideoSource,
    meta_field,
)
from dali_pipelines.manifest import VideoEntry, read_manifest
from dali_pipelines.normalize import Normalize
from dali_pipelines.packets import VideoReadError
from dali_pipelines.recipe import Recipe, blur_window
from dali_pipelines.settings import EvalSettings, PretrainSettings, Runtime

log = logging.getLogger(__name__)


class DaliLoader:
    """Iterates one DALI pipeline over a ``VideoSource``; ``len()`` steps per epoch, ``set_epoch`` reseeds.

    ``stats``: running totals since construction: ``videos`` (samples), ``clips`` (views delivered: two per
    video when pretraining), ``frames_decoded`` (packets handed to the decoder, an upper bound on the frames
    it decodes), ``bytes_read``; also as attributes ``videos`` and ``frames_decoded``. ``last_meta``: the last
    batch's per-sample bookkeeping (``META_FIELDS`` columns, NumPy)."""

    def __init__(
        self,
        source: VideoSource,
        make_pipeline: Callable[[VideoSource], Any],
        convert: Callable,
        device: torch.device,
        skip_corrupt: bool = True,
        clips_per_sample: int = 1,
        host_workers: int = 0,
        decode_one: Callable[[np.ndarray, np.ndarray], None] | None = None,
    ):
        self.source, self._make, self._convert = source, make_pipeline, convert
        self.host_workers = host_workers
        self._epoch0 = self._epochs_done = 0  # with workers: the epoch the pipeline started in, epochs since
        self.device = torch.device(device)
        self.batch_size = source.batch_size
        self.skip_corrupt = skip_corrupt
        source.stop_on_change = not skip_corrupt  # a file replaced since prepare stops the run, named
        self.clips_per_sample = clips_per_sample
        self.stats = {"videos": 0, "clips": 0, "frames_decoded": 0, "bytes_read": 0}
        self.last_meta: np.ndarray | None = None
        self._pipe = None
        self._dirty = False
        self._decode_one = decode_one  # (encoded, frames) -> None, raising as the pipeline's decoder would
        if len(source) == 0:
            raise ValueError(
                f"{len(source.entries)} videos over {source.world} rank(s) do not fill one batch "
                f"of {source.batch_size}"
            )

    def __len__(self) -> int:
        return len(self.source)

    @property
    def videos(self) -> int:
        return self.stats["videos"]

    @property
    def frames_decoded(self) -> int:
        return self.stats["frames_decoded"]

    def set_epoch(self, epoch: int) -> None:
        self.source.set_epoch(epoch)

    def __iter__(self) -> Iterator[tuple]:
        return self.iter_from(0)

    def iter_from(self, start: int) -> Iterator[tuple]:
        """The epoch's batches from batch ``start`` on: the same ones ``iter()`` yields there (samples are a
        function of seed, epoch and video), without reading or decoding the ``start`` batches before it."""
        if not 0 <= start <= len(self):
            raise ValueError(f"start batch {start} is outside the epoch's 0..{len(self)}")
        # workers follow the pipeline's epochs from the one they started in: another epoch needs new workers
        elsewhere = self.host_workers and self.source.epoch != self._epoch0 + self._epochs_done
        if start or self._pipe is None or self._dirty or elsewhere:
            self._restart(start)
        self._dirty = True
        step = start
        while step < len(self):
            outs = self._run(step)
            meta = np.asarray(outs[-1].as_tensor())  # (B, len(META_FIELDS)) int64
            if self.host_workers:
                self.source.note_skipped(step, meta)  # name here what the workers passed over
            self.last_meta = meta
            self.stats["videos"] += len(meta)
            self.stats["clips"] += len(meta) * self.clips_per_sample
            self.stats["frames_decoded"] += int(meta_field(meta, "frames_decoded").sum())
            self.stats["bytes_read"] += int(meta_field(meta, "bytes_read").sum())
            batch = self._convert(outs[:-1], meta)
            if (
                not self.source.drop_last
            ):  # evaluation: each video once, the unreadable never (training: as is)
                real = meta[:, SUBSTITUTE] == 0
                if not real.all():
                    batch = keep_rows(batch, real)
                    self.last_meta = meta[real]
            if batch is not None:
                yield batch
            step += 1
        try:  # drain: the source ended the epoch, DALI signals it on the next run
            self._pipe.run()
        except StopIteration:
            self._dirty = False
            self.source.start_step = 0
            self._epochs_done += 1
            self._pipe.reset()

    def _restart(self, step: int) -> None:
        self.close()
        self.source.start_step = step
        self._epoch0, self._epochs_done = self.source.epoch, 0
        self._pipe = self._make(self.source.for_workers() if self.host_workers else self.source)
        self._dirty = False

    def close(self) -> None:
        """Shut the pipeline down (and its worker processes, if any); the next iteration builds a new one."""
        pipe, self._pipe = self._pipe, None
        if pipe is None:
            return
        pool = getattr(pipe, "_py_pool", None)  # DALI closes it when the pipeline is collected; do it now
        pipe._shutdown()
        if pool is not None:
            pool.close()

    def _run(self, step: int) -> tuple:
        try:
            return self._pipe.run()
        except StopIteration:
            raise RuntimeError(f"the pipeline ended the epoch early at step {step} of {len(self)}") from None
        except Exception as e:  # DALI's own errors are RuntimeErrors; a host worker's arrive as Exception
            if isinstance(e, VideoReadError) or not (isinstance(e, RuntimeError) or self.host_workers):
                raise  # raised by the source itself in this process (a strict stop, a bug): as it is
            if self.host_workers:  # the samples were made in the workers: make them again here (a strict stop
                # raises here, in this process, with its own message)
                for ahead in range(step, min(step + self.host_workers + 2, len(self))):
                    self.source.batch(ahead)
            found = self._find_undecodable()
            if found is None:
                paths = sorted({s.path for ss in self.source.recent.values() for s in ss})
                raise RuntimeError(
                    f"the DALI pipeline failed on a batch from {paths}, and each of these "
                    f"decodes alone: {_first_line(e)}"
                ) from e
            video, reason = found
            path = self.source.entries[video].path
            if not self.skip_corrupt:
                raise VideoReadError(path, f"{reason} ({_first_line(e)})") from e
            self.source.mark_bad(video, reason)
            self._restart(step)  # a failed DALI pipeline cannot continue; rebuild and resume at this step
            return self._run(step)

    def _find_undecodable(self) -> tuple[int, str] | None:
        """The video of the recent batches at fault, and why: the first whose trimmed stream PyAV cannot
        decode or holds a frame of another size than its stream's (the crops and, for MJPEG, the decoded
        windows are the stream's; host re-check), else the first that the pipeline's own decoder refuses
        when given it alone."""
        samples = [s for ss in reversed(self.source.recent.values()) for s in ss]  # newest batch first
        for s in samples:
            idx = self.source.index(s.video)
            try:
                with av.open(io.BytesIO(s.encoded.tobytes())) as c:
                    for frame in c.decode(video=0):
                        if (frame.height, frame.width) != (idx.height, idx.width):
                            size = f"{frame.width}x{frame.height}"
                            return s.video, f"a frame of {size} in a {idx.width}x{idx.height} stream"
            except (av.FFmpegError, ValueError):
                return s.video, "the video decoder cannot decode it"
        if self._decode_one is None:
            return None
        for s in samples:  # note: one small pipeline per sample, on the failure path only
            try:
                self._decode_one(s["encoded"], s["frames"])
            except RuntimeError:
                return s.video, "the video decoder cannot decode it"
        return None


def keep_rows(batch: tuple, keep: np.ndarray) -> tuple | None:
    """``batch`` with only the samples ``keep`` (B,) marks; None if none is left. Each tensor's rows are per
    sample (B) or per view, the views of a sample contiguous (B*V)."""
    if not keep.any():
        return None
    mask = torch.from_numpy(keep)
    out = []
    for t in batch:
        if t.shape[0] % len(keep):
            raise ValueError(f"a batch tensor of {t.shape[0]} rows for {len(keep)} samples")
        m = mask.repeat_interleave(t.shape[0] // len(keep)).to(t.device)
        out.append(t[m])
    return tuple(out)


def _first_line(e: BaseException) -> str:
    lines = [ln for ln in str(e).splitlines() if "ailed" in ln or "rror" in ln]
    return (lines[-1] if lines else str(e).splitlines()[0]).strip()


# ------------------------------------------------------------------------------------- torch hand-off
def to_torch(out: Any, device: torch.device, sample: int | None = None) -> torch.Tensor:
    """A dense DALI batch (or one ``sample`` of it) as a torch tensor on ``device``: zero-copy DLPack on the
    CPU, one device-to-device copy on the GPU."""
    on_gpu = type(out).__name__.endswith("GPU")
    if device.type == "cpu" and on_gpu:
        out = out.as_cpu()
    t = out.as_tensor() if sample is None else out[sample]
    if device.type == "cpu" or not on_gpu:
        return torch.from_dlpack(t).to(device)
    from nvidia.dali.plugin.pytorch import feed_ndarray, to_torch_type

    dst = torch.empty(t.shape(), dtype=to_torch_type[t.dtype], device=device)
    feed_ndarray(t, dst, cuda_stream=torch.cuda.current_stream(device))
    return dst


def _host(out: Any) -> np.ndarray:
    """A small dense CPU output (per-sample parameters) as one NumPy array, first axis the batch."""
    return np.asarray(out.as_tensor())


def torch_views(
    outs: tuple, views: list[tuple[int, int]], recipe: Recipe, norm: Normalize, device: torch.device
) -> list[torch.Tensor]:
    """Apply ``torch_augment`` to the decoded frames ``outs[0]``. ``views``: per view, the output index of its
    ``order`` column and of its first parameter column, the recipe's ``ops`` in order from there (``roi_start,
    roi_end[, color, color_order[, sigma][, solarize]]``; without colour: crop and flip only)."""
    with _one_torch_thread(device):
        return _torch_views(outs, views, recipe, norm, device)


@contextlib.contextmanager
def _one_torch_thread(device: torch.device) -> Iterator[None]:
    """On the CPU the loader's small per-clip ops run on one torch thread: DALI's threads hold the cores, and
    OpenMP workers spinning beside them cost several times the work itself (measured on 2 cores)."""
    if device.type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _torch_views(
    outs: tuple, views: list[tuple[int, int]], recipe: Recipe, norm: Normalize, device: torch.device
) -> list[torch.Tensor]:
    n = len(outs[0])
    size, ops = recipe.crop_size, recipe.ops
    per_frame = isinstance(outs[0], list)  # the MJPEG path (jpeg_frames): a list of frame tensors per video
    crop = jpeg_frames.crop_resize_frames if per_frame else torch_augment.crop_resize
    videos = outs[0] if per_frame else [to_torch(outs[0], device, i) for i in range(n)]  # (F, H, W, 3) each
    result = []
    for order_col, first in views:
        order = _host(outs[order_col])  # (B, T)
        c = {op: _host(o) for op, o in zip(ops, outs[first : first + len(ops)])}
        out = torch.empty(
            (n, 3, order.shape[1], size, size),
            dtype=norm.dtype,
            device=device,
            memory_format=torch.channels_last_3d,
        )  # (B, 3, T, S, S)
        for i in range(n):
            # (T, 3, S, S) uint8
            clip = crop(videos[i], order[i], c["roi_start"][i], c["roi_end"][i], size)
            # colour params (6,), op order (4,); none without colour
            m, t = (c["color"][i], c["color_order"][i]) if recipe.color else (None, None)
            sigma = float(c["sigma"][i]) if "sigma" in c else 0.0
            sol = bool(c["solarize"][i]) if "solarize" in c else False
            torch_augment.color_normalize(
                clip, m, t, norm.mean, norm.std, out[i], sigma, sol, blur_window(size)
            )
        result.append(out)
    return result


# ------------------------------------------------------------------------------------- builders
def _pipeline_kw(rt: Runtime, device: torch.device, seed: int) -> dict:
    device_id = (
        (device.index if device.index is not None else torch.cuda.current_device())
        if rt.device == "gpu"
        else None
    )
    # a forked child cannot use this process's CUDA context: spawn once CUDA is (or will be) initialised here
    start = "spawn" if rt.device == "gpu" or torch.cuda.is_initialized() else "fork"
    return dict(
        device=rt.device,
        num_threads=rt.num_threads,
        device_id=device_id,
        prefetch=rt.prefetch,
        seed=seed,
        host_workers=rt.host_workers,
        start_method=start,
    )


def _decode_one(kw: dict) -> Callable[[np.ndarray, np.ndarray], None]:
    """Decode one trimmed stream alone on the pipelines' decoder (``kw``: ``_pipeline_kw``)."""
    from dali_pipelines.pipelines import decode_one

    return lambda encoded, frames: decode_one(encoded, frames, device=kw["device"], device_id=kw["device_id"])


def _normalize(rt: Runtime, device: torch.device) -> Normalize:
    return Normalize(list(rt.mean), list(rt.std), rt.dtype, device)


def _per_rank(batch_size: int, world_size: int, what: str) -> int:
    """The per-rank batch; an error naming what to lower when a rank would get none."""
    batch = batch_size // world_size
    if batch < 1:
        raise ValueError(
            f"{what} {batch_size} over {world_size} ranks leaves no video per rank: "
            f"set it to {world_size} or more"
        )
    return batch


def build_pretrain_loader(
    settings: PretrainSettings,
    manifest: str | Sequence[VideoEntry],
    *,
    rank: int = 0,
    world_size: int = 1,
    device: torch.device | str = "cpu",
    seed: int = 0,
    normalize: bool = True,
) -> DaliLoader:
    """CVRL two-view loader: yields ``(view1, view2, label)``, views ``(B, 3, T, S, S)`` channels_last_3d on
    ``device``, ``label`` (B,) int64 on the host (the step does not use it: no host-device copy per step).

    ``normalize=False`` (the trainer): with DALI augmenting (the GPU default) the views stay DALI's uint8
    frames, which ``TrainStep`` normalises inside its CUDA graph; the torch path is normalised either way.
    ``B = settings.batch_size // world_size``; the last partial batch of an epoch is dropped."""
    from dali_pipelines.pipelines import pretrain_outputs, pretrain_pipeline

    device = torch.device(device)
    rt, recipe = settings.runtime, settings.recipe
    batch = _per_rank(settings.batch_size, world_size, "the pretraining batch size")
    entries = _entries(manifest)
    # MJPEG on the CPU with torch augmenting: every frame a JPEG, decoded as images (jpeg_frames)
    jpeg = rt.device == "cpu" and rt.augment == "torch" and jpeg_frames.all_mjpeg(entries)
    kind = jpeg_frames.JpegPretrainSource if jpeg else PretrainSource
    source = kind(entries, batch, settings, rank=rank, world=world_size, seed=seed)
    kw = _pipeline_kw(rt, device, seed)
    norm = _normalize(rt, device)

    def make(src: VideoSource) -> Any:
        if jpeg:
            frames = jpeg_frames.FrameSource(src)
            pipe = jpeg_frames.frames_pipeline(frames, max_frames=batch * 2 * settings.clip.num_frames, **kw)
            return jpeg_frames.VideoBatches(pipe, frames)
        return pretrain_pipeline(src, batch_size=batch, augment=rt.augment, **kw)

    def convert(outs: tuple, meta: np.ndarray) -> tuple:
        label = torch.from_numpy(_host(outs[-1]).astype(np.int64))  # (B,) stays on the host: no per-step sync
        if rt.augment == "torch":
            # outputs named by pretrain_outputs: video, order1, order2, the views' columns, label
            at = {name: i for i, name in enumerate(pretrain_outputs(source, "torch"))}
            views = [(at["order1"], at["roi_start1"]), (at["order2"], at["roi_start2"])]
            v1, v2 = torch_views(outs, views, recipe, norm, device)
            return v1, v2, label
        # (B, T, S, S, 3) uint8 each: one asynchronous device-to-device copy on the GPU, zero-copy on the CPU
        v1, v2 = (to_torch(o, device) for o in outs[:2])
        if not normalize:
            return v1.permute(0, 4, 1, 2, 3), v2.permute(0, 4, 1, 2, 3), label  # (B, 3, T, S, S) uint8 views
        return norm(v1), norm(v2), label

    return DaliLoader(
        source,
        make,
        convert,
        device,
        rt.skip_corrupt,
        clips_per_sample=2,
        host_workers=kw["host_workers"],
        decode_one=_decode_one(kw),
    )


def build_linear_loader(
    settings: EvalSettings,
    manifest: str | Sequence[VideoEntry],
    *,
    rank: int = 0,
    world_size: int = 1,
    device: torch.device | str = "cpu",
    seed: int = 0,
    train: bool = True,
) -> DaliLoader:
    """One clip per video (``settings.clip``), crop and flip only when training: yields ``(clip (B, 3, T, S,
    S), label (B,))``. Training drops the last partial batch; evaluation keeps it. ``manifest``: a path, or
    entries already read (a subset, or labels renumbered)."""
    from dali_pipelines.pipelines import linear_pipeline

    device = torch.device(device)
    rt = settings.runtime
    batch = _per_rank(settings.batch_size, world_size, "the evaluation batch size")
    source = LinearSource(_entries(manifest), batch, settings, train, rank=rank, world=world_size, seed=seed)
    kw = _pipeline_kw(rt, device, seed)
    norm = _normalize(rt, device)
    crop = Recipe(crop_size=settings.recipe.crop_size, color=False)  # the columns the torch path applies

    def make(src: VideoSource) -> Any:
        return linear_pipeline(src, batch_size=batch, augment=rt.augment, **kw)

    def convert(outs: tuple, meta: np.ndarray) -> tuple:
        label = to_torch(outs[-1], device).to(torch.int64)
        if rt.augment == "torch":
            (clip,) = torch_views(outs, [(1, 2)], crop, norm, device)  # video, order, roi, label
            return clip, label
        return norm(to_torch(outs[0], device)), label

    return DaliLoader(
        source,
        make,
        convert,
        device,
        rt.skip_corrupt,
        host_workers=kw["host_workers"],
        decode_one=_decode_one(kw),
    )


def build_test_loader(
    settings: EvalSettings, manifest: str | Sequence[VideoEntry], *, device: torch.device | str = "cpu"
) -> DaliLoader:
    """Test views: yields ``(clips (B*V, 3, T, S, S), label (B,), video_index (B,))`` with ``V =
    settings.test_clips * settings.test_crops`` views of each video contiguous (rows ``i*V..(i+1)*V-1`` belong
    to ``video_index[i]``, its row in the manifest). Every video once, manifest order. Frames resized to short
    side ``settings.short_side``, crops of ``S = settings.test_crop_size``. ``manifest``: a path or
    entries."""
    from dali_pipelines.pipelines import multiview_pipeline

    device = torch.device(device)
    rt, e = settings.runtime, settings
    views = e.test_clips * e.test_crops
    batch = max(1, e.batch_size // views)
    source = MultiViewSource(_entries(manifest), batch, e)
    kw = _pipeline_kw(rt, device, 0)
    norm = _normalize(rt, device)

    def make(src: VideoSource) -> Any:
        return multiview_pipeline(src, batch_size=batch, **kw)

    def convert(outs: tuple, meta: np.ndarray) -> tuple:
        clips, label = (to_torch(o, device) for o in outs)  # (B, crops, clips*T, S, S, 3)
        b = clips.shape[0]
        clips = clips.reshape(b * views, e.clip.num_frames, *clips.shape[-3:])  # free: rows stay contiguous
        return norm(clips), label.to(torch.int64), torch.from_numpy(meta_field(meta, "video").copy())

    return DaliLoader(
        source,
        make,
        convert,
        device,
        rt.skip_corrupt,
        clips_per_sample=views,
        host_workers=kw["host_workers"],
        decode_one=_decode_one(kw),
    )


def _entries(manifest: str | Sequence[VideoEntry]) -> list[VideoEntry]:
    return read_manifest(manifest) if isinstance(manifest, (str, os.PathLike)) else list(manifest)


__all__ = [
    "DaliLoader",
    "META_FIELDS",
    "Normalize",
    "build_linear_loader",
    "build_pretrain_loader",
    "build_test_loader",
    "keep_rows",
    "to_torch",
    "torch_views",
]
