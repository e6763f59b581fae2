"""The CVRL pretraining pipeline on the CPU: right frames, bounded decoding, per-clip augmentation, labels,
shuffling, sharding, short and corrupt videos, and the GPU variant's graph."""

from __future__ import annotations

import logging

import numpy as np
import pytest

pytest.importorskip("av")  # absent on a bare GPU image: skip, not a collection error
pytest.importorskip("nvidia.dali")
import torch
from dali_videos import corrupt_payload, make_index_videos, make_static_video, op_devices, small_config
from videos import decode_index, index_color

from dali_pipelines.host import PretrainSource
from dali_pipelines.loaders import build_pretrain_loader, to_torch
from dali_pipelines.manifest import read_manifest
from dali_pipelines.packets import VideoReadError
from fastcvrl.datasets.video import keyframe_indices

LENGTHS = [60, 41, 5, 75, 33, 50, 64, 7]  # 5 frames: shorter than one 4 x 2 clip (7 frames span), loops


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    return make_index_videos(tmp_path_factory.mktemp("idx"), LENGTHS, codec="vp9", gop=8)


def _frames(view: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(B, 3, T, H, W) float in [0, 1] -> frame index and video id per (B, T)."""
    return decode_index(view.permute(0, 2, 3, 4, 1).numpy() * 255.0)


def _epoch(loader):
    out = []
    for v1, v2, label in loader:
        out.append((v1, v2, label, loader.last_meta.copy()))
    return out


@pytest.mark.parametrize("augment", ["torch", "dali"])
def test_clips_are_t_frames_s_apart_from_the_right_video(manifest, augment):
    cfg = small_config(augment=augment)
    entries = read_manifest(manifest)
    loader = build_pretrain_loader(cfg, str(manifest), device="cpu", seed=3)
    assert len(loader) == len(LENGTHS) // 4
    seen = 0
    for v1, v2, label, meta in _epoch(loader):
        assert v1.shape == (4, 3, 4, 16, 16) and v2.shape == v1.shape and v1.dtype == torch.float32
        for view, start in ((v1, meta[:, 2]), (v2, meta[:, 3])):
            idx, vid = _frames(view)
            for b in range(4):
                n = entries[meta[b, 0]].num_frames
                assert (vid[b] == meta[b, 0]).all()
                assert idx[b].tolist() == [(start[b] + 2 * k) % n for k in range(4)]
        assert label.tolist() == [entries[v].label for v in meta[:, 0]]
        seen += 4
    assert seen == 8


def test_decoded_frames_are_bounded_by_clip_span_plus_keyframe_spacing(tmp_path):
    lengths = [120, 97, 130, 110]
    manifest = make_index_videos(tmp_path, lengths, codec="vp9", gop=8)
    cfg = small_config(num_frames=4, stride=4)
    loader = build_pretrain_loader(cfg, str(manifest), device="cpu", seed=0)
    spacing = max(np.diff(keyframe_indices(e.path)).max() for e in read_manifest(manifest))
    span = (4 - 1) * 4 + 1
    overlapping = 0
    for epoch in range(6):
        loader.set_epoch(epoch)
        for *_, meta in _epoch(loader):
            for video, decoded, s1, s2, *_ in meta:
                lo, hi = min(s1, s2), max(s1, s2)
                if hi - lo < span:  # overlapping windows: one pass over their union
                    overlapping += 1
                    assert decoded <= (hi - lo) + span + spacing - 1
                else:
                    assert decoded <= 2 * (span + spacing - 1)
                needed = {(s + 4 * k) % lengths[video] for s in (s1, s2) for k in range(4)}
                assert decoded >= len(needed)
    assert overlapping > 0
    assert loader.stats["clips"] == 2 * loader.stats["videos"] == 2 * 6 * 4
    assert loader.frames_decoded / loader.videos < 2 * (span + spacing)


@pytest.fixture(scope="module")
def static_manifest(tmp_path_factory):
    folder = tmp_path_factory.mktemp("static")
    entries = []
    for i in range(4):
        make_static_video(folder / f"s{i}.avi", 24, seed=i)
        entries.append(f"s{i}.avi,{i},24,25.0,64,48,mjpeg")
    manifest = folder / "manifest.csv"
    manifest.write_text("path,label,num_frames,fps,width,height,codec\n" + "\n".join(entries) + "\n")
    return manifest


@pytest.mark.parametrize("augment", ["torch", "dali"])
def test_every_frame_of_a_clip_gets_the_same_augmentation(static_manifest, augment):
    """A static video stays static through crop, flip, colour jitter, grayscale, blur and solarize (all on);
    every clip (both views, every video, every epoch) got its own draw."""
    cfg = small_config(
        color_jitter_prob=1.0, grayscale_prob=0.2, crop_size=24, blur=True, solarize=True, augment=augment
    )
    loader = build_pretrain_loader(cfg, str(static_manifest), device="cpu", seed=0)
    clips = []
    for epoch in range(2):
        loader.set_epoch(epoch)
        for v1, v2, _, _ in _epoch(loader):
            for view in (v1, v2):
                for clip in view:  # (3, T, H, W)
                    assert torch.equal(clip, clip[:, :1].expand_as(clip)), "frames of one clip differ"
                    clips.append(clip[:, 0])
    flat = torch.stack(clips).flatten(1)
    dist = torch.cdist(flat, flat) + torch.eye(len(flat)) * 1e9
    assert dist.min() > 1.0  # every clip (both views, all videos, both epochs) got its own draw


@pytest.mark.parametrize("blur", [False, True])
def test_torch_augmentation_agrees_with_the_dali_graph(static_manifest, blur):
    """The CPU fast path (decode in DALI, augment in torch) against the DALI graph the GPU runs: same draws,
    same clips up to rounding (DALI rounds to uint8 after the colour map; torch keeps floats)."""
    out = {}
    seed = 4
    if blur:  # pick a seed whose epoch 0 solarizes some second view (p = 0.2 each), so that path is compared
        cfg = small_config(color_jitter_prob=1.0, grayscale_prob=0.3, crop_size=24, blur=True, solarize=True)
        src = PretrainSource(read_manifest(static_manifest), 4, cfg.data)
        for seed in range(50):
            src.seed = seed
            if any(bool(src.sample(v)["solarize2"]) for v in range(4)):
                break
    for augment in ("dali", "torch"):
        cfg = small_config(
            color_jitter_prob=1.0, grayscale_prob=0.3, crop_size=24, augment=augment, blur=blur, solarize=blur
        )
        loader = build_pretrain_loader(cfg, str(static_manifest), device="cpu", seed=seed)
        out[augment] = [(v1.clone(), v2.clone(), m.copy()) for v1, v2, _, m in _epoch(loader)]
    for (a1, a2, ma), (b1, b2, mb) in zip(out["dali"], out["torch"]):
        assert np.array_equal(ma, mb)
        for x, y in ((a1, b1), (a2, b2)):
            diff = (x - y).abs() * 255
            assert diff.mean() < 1.0 and diff.max() < 8.0, (diff.mean(), diff.max())


def test_colour_matches_the_numpy_reference(manifest):
    """Uniform index frames: the output colour is the reference's jitter (``apply_color_reference``) with the
    host-drawn parameters applied to the input colour (on a uniform clip contrast keeps it: it is its
    mean)."""
    from dali_pipelines.spatial import apply_color_reference
    from dali_pipelines.temporal import clip_indices

    cfg = small_config(color_jitter_prob=1.0, grayscale_prob=0.3)
    loader = build_pretrain_loader(cfg, str(manifest), device="cpu", seed=7)
    source = loader.source
    checked = 0
    for v1, v2, _, meta in _epoch(loader):
        for b in range(len(meta)):
            s = source.sample(int(meta[b, 0]))  # same (seed, epoch, video) -> same draws
            for view, (params, order) in (
                (v1, (s["color1"], s["color_order1"])),
                (v2, (s["color2"], s["color_order2"])),
            ):
                video = int(meta[b, 0])
                start = int(meta[b, 2] if view is v1 else meta[b, 3])
                frames = clip_indices(start, LENGTHS[video], cfg.data.num_frames, cfg.data.stride)
                rgb = (
                    np.array([index_color(int(f), video % 16) for f in frames], np.float64) / 255.0
                )  # (T, 3)
                want = apply_color_reference(rgb.reshape(-1, 1, 1, 3), params, order).reshape(-1, 3) * 255
                got = (
                    view[b].mean((-1, -2)).numpy().T * 255
                )  # (T, 3): every frame (contrast uses the clip mean)
                assert np.abs(got - want).max() < 6, (got, want)  # codec error on a uniform frame is small
                checked += 1
    assert checked == 16


def test_labels_shuffling_and_epochs(manifest):
    cfg = small_config()
    loader = build_pretrain_loader(cfg, str(manifest), device="cpu", seed=11)
    orders = []
    for epoch in (0, 1, 0):
        loader.set_epoch(epoch)
        orders.append(np.concatenate([m[:, 0] for *_, m in _epoch(loader)]).tolist())
    assert orders[0] == orders[2]  # set_epoch is deterministic
    assert orders[0] != orders[1]  # and reshuffles
    assert len(set(orders[0])) == len(orders[0])
    other = build_pretrain_loader(cfg, str(manifest), device="cpu", seed=12)
    assert np.concatenate([m[:, 0] for *_, m in _epoch(other)]).tolist() != orders[0]


def test_shards_see_every_video_once(manifest):
    cfg = small_config()
    cfg.train.batch_size = 4  # 2 ranks x 2 per rank
    seen, metas = [], {}
    for rank in range(2):
        loader = build_pretrain_loader(cfg, str(manifest), rank=rank, world_size=2, device="cpu", seed=1)
        assert loader.batch_size == 2 and len(loader) == 2
        batches = _epoch(loader)
        seen.append(np.concatenate([m[:, 0] for *_, m in batches]).tolist())
        metas.update({int(row[0]): row.tolist() for *_, m in batches for row in m})
    assert not set(seen[0]) & set(seen[1])
    assert sorted(seen[0] + seen[1]) == list(range(len(LENGTHS)))  # 8 videos, 2 x 2 x 2: none dropped
    single = build_pretrain_loader(cfg, str(manifest), device="cpu", seed=1)
    for *_, m in _epoch(single):  # a video's clips depend on (seed, epoch, video), not on the sharding
        for row in m:
            assert metas[int(row[0])][:4] == row.tolist()[:4]


def test_hand_off_is_zero_copy_and_channels_last(manifest):
    from dali_pipelines.pipelines import pretrain_pipeline

    cfg = small_config()
    src = PretrainSource(read_manifest(manifest), 2, cfg.data, seed=0)  # 4 steps
    pipe = pretrain_pipeline(src, device="cpu", crop_size=16, batch_size=2)
    v1, *_ = pipe.run()
    t = to_torch(v1, torch.device("cpu"))
    assert t.data_ptr() == v1.as_tensor().data_ptr()  # DLPack, no copy
    x = t.permute(0, 4, 1, 2, 3)
    assert x.is_contiguous(memory_format=torch.channels_last_3d)
    kept = t.clone()
    pipe.run()
    pipe.run()
    assert torch.equal(t, kept)  # DALI does not reuse a buffer torch still holds


def test_unreadable_file_is_reported_by_name_and_skipped(tmp_path, caplog):
    manifest = make_index_videos(tmp_path, [30, 30, 30, 30, 30], codec="vp9", gop=8)
    bad = read_manifest(manifest)[2].path
    with open(bad, "wb") as f:
        f.write(b"\x1aE\xdf\xa3 this is not a video" * 10)
    cfg = small_config()
    loader = build_pretrain_loader(cfg, str(manifest), device="cpu", seed=0)
    with caplog.at_level(logging.WARNING, "dali_pipelines.loaders"):
        vids = np.concatenate([m[:, 0] for *_, m in _epoch(loader)])
    assert 2 not in vids.tolist() and len(vids) == 4
    assert bad in caplog.text


def test_decoder_error_names_the_file(tmp_path):
    manifest = make_index_videos(tmp_path, [40] * 4, codec="vp9", gop=8)
    bad = read_manifest(manifest)[1].path
    corrupt_payload(bad, 0, 39)
    cfg = small_config(skip_corrupt=False)
    loader = build_pretrain_loader(cfg, str(manifest), device="cpu", seed=0)
    with pytest.raises(VideoReadError, match=bad.replace("\\", "\\\\")):
        _epoch(loader)


def test_corrupt_video_mid_epoch_is_skipped_with_a_warning(tmp_path, caplog):
    manifest = make_index_videos(tmp_path, [40] * 8, codec="vp9", gop=8)
    bad = read_manifest(manifest)[5].path
    corrupt_payload(bad, 0, 39)
    cfg = small_config()
    loader = build_pretrain_loader(cfg, str(manifest), device="cpu", seed=0)
    with caplog.at_level(logging.WARNING, "dali_pipelines.loaders"):
        batches = _epoch(loader)
    vids = np.concatenate([m[:, 0] for *_, m in batches]).tolist()
    assert len(batches) == 2 and 5 not in vids
    assert bad in caplog.text and "video decoder" in caplog.text  # caught on the decoder path
    for v1, _, _, meta in batches:  # the replacement's frames are the replacement's
        assert (_frames(v1)[1] == meta[:, :1]).all()


def test_gpu_variant_places_decoding_and_augmentation_on_the_gpu(manifest):
    """Same definition, other device strings: inspect the serialized graph (no GPU needed)."""
    from dali_pipelines.pipelines import pretrain_pipeline

    cfg = small_config(blur=True, solarize=True)
    src = PretrainSource(read_manifest(manifest), 4, cfg.data, seed=0)
    pipe = pretrain_pipeline(
        src, device="gpu", crop_size=16, batch_size=4, device_id=None, blur=True, solarize=True
    )
    graph = op_devices(pipe.serialize())
    assert graph["decoders__Video"] == {"mixed"}
    for op in (
        "SequenceRearrange",
        "Resize",
        "Cast",
        "reductions__Mean",
        "reductions__Max",
        "Stack",
        "CoordTransform",
        "Slice",
        "GaussianBlur",
    ):
        assert graph[op] == {"gpu"}, (op, graph)
    assert "gpu" in graph["_ArithmeticGenericOp"]  # the colour ops and solarize (branch conditions: CPU)
    cpu = op_devices(
        pretrain_pipeline(src, device="cpu", crop_size=16, batch_size=4, blur=True, solarize=True).serialize()
    )
    assert cpu["decoders__Video"] == {"cpu"} and cpu["Resize"] == {"cpu"}
    assert set(graph) == set(cpu)  # one definition: the same operators


def test_gaps_read_back_from_the_pipeline_follow_the_rule(tmp_path):
    """End to end: the gap between the frames the two views actually show, over many epochs, against the
    NumPy statement of the linear rule (chi-square)."""
    from scipy import stats

    from dali_pipelines.temporal import gap_pmf

    manifest = make_index_videos(tmp_path, [20] * 8, codec="mjpeg")  # T=4, s=2: M = 20 - 6 = 14 starts
    loader = build_pretrain_loader(small_config(), str(manifest), device="cpu", seed=0)
    gaps = []
    for epoch in range(30):
        loader.set_epoch(epoch)
        for v1, v2, _, _ in _epoch(loader):
            gaps += np.abs(_frames(v1)[0][:, 0] - _frames(v2)[0][:, 0]).tolist()
    observed = np.bincount(gaps, minlength=14)
    assert len(observed) == 14 and len(gaps) == 240
    expected = len(gaps) * gap_pmf(14, "linear")
    pooled_obs = np.append(observed[:10], observed[10:].sum())  # pool the sparse tail (expected counts >= 5)
    pooled_exp = np.append(expected[:10], expected[10:].sum())
    assert stats.chisquare(pooled_obs, pooled_exp).pvalue > 1e-3
    uniform = np.full(14, len(gaps) / 14)
    assert stats.chisquare(observed, uniform).pvalue < 1e-3  # and the draws are far from uniform


@pytest.mark.parametrize("augment", ["torch", "dali"])
def test_views_in_the_trainers_dtype(manifest, augment):
    """bf16 when the trainer trains in bf16: same values as float32 (to bf16 precision), still
    channels_last_3d;
    mean/std from the config applied."""
    out = {}
    for precision in ("fp32", "bf16"):
        cfg = small_config(augment=augment, mean=[0.4, 0.5, 0.6], std=[0.2, 0.25, 0.3])
        cfg.train.precision = precision
        loader = build_pretrain_loader(cfg, str(manifest), device="cpu", seed=0)
        out[precision] = next(iter(loader))[0]
        meta = loader.last_meta
    assert out["bf16"].dtype == torch.bfloat16 and out["fp32"].dtype == torch.float32
    assert out["bf16"].is_contiguous(memory_format=torch.channels_last_3d)
    torch.testing.assert_close(out["bf16"].float(), out["fp32"], atol=0.03, rtol=0.01)
    raw = out["fp32"] * torch.tensor([0.2, 0.25, 0.3]).view(1, 3, 1, 1, 1) + torch.tensor(
        [0.4, 0.5, 0.6]
    ).view(1, 3, 1, 1, 1)
    assert raw.min() >= -1e-5 and raw.max() <= 1 + 1e-5  # back in [0, 1] pixel units
    idx, _ = decode_index(raw.permute(0, 2, 3, 4, 1).numpy() * 255.0)
    assert idx[:, 0].tolist() == meta[:, 2].tolist()  # un-normalised, the index colours are back


def test_one_read_per_video_per_epoch_and_a_bounded_index_cache(manifest, monkeypatch):
    """Every clip costs one file open (the index is built from the same read as the first clip; later clips
    read their byte ranges through one descriptor), also when the packet-index cache is smaller than the
    dataset."""
    import builtins
    import os

    cfg = small_config()
    entries = read_manifest(manifest)
    reads: list[str] = []
    real_open = builtins.open

    def counting_open(path, mode="r", *a, **k):
        if "rb" in mode and str(path) in {e.path for e in entries}:
            reads.append(str(path))
        return real_open(path, mode, *a, **k)

    real_os_open = os.open

    def counting_os_open(path, flags, *a, **k):
        if str(path) in {e.path for e in entries}:
            reads.append(str(path))
        return real_os_open(path, flags, *a, **k)

    monkeypatch.setattr(builtins, "open", counting_open)
    monkeypatch.setattr(os, "open", counting_os_open)
    for cache in (3, 64):  # re-indexed on every visit / indexed once, then ranged reads
        _count_opens(entries, cfg, cache, reads)


def _count_opens(entries, cfg, cache, reads):
    src = PretrainSource(entries, 4, cfg.data, seed=0, index_cache=cache)
    for epoch in range(3):
        src.set_epoch(epoch)
        reads.clear()
        for step in range(len(src)):
            src(step)
        assert sorted(reads) == sorted(e.path for e in entries)  # each video opened exactly once this epoch
    assert len(src._index) == min(cache, len(entries))


def test_iter_from_yields_the_rest_of_the_epoch_without_decoding_the_start(tmp_path):
    """Resuming mid-epoch: ``iter_from(k)`` gives exactly batches k.. of ``iter()`` for that epoch, and
    decodes none of the frames of the batches before k."""
    manifest = make_index_videos(tmp_path, [40, 33, 50, 64, 45, 38], codec="vp9", gop=8)
    cfg = small_config()
    cfg.train.batch_size = 2
    loader = build_pretrain_loader(cfg, str(manifest), device="cpu", seed=5)
    assert len(loader) == 3
    loader.set_epoch(2)
    full = _epoch(loader)
    decoded_full = loader.frames_decoded
    loader.set_epoch(2)
    rest = []
    for v1, v2, label in loader.iter_from(1):
        rest.append((v1, v2, label, loader.last_meta.copy()))
    assert len(rest) == 2
    for a, b in zip(full[1:], rest):
        # same videos, frames decoded and clip starts (bytes read differ: the files are indexed by now)
        assert all(torch.equal(x, y) for x, y in zip(a[:3], b[:3])) and (a[3][:, :4] == b[3][:, :4]).all()
    # only batches 1 and 2 were decoded the second time
    assert loader.frames_decoded - decoded_full == sum(int(m[3][:, 1].sum()) for m in full[1:])
    assert list(loader.iter_from(3)) == []  # at the end of the epoch: nothing left
    with pytest.raises(ValueError, match="outside"):
        next(loader.iter_from(4))
    loader.set_epoch(2)
    again = _epoch(loader)  # a plain iter() afterwards is the whole epoch again
    assert len(again) == 3 and all(torch.equal(a[0], b[0]) for a, b in zip(full, again))


def test_clip_plan_restates_the_array_statement(manifest):
    """The source's clip plan (Python lists) against the array statement: the union of the two clips'
    ``temporal.clip_indices`` by ``np.unique(..., return_inverse=True)``, trimmed by ``packets.trim``, and the
    views' draws from ``spatial`` in the documented order, for every video over two epochs (short ones
    loop)."""
    from dali_pipelines import recipe, spatial, temporal
    from dali_pipelines.host import meta_field
    from dali_pipelines.packets import trim

    c = small_config(color_jitter_prob=1.0, grayscale_prob=0.3, blur=True, solarize=True).data
    src = PretrainSource(read_manifest(manifest), 2, c, seed=7)
    for epoch in (0, 1):
        src.set_epoch(epoch)
        for video in range(len(src.entries)):
            got = src.sample(video)
            rng, idx = src.rng(video), src.index(video)
            n = src.length(video, idx)
            starts = temporal.sample_starts(rng, np.array([n]), c.num_frames, c.stride)[0]
            clips = np.stack([temporal.clip_indices(int(s), n, c.num_frames, c.stride) for s in starts])
            union, inverse = np.unique(clips.reshape(-1), return_inverse=True)
            tc = trim(idx, union)
            assert np.array_equal(got["encoded"], tc.encoded) and np.array_equal(got["frames"], tc.positions)
            assert got["order1"].dtype == np.int32
            assert np.array_equal(np.concatenate([got["order1"], got["order2"]]), inverse)
            assert [
                int(meta_field(got["meta"], "start1")),
                int(meta_field(got["meta"], "start2")),
            ] == starts.tolist()
            for view in (1, 2):
                box = spatial.random_resized_crop(
                    rng, idx.height, idx.width, (c.min_area, c.max_area), (c.min_aspect, c.max_aspect)
                )
                start, end = spatial.crop_roi(box, bool(rng.random() < c.flip_prob))
                params, order = recipe.color_params(
                    rng,
                    c.color_jitter_prob,
                    (c.brightness, c.contrast, c.saturation, c.hue),
                    c.grayscale_prob,
                )
                sigma = recipe.blur_sigma(rng, c.blur_prob[view - 1])
                sol = bool(rng.random() < c.solarize_prob[view - 1])
                for name, want in (
                    ("roi_start", start),
                    ("roi_end", end),
                    ("color", params),
                    ("color_order", order),
                    ("sigma", np.array(sigma, np.float32)),
                    ("solarize", np.array(sol)),
                ):
                    assert got[f"{name}{view}"].dtype == want.dtype and np.array_equal(
                        got[f"{name}{view}"], want
                    )
