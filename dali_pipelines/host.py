"""The host side of the pipelines: epoch order, sharding, clip plans and trimmed inputs (no DALI import).

A source is the callable handed to ``fn.external_source(batch=True, batch_info=True)``: for step ``i`` of the
epoch it returns one batch of columns (trimmed encoded video, frame positions, augmentation parameters,
label, bookkeeping). Every random draw for a video comes from ``default_rng([seed, epoch, video, stream])``,
so a clip's frames and augmentation depend only on the seed, the epoch and the video, not on the rank, the
batch or the process that made it.

Sharding: each epoch a seeded permutation of all videos is dealt out round-robin, ``perm[rank::world]``, so
the shards partition the epoch (no video twice, none lost). Training drops the last partial batch and runs the
same ``(N // world) // B`` steps on every rank, so collectives stay in step; at most ``world * (B - 1) + N %
world`` videos (different ones each epoch) sit out an epoch. Evaluation keeps every video (a short last
batch).

A video that cannot be demuxed or read is reported once by a warning naming the file and replaced by the next
readable video of the shard, so one corrupt file does not end a run. The replacement's meta row says so
(``substitute``; ``skipped``: how many unreadable videos it was found past): training keeps it (whole
batches), evaluation drops it (``DaliLoader``), so an evaluation epoch delivers every readable video exactly
once and the unreadable ones (``VideoSource.bad``) not at all.

Columns are named: ``source.columns`` lists a source's outputs in order, ``Sample[name]`` reads one, and the
meta row's fields are ``META_FIELDS`` (``meta_field(meta, name)``). Nothing outside this module decodes a
column by position.

Worker processes. Under DALI's parallel external source each worker holds a copy of the source
(``for_workers``): it cannot see ``set_epoch`` calls made after it started, so the copy counts epochs from the
one it was made in (``pipeline epoch = epoch at the copy + DALI's epoch_idx``), applies ``start_step`` to its
first epoch only, and does not log: the unreadable videos it passes over come back in the meta row
(``skipped``) and the loader's process names them once (``note_skipped``).
"""

from __future__ import annotations

import copy
import logging
import math
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import spatial, temporal
from .packets import PacketIndex, VideoChangedError, VideoReadError, index_and_bytes, trim
from .settings import EvalSettings, PretrainSettings

log = logging.getLogger(__name__)

# meta column, (len(META_FIELDS),) int64 per sample: video index, frames decoded (packets handed to the
# decoder), first start, second start, bytes read, 1 if it stands in for an unreadable video, unreadable
# videos passed over
META_FIELDS = ("video", "frames_decoded", "start1", "start2", "bytes_read", "substitute", "skipped")
META = {name: i for i, name in enumerate(META_FIELDS)}
SUBSTITUTE = META["substitute"]


def meta_field(meta: np.ndarray, name: str) -> np.ndarray:
    """One named field of a meta row ``(len(META_FIELDS),)`` or batch ``(B, len(META_FIELDS))``."""
    return meta[..., META[name]]


def shard_order(num_videos: int, rank: int, world: int, epoch: int, seed: int, shuffle: bool) -> np.ndarray:
    """This rank's videos for ``epoch``: a seeded permutation dealt round-robin (a partition over ranks)."""
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} outside 0..{world - 1}")
    order = np.arange(num_videos)
    if shuffle:
        order = np.random.default_rng([seed, epoch, 0x5EED]).permutation(num_videos)
    return order[rank::world]


@dataclass
class Sample:
    """One video's outputs by column name (``VideoSource.columns`` gives the order handed to DALI)."""

    values: dict[str, np.ndarray]
    path: str

    def __getitem__(self, name: str) -> np.ndarray:
        return self.values[name]

    @property
    def columns(self) -> tuple[np.ndarray, ...]:
        """The outputs in the order they were set (the sources set them in ``VideoSource.columns`` order)."""
        return tuple(self.values.values())

    @property
    def encoded(self) -> np.ndarray:
        return self.values["encoded"]

    @property
    def video(self) -> int:
        return int(self.values["meta"][META["video"]])


def _batch_column(arrays: list[np.ndarray]) -> np.ndarray | list[np.ndarray]:
    """One output column of a batch: one dense ``(B, ...)`` array where every sample has the same shape and
    dtype (parameters, labels, meta), else the list (encoded streams, frame lists). A dense column is one
    array to copy, to send from a worker process and to feed DALI, instead of B small ones."""
    first = arrays[0]
    if all(a.shape == first.shape and a.dtype == first.dtype for a in arrays):
        return np.stack(arrays)
    return arrays


