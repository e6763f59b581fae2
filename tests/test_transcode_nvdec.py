"""``prepare --transcode h264`` writes what NVDEC decodes fast: sizes multiples of 16, an IDR picture at
every keyframe at the GOP interval, one set of encoder settings; sizes that break a rule are rejected."""

from __future__ import annotations

import csv
import os
import shutil
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

av = pytest.importorskip("av")  # absent on a bare GPU image: skip, not a collection error

from dali_pipelines import nvdec
from dali_pipelines.manifest import read_manifest
from fastcvrl.datasets.keyframes import check_idr_gop, keyframe_info, nal_unit_types, parse_sps
from fastcvrl.datasets.prepare import prepare
from fastcvrl.datasets.transcode import Transcode
from fastcvrl.datasets.video import H264_REFS, add_video_stream, read_video, write_video
from tests.videos import decode_index, index_frames

VARIABLE = ("threads", "lookahead_threads")  # x264 settings that follow the machine, not the stream


def x264_options(path: str) -> dict[str, str]:
    """The settings x264 wrote into the stream's first packet (its user-data SEI), less ``VARIABLE``."""
    with av.open(path) as f:
        data = bytes(next(p for p in f.demux(f.streams.video[0]) if p.size))
    text = data[data.index(b"options: ") + 9 :].split(b"\x00", 1)[0].decode()
    pairs = dict(kv.split("=", 1) for kv in text.split() if "=" in kv)
    return {k: v for k, v in pairs.items() if k not in VARIABLE}


def _rejected(out: Path) -> list[dict]:
    with open(out / "rejected.csv", newline="") as f:
        return list(csv.DictReader(f))


def _check_outputs(out: Path, gop: int) -> list:
    entries = read_manifest(out / "manifest.csv")
    settings, decoders = [], set()
    for e in entries:
        assert e.width % 16 == 0 and e.height % 16 == 0, (e.path, e.width, e.height)
        assert nvdec.reuses(e.codec, e.width, e.height)
        info = keyframe_info(e.path)
        assert info.idr is not None and check_idr_gop(info, gop) == "", e.path
        assert info.keyframes == tuple(range(0, e.num_frames, gop))
        assert info.sps.coded == info.sps.display == (e.width, e.height)  # the stream's own word
        decoders.add(info.sps.decoder[2:])  # DPB frames, chroma format, bit depth
        settings.append(x264_options(e.path))
    assert len(decoders) == 1, decoders  # one decoder configuration per size
    assert all(s == settings[0] for s in settings), "the outputs' encoder settings differ"
    s = settings[0]
    assert (s["ref"], s["open_gop"], s["scenecut"], s["keyint"]) == ("1", "0", "0", str(gop))
    return entries


def test_real_clips_of_several_aspects_become_nvdec_friendly(shared_videos, tmp_path):
    src = tmp_path / "src" / "a"
    src.mkdir(parents=True)
    for p in sorted(shared_videos.iterdir()):
        if p.suffix in (".mp4", ".avi"):
            shutil.copy(p, src / p.name)
    out = tmp_path / "out"
    s = prepare(
        tmp_path / "src",
        out,
        transcode=Transcode("h264", 256, 16),
        workers=2,
        quiet=True,
        log=lambda *_: None,
    )
    assert s.usable == len(list(src.iterdir())) >= 3, _rejected(out)
    entries = _check_outputs(out, 16)
    sizes = {(e.width, e.height) for e in entries}
    assert (336, 256) in sizes and (448, 256) in sizes  # 4:3 (340 x 256, 320 x 240) and 16:9 (426 x 240)
    report = nvdec.summarize(nvdec.audit(entries), threads=8)
    assert report.ok and report.configs == len(sizes)


def test_generated_clips_keep_frames_and_get_idr_keyframes(tmp_path):
    src = tmp_path / "src" / "x"
    src.mkdir(parents=True)
    # a long open GOP (non-IDR keyframes) in, 9:16 portrait and 2.35:1 cinema sizes, odd sides
    with av.open(str(src / "open_gop.mp4"), "w") as f:
        st = f.add_stream("libx264", rate=25)
        st.width, st.height, st.pix_fmt = 100, 178, "yuv420p"
        st.options = {"x264-params": "keyint=30:min-keyint=30:scenecut=0:open-gop=1:bframes=3"}
        for fr in index_frames(70, 178, 100, 1):
            for pk in st.encode(av.VideoFrame.from_ndarray(fr, format="rgb24")):
                f.mux(pk)
        for pk in st.encode():
            f.mux(pk)
    assert keyframe_info(src / "open_gop.mp4").non_idr_keyframes > 0  # the input is what it claims
    write_video(src / "cinema.mkv", index_frames(45, 102, 240, 2), codec="vp9", gop=50)
    out = tmp_path / "out"
    s = prepare(
        tmp_path / "src", out, transcode=Transcode("h264", 128, 8), workers=2, quiet=True, log=lambda *_: None
    )
    assert s.usable == 2, _rejected(out)
    entries = _check_outputs(out, 8)
    assert {(e.width, e.height) for e in entries} == {(128, 224), (304, 128)}
    for e in entries:
        idx, vid = decode_index(read_video(e.path))
        assert idx.tolist() == list(range(e.num_frames)) and len(set(vid.tolist())) == 1


