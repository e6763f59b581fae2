"""A file the decoder refuses before decoding (PyAV decodes it, DALI's decoder does not) is named alone: the
failure path decodes each sample of the failed batch by itself. On the CPU an H.264 file stands in for what
the GPU decoder refuses ("Failed to create video decoder": MJPEG, MPEG-2, a size below NVDEC's minimum)."""

from __future__ import annotations

import logging

import pytest

pytest.importorskip("nvidia.dali")
pytest.importorskip("av")

from dali_videos import make_index_videos, small_config  # noqa: E402
from videos import index_frames  # noqa: E402

from dali_pipelines.manifest import VideoEntry, read_manifest  # noqa: E402
from dali_pipelines.packets import VideoReadError  # noqa: E402
from fastcvrl.data import build_linear_loader, build_pretrain_loader  # noqa: E402
from fastcvrl.datasets.manifest import write_manifest  # noqa: E402
from fastcvrl.datasets.video import write_video  # noqa: E402


@pytest.fixture
def mixed(tmp_path):
    """Eight VP9 videos, the fourth replaced by an H.264 file (the manifest says what the file is)."""
    manifest = make_index_videos(tmp_path, [30] * 8, codec="vp9")
    entries = read_manifest(manifest)
    h264 = tmp_path / "v3.mp4"
    write_video(h264, index_frames(30, 32, 48, video_id=3), codec="h264", gop=8)
    entries[3] = VideoEntry(str(h264), entries[3].label, 30, 25.0, 48, 32, "h264")
    write_manifest(manifest, entries)
    return manifest, str(h264)


def test_without_skipping_the_error_names_only_the_refused_file(mixed):
    manifest, h264 = mixed
    loader = build_pretrain_loader(small_config(skip_corrupt=False), str(manifest), device="cpu", seed=0)
    with pytest.raises(VideoReadError) as e:
        for _ in loader:
            pass
    assert e.value.path == h264
    others = [x.path for x in read_manifest(manifest) if x.path != h264]
    assert not any(p in str(e.value) for p in others)


def test_with_skipping_the_refused_file_is_named_and_the_epoch_completes(mixed, caplog):
    manifest, h264 = mixed
    loader = build_linear_loader(small_config(), str(manifest), device="cpu", seed=0, train=False)
    with caplog.at_level(logging.WARNING, logger="dali_pipelines"):
        seen = sum(len(batch[1]) for batch in loader)
    assert seen == 7 and loader.source.bad == {3}
    assert any(h264 in r.getMessage() for r in caplog.records)