class VideoSource:
    """Base external source: epochs, shards, batches, bad-file substitution; subclasses plan one video.

    Picklable (entries, configs and NumPy arrays only), so DALI can hand a copy to worker processes."""

    columns: tuple[str, ...] = ()  # output names, in the order handed to DALI
    purpose = 0  # separates the random streams of the different pipelines
    stop_on_change = False  # a file changed since the manifest raises instead of being replaced (loaders)

    def __init__(
        self,
        entries: Sequence[Any],
        batch_size: int,
        *,
        rank: int = 0,
        world: int = 1,
        seed: int = 0,
        shuffle: bool = True,
        drop_last: bool = True,
        index_cache: int = 65536,
    ):
        if not entries:
            raise ValueError("no videos to load")
        if batch_size <= 0:
            raise ValueError(f"batch size must be positive, got {batch_size}")
        self.entries = list(entries)
        self.batch_size = batch_size
        self.rank, self.world, self.seed = rank, world, seed
        self.shuffle, self.drop_last = shuffle, drop_last
        self.epoch = 0
        self.start_step = 0  # a rebuilt pipeline resumes mid-epoch: its iteration 0 is this step
        self.bad: set[int] = set()
        self.recent: OrderedDict[int, list[Sample]] = OrderedDict()  # step -> samples, for error reports
        # packet indices, least recently used first: about 3 KB a 250-frame video; an evicted file is indexed
        # again from the one read its next clip needs anyway, so the bound costs a demux pass, never a read
        self._index: OrderedDict[str, PacketIndex] = OrderedDict()
        self.index_cache = index_cache
        self._first_read: dict[str, bytes] = {}  # bytes read to index a file, kept for its first clip
        self.in_worker = False  # a copy in a worker process (``for_workers``)
        self.set_epoch(0)

    @property
    def num_outputs(self) -> int:
        return len(self.columns)

    def column(self, name: str) -> int:
        """Position of output ``name`` in ``columns`` (ValueError naming it if the source has none)."""
        try:
            return self.columns.index(name)
        except ValueError:
            raise ValueError(f"{type(self).__name__} has no column {name!r}; it has {self.columns}") from None

    def for_workers(self) -> VideoSource:
        """The copy DALI's worker processes run: it follows the pipeline's epochs from the current one (see
        the module docstring), starts at ``start_step``, keeps the bad videos and packet indices known so far,
        and logs nothing. Each worker indexes the other files itself, the first time it meets them."""
        clone = copy.copy(self)
        clone.bad = set(self.bad)
        clone.recent, clone._first_read = OrderedDict(), {}
        clone._index = OrderedDict(self._index)  # the files indexed so far (a forked worker shares the pages)
        clone.in_worker, clone.worker_epoch0 = True, self.epoch
        return clone

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["recent"], state["_first_read"] = OrderedDict(), {}  # per-process caches do not travel
        return state

    # ------------------------------------------------------------------ epoch structure
    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        self.order = shard_order(
            len(self.entries), self.rank, self.world, self.epoch, self.seed, self.shuffle
        )

    def __len__(self) -> int:
        """Steps per epoch on this rank (equal on all ranks when dropping the last batch)."""
        if self.drop_last:
            return (len(self.entries) // self.world) // self.batch_size
        return math.ceil(len(self.order) / self.batch_size)

    def batch_videos(self, step: int) -> np.ndarray:
        return self.order[step * self.batch_size : (step + 1) * self.batch_size]

    # ------------------------------------------------------------------ external source protocol
    def __call__(self, info: Any) -> tuple[np.ndarray | list[np.ndarray], ...]:
        iteration = int(getattr(info, "iteration", info))
        first_epoch = True
        if self.in_worker:  # follow the pipeline's epochs (see the module docstring)
            epoch_idx = int(getattr(info, "epoch_idx", 0))
            first_epoch = epoch_idx == 0
            if self.epoch != self.worker_epoch0 + epoch_idx:
                self.set_epoch(self.worker_epoch0 + epoch_idx)
        step = iteration + (self.start_step if first_epoch else 0)
        if step >= len(self):
            raise StopIteration
        samples = self.batch(step)
        return tuple(_batch_column([s[name] for s in samples]) for name in self.columns)

    def batch(self, step: int) -> list[Sample]:
        """The samples of ``step`` of the current epoch (kept in ``recent`` for error reports)."""
        samples = []
        for pos, video in enumerate(self.batch_videos(step)):
            samples.append(self._sample_or_substitute(step * self.batch_size + pos, int(video)))
        self.recent[step] = samples
        while len(self.recent) > 8:
            self.recent.popitem(last=False)
        return samples

    def _sample_or_substitute(self, pos: int, video: int) -> Sample:
        for k in range(len(self.order)):
            v = video if k == 0 else int(self.order[(pos + k) % len(self.order)])
            if v in self.bad:
                continue
            try:
                sample = self.sample(v)
            except VideoReadError as e:
                if self.stop_on_change and isinstance(e, VideoChangedError):
                    raise  # data.skip_corrupt: false
                self.mark_bad(v, str(e))
                continue
            if k:
                sample["meta"][SUBSTITUTE] = 1
                sample["meta"][META["skipped"]] = k
            return sample
        raise VideoReadError(self.entries[video].path, "no readable video left in this shard")

    def mark_bad(self, video: int, reason: str) -> None:
        if video not in self.bad:
            self.bad.add(video)
            if self.in_worker:  # the loader's process names it, from the meta row (note_skipped)
                return
            log.warning(
                "skipping unreadable video %s (%s); %s",
                self.entries[video].path,
                reason,
                "a readable video of the shard takes its place"
                if self.drop_last
                else "it is left out of this evaluation",
            )

    def note_skipped(self, step: int, meta: np.ndarray) -> None:
        """Record (and name once) the unreadable videos a worker passed over in batch ``step`` of the current
        epoch: a sample at batch position ``b`` with ``skipped = k`` stands in for the ``k`` videos from its
        slot on. The reason is found again here, by indexing the file in this process."""
        for b in np.flatnonzero(meta_field(meta, "skipped")).tolist():
            pos = step * self.batch_size + b
            for j in range(int(meta[b, META["skipped"]])):
                v = int(self.order[(pos + j) % len(self.order)])
                if v not in self.bad:
                    try:
                        index_and_bytes(self.entries[v].path, self.entries[v].fingerprint)
                        reason = "unreadable in a loader worker"
                    except VideoReadError as e:
                        reason = str(e)
                    self.mark_bad(v, reason)

    # ------------------------------------------------------------------ per video
    def index(self, video: int) -> PacketIndex:
        path = self.entries[video].path
        idx = self._index.get(path)
        if idx is None:
            idx, self._first_read[path] = index_and_bytes(path, self.entries[video].fingerprint)
            self._index[path] = idx
            if len(self._index) > self.index_cache:
                self._index.popitem(last=False)
        else:
            self._index.move_to_end(path)
        return idx

    def rng(self, video: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch, video, self.purpose])

    def length(self, video: int, idx: PacketIndex) -> int:
        """Frames to sample from: the manifest's count, capped by the packets actually in the file."""
        return max(1, min(int(self.entries[video].num_frames), idx.num_frames))

    def sample(self, video: int) -> Sample:
        raise NotImplementedError

    def cut(self, idx: PacketIndex, needed: np.ndarray, data: bytes | None) -> Any:
        """The decoder's input for frames ``needed`` of a video: ``packets.trim`` (``jpeg_frames``: JPEGs)."""
        return trim(idx, needed, data)

    def _decode_plan(self, video: int, clips: np.ndarray) -> tuple[PacketIndex, Any, np.ndarray]:
        """Trim for the union of ``clips`` (frame indices, any shape); returns the inverse map into it."""
        idx = self.index(video)
        union, inverse = np.unique(clips.reshape(-1), return_inverse=True)
        return idx, trim(idx, union, self._first_read.pop(idx.path, None)), inverse.astype(np.int32)

    def _meta(self, video: int, tc: Any, start1: int, start2: int) -> np.ndarray:
        return np.array(
            [video, tc.frames_decoded, start1, start2, tc.bytes_read, 0, 0], np.int64
        )  # META_FIELDS