def test_tiny_and_extreme_sizes_are_rejected_not_written(tmp_path):
    src = tmp_path / "src" / "x"
    src.mkdir(parents=True)
    write_video(src / "one_pixel.avi", np.full((4, 2, 2, 3), 128, np.uint8), codec="mjpeg")
    write_video(src / "sliver.avi", index_frames(4, 32, 2112, 3), codec="mjpeg")  # 66:1: 4224 x 64
    write_video(src / "fine.avi", index_frames(4, 120, 160, 4), codec="mjpeg")
    out = tmp_path / "out"
    s = prepare(
        tmp_path / "src", out, transcode=Transcode("h264", 64, 4), workers=1, quiet=True, log=lambda *_: None
    )
    rows = {Path(r["path"]).name: r for r in _rejected(out)}
    assert s.usable == 1 and set(rows) == {"one_pixel.avi", "sliver.avi"}
    assert (
        rows["one_pixel.avi"]["reason"] == "unsupported size"
        and "--allow-upscale" in rows["one_pixel.avi"]["detail"]
    )
    assert rows["sliver.avi"]["reason"] == "unsupported size" and "4096x4096" in rows["sliver.avi"]["detail"]
    written = sorted(p.name for p in (out / "videos").rglob("*") if p.is_file())
    assert written == ["fine.mp4"]  # nothing written for the refused ones
    # with the flag the one-pixel video is scaled up, and then refused by NVDEC's minimum, not written either
    out2 = tmp_path / "out2"
    prepare(
        tmp_path / "src",
        out2,
        transcode=Transcode("h264", 64, 4, allow_upscale=True),
        workers=1,
        quiet=True,
        log=lambda *_: None,
    )
    rows = {Path(r["path"]).name: r for r in _rejected(out2)}
    assert set(rows) == {"sliver.avi"}  # one_pixel: 2x2 -> 64x64 allowed now
    assert os.path.isfile(out2 / "videos" / "x" / "one_pixel.mp4")


def test_nal_unit_types_of_both_framings():
    nals = [bytes([0x67, 1, 2]), bytes([0x68, 3]), bytes([0x65, 9, 9, 9])]  # SPS, PPS, IDR slice
    avcc = b"".join(len(n).to_bytes(4, "big") + n for n in nals)
    annexb = b"".join(b"\x00\x00\x00\x01" + n for n in nals)
    assert nal_unit_types(avcc, 4) == nal_unit_types(annexb, 0) == [7, 8, 5]
    assert nal_unit_types(avcc[:-2], 4) == [7, 8]  # a cut length ends the list, no error


def test_the_command_line_passes_allow_upscale(tmp_path):
    from fastcvrl.datasets.prepare import main

    src = tmp_path / "src" / "x"
    src.mkdir(parents=True)
    write_video(src / "small.avi", index_frames(4, 16, 16, 1), codec="mjpeg")
    args = [
        str(tmp_path / "src"),
        "--transcode",
        "h264",
        "--short-side",
        "64",
        "--gop",
        "4",
        "--workers",
        "1",
    ]
    assert main([*args, "--out", str(tmp_path / "a"), "--quiet"]) == 1  # 4x: refused, no usable video
    assert _rejected(tmp_path / "a")[0]["reason"] == "unsupported size"
    assert main([*args, "--out", str(tmp_path / "b"), "--quiet", "--allow-upscale"]) == 0
    (e,) = read_manifest(tmp_path / "b" / "manifest.csv")
    assert (e.width, e.height) == (64, 64)


@pytest.mark.parametrize("container", [".mp4", ".mkv", ".h264"])
def test_the_sps_reader_against_pyav(tmp_path, container):
    """Coded and display sizes from the sequence parameter set (avcC or Annex B) against PyAV's decoded size;
    x264's reference-frame setting comes back as written."""
    for i, (w, h) in enumerate([(100, 60), (456, 256), (448, 256), (50, 178), (64, 64)]):
        path = str(tmp_path / f"v{i}{container}")
        with av.open(path, "w", format="h264" if container == ".h264" else None) as out:
            st = add_video_stream(out, "h264", w, h, Fraction(25), 8, None, 0)
            for fr in index_frames(10, h, w, i):
                for pk in st.encode(av.VideoFrame.from_ndarray(fr, format="rgb24")):
                    out.mux(pk)
            for pk in st.encode():
                out.mux(pk)
        sps = keyframe_info(path).sps
        frames = read_video(path)
        assert sps.display == (frames.shape[2], frames.shape[1]) == (w, h)
        assert sps.coded == (-(-w // 16) * 16, -(-h // 16) * 16)
        assert (sps.ref_frames, sps.chroma_format, sps.bit_depth) == (H264_REFS, 1, 8)


def test_a_cut_sps_is_an_error_not_a_crash():
    with pytest.raises(ValueError, match="cut short"):
        parse_sps(bytes([0x67, 0x64, 0x00]))
    with pytest.raises(ValueError, match="not an SPS"):
        parse_sps(bytes([0x65, 1, 2]))
