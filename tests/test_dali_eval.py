"""Evaluation pipelines: linear-probe training clips and the test views (clips x crops, per video
together)."""

from __future__ import annotations

import logging

import numpy as np
import pytest

pytest.importorskip("av")  # absent on a bare GPU image: skip, not a collection error
pytest.importorskip("nvidia.dali")
import torch
from dali_videos import corrupt_payload, make_index_videos, op_devices, small_config
from videos import decode_index

from dali_pipelines.manifest import read_manifest
from fastcvrl.data import build_linear_loader, build_test_loader, eval_settings
from fastcvrl.datasets.video import write_video

LENGTHS = [40, 25, 4, 33, 50]  # 4 frames: shorter than one 4 x 2 clip, loops


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    return make_index_videos(tmp_path_factory.mktemp("eval"), LENGTHS, codec="mjpeg")


def _index(view: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    return decode_index(view.permute(0, 2, 3, 4, 1).numpy() * 255.0)


@pytest.mark.parametrize("augment", ["torch", "dali"])
def test_linear_train_clips(manifest, augment):
    cfg = small_config(augment=augment)
    cfg.eval.batch_size = 2
    entries = read_manifest(manifest)
    loader = build_linear_loader(cfg, str(manifest), device="cpu", seed=0, train=True)
    assert len(loader) == 2  # 5 videos, batches of 2, last partial batch dropped
    seen = []
    for clip, label in loader:
        assert clip.shape == (2, 3, 4, 16, 16) and clip.is_contiguous(memory_format=torch.channels_last_3d)
        idx, vid = _index(clip)
        for b, v in enumerate(loader.last_meta[:, 0]):
            n = entries[v].num_frames
            start = loader.last_meta[b, 2]
            assert (vid[b] == v).all() and idx[b].tolist() == [(start + 2 * k) % n for k in range(4)]
            assert 0 <= start < max(1, n - 6) or n <= 6
        assert label.tolist() == [entries[v].label for v in loader.last_meta[:, 0]]
        seen += loader.last_meta[:, 0].tolist()
    assert len(set(seen)) == 4


def test_linear_eval_keeps_every_video_and_takes_the_centre_clip(manifest):
    cfg = small_config()
    cfg.eval.batch_size = 2
    loader = build_linear_loader(cfg, str(manifest), device="cpu", train=False)
    assert len(loader) == 3
    seen, starts = [], []
    for clip, _ in loader:
        seen += loader.last_meta[:, 0].tolist()
        starts += _index(clip)[0][:, 0].tolist()
    assert seen == list(range(len(LENGTHS)))  # manifest order, nothing dropped
    assert starts == [(max(1, n - 6) - 1) // 2 if n > 6 else (n - 1) // 2 for n in LENGTHS]


def test_test_views_are_evenly_spaced_clips_and_contiguous_per_video(manifest):
    cfg = small_config()
    cfg.eval.batch_size = 18  # 2 videos of 3 clips x 3 crops
    loader = build_test_loader(cfg, str(manifest), device="cpu")
    views = 9
    seen = []
    for clips, label, video in loader:
        assert clips.shape == (len(video) * views, 3, 4, 16, 16)
        idx, vid = _index(clips)
        for i, v in enumerate(video.tolist()):
            n = LENGTHS[v]
            rows = slice(i * views, (i + 1) * views)
            assert (vid[rows] == v).all()  # all views of a video are together
            m = max(1, n - 6) if n > 6 else n
            starts = np.round(np.linspace(0, m - 1, 3)).astype(int)
            want = [[(s + 2 * k) % n for k in range(4)] for s in starts] * 3  # crop-major: 3 crops x 3 clips
            assert idx[rows].tolist() == want
        assert label.tolist() == [v % 3 for v in video.tolist()]
        seen += video.tolist()
    assert seen == list(range(len(LENGTHS)))


@pytest.fixture(scope="module")
def manifest_with_bad_files(tmp_path_factory):
    """Six videos: v1 cannot be demuxed (garbage bytes), v4 demuxes but its decoder fails (noise payload)."""
    manifest = make_index_videos(tmp_path_factory.mktemp("bad"), [30] * 6, codec="vp9", gop=8)
    entries = read_manifest(manifest)
    with open(entries[1].path, "wb") as f:
        f.write(b"\x1aE\xdf\xa3 this is not a video" * 10)
    corrupt_payload(entries[4].path, 0, 29)
    return manifest


@pytest.mark.parametrize("batch", [1, 2, 4])  # batch 1: a batch whose only video is unreadable yields nothing
@pytest.mark.parametrize("kind", ["linear", "test"])
def test_eval_loaders_deliver_each_readable_video_once_and_no_stand_in(
    manifest_with_bad_files, kind, batch, caplog
):
    cfg = small_config()
    if kind == "linear":
        cfg.eval.batch_size = batch
        loader = build_linear_loader(cfg, str(manifest_with_bad_files), device="cpu", train=False)
    else:
        cfg.eval.test_clips, cfg.eval.test_crops, cfg.eval.batch_size = 2, 1, 2 * batch  # 2 views per video
        loader = build_test_loader(cfg, str(manifest_with_bad_files), device="cpu")
    views = 1 if kind == "linear" else 2
    entries = read_manifest(manifest_with_bad_files)
    seen = []
    with caplog.at_level(logging.WARNING, "dali_pipelines"):
        for batch_out in loader:
            clip, label = batch_out[0], batch_out[1]
            video = loader.last_meta[:, 0].tolist()
            assert clip.shape[0] == views * label.shape[0] == views * len(video) > 0
            assert (
                _index(clip)[1] == np.repeat(video, views)[:, None]
            ).all()  # each row's frames: its own video's
            assert label.tolist() == [entries[v].label for v in video]
            if kind == "test":
                assert batch_out[2].tolist() == video
            seen += video
    assert seen == [0, 2, 3, 5]  # manifest order, each readable video once, no stand-in repeated
    assert loader.source.bad == {1, 4}
    for v in (1, 4):
        assert entries[v].path in caplog.text
    assert "left out of this evaluation" in caplog.text


def test_training_loader_keeps_whole_batches_with_a_stand_in(manifest_with_bad_files):
    cfg = small_config()
    cfg.eval.batch_size = 3
    loader = build_linear_loader(cfg, str(manifest_with_bad_files), device="cpu", seed=0, train=True)
    from dali_pipelines.host import SUBSTITUTE

    metas = []
    for clip, label in loader:
        assert clip.shape[0] == label.shape[0] == 3
        metas.append(loader.last_meta.copy())
    meta = np.concatenate(metas)
    assert not {1, 4} & set(meta[:, 0].tolist())
    assert meta[:, SUBSTITUTE].sum() == 2  # both unreadable videos' places were filled


@pytest.mark.parametrize("height,width", [(24, 40), (40, 24)])
def test_test_crops_span_the_long_side(tmp_path, height, width):
    """A static horizontal (vertical) ramp: the three crops are left, centre, right (top, centre, bottom)."""
    yy, xx = np.mgrid[0:height, 0:width]
    ramp = (xx / (width - 1)) if width > height else (yy / (height - 1))
    frame = np.stack([255 * ramp, 255 * ramp, 255 * ramp], -1).astype(np.uint8)
    write_video(tmp_path / "r.avi", np.repeat(frame[None], 10, 0), codec="mjpeg", gop=1)
    (tmp_path / "m.csv").write_text(
        f"path,label,num_frames,fps,width,height,codec\nr.avi,0,10,25.0,{width},{height},mjpeg\n"
    )
    cfg = small_config()
    cfg.eval.short_side, cfg.eval.test_crop_size, cfg.eval.crop_size = (
        16,
        16,
        8,
    )  # test crops: the whole short side
    ((clips, _, _),) = list(build_test_loader(cfg, str(tmp_path / "m.csv"), device="cpu"))
    assert clips.shape[-2:] == (16, 16)  # eval.test_crop_size, not the training clips' eval.crop_size
    means = clips.mean((1, 2, 3, 4)).view(3, 3)[:, 0]  # first clip of each crop
    assert means[0] < means[1] < means[2]
    assert abs(float(means[1]) - 0.5) < 0.05


def test_gpu_variants_place_decoding_and_augmentation_on_the_gpu(manifest):
    from dali_pipelines.host import LinearSource, MultiViewSource
    from dali_pipelines.pipelines import linear_pipeline, multiview_pipeline

    cfg = small_config()
    entries = read_manifest(manifest)
    linear = op_devices(
        linear_pipeline(
            LinearSource(entries, 2, eval_settings(cfg), True), device="gpu", batch_size=2
        ).serialize()
    )
    assert linear["decoders__Video"] == {"mixed"}
    assert linear["Resize"] == {"gpu"} and linear["SequenceRearrange"] == {"gpu"}
    test = op_devices(
        multiview_pipeline(
            MultiViewSource(entries, 2, eval_settings(cfg)),  # 3 crops of 16 at short side 20
            device="gpu",
            batch_size=2,
        ).serialize()
    )
    assert test["decoders__Video"] == {"mixed"}
    for op in ("Resize", "SequenceRearrange", "Crop", "Stack"):
        assert test[op] == {"gpu"}, (op, test)
