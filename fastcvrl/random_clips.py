"""A data source of random tensors with the pretraining loader's interface (no files, no decoding).

For tests and step benchmarks (``data.source: random``): fully deterministic in (seed, epoch, rank), so a
resumed run sees exactly the batches the uninterrupted run saw. Video ``i`` is a fixed random clip; its two
views are that clip plus independent noise, so the contrastive task is learnable and the loss falls.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch


class RandomClipLoader:
    """Yields ``(view1, view2, label)`` like ``fastcvrl.data.build_pretrain_loader``'s loader.

    ``num_videos`` videos per epoch, shuffled per epoch, sharded by rank, the last partial batch dropped.
    Views are float32 ``(B, 3, T, H, W)`` in ``channels_last_3d`` on ``device``; labels int64 ``(B,)``.
    """

    def __init__(
        self,
        *,
        num_videos: int,
        batch_size: int,
        num_frames: int,
        crop_size: int,
        rank: int = 0,
        world_size: int = 1,
        device: torch.device | str = "cpu",
        seed: int = 0,
        num_classes: int = 8,
        noise: float = 0.5,
    ) -> None:
        if batch_size % world_size:
            raise ValueError(f"train.batch_size={batch_size} is not divisible by the world size {world_size}")
        self.batch_size = batch_size // world_size  # per rank
        self.global_batch = batch_size
        self.num_videos, self.num_frames, self.crop_size = num_videos, num_frames, crop_size
        self.rank, self.world_size = rank, world_size
        self.device = torch.device(device)
        self.seed, self.num_classes, self.noise = seed, num_classes, noise
        self.epoch = 0
        if len(self) == 0:
            raise ValueError(
                f"data.random_videos={num_videos} is smaller than one global batch ({batch_size})"
            )

    def __len__(self) -> int:
        return self.num_videos // self.global_batch

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _clip(self, seed: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        return torch.randn(3, self.num_frames, self.crop_size, self.crop_size, generator=g)  # (3, T, H, W)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        return self.iter_from(0)

    def iter_from(self, start: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """The epoch's batches from batch ``start`` on (the same ones ``iter()`` yields there)."""
        order = torch.randperm(
            self.num_videos, generator=torch.Generator().manual_seed(self.seed * 7919 + self.epoch)
        )
        for b in range(start, len(self)):
            ids = order[b * self.global_batch : (b + 1) * self.global_batch][self.rank :: self.world_size]
            v1, v2 = [], []
            for i in ids.tolist():
                base = self._clip(self.seed * 1_000_003 + i)
                noise_seed = (self.seed * 1_000_003 + i) * 10_007 + self.epoch
                v1.append(base + self.noise * self._clip(2 * noise_seed))
                v2.append(base + self.noise * self._clip(2 * noise_seed + 1))
            fmt = torch.channels_last_3d
            view1 = torch.stack(v1).to(self.device).contiguous(memory_format=fmt)  # (B, 3, T, H, W)
            view2 = torch.stack(v2).to(self.device).contiguous(memory_format=fmt)
            label = (ids % self.num_classes).to(self.device)  # (B,)
            yield view1, view2, label