class PretrainSource(VideoSource):
    """Two CVRL views per video. Columns: ``encoded``, ``frames``, ``order1``, ``order2``, then per view ``v``
    the recipe's draw (``Recipe.ops``: ``roi_start{v}``, ``roi_end{v}``, ``color{v}`` (6,), ``color_order{v}``
    (4,), + ``sigma{v}`` when blurring, + ``solarize{v}`` when solarizing), then ``label``, ``meta``.
    ``frames``: the sorted union of both clips' frames as positions in the trimmed stream (decoded in one
    forward pass); ``order1/2``: each view's frames within that union."""

    purpose = 1

    def __init__(self, entries: Sequence[Any], batch_size: int, settings: PretrainSettings, **kw: Any):
        self.settings = settings
        self.recipe = settings.recipe
        self.columns = (
            "encoded",
            "frames",
            "order1",
            "order2",
            *self.view_names(1),
            *self.view_names(2),
            "label",
            "meta",
        )
        self._view_keys = (self.view_names(1), self.view_names(2))
        super().__init__(entries, batch_size, **kw)

    def view_names(self, view: int) -> tuple[str, ...]:
        """The parameter columns of view 1 or 2, in order (the recipe's ``ops``)."""
        return tuple(f"{n}{view}" for n in self.recipe.ops)

    @property
    def view_columns(self) -> int:
        """Parameter columns per view."""
        return len(self.recipe.ops)

    def sample(self, video: int) -> Sample:
        clip, gap = self.settings.clip, self.settings.gap
        t, stride = clip.num_frames, clip.stride
        rng = self.rng(video)
        idx = self.index(video)
        n = self.length(video, idx)
        s1, s2 = temporal.sample_starts(rng, n, t, stride, gap.distribution, gap.power)[0].tolist()
        # the two clips' frames (2T,), their sorted union and each frame's place in it, in Python lists (as
        # ``np.unique(..., return_inverse=True)`` of ``temporal.clip_indices``, without its array calls)
        frames = [(s + stride * k) % n for s in (s1, s2) for k in range(t)]
        union = sorted(set(frames))
        place = {f: i for i, f in enumerate(union)}
        inverse = np.array([place[f] for f in frames], np.int32)
        tc = self.cut(idx, np.array(union, np.int64), self._first_read.pop(idx.path, None))
        values = {"encoded": tc.encoded, "frames": tc.positions, "order1": inverse[:t], "order2": inverse[t:]}
        for view, names in enumerate(self._view_keys):
            values.update(zip(names, self.recipe.draw_view(rng, idx.height, idx.width, view)))
        values["label"] = np.array(self.entries[video].label, np.int32)
        values["meta"] = self._meta(video, tc, s1, s2)
        return Sample(values, idx.path)


