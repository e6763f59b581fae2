"""The peer comparison (``benchmarks/peers.py``, ``loader_bench.py --peers``): every candidate does our work.

The plan (frames and crop boxes) is checked against the DALI loader's own source; the decord adapter's
output against the same plan decoded by PyAV (skipped where decord2 is not installed, as the suite never
needs it); the JSON of a tiny run for its keys and its equal-work checks.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("av")
import torch  # noqa: E402
from dali_videos import small_config  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import peers  # noqa: E402

from dali_pipelines.host import META, PretrainSource  # noqa: E402
from dali_pipelines.manifest import VideoEntry, read_manifest  # noqa: E402
from fastcvrl.data import pretrain_settings  # noqa: E402
from fastcvrl.datasets.manifest import write_manifest  # noqa: E402
from fastcvrl.datasets.video import write_video  # noqa: E402


def _coded_frames(n: int, h: int = 64, w: int = 128) -> np.ndarray:
    """Frames whose red and green are x and y ramps (a crop box shows in them) and whose blue says the
    frame index in steps of 16 (it survives lossy coding). 128 wide: decord2 3.4 fails on some small widths
    (48, 96: "DECORDArrayCopyFromTo: The size must exactly match")."""
    yy, xx = np.mgrid[0:h, 0:w]
    out = np.empty((n, h, w, 3), np.uint8)
    out[..., 0], out[..., 1] = (255 * xx / (w - 1)).astype(np.uint8), (255 * yy / (h - 1)).astype(np.uint8)
    for j in range(n):
        out[j, ..., 2] = 8 + 16 * (j % 16)
    return out


@pytest.fixture(scope="module")
def h264_manifest(tmp_path_factory):
    folder = tmp_path_factory.mktemp("peers")
    entries = []
    for i, n in enumerate([40, 16, 33, 24]):
        path = folder / f"v{i}.mp4"
        write_video(path, _coded_frames(n), codec="h264", gop=8, quality=12)
        entries.append(VideoEntry(str(path), i % 2, n, 25.0, 128, 64, "h264"))
    write_manifest(folder / "manifest.csv", entries)
    return folder / "manifest.csv"


@pytest.mark.parametrize("extras", [{}, {"color_jitter_prob": 0.8, "blur": True, "solarize": True}])
def test_clip_plan_draws_what_the_pretrain_source_draws(h264_manifest, extras):
    """Same starts, frames (each view's positions in the union) and crop boxes as ``PretrainSource``, also
    with the draws the plan does not use (colour, blur, solarize) in the stream."""
    cfg = small_config(**extras)
    entries = read_manifest(h264_manifest)
    source = PretrainSource(entries, 2, pretrain_settings(cfg), seed=7)
    for epoch in (0, 3):
        source.set_epoch(epoch)
        for video, e in enumerate(entries):
            s = source.sample(video)
            plan = peers.clip_plan(cfg.data, 7, epoch, video, e.num_frames, e.height, e.width)
            assert plan.starts == (s["meta"][META["start1"]], s["meta"][META["start2"]])
            for v in (0, 1):
                assert np.array_equal(plan.order[v], s[f"order{v + 1}"])
                assert np.array_equal(plan.roi_start[v], s[f"roi_start{v + 1}"])
                assert np.array_equal(plan.roi_end[v], s[f"roi_end{v + 1}"])
            frames = [(a + cfg.data.stride * k) % e.num_frames for a in plan.starts for k in range(4)]
            assert plan.union.tolist() == sorted(set(frames))


def test_without_decord_the_benchmark_runs_the_rest(monkeypatch, capsys):
    monkeypatch.setattr(peers, "decord_version", lambda: None)
    names = peers.candidates(["decord"])
    assert names == ["fastcvrl/vp9", "fastcvrl/mjpeg", "baseline/h264"]
    assert "decord2 is not installed" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="unknown"):
        peers.candidates(["torchvision"])


def test_decord_adapter_decodes_the_planned_frames_and_crop_boxes(h264_manifest):
    """decord's views are the plan's frames under the plan's boxes: equal to the views of the same plan
    decoded by PyAV (the baseline's decoder) to a level or two, and the frames the planned ones."""
    pytest.importorskip("decord")
    cfg = small_config(crop_size=24)
    entries = read_manifest(h264_manifest)
    ours, ref = (
        peers.PeerDataset(entries, cfg.data, 3, "decord"),
        peers.PeerDataset(entries, cfg.data, 3, "pyav"),
    )
    for epoch in (0, 1):
        ours.epoch = ref.epoch = epoch
        for video, e in enumerate(entries):
            plan = ours.plan(video)
            frames = peers.decord_frames(e.path, plan.union)
            index = np.floor(frames[..., 2].mean((1, 2)) / 16).astype(int)
            assert index.tolist() == (plan.union % 16).tolist()
            a, b = ours[video], ref[video]
            assert a[2] == b[2] == e.label
            for x, y in zip(a[:2], b[:2]):
                assert x.shape == y.shape == (4, 3, 24, 24) and x.dtype == torch.uint8
                d = (x.int() - y.int()).abs()
                assert int(d.max()) <= 3 and float(d.float().mean()) <= 0.5
            # another box gives other views: the check above would see a wrong crop
            other = peers.crop_views(torch.from_numpy(frames), plan, 24)
            swapped = peers.ClipPlan(
                plan.starts, plan.union, plan.order, plan.roi_start[::-1], plan.roi_end[::-1]
            )
            moved = peers.crop_views(torch.from_numpy(frames), swapped, 24)
            assert torch.equal(other[0], a[0])
            if not np.array_equal(plan.roi_start[0], plan.roi_start[1]):
                assert not torch.equal(moved[0], a[0])


def test_peer_benchmark_quick_json(tmp_path):
    """A tiny ``--peers`` run: the keys the issue names, the plans and contents checked equal."""
    import json

    import loader_bench

    out = tmp_path / "peers.json"
    result = loader_bench.main(
        ["--peers", "decord", "--quick", "--json", str(out), "--plot", str(tmp_path / "s.svg")]
    )
    saved = json.loads(out.read_text())
    names = result["candidates"]
    assert {"fastcvrl/vp9", "fastcvrl/mjpeg", "baseline/h264"} <= set(names)
    for key in ("clips_per_s", "cpu_ms_per_clip", "frames_per_clip_pair"):
        assert set(saved[key]) == set(names)
    assert all(saved["clips_per_s"][n] > 0 and saved["cpu_ms_per_clip"][n] > 0 for n in names)
    assert saved["plans_agree"] == {"fastcvrl/vp9": True, "fastcvrl/mjpeg": True}
    for n in ("fastcvrl/vp9", "fastcvrl/mjpeg"):
        st = saved["stages_ms_per_clip"][n]
        assert st["DALI decode (with RGB)"] > 0 and st["crop and resize"] > 0
    # MJPEG decodes windows; the same frames decoded whole are measured beside them
    assert (
        saved["stages_ms_per_clip"]["fastcvrl/mjpeg"]["reference: DALI decode of whole frames (with RGB)"] > 0
    )
    assert set(saved["decode_share_of_whole_frames"]) == {"fastcvrl/mjpeg"}
    # MJPEG decodes exactly the frames the clips need: the union of two 4-frame clips
    assert 4 <= saved["frames_per_clip_pair"]["fastcvrl/mjpeg"] <= 8
    if "decord/h264" in names:
        assert saved["content_check"]["decord/h264 vs baseline/h264"]["mean"] <= 1.0
    assert (tmp_path / "s.svg").read_text().startswith("<svg")
