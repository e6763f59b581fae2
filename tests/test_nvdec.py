"""NVDEC's rules from the manifest (``dali_pipelines.nvdec``), the decode-thread count (``cores``), and the
sizes ``prepare --transcode`` writes (``fastcvrl.datasets.transcode.output_size``)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

pytest.importorskip("av")  # transcode imports PyAV: absent on a bare GPU image, skip

from dali_pipelines import cores, nvdec
from fastcvrl.datasets.transcode import SizeRefused, Transcode, check_output_size, output_size


def _entries(*rows):
    """``(codec, width, height, count)`` rows -> manifest-like entries."""
    out = []
    for codec, w, h, n in rows:
        out += [
            SimpleNamespace(path=f"/v/{codec}_{w}x{h}_{i}.mp4", codec=codec, width=w, height=h)
            for i in range(n)
        ]
    return out


# ------------------------------------------------------------------------------------------- coded size
@pytest.mark.parametrize("codec", sorted(nvdec.CODED_ALIGN))
def test_coded_size_is_the_smallest_multiple_of_the_block_at_least_the_size(codec):
    a = nvdec.CODED_ALIGN[codec]
    for w in range(1, 70):
        ref = next(c for c in range(w, w + a + 1) if c % a == 0)  # the slow obvious way
        assert nvdec.coded_size(codec, w, 16) == (ref, -(-16 // a) * a)
        assert nvdec.reuses(codec, w, a) == (ref == w)


def test_kinetics_sizes_of_the_old_rule_defeat_reuse_and_the_new_ones_do_not():
    assert nvdec.coded_size("h264", 456, 256) == (464, 256) and not nvdec.reuses("h264", 456, 256)
    assert not nvdec.reuses("h264", 340, 256)
    assert nvdec.reuses("h264", 448, 256) and nvdec.reuses("avc", 336, 256)


def test_size_refusal_at_nvdec_limits():
    assert nvdec.size_refusal("h264", 48, 16) is None
    assert "minimum" in nvdec.size_refusal("h264", 32, 64)
    assert nvdec.size_refusal("h264", 4096, 4096) is None
    assert "maximum" in nvdec.size_refusal("h264", 4112, 64)  # 16000 x 64 of issue 22's 4000 x 16 too
    assert "maximum" in nvdec.size_refusal("h264", 16000, 64)
    assert "minimum" in nvdec.size_refusal("hevc", 128, 720)
    assert nvdec.size_refusal("mjpeg", 10, 10) is None  # not an NVDEC codec here: codecs.refusal says so


# ------------------------------------------------------------------------------------------- the audit
def test_audit_of_aligned_h264_is_ok():
    groups = nvdec.audit(_entries(("h264", 448, 256, 5), ("h264", 336, 256, 3)))
    report = nvdec.summarize(groups, threads=8)
    assert report.ok and report.configs == 2 and report.slow == report.refused == 0 and report.fix == ""
    assert report.warning() == ""
    assert [g.count for g in groups] == [5, 3]


def test_audit_names_the_count_of_reuse_defeating_videos_and_the_fix():
    groups = nvdec.audit(_entries(("h264", 456, 256, 4), ("h264", 448, 256, 2), ("h264", 32, 32, 1)))
    report = nvdec.summarize(groups, threads=8, manifest="m.csv")
    assert not report.ok and report.slow == 4 and report.refused == 1 and report.videos == 7
    line = report.warning()
    assert "\n" not in line and line.startswith("4 of 7 videos") and "--transcode h264" in line
    assert "m.csv" in report.fix
    verdicts = {(g.width, g.height): g.verdict for g in groups}
    assert verdicts == {(456, 256): "slow: new decoder per sample", (448, 256): "ok", (32, 32): "refused"}
    text = "\n".join(nvdec.format_report(groups, report))
    assert "464x256" in text and "fix: python -m fastcvrl.prepare" in text


def test_too_many_configurations_for_the_cache_warn():
    sizes = [("h264", 256 + 16 * i, 256, 1) for i in range(13)]  # 13 configurations
    r8 = nvdec.summarize(nvdec.audit(_entries(*sizes)), threads=8)
    assert r8.configs == 13 and r8.over_cache and "13 distinct decoder configurations x 8" in r8.warning()
    r4 = nvdec.summarize(nvdec.audit(_entries(*sizes)), threads=4)
    assert not r4.over_cache and r4.ok  # 52 decoders fit the cache of 100


def test_stream_facts_join_the_verdict_and_the_configuration():
    entries = _entries(("h264", 448, 256, 2))
    facts = {
        entries[0].path: nvdec.StreamFacts(16, 0, (448, 256), (448, 256), (4, 1, 8)),
        entries[1].path: nvdec.StreamFacts(250, 3, (448, 256), (448, 256), (4, 1, 10)),  # 10-bit
    }
    (g,) = nvdec.audit(entries, facts)
    assert g.longest_gop == 250 and g.non_idr == 3 and len(g.configs) == 2 and g.read == 2
    assert g.verdict == "wrong: keyframes not IDR"
    r = nvdec.summarize([g], threads=8)
    assert r.wrong == 2 and r.long_gop == 2 and not r.ok


def test_the_streams_coded_size_decides_reuse():
    """A manifest that says 448 x 256 for a stream coded with cropping (coded 464 x 256) is caught."""
    entries = _entries(("h264", 448, 256, 2))
    facts = {e.path: nvdec.StreamFacts(16, 0, (448, 256), (448, 256), (4, 1, 8)) for e in entries}
    facts[entries[1].path] = nvdec.StreamFacts(16, 0, (464, 256), (448, 256), (4, 1, 8))
    (g,) = nvdec.audit(entries, facts)
    assert not g.reused and g.verdict == "slow: new decoder per sample"
    (g,) = nvdec.audit(entries[:1], facts)
    assert g.reused


# ------------------------------------------------------------------------------------------- decode threads
def test_num_threads_auto_is_at_least_8_on_the_gpu_and_the_cores_of_the_rank(monkeypatch):
    monkeypatch.setattr(cores, "usable_cores", lambda: 4)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert cores.resolve_num_threads("auto", "gpu") == 8
    monkeypatch.setattr(cores, "usable_cores", lambda: 64)
    assert cores.resolve_num_threads("auto", "gpu") == 64
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert cores.resolve_num_threads("auto", "gpu") == 16
    assert cores.resolve_num_threads("auto", "cpu") == cores.CPU_THREADS
    assert cores.resolve_num_threads(3, "gpu") == 3
    for bad in (0, "4", True):
        with pytest.raises(ValueError, match="data.num_threads"):
            cores.resolve_num_threads(bad, "gpu")


# ------------------------------------------------------------------------------------------- output sizes
def test_h264_sizes_are_multiples_of_16_nearest_the_aspect():
    assert output_size(456, 256, 256, "h264") == (448, 256)  # 16:9 Kinetics
    assert output_size(340, 256, 256, "h264") == (336, 256)  # 4:3 Kinetics
    assert output_size(1920, 1080, 256, "h264") == (448, 256)
    assert output_size(320, 240, 250, "h264") == (336, 256)  # the short side rounded to 16 too
    assert output_size(1080, 1920, 0, "h264") == (1072, 1920)  # 0: each side rounded down
    assert output_size(456, 256, 256, "vp9") == (456, 256) and output_size(343, 256, 256, "vp9") == (344, 256)


def test_h264_sizes_against_the_obvious_search():
    """Every source size from 16 to 400 x 100..300: the long side is the multiple of 16 nearest the
    aspect-preserving length (the obvious search over all multiples), so the aspect is off by at most
    8 / long."""
    for short_side in (128, 256):
        for w in range(100, 401, 7):
            for h in range(100, 301, 11):
                ow, oh = output_size(w, h, short_side, "h264")
                assert ow % 16 == 0 and oh % 16 == 0
                short, long_in = (w, h) if w <= h else (h, w)
                exact = max(w, h) * short_side / min(w, h)
                best = min(range(16, 4 * int(exact) + 32, 16), key=lambda c: (abs(c - exact), c))
                out_long, out_short = (oh, ow) if w <= h else (ow, oh)
                assert out_short == short_side and abs(out_long - exact) <= 8
                assert out_long == best or abs(out_long - exact) == abs(best - exact)
                assert abs(out_long / out_short - long_in / short) <= 8 / out_short + 1e-9


def test_sizes_that_break_a_rule_are_refused_with_a_reason():
    h264 = Transcode("h264", 256)
    with pytest.raises(SizeRefused, match=r"scaled up 256\.0x.*--allow-upscale"):
        check_output_size(1, 1, h264)
    with pytest.raises(SizeRefused, match="scaled up 16.0x"):
        check_output_size(4000, 16, Transcode("vp9", 256))
    with pytest.raises(SizeRefused, match="above NVDEC's 4096x4096 maximum"):
        check_output_size(4000, 16, Transcode("h264", 256, allow_upscale=True))
    assert check_output_size(4000, 16, Transcode("vp9", 64, allow_upscale=True)) == (16000, 64)
    assert check_output_size(320, 240, h264) == (336, 256)  # UCF-101 to 256: a small upscale, fine
    with pytest.raises(SizeRefused, match="2.7x"):
        check_output_size(128, 96, h264)
    with pytest.raises(SizeRefused, match="minimum"):
        check_output_size(40, 40, Transcode("h264", 0))
