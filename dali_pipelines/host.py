"""The host side of the pipelines: epoch order, sharding, clip plans and trimmed inputs (no DALI import).

A source is the callable handed to ``fn.external_source(batch=True, batch_info=True)``: for step ``i`` of the
epoch it returns one batch of columns (trimmed encoded video, frame positions, augmentation parameters,
label, bookkeeping). Every random draw for a video comes from ``default_rng([seed, epoch, video, stream])``, so
a clip's frames and augmentation depend only on the seed, the epoch and the video, not on the rank, the
batch or the process that made it.

Sharding: each epoch a seeded permutation of all videos is dealt out round-robin, ``perm[rank::world]``, so the
shards partition the epoch (no video twice, none lost). Training drops the last partial batch and runs the
same ``(N // world) // B`` steps on every rank, so collectives stay in step; at most ``world * (B - 1) + N % world``
videos (different ones each epoch) sit out an epoch. Evaluation keeps every video (a short last batch).

A video that cannot be demuxed or read is reported once by a warning naming the file and replaced by the next
readable video of the shard, so one corrupt file does not end a run. The replacement's meta row says so
(``substitute``): training keeps it (whole batches), evaluation drops it (``DaliLoader``), so an evaluation
epoch delivers every readable video exactly once and the unreadable ones (``VideoSource.bad``) not at all.
"""
from __future__ import annotations

import logging
import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from . import spatial, temporal
from .packets import PacketIndex, VideoReadError, index_and_bytes, trim

log = logging.getLogger("fastcvrl.data")

# meta column: (video index, frames decoded, first start, second start, bytes read, 1 if it stands in for an
# unreadable video)
META_FIELDS = ("video", "frames_decoded", "start1", "start2", "bytes_read", "substitute")
SUBSTITUTE = META_FIELDS.index("substitute")


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
    columns: tuple[np.ndarray, ...]
    path: str
    encoded: np.ndarray


