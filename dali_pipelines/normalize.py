"""uint8 frames -> the trainer's normalised input, one multiply-add (pure torch: the step imports it too).

Where it runs: the GPU default hands DALI's uint8 views to the training step as they are, and the step
normalises them inside its CUDA graph (``fastcvrl.step.TrainStep``: no float copy of the views outside the
graph); evaluation loaders and the CPU path normalise in the loader (``dali_pipelines.loaders``).
"""

from __future__ import annotations

import torch


class Normalize:
    """uint8 ``(N, T, H, W, C)`` -> ``(N, C, T, H, W)`` channels_last_3d in ``dtype``: ``(x/255 - mean) /
    std``.

    ``apply`` takes the ``(N, C, T, H, W)`` view directly (uint8 or float pixel values 0..255)."""

    def __init__(
        self,
        mean: list[float],
        std: list[float],
        dtype: torch.dtype,
        device: torch.device,
    ):
        self.mean, self.std = list(mean), list(std)
        std_t = torch.tensor(std, dtype=torch.float32)
        self.scale = (1.0 / (255.0 * std_t)).view(1, 3, 1, 1, 1).to(device)
        self.shift = (-torch.tensor(mean, dtype=torch.float32) / std_t).view(1, 3, 1, 1, 1).to(device)
        self.dtype = dtype

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.apply(x.permute(0, 4, 1, 2, 3))  # (N, C, T, H, W) view, channels_last_3d strides, no copy

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C, T, H, W)`` pixel values -> normalised ``dtype``, keeping ``x``'s layout."""
        y = torch.addcmul(
            self.shift, x.to(torch.float32), self.scale
        )  # float math, keeps the channels-last layout
        return y if self.dtype == torch.float32 else y.to(self.dtype)
