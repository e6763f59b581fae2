"""The baseline CVRL loader: PyAV decoding plus torch augmentations in a torch ``DataLoader``.

This is how peer codebases load video (seek to the keyframe before each clip, decode up to the clip's end,
augment with torch ops in worker processes). ``benchmarks/loader_bench.py`` measures the DALI pipeline beside
it, and it is a DALI-free fallback with the same output contract as
``dali_pipelines.loaders.build_pretrain_loader``:
``(view1, view2, label)`` with views float ``(B, 3, T, H, W)`` in ``torch.channels_last_3d``.

The work per video is the same as the DALI pipeline's, drawn by the same host-side functions from the same
random streams (``dali_pipelines.temporal`` / ``spatial``, seeded by (seed, epoch, video)) and in the same
epoch order (``shard_order``): two clips of T frames at stride s placed by CVRL's temporal sampling (Qian et
al. 2021, Sec. 3.1), then per clip, identical for all its frames: random resized crop (area 0.3-1, aspect
0.5-2), horizontal flip (p 0.5), the reference's colour jitter (p 0.8; ``torch_augment.color_jitter``) and
grayscale (p 0.2), clamp to [0, 1], normalisation. Each view is decoded on its own (two seeks per video), as
peers do; ``frames_decoded`` counts every frame the decoder produced."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import av
import numpy as np
import torch
import torch.nn.functional as F
from av.video.reformatter import VideoReformatter
from torch.utils.data import DataLoader, Dataset

from dali_pipelines import (  # host-side rules and torch ops, no DALI import
    recipe,
    spatial,
    temporal,
    torch_augment,
)
from dali_pipelines.cores import usable_cores
from dali_pipelines.host import PretrainSource, shard_order
from dali_pipelines.manifest import VideoEntry, read_manifest
from fastcvrl.config import Config, DataConfig

PRETRAIN_STREAM = PretrainSource.purpose  # the DALI source's random stream id for pretraining draws


# ------------------------------------------------------------------------------------------ decoding
def decode_frames(path: str, indices: np.ndarray, fps: float | None = None) -> tuple[np.ndarray, int]:
    """RGB frames ``(len(indices), H, W, 3)`` uint8 at ``indices`` and the number of frames decoded.

    Seeks to the keyframe at or before the first needed frame (``backward=True, any_frame=False``) and
    decodes up to the last needed one; only the needed frames are converted to RGB, through one reused
    ``VideoReformatter`` (PyAV 18's ``frame.to_ndarray(format="rgb24")`` sets up a new converter per frame:
    about 10x slower at 112x112, identical pixels). One decoder thread.
    """
    wanted = {int(i) for i in np.unique(indices)}
    first, last = min(wanted), max(wanted)
    out: dict[int, np.ndarray] = {}
    decoded = 0
    to_rgb = VideoReformatter()
    with av.open(path) as container:
        stream = container.streams.video[0]
        stream.codec_context.thread_count = 1
        rate = float(stream.average_rate or stream.guessed_rate or fps or 25.0)
        tb = float(stream.time_base)
        t0 = stream.start_time or 0
        if first > 0:
            container.seek(t0 + int(first / rate / tb), backward=True, any_frame=False, stream=stream)
        for frame in container.decode(stream):
            decoded += 1
            pts = frame.pts if frame.pts is not None else frame.dts
            idx = int(round((pts - t0) * tb * rate))
            if idx in wanted:
                out[idx] = to_rgb.reformat(frame, format="rgb24").to_ndarray()  # (H, W, 3) uint8
            if idx >= last:
                break
    missing = sorted(wanted - out.keys())
    if missing:
        raise ValueError(f"{path}: could not decode frames {missing[:5]} (of {len(wanted)} needed)")
    return np.stack([out[int(i)] for i in indices]), decoded


# ------------------------------------------------------------------------------------------ spatial
@dataclass(frozen=True)
class ClipAug:
    """One clip's spatial augmentation, applied identically to all its frames.

    Crop box in source pixels; ``color``/``order``: the colour jitter and grayscale draw
    (``recipe.color_params``).
    """

    top: int
    left: int
    height: int
    width: int
    flip: bool
    color: np.ndarray  # (6,) float32
    order: np.ndarray  # (4,) int32


def draw_video(
    rng: np.random.Generator, num_frames: int, height: int, width: int, cfg: DataConfig
) -> tuple[tuple[int, int], list[ClipAug]]:
    """The two clip starts and the two clips' augmentations of one video, drawn exactly as the DALI
    pipeline's host side draws them (``dali_pipelines.host.PretrainSource.sample``: same functions, same
    order, so the same generator state gives the same clips); the crop box is rounded to whole pixels."""
    s1, s2 = temporal.sample_starts(
        rng, num_frames, cfg.num_frames, cfg.stride, cfg.gap_distribution, cfg.gap_power
    )[0]
    augs = []
    for _ in range(2):
        y0, x0, y1, x1 = spatial.random_resized_crop(
            rng, height, width, (cfg.min_area, cfg.max_area), (cfg.min_aspect, cfg.max_aspect)
        )
        flip = bool(rng.random() < cfg.flip_prob)
        color, order = recipe.color_params(
            rng,
            cfg.color_jitter_prob,
            (cfg.brightness, cfg.contrast, cfg.saturation, cfg.hue),
            cfg.grayscale_prob,
        )
        top, left = min(int(round(y0)), height - 1), min(int(round(x0)), width - 1)
        h = max(1, min(int(round(y1)), height) - top)
        w = max(1, min(int(round(x1)), width) - left)
        augs.append(ClipAug(top, left, h, w, flip, color, order))
    return (int(s1), int(s2)), augs


def augment_clip(
    frames: torch.Tensor, aug: ClipAug, size: int, mean: Sequence[float], std: Sequence[float]
) -> torch.Tensor:
    """``frames`` uint8 ``(T, H, W, 3)`` -> float32 ``(T, size, size, 3)``: crop, bilinear resize, flip,
    colour jitter and grayscale, clamp to [0, 1], normalise. One set of parameters for every frame of the
    clip."""
    x = frames[:, aug.top : aug.top + aug.height, aug.left : aug.left + aug.width, :]
    x = x.permute(0, 3, 1, 2).float()  # (T, 3, h, w), channels-last in memory
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=False)
    x = x.permute(0, 2, 3, 1)  # (T, S, S, 3)
    if aug.flip:
        x = x.flip(2)
    x = torch_augment.color_jitter(x.permute(0, 3, 1, 2) / 255.0, aug.color, aug.order)  # (T, 3, S, S)
    x = x.permute(0, 2, 3, 1).clamp(0.0, 1.0)  # (T, S, S, 3)
    if any(m != 0.0 for m in mean) or any(s != 1.0 for s in std):
        x = (x - torch.tensor(mean, dtype=torch.float32)) / torch.tensor(std, dtype=torch.float32)
    return x


# ------------------------------------------------------------------------------------------ loader
class TwoViewDataset(Dataset):
    """One item per video: ``(view1 (T,S,S,3), view2 (T,S,S,3), label, frames_decoded)``.

    Randomness comes from ``(seed, epoch, index)`` only, so an item is the same whichever worker makes it.
    A video that fails to decode is reported on stderr and replaced by the next one.
    """

    def __init__(self, entries: Sequence[VideoEntry], cfg: DataConfig, seed: int = 0):
        if not entries:
            raise ValueError("baseline loader: the manifest lists no videos")
        if cfg.blur or cfg.solarize:
            raise ValueError(
                "baseline loader: data.blur and data.solarize are not implemented here; set them false"
            )
        self.entries, self.cfg, self.seed, self.epoch = list(entries), cfg, seed, 0

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, int, int]:
        for attempt in range(len(self.entries)):
            entry = self.entries[(index + attempt) % len(self.entries)]
            try:
                return self._item(entry, (index + attempt) % len(self.entries))
            except (av.error.FFmpegError, ValueError, OSError) as err:
                print(f"baseline loader: skipping {entry.path}: {err}", flush=True)
        raise RuntimeError("baseline loader: no video in the manifest could be decoded")

    def _item(self, entry: VideoEntry, index: int) -> tuple[torch.Tensor, torch.Tensor, int, int]:
        c = self.cfg
        rng = np.random.default_rng([self.seed, self.epoch, index, PRETRAIN_STREAM])
        starts, augs = draw_video(rng, entry.num_frames, entry.height, entry.width, c)
        views, decoded = [], 0
        for start, aug in zip(starts, augs):
            idx = temporal.clip_indices(start, entry.num_frames, c.num_frames, c.stride)
            frames, n = decode_frames(entry.path, idx, entry.fps)  # (T, H, W, 3) uint8
            if frames.shape[1:3] != (entry.height, entry.width):
                raise ValueError(
                    f"frames are {frames.shape[2]}x{frames.shape[1]}, the manifest says "
                    f"{entry.width}x{entry.height}"
                )
            decoded += n
            views.append(augment_clip(torch.from_numpy(frames), aug, c.crop_size, c.mean, c.std))
        return views[0], views[1], entry.label, decoded


def collate_views(items: list) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Stack to ``(B, T, S, S, 3)`` and view as ``(B, 3, T, S, S)``: channels_last_3d with no copy."""
    v1 = torch.stack([it[0] for it in items]).permute(0, 4, 1, 2, 3)
    v2 = torch.stack([it[1] for it in items]).permute(0, 4, 1, 2, 3)
    label = torch.tensor([it[2] for it in items], dtype=torch.int64)
    decoded = torch.tensor([it[3] for it in items], dtype=torch.int64)
    return v1, v2, label, decoded