class LinearSource(VideoSource):
    """One clip per video (linear evaluation): columns ``encoded``, ``frames``, ``order``, ``roi_start``,
    ``roi_end``, ``label``, ``meta``.

    Training: uniform start, random resized crop and flip, no colour. Otherwise: the centre clip and the
    centre square that a resize to ``short_side`` then a ``crop_size`` centre crop would keep."""

    columns = ("encoded", "frames", "order", "roi_start", "roi_end", "label", "meta")
    purpose = 2

    def __init__(
        self, entries: Sequence[Any], batch_size: int, settings: EvalSettings, train: bool, **kw: Any
    ):
        self.settings, self.train = settings, train
        super().__init__(entries, batch_size, shuffle=train, drop_last=train, **kw)

    def sample(self, video: int) -> Sample:
        e = self.settings
        t, stride = e.clip.num_frames, e.clip.stride
        rng = self.rng(video)
        idx = self.index(video)
        n = self.length(video, idx)
        if self.train:
            start = temporal.uniform_start(rng, n, t, stride)
            roi_start, roi_end = e.recipe.draw_crop(rng, idx.height, idx.width)
        else:
            start = int(temporal.even_starts(n, t, stride, 1)[0])
            side = min(idx.height, idx.width) * min(1.0, e.recipe.crop_size / e.short_side)
            y0, x0 = (idx.height - side) / 2, (idx.width - side) / 2
            roi_start, roi_end = spatial.crop_roi(np.array([y0, x0, y0 + side, x0 + side], np.float32), False)
        clip = temporal.clip_indices(start, n, t, stride)[None]
        idx, tc, inverse = self._decode_plan(video, clip)
        label = np.array(self.entries[video].label, np.int32)
        values = {
            "encoded": tc.encoded,
            "frames": tc.positions,
            "order": inverse,
            "roi_start": roi_start,
            "roi_end": roi_end,
            "label": label,
            "meta": self._meta(video, tc, start, start),
        }
        return Sample(values, idx.path)


class MultiViewSource(VideoSource):
    """Test views: ``test_clips`` evenly spaced clips x ``test_crops`` crops per video, every video once, in
    manifest order. Columns ``encoded``, ``frames``, ``order`` (clips*T,), ``anchors`` (crops, 2) relative (y,
    x), ``label``, ``meta``."""

    columns = ("encoded", "frames", "order", "anchors", "label", "meta")
    purpose = 3

    def __init__(self, entries: Sequence[Any], batch_size: int, settings: EvalSettings, **kw: Any):
        self.settings = settings
        super().__init__(entries, batch_size, shuffle=False, drop_last=False, **kw)

    def sample(self, video: int) -> Sample:
        e = self.settings
        t, stride = e.clip.num_frames, e.clip.stride
        idx = self.index(video)
        n = self.length(video, idx)
        starts = temporal.even_starts(n, t, stride, e.test_clips)
        clips = np.stack([temporal.clip_indices(int(s), n, t, stride) for s in starts])
        idx, tc, inverse = self._decode_plan(video, clips)
        anchors = spatial.eval_crop_anchors(idx.height, idx.width, e.test_crops)
        label = np.array(self.entries[video].label, np.int32)
        values = {
            "encoded": tc.encoded,
            "frames": tc.positions,
            "order": inverse,
            "anchors": anchors,
            "label": label,
            "meta": self._meta(video, tc, int(starts[0]), int(starts[-1])),
        }
        return Sample(values, idx.path)