class VideoSource:
    """Base external source: epochs, shards, batches, bad-file substitution; subclasses plan one video."""

    num_outputs = 0
    purpose = 0  # separates the random streams of the different pipelines

    def __init__(self, entries: Sequence[Any], batch_size: int, *, rank: int = 0, world: int = 1, seed: int = 0,
                 shuffle: bool = True, drop_last: bool = True, index_cache: int = 65536):
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
        self.set_epoch(0)

    # ------------------------------------------------------------------ epoch structure
    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        self.order = shard_order(len(self.entries), self.rank, self.world, self.epoch, self.seed, self.shuffle)

    def __len__(self) -> int:
        """Steps per epoch on this rank (equal on all ranks when dropping the last batch)."""
        if self.drop_last:
            return (len(self.entries) // self.world) // self.batch_size
        return math.ceil(len(self.order) / self.batch_size)

    def batch_videos(self, step: int) -> np.ndarray:
        return self.order[step * self.batch_size : (step + 1) * self.batch_size]

    # ------------------------------------------------------------------ external source protocol
    def __call__(self, info: Any) -> tuple[list[np.ndarray], ...]:
        step = int(getattr(info, "iteration", info)) + self.start_step
        if step >= len(self):
            raise StopIteration
        samples = []
        for pos, video in enumerate(self.batch_videos(step)):
            samples.append(self._sample_or_substitute(step * self.batch_size + pos, int(video)))
        self.recent[step] = samples
        while len(self.recent) > 8:
            self.recent.popitem(last=False)
        return tuple(list(col) for col in zip(*(s.columns for s in samples)))

    def _sample_or_substitute(self, pos: int, video: int) -> Sample:
        for k in range(len(self.order)):
            v = video if k == 0 else int(self.order[(pos + k) % len(self.order)])
            if v in self.bad:
                continue
            try:
                sample = self.sample(v)
            except VideoReadError as e:
                self.mark_bad(v, str(e))
                continue
            if k:
                sample.columns[-1][SUBSTITUTE] = 1
            return sample
        raise VideoReadError(self.entries[video].path, "no readable video left in this shard")

    def mark_bad(self, video: int, reason: str) -> None:
        if video not in self.bad:
            self.bad.add(video)
            log.warning("skipping unreadable video %s (%s); %s", self.entries[video].path, reason,
                        "a readable video of the shard takes its place" if self.drop_last
                        else "it is left out of this evaluation")

    # ------------------------------------------------------------------ per video
    def index(self, video: int) -> PacketIndex:
        path = self.entries[video].path
        idx = self._index.get(path)
        if idx is None:
            idx, self._first_read[path] = index_and_bytes(path)
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

    def _decode_plan(self, video: int, clips: np.ndarray) -> tuple[PacketIndex, Any, np.ndarray]:
        """Trim for the union of ``clips`` (frame indices, any shape); returns the inverse map into it."""
        idx = self.index(video)
        union, inverse = np.unique(clips.reshape(-1), return_inverse=True)
        return idx, trim(idx, union, self._first_read.pop(idx.path, None)), inverse.astype(np.int32)

    def _meta(self, video: int, tc: Any, start1: int, start2: int) -> np.ndarray:
        return np.array([video, tc.frames_decoded, start1, start2, tc.bytes_read, 0], np.int64)


class PretrainSource(VideoSource):
    """Two CVRL views per video. Columns: encoded, frames, order1, order2, then per view roi_start, roi_end,
    colour params (6,), colour op order (4,) (``spatial.color_params``) (+ blur_sigma when blurring, + solarize when solarizing), then label, meta. ``frames``: the sorted
    union of both clips' frames as positions in the trimmed stream (decoded in one forward pass);
    ``order1/2``: each view's frames within that union."""

    purpose = 1

    def __init__(self, entries: Sequence[Any], batch_size: int, data_cfg: Any, **kw: Any):
        self.cfg = data_cfg
        temporal.check_rule(data_cfg.gap_distribution, data_cfg.gap_power)
        spatial.check_view_probs("blur_prob", data_cfg.blur_prob)
        spatial.check_view_probs("solarize_prob", data_cfg.solarize_prob)
        self.view_columns = 4 + int(data_cfg.blur) + int(data_cfg.solarize)
        self.num_outputs = 6 + 2 * self.view_columns
        super().__init__(entries, batch_size, **kw)

    def sample(self, video: int) -> Sample:
        c = self.cfg
        rng = self.rng(video)
        idx = self.index(video)
        n = self.length(video, idx)
        s1, s2 = temporal.sample_starts(rng, n, c.num_frames, c.stride, c.gap_distribution, c.gap_power)[0]
        clips = np.stack([temporal.clip_indices(s, n, c.num_frames, c.stride) for s in (s1, s2)])  # (2, T)
        idx, tc, inverse = self._decode_plan(video, clips)
        views = []
        for view in range(2):
            box = spatial.random_resized_crop(rng, idx.height, idx.width, (c.min_area, c.max_area),
                                              (c.min_aspect, c.max_aspect))
            start, end = spatial.crop_roi(box, bool(rng.random() < c.flip_prob))
            params, order = spatial.color_params(
                rng, c.color_jitter_prob, (c.brightness, c.contrast, c.saturation, c.hue), c.grayscale_prob)
            # per-view blur and solarize probabilities (the reference: blur 1.0 / 0.1, solarize 0 / 0.2)
            sigma = spatial.blur_sigma(rng, c.blur_prob[view]) if c.blur else 0.0
            sol = bool(c.solarize and rng.random() < c.solarize_prob[view])
            views += [start, end, params, order]
            views += [np.array(sigma, np.float32)] if c.blur else []
            views += [np.array(sol)] if c.solarize else []
        label = np.array(self.entries[video].label, np.int32)
        cols = (tc.encoded, tc.positions, inverse[: c.num_frames], inverse[c.num_frames :], *views, label,
                self._meta(video, tc, int(s1), int(s2)))
        return Sample(cols, idx.path, tc.encoded)


class LinearSource(VideoSource):
    """One clip per video (linear evaluation): columns (encoded, frames, order, roi_start, roi_end, label, meta).

    Training: uniform start, random resized crop and flip, no colour. Otherwise: the centre clip and the
    centre square that a resize to ``short_side`` then a ``crop_size`` centre crop would keep."""

    num_outputs = 7
    purpose = 2

    def __init__(self, entries: Sequence[Any], batch_size: int, eval_cfg: Any, data_cfg: Any, train: bool,
                 **kw: Any):
        self.ecfg, self.cfg, self.train = eval_cfg, data_cfg, train
        super().__init__(entries, batch_size, shuffle=train, drop_last=train, **kw)

    def sample(self, video: int) -> Sample:
        e, c = self.ecfg, self.cfg
        rng = self.rng(video)
        idx = self.index(video)
        n = self.length(video, idx)
        if self.train:
            start = temporal.uniform_start(rng, n, e.num_frames, e.stride)
            box = spatial.random_resized_crop(rng, idx.height, idx.width, (c.min_area, c.max_area),
                                              (c.min_aspect, c.max_aspect))
            flip = bool(rng.random() < c.flip_prob)
        else:
            start = int(temporal.even_starts(n, e.num_frames, e.stride, 1)[0])
            side = min(idx.height, idx.width) * min(1.0, e.crop_size / e.short_side)
            y0, x0 = (idx.height - side) / 2, (idx.width - side) / 2
            box, flip = np.array([y0, x0, y0 + side, x0 + side], np.float32), False
        clip = temporal.clip_indices(start, n, e.num_frames, e.stride)[None]
        idx, tc, inverse = self._decode_plan(video, clip)
        roi_start, roi_end = spatial.crop_roi(box, flip)
        label = np.array(self.entries[video].label, np.int32)
        cols = (tc.encoded, tc.positions, inverse, roi_start, roi_end, label, self._meta(video, tc, start, start))
        return Sample(cols, idx.path, tc.encoded)


class MultiViewSource(VideoSource):
    """Test views: ``test_clips`` evenly spaced clips x ``test_crops`` crops per video, every video once, in
    manifest order. Columns (encoded, frames, order (clips*T,), anchors (crops, 2) relative (y, x), label, meta)."""

    num_outputs = 6
    purpose = 3

    def __init__(self, entries: Sequence[Any], batch_size: int, eval_cfg: Any, **kw: Any):
        self.ecfg = eval_cfg
        super().__init__(entries, batch_size, shuffle=False, drop_last=False, **kw)

    def sample(self, video: int) -> Sample:
        e = self.ecfg
        idx = self.index(video)
        n = self.length(video, idx)
        starts = temporal.even_starts(n, e.num_frames, e.stride, e.test_clips)
        clips = np.stack([temporal.clip_indices(int(s), n, e.num_frames, e.stride) for s in starts])
        idx, tc, inverse = self._decode_plan(video, clips)
        anchors = spatial.eval_crop_anchors(idx.height, idx.width, e.test_crops)
        label = np.array(self.entries[video].label, np.int32)
        cols = (tc.encoded, tc.positions, inverse, anchors, label,
                self._meta(video, tc, int(starts[0]), int(starts[-1])))
        return Sample(cols, idx.path, tc.encoded)