class BaselineLoader:
    """Iterable of ``(view1, view2, label)`` batches on ``device``, one epoch per ``iter()``.

    ``frames_decoded`` / ``videos`` count decoded frames and delivered videos (two clips each) since creation.
    """

    def __init__(
        self,
        entries: Sequence[VideoEntry],
        cfg: DataConfig,
        batch_size: int,
        *,
        device: torch.device,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        num_workers: int | None = None,
    ):
        self.dataset = TwoViewDataset(entries, cfg, seed)
        self.batch_size, self.device, self.rank, self.world_size, self.seed = (
            batch_size,
            device,
            rank,
            world_size,
            seed,
        )
        self.num_workers = default_workers() if num_workers is None else num_workers
        self.epoch = 0
        self.frames_decoded = 0
        self.videos = 0
        if len(self) == 0:
            raise ValueError(
                f"baseline loader: {len(entries)} videos over {world_size} ranks give no batch of "
                f"{batch_size}"
            )

    def __len__(self) -> int:
        return len(self.dataset) // self.world_size // self.batch_size

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _indices(self) -> list[int]:
        """The DALI loader's epoch order (``shard_order``): the same videos in the same batches."""
        order = shard_order(
            len(self.dataset), self.rank, self.world_size, self.epoch, self.seed, shuffle=True
        )
        return order[: len(self) * self.batch_size].tolist()

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        return self.iter_from(0)

    def iter_from(self, start: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """The epoch's batches from batch ``start`` on (the same ones ``iter()`` yields there)."""
        self.dataset.epoch = self.epoch  # forked workers copy it
        loader = DataLoader(
            self.dataset,
            batch_size=self.batch_size,
            sampler=self._indices()[start * self.batch_size :],
            num_workers=self.num_workers,
            collate_fn=collate_views,
            pin_memory=self.device.type == "cuda",
            drop_last=True,
        )
        for v1, v2, label, decoded in loader:
            self.frames_decoded += int(decoded.sum())
            self.videos += len(label)
            nb = self.device.type == "cuda"
            yield (
                v1.to(self.device, non_blocking=nb),
                v2.to(self.device, non_blocking=nb),
                label.to(self.device, non_blocking=nb),
            )


def default_workers() -> int:
    """One worker process per usable core (each decodes with one thread)."""
    return usable_cores()


def build_baseline_loader(
    cfg: Config,
    manifest: str,
    *,
    rank: int = 0,
    world_size: int = 1,
    device: torch.device,
    seed: int = 0,
    num_workers: int | None = None,
) -> BaselineLoader:
    """Same contract as ``dali_pipelines.loaders.build_pretrain_loader``; B = ``cfg.train.batch_size //
    world_size``."""
    entries = read_manifest(manifest)
    return BaselineLoader(
        entries,
        cfg.data,
        cfg.train.batch_size // world_size,
        device=device,
        rank=rank,
        world_size=world_size,
        seed=seed,
        num_workers=num_workers,
    )
