"""Frame-index-coded test videos: every frame says which frame of which video it is.

Every frame of an "index video" is one uniform colour whose red and green channels carry the frame index
(4 bits each, in steps of 16) and whose blue channel carries a video id. A uniform frame stays uniform through
any crop, flip and resize, and steps of 16 survive lossy coding and YUV 4:2:0, so a test can read back exactly
which frames of which video a pipeline delivered. Only the tests use these (``write_video`` in
``fastcvrl.datasets.video`` encodes them).
"""

from __future__ import annotations

import numpy as np

INDEX_STEP = 16
MAX_INDEX = 256  # frame indices 0..255 are representable
MAX_VIDEO_ID = 16


def index_color(index: int, video_id: int = 0) -> tuple[int, int, int]:
    """The RGB colour of frame ``index`` of video ``video_id`` (the middle of each 16-wide step)."""
    if not 0 <= index < MAX_INDEX or not 0 <= video_id < MAX_VIDEO_ID:
        raise ValueError(f"index {index} / video id {video_id} out of range")
    half = INDEX_STEP // 2
    return (
        half + INDEX_STEP * (index % 16),
        half + INDEX_STEP * (index // 16),
        half + INDEX_STEP * video_id,
    )


def index_frames(num_frames: int, height: int = 64, width: int = 64, video_id: int = 0) -> np.ndarray:
    """``(T, H, W, 3)`` uint8 frames, frame ``i`` uniformly coloured with ``index_color(i, video_id)``."""
    out = np.empty((num_frames, height, width, 3), np.uint8)
    for i in range(num_frames):
        out[i] = index_color(i, video_id)
    return out


def decode_index(frames: np.ndarray, channels_last: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Read back ``(frame_index, video_id)`` arrays from index-coded frames.

    ``frames``: ``(..., H, W, 3)`` (or ``(..., 3, H, W)`` with ``channels_last=False``) in 0..255 pixel units.
    Uses each frame's mean colour, so it works after crops, flips and resizes (not after colour jitter).
    """
    x = np.asarray(frames, dtype=np.float64)
    mean = x.mean(axis=(-3, -2)) if channels_last else x.mean(axis=(-2, -1))
    q = np.clip(np.floor(mean / INDEX_STEP), 0, 15).astype(np.int64)
    return q[..., 0] + 16 * q[..., 1], q[..., 2]
