"""The DALI GPU pipeline (NVDEC decoding, GPU augmentation) against the CPU pipeline on frame-index-coded
videos: the same frames of the same videos, pixels within a stated tolerance. Runs on a CUDA machine with
DALI (``bash benchmarks/device_check.sh``); skips elsewhere."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("av")
pytest.importorskip("nvidia.dali")

from dali_videos import make_index_videos, small_config  # noqa: E402
from videos import decode_index  # noqa: E402

from fastcvrl.data import build_pretrain_loader  # noqa: E402

# uint8 levels: NVDEC + DALI's YUV->RGB and GPU resize vs libavcodec's and the CPU resize, on uniform frames
MAX_ABS_DIFF = 12
MEAN_ABS_DIFF = 3.0


@pytest.mark.gpu
@pytest.mark.parametrize("codec", ["vp9", "h264"])
def test_gpu_pipeline_delivers_the_cpu_pipelines_frames(tmp_path, codec):
    """VP9 decodes on both (128 x 160: NVDEC's VP9 minimum is 128 x 128); H.264, which the CPU decoder
    refuses, is compared against VP9 copies of the same frames, decoded on the CPU."""
    lengths = [40, 33, 50, 45, 38, 41, 36, 44]
    cpu_m = make_index_videos(tmp_path / "vp9", lengths, codec="vp9", gop=8, size=(128, 160))
    gpu_m = (
        cpu_m
        if codec == "vp9"
        else make_index_videos(tmp_path / "h264", lengths, codec="h264", gop=8, size=(128, 160))
    )
    out = {}
    for dev, manifest in (("cpu", cpu_m), ("gpu", gpu_m)):
        cfg = small_config(augment="dali", device=dev)
        device = "cuda" if dev == "gpu" else "cpu"
        loader = build_pretrain_loader(cfg, str(manifest), device=device, seed=5, normalize=False)
        batches = []
        for v1, v2, label in loader:
            batches.append((v1.cpu(), v2.cpu(), label, loader.last_meta.copy()))
        out[dev] = batches
    assert len(out["cpu"]) == len(out["gpu"]) == 2
    for (a1, a2, la, ma), (b1, b2, lb, mb) in zip(out["cpu"], out["gpu"]):
        assert np.array_equal(ma, mb) and torch.equal(la, lb)  # the same videos, clips and parameters
        for a, b in ((a1, b1), (a2, b2)):
            assert a.shape == b.shape and b.dtype == torch.uint8
            fa, va = decode_index(a.permute(0, 2, 3, 4, 1).numpy())
            fb, vb = decode_index(b.permute(0, 2, 3, 4, 1).numpy())
            assert np.array_equal(fa, fb) and np.array_equal(va, vb)  # the same frames of the same videos
            diff = (a.int() - b.int()).abs()
            assert diff.max() <= MAX_ABS_DIFF and diff.float().mean() <= MEAN_ABS_DIFF, (
                int(diff.max()),
                float(diff.float().mean()),
            )
