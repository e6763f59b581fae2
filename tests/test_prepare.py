"""prepare: probing, rejection with reasons, source formats, resume, transcoding that keeps every frame."""

from __future__ import annotations

import csv
import errno
import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

av = pytest.importorskip("av")  # absent on a bare GPU image: skip, not a collection error

from processes import exited, kill_and_wait, wait_exited
from videos import decode_index, index_frames

from dali_pipelines.manifest import read_classes, read_manifest
from fastcvrl.atomic import temp_path, temp_writer
from fastcvrl.datasets import prepare as prep
from fastcvrl.datasets.journal import JOURNAL, NO_PERMISSION
from fastcvrl.datasets.prepare import PrepareError, main, prepare
from fastcvrl.datasets.transcode import Transcode
from fastcvrl.datasets.video import keyframe_indices, read_video, write_video
from fastcvrl.datasets.videoprobe import probe_video

REPO = Path(__file__).resolve().parents[1]


def _vfr_video(path: Path, frames: np.ndarray, encoder: str = "libx264") -> Path:
    """Frames at irregular times (40, 40, 80, 20, 120 ms apart): a variable-frame-rate file."""
    h, w = frames.shape[1:3]
    with av.open(str(path), "w") as out:
        s = out.add_stream(encoder, rate=25)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        s.codec_context.time_base = Fraction(1, 1000)
        t = 0
        for i, f in enumerate(frames):
            vf = av.VideoFrame.from_ndarray(f, format="rgb24")
            vf.pts, vf.time_base = t, Fraction(1, 1000)
            t += (40, 40, 80, 20, 120)[i % 5]
            for p in s.encode(vf):
                out.mux(p)
        for p in s.encode():
            out.mux(p)
    return path


def _audio_only(path: Path) -> Path:
    with av.open(str(path), "w") as out:
        s = out.add_stream("pcm_s16le", rate=8000)
        fr = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
        fr.sample_rate, fr.pts = 8000, 0
        for p in list(s.encode(fr)) + list(s.encode()):
            out.mux(p)
    return path


def _truncate(src: Path, dst: Path, fraction: float = 0.5) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * fraction)])
    return dst


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _digest(root: Path) -> dict[str, tuple[str, int]]:
    return {
        str(p): (hashlib.sha1(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


# ------------------------------------------------------------------------------------------- probing
@pytest.mark.parametrize(
    "codec, ext, size",
    [
        ("vp9", ".webm", (27, 35)),
        ("mjpeg", ".avi", (32, 48)),
        ("h264", ".mp4", (40, 64)),
        ("mpeg4", ".avi", (24, 32)),
        ("h264", ".mkv", (30, 46)),
        ("vp9", ".mkv", (17, 33)),
    ],
)
def test_probe_counts_decoded_frames_in_many_containers(tmp_path, codec, ext, size):
    frames = index_frames(21, *size)
    path = write_video(tmp_path / f"v{ext}", frames, fps=12.5, codec=codec, gop=5)
    p = probe_video(path)
    assert p.ok, p
    assert (p.num_frames, p.height, p.width, p.codec, p.fps) == (21, *size, codec, 12.5)
    assert p.num_frames == len(read_video(path))  # against the slow full decode to RGB


def test_probe_variable_frame_rate(tmp_path):
    for ext, enc in ((".mkv", "libx264"), (".mp4", "libx264"), (".webm", "libvpx-vp9")):
        path = _vfr_video(tmp_path / f"vfr{ext}", index_frames(30, 32, 48), enc)
        p = probe_video(path)
        assert p.ok, p  # fewer frames than duration x nominal rate is not truncation
        assert p.num_frames == len(read_video(path)) == 30
        assert 15 < p.fps < 20  # 29 intervals over 1.68 s, not the nominal 25


def test_probe_real_clips_match_a_full_decode(shared_videos):
    clips = sorted(p for p in shared_videos.iterdir() if p.suffix in (".mp4", ".avi"))
    assert clips
    for path in clips:
        p = probe_video(path)
        frames = read_video(path)
        assert p.ok, p
        assert (p.num_frames, p.height, p.width) == frames.shape[:3], path.name


@pytest.mark.parametrize(
    "make, reason",
    [
        (lambda d, good: _truncate(good["h264"], d / "cut.mp4"), "truncated"),
        (lambda d, good: _truncate(good["vp9"], d / "cut.webm"), "truncated"),
        (lambda d, good: _truncate(good["mjpeg"], d / "cut.avi"), "truncated"),
        (
            lambda d, good: (
                (d / "noise.mp4").write_bytes(np.random.default_rng(0).bytes(4096)) and d / "noise.mp4"
            ),
            "unreadable",
        ),
        (lambda d, good: (d / "empty.mp4").write_bytes(b"") or d / "empty.mp4", "empty"),
        (
            lambda d, good: (d / "notes.mp4").write_text("not a video\n" * 20) and d / "notes.mp4",
            "unreadable",
        ),
        (lambda d, good: _audio_only(d / "audio.mka"), "no video stream"),
        (lambda d, good: d / "absent.mp4", "missing"),
    ],
)
def test_probe_rejects_with_a_reason(tmp_path, make, reason):
    good = {
        c: write_video(tmp_path / f"good_{c}{e}", index_frames(40, 32, 32), codec=c, gop=8)
        for c, e in (("h264", ".mp4"), ("vp9", ".webm"), ("mjpeg", ".avi"))
    }
    good = {c: Path(p) for c, p in good.items()}
    p = probe_video(make(tmp_path, good))
    assert p.reason == reason, p
    assert p.detail


# ------------------------------------------------------------------------------------------- a whole run
@pytest.fixture()
def collection(tmp_path) -> Path:
    """``src/<class>/`` with good videos of several codecs and five bad files."""
    src = tmp_path / "src"
    for c in ("jump", "run"):
        (src / c).mkdir(parents=True)
    write_video(src / "jump" / "a.webm", index_frames(20, 24, 32, 1), codec="vp9", gop=4)
    write_video(src / "jump" / "b.avi", index_frames(18, 24, 32, 2), codec="mjpeg")
    write_video(src / "run" / "c.mp4", index_frames(22, 24, 32, 3), codec="h264", gop=4)
    write_video(src / "run" / "d.avi", index_frames(19, 24, 32, 4), codec="mpeg4", gop=4)
    _truncate(src / "run" / "c.mp4", src / "run" / "cut.mp4")
    (src / "run" / "noise.mp4").write_bytes(np.random.default_rng(1).bytes(3000))
    (src / "run" / "empty.mp4").write_bytes(b"")
    (src / "jump" / "text.mp4").write_text("hello\n")
    (src / "jump" / "readme.txt").write_text("not listed: not a video extension\n")
    return src


def test_run_writes_manifest_classes_and_rejections(collection, tmp_path):
    before = _digest(collection)
    s = prepare(collection, tmp_path / "out", workers=2, quiet=True, log=lambda *_: None)
    assert s.complete and s.usable == 4 and s.listed == 8
    entries = read_manifest(tmp_path / "out" / "manifest.csv")
    assert [(Path(e.path).name, e.label, e.num_frames, e.codec) for e in entries] == [
        ("a.webm", 0, 20, "vp9"),
        ("b.avi", 0, 18, "mjpeg"),
        ("c.mp4", 1, 22, "h264"),
        ("d.avi", 1, 19, "mpeg4"),
    ]
    assert read_classes(tmp_path / "out" / "classes.txt") == ["jump", "run"]
    reasons = {Path(r["path"]).name: r["reason"] for r in _rows(tmp_path / "out" / "rejected.csv")}
    assert reasons == {
        "text.mp4": "unreadable",
        "cut.mp4": "truncated",
        "empty.mp4": "empty",
        "noise.mp4": "unreadable",
    }
    assert _digest(collection) == before  # sources untouched


def test_list_with_a_missing_path_and_min_frames(collection, tmp_path):
    lst = tmp_path / "list.txt"
    lst.write_text("# path label\nsrc/jump/a.webm jump\nsrc/run/c.mp4 run\nsrc/run/gone.mp4 run\n")
    s = prepare(lst, tmp_path / "out", min_frames=21, workers=1, quiet=True, log=lambda *_: None)
    rej = {Path(r["path"]).name: (r["reason"], r["detail"]) for r in _rows(tmp_path / "out" / "rejected.csv")}
    assert rej["gone.mp4"][0] == "missing"
    assert rej["a.webm"][0] == "too short"  # 20 frames < 21
    assert [Path(e.path).name for e in read_manifest(tmp_path / "out" / "manifest.csv")] == ["c.mp4"]
    assert s.rejected == {"missing": 1, "too short": 1}


def test_output_folder_inside_the_source_is_not_a_class(collection):
    out = collection / "prepared"
    prepare(collection, out, workers=1, quiet=True, log=lambda *_: None)
    prepare(collection, out, workers=1, quiet=True, log=lambda *_: None)  # out/ now exists inside src/
    assert read_classes(out / "classes.txt") == ["jump", "run"]


def test_resume_after_stop_equals_one_uninterrupted_run(collection, tmp_path):
    quiet = dict(workers=2, quiet=True, log=lambda *_: None)
    ref = prepare(collection, tmp_path / "ref", **quiet)
    first = prepare(collection, tmp_path / "out", stop_after=3, **quiet)
    assert not first.complete and first.processed == 3
    assert not (tmp_path / "out" / "manifest.csv").exists()
    second = prepare(collection, tmp_path / "out", **quiet)
    assert second.complete and (second.reused, second.processed) == (3, ref.listed - 3)
    assert (tmp_path / "out" / "manifest.csv").read_text() == (tmp_path / "ref" / "manifest.csv").read_text()
    assert (tmp_path / "out" / "rejected.csv").read_text() == (tmp_path / "ref" / "rejected.csv").read_text()
    third = prepare(collection, tmp_path / "out", **quiet)
    assert (third.reused, third.processed) == (ref.listed, 0)
    # a changed source is probed again
    write_video(collection / "jump" / "a.webm", index_frames(25, 24, 32, 1), codec="vp9", gop=4)
    fourth = prepare(collection, tmp_path / "out", **quiet)
    assert fourth.processed == 1
    assert read_manifest(tmp_path / "out" / "manifest.csv")[0].num_frames == 25


def test_ctrl_c_leaves_no_manifest_and_the_rerun_finishes(tmp_path):
    src = tmp_path / "src"
    (src / "k").mkdir(parents=True)
    for i in range(24):  # ~0.1 s a file to transcode: the interrupt lands mid-run even on a busy machine
        write_video(src / "k" / f"{i:02d}.webm", index_frames(48, 160, 160, i % 16), codec="vp9", gop=48)
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        "-m",
        "fastcvrl.prepare",
        str(src),
        "--out",
        str(out),
        "--transcode",
        "vp9",
        "--short-side",
        "144",
        "--workers",
        "1",
        "--quiet",
    ]
    # Ctrl-C as at a terminal: a child of a background job would inherit SIGINT ignored (and Python would then
    # install no KeyboardInterrupt handler), so the child starts with the default disposition
    proc = subprocess.Popen(
        cmd,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    journal = out / JOURNAL
    deadline = time.monotonic() + 300  # bounds a failure only: the start is slow on a loaded machine
    while time.monotonic() < deadline and not (journal.is_file() and journal.read_text().count("\n") >= 2):
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    try:
        stdout, _ = proc.communicate(timeout=300)
    finally:
        kill_and_wait(proc)
    assert proc.returncode == 130, stdout
    done = journal.read_text().count("\n")
    assert 2 <= done < 24
    assert not (out / "manifest.csv").exists()
    assert not [p for p in out.rglob("*") if temp_writer(p.name)]  # no half-written transcode left
    s = prepare(src, out, transcode=Transcode("vp9", 144, 16), workers=2, quiet=True, log=lambda *_: None)
    assert s.complete and s.reused == done and s.processed == 24 - done
    assert [e.num_frames for e in read_manifest(out / "manifest.csv")] == [48] * 24


_real_work = prep._work


def _crash_on_b(job):
    if job[0].endswith("b.avi"):
        os._exit(1)  # what a segfault in FFmpeg looks like to the pool
    return _real_work(job)


def test_a_crashing_decoder_rejects_only_its_file(collection, tmp_path, monkeypatch):
    monkeypatch.setattr(prep, "_work", _crash_on_b)  # forked workers inherit the patch
    s = prepare(collection, tmp_path / "out", workers=2, quiet=True, log=lambda *_: None)
    reasons = {Path(r["path"]).name: r["reason"] for r in _rows(tmp_path / "out" / "rejected.csv")}
    assert reasons["b.avi"] == "unreadable" and s.usable == 3


def _hang_on_b(job):
    if job[0].endswith("b.avi"):
        Path(os.environ["HUNG_PID_FILE"]).write_text(str(os.getpid()))
        time.sleep(3600)  # what a decoder stuck in a loop looks like to the pool
    return _real_work(job)


def test_a_hanging_decoder_is_rejected_after_the_timeout_and_the_rest_finish(
    collection, tmp_path, monkeypatch
):
    monkeypatch.setattr(prep, "_work", _hang_on_b)
    monkeypatch.setenv("HUNG_PID_FILE", str(tmp_path / "hung.pid"))
    # 10 s: far beyond what probing a tiny file takes on a loaded machine (a good file must not time out; its
    # clock starts when it is handed to the pool, worker start-up included), and only the hung one waits it
    s = prepare(collection, tmp_path / "out", workers=2, timeout=10, quiet=True, log=lambda *_: None)
    rows = {Path(r["path"]).name: r for r in _rows(tmp_path / "out" / "rejected.csv")}
    assert rows["b.avi"]["reason"] == "timeout" and "10 s" in rows["b.avi"]["detail"]
    assert s.complete and s.usable == 3 and s.rejected["timeout"] == 1
    pid = int((tmp_path / "hung.pid").read_text())
    assert not wait_exited([pid], timeout=60)  # the hung worker was killed, not left sleeping
    # a timeout is not recorded as done: the next run tries the file again
    monkeypatch.setattr(prep, "_work", _real_work)
    again = prepare(collection, tmp_path / "out", workers=2, quiet=True, log=lambda *_: None)
    assert again.processed == 1 and again.usable == 4


def test_bad_timeout_is_an_error():
    with pytest.raises(PrepareError, match="--timeout"):
        prepare(".", "/nonexistent/out", timeout=-1)


# ------------------------------------------------------------------------------------------- the file system
def test_symlink_loops_and_dangling_links_are_rejected_not_left_out(collection, tmp_path):
    os.symlink("loop.mp4", collection / "jump" / "loop.mp4")  # points at itself
    os.symlink("pong.avi", collection / "run" / "ping.avi")  # a loop of two
    os.symlink("ping.avi", collection / "run" / "pong.avi")
    os.symlink("nowhere.webm", collection / "run" / "gone.webm")  # a target that does not exist
    s = prepare(collection, tmp_path / "out", workers=2, quiet=True, log=lambda *_: None)
    rows = {Path(r["path"]).name: r for r in _rows(tmp_path / "out" / "rejected.csv")}
    for name in ("loop.mp4", "ping.avi", "pong.avi"):
        assert (rows[name]["reason"], rows[name]["detail"]) == ("broken link", "symbolic link loop"), rows[
            name
        ]
    assert rows["gone.webm"]["reason"] == "broken link" and "nowhere.webm" in rows["gone.webm"]["detail"]
    assert (
        Path(rows["gone.webm"]["path"]).parent == (collection / "run").resolve()
    )  # the link, not its target
    assert s.usable == 4 and s.rejected["broken link"] == 4
    # a list naming a loop: rejected too, not a crash while listing
    (tmp_path / "list.txt").write_text(
        f"{collection / 'jump' / 'loop.mp4'} 0\n{collection / 'jump' / 'a.webm'} 0\n"
    )
    prepare(tmp_path / "list.txt", tmp_path / "out_list", workers=1, quiet=True, log=lambda *_: None)
    assert [r["reason"] for r in _rows(tmp_path / "out_list" / "rejected.csv")] == ["broken link"]


_real_os_open = os.open
DENIED: set[str] = set()  # paths the patched os.open refuses, as a file without read permission does


def _os_open_denying(path, flags, *args, **kwargs):
    if os.fspath(path) in DENIED:
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fspath(path))
    return _real_os_open(path, flags, *args, **kwargs)


def _denied_then_allowed(collection: Path, out: Path, deny, allow) -> tuple:
    """Run with ``b.avi`` unreadable, then again after ``allow``; returns both summaries and b's row."""
    target = str((collection / "jump" / "b.avi").resolve())
    deny(target)
    first = prepare(collection, out, workers=2, quiet=True, log=lambda *_: None)
    row = {Path(r["path"]).name: r for r in _rows(out / "rejected.csv")}["b.avi"]
    allow(target)
    second = prepare(collection, out, workers=2, quiet=True, log=lambda *_: None)
    return first, second, row


def test_a_permission_rejection_is_retried_by_the_next_run(collection, tmp_path, monkeypatch):
    """Runs as any user (root reads any file whatever its mode): the worker's open is refused as chmod
    would."""
    monkeypatch.setattr(os, "open", _os_open_denying)  # forked workers inherit the patch
    first, second, row = _denied_then_allowed(collection, tmp_path / "out", DENIED.add, DENIED.discard)
    assert row["reason"] == "unreadable" and row["detail"].startswith(NO_PERMISSION), row
    assert first.usable == 3
    assert second.processed == 1 and second.reused == first.listed - 1  # only b.avi again: not "already done"
    assert second.usable == 4 and "b.avi" not in {
        Path(r["path"]).name for r in _rows(tmp_path / "out" / "rejected.csv")
    }


def test_permission_rejections_in_an_older_journal_are_retried(collection, tmp_path):
    out = tmp_path / "out"
    prepare(collection, out, workers=2, quiet=True, log=lambda *_: None)
    target = str((collection / "jump" / "b.avi").resolve())
    journal = (out / JOURNAL).read_text().splitlines()
    old = [json.loads(line) for line in journal]
    for rec in old:  # as an earlier version recorded a file it could not open
        if rec["src"] == target:
            rec["probe"].update(
                reason="unreadable", detail=f"PermissionError: [Errno 13] Permission denied: '{target}'"
            )
    (out / JOURNAL).write_text("".join(json.dumps(rec) + "\n" for rec in old))
    again = prepare(collection, out, workers=2, quiet=True, log=lambda *_: None)
    assert again.processed == 1 and again.usable == 4


@pytest.mark.skipif(
    os.geteuid() == 0, reason="root reads a file whatever its mode bits: chmod cannot deny it"
)
def test_a_chmod_denied_file_is_retried_after_chmod(collection, tmp_path):
    first, second, row = _denied_then_allowed(
        collection, tmp_path / "out", lambda p: os.chmod(p, 0), lambda p: os.chmod(p, 0o644)
    )
    assert row["reason"] == "unreadable" and row["detail"].startswith(NO_PERMISSION), row
    assert first.usable == 3 and second.processed == 1 and second.usable == 4


def test_long_file_names_transcode(tmp_path):
    """A 250-character name: the temporary name must not grow with it, and the output names (a longer
    extension, a hash to tell equal stems apart) are cut to fit the 255-byte limit."""
    src = tmp_path / "src"
    (src / "k").mkdir(parents=True)
    names = ["a" * 246 + ".mp4", "b" * 246 + ".mp4", "b" * 246 + ".avi", "é" * 123 + ".avi"]  # 250 bytes
    for i, name in enumerate(names):  # written under a short name: the writer's own temporary would not fit
        write_video(src / "k" / f"{i}.avi", index_frames(12, 16, 16, i), codec="mjpeg")
        os.rename(src / "k" / f"{i}.avi", src / "k" / name)
    s = prepare(
        src,
        tmp_path / "out",
        transcode=Transcode("vp9", short_side=16, gop=4),
        workers=2,
        quiet=True,
        log=lambda *_: None,
    )
    assert s.usable == 4, _rows(tmp_path / "out" / "rejected.csv")
    entries = read_manifest(tmp_path / "out" / "manifest.csv")
    outs = [Path(e.path).name for e in entries]
    assert len(set(outs)) == 4 and all(len(n.encode()) <= 255 and n.endswith(".webm") for n in outs)
    for e in entries:
        idx, vid = decode_index(read_video(e.path))
        assert idx.tolist() == list(range(12))
    assert sorted(int(decode_index(read_video(e.path))[1][0]) for e in entries) == [
        0,
        1,
        2,
        3,
    ]  # none overwritten
    longest = temp_path(tmp_path / ("c" * 251 + ".mp4"), keep_suffix=True)  # a transcode's temporary
    assert len(longest.name.encode()) <= 255 and longest.name.endswith(".mp4")


_HANG_ALL = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    from fastcvrl.datasets import prepare as prep
    def hang(job):
        Path(os.environ["WORKER_PIDS"], str(os.getpid())).touch()
        time.sleep(600)  # a worker busy with a long file when its parent is killed
    prep._work = hang
    sys.exit(prep.main(sys.argv[1:]))
""")


def test_workers_die_when_prepare_is_killed(collection, tmp_path):
    pids_dir = tmp_path / "pids"
    pids_dir.mkdir()
    cmd = [
        sys.executable,
        "-c",
        _HANG_ALL,
        str(collection),
        "--out",
        str(tmp_path / "out"),
        "--workers",
        "2",
        "--quiet",
        "--timeout",
        "0",
    ]
    proc = subprocess.Popen(
        cmd,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "WORKER_PIDS": str(pids_dir), "PYTHONPATH": str(REPO)},
    )
    try:
        deadline = time.monotonic() + 120
        while len(list(pids_dir.iterdir())) < 2:
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline, "the workers never started"
            time.sleep(0.05)
        workers = [int(p.name) for p in pids_dir.iterdir()]
        assert not any(exited(p) for p in workers)  # busy before the kill
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
        assert wait_exited(workers, timeout=120) == []  # gone with their parent, not decoding on
    finally:
        kill_and_wait(proc)
        for pid in [int(p.name) for p in pids_dir.iterdir()]:
            try:
                os.kill(pid, signal.SIGKILL)  # do not leave them behind when the test fails
            except ProcessLookupError:
                pass


# ------------------------------------------------------------------------------------------- transcoding
@pytest.mark.parametrize("codec", ["vp9", "h264", "mjpeg"])
def test_transcode_keeps_every_frame_in_order_and_sets_the_keyframe_interval(tmp_path, codec):
    src = tmp_path / "src"
    (src / "x").mkdir(parents=True)
    write_video(src / "x" / "long_gop.mp4", index_frames(37, 36, 52, 5), codec="h264", gop=100)
    write_video(src / "x" / "intra.avi", index_frames(30, 40, 30, 6), codec="mjpeg")
    _vfr_video(src / "x" / "vfr.mkv", index_frames(33, 30, 40, 7))
    before = _digest(src)
    s = prepare(
        src,
        tmp_path / "out",
        transcode=Transcode(codec, short_side=48, gop=8),  # H.264 on NVDEC: at least 48 wide
        workers=2,
        quiet=True,
        log=lambda *_: None,
    )
    assert s.usable == 3
    assert _digest(src) == before
    for e in read_manifest(tmp_path / "out" / "manifest.csv"):
        assert Path(e.path).parent.parent == tmp_path / "out" / "videos"
        frames = read_video(e.path)
        idx, vid = decode_index(frames)
        assert idx.tolist() == list(range(e.num_frames))  # every frame, once, in order
        assert len(set(vid.tolist())) == 1 and vid[0] in (5, 6, 7)
        assert e.num_frames == {5: 37, 6: 30, 7: 33}[int(vid[0])]
        assert min(e.width, e.height) == 48 and e.width % 2 == 0 and e.height % 2 == 0
        assert codec != "h264" or (e.width % 16 == 0 and e.height % 16 == 0)
        assert e.codec == codec
        keys = keyframe_indices(e.path)
        assert keys == (list(range(e.num_frames)) if codec == "mjpeg" else list(range(0, e.num_frames, 8)))


# ------------------------------------------------------------------------------------------- source formats
def _tiny(path: Path, video_id: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_video(path, index_frames(6, 16, 16, video_id), codec="mjpeg")


def test_kinetics_csv(tmp_path):
    csv_path = tmp_path / "train.csv"
    csv_path.write_text(
        "label,youtube_id,time_start,time_end,split\n"
        "zumba,abc,10,20,train\nabseiling,def,0,10,train\nzumba,ghi,5,15,train\nabseiling,xyz,1,11,val\n"
    )
    _tiny(tmp_path / "vids" / "zumba" / "abc_000010_000020.mp4".replace(".mp4", ".avi"))
    _tiny(tmp_path / "vids" / "abseiling" / "def_000000_000010.avi")
    logs = []
    s = prepare(
        csv_path,
        tmp_path / "out",
        videos=tmp_path / "vids",
        subset="train",
        workers=1,
        quiet=True,
        log=logs.append,
    )
    assert logs[0].startswith("format: kinetics")
    assert read_classes(tmp_path / "out" / "classes.txt") == ["abseiling", "zumba"]  # from every row
    assert [(Path(e.path).name, e.label) for e in read_manifest(tmp_path / "out" / "manifest.csv")] == [
        ("abc_000010_000020.avi", 1),
        ("def_000000_000010.avi", 0),
    ]
    assert s.rejected == {"missing": 1}  # ghi


def test_ucf101_split_file(tmp_path):
    lists = tmp_path / "ucfTrainTestlist"
    lists.mkdir()
    (lists / "classInd.txt").write_text("1 ApplyEyeMakeup\n2 Archery\n")
    (lists / "trainlist01.txt").write_text(
        "Archery/v_Archery_g01_c01.avi 2\nApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi 1\n"
    )
    (lists / "testlist01.txt").write_text("Archery/v_Archery_g02_c01.avi\n")
    for rel in (
        "Archery/v_Archery_g01_c01.avi",
        "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi",
        "Archery/v_Archery_g02_c01.avi",
    ):
        _tiny(tmp_path / "UCF-101" / rel)
    for name, expected in (("trainlist01.txt", [1, 0]), ("testlist01.txt", [1])):
        logs = []
        prepare(
            lists / name, tmp_path / name, videos=tmp_path / "UCF-101", workers=1, quiet=True, log=logs.append
        )
        assert logs[0].startswith("format: ucf101")
        assert [e.label for e in read_manifest(tmp_path / name / "manifest.csv")] == expected
        assert read_classes(tmp_path / name / "classes.txt") == ["ApplyEyeMakeup", "Archery"]


def test_hmdb51_split_folder(tmp_path):
    splits = tmp_path / "splits"
    splits.mkdir()
    (splits / "brush_hair_test_split1.txt").write_text("bh1.avi 1 \nbh2.avi 2 \nbh3.avi 0 \n")
    (splits / "cartwheel_test_split1.txt").write_text("cw1.avi 1 \n")
    for rel in ("brush_hair/bh1.avi", "brush_hair/bh2.avi", "cartwheel/cw1.avi"):
        _tiny(tmp_path / "hmdb51" / rel)
    logs = []
    prepare(
        splits,
        tmp_path / "out",
        videos=tmp_path / "hmdb51",
        subset="train",
        workers=1,
        quiet=True,
        log=logs.append,
    )
    assert logs[0].startswith("format: hmdb51")
    assert [(Path(e.path).name, e.label) for e in read_manifest(tmp_path / "out" / "manifest.csv")] == [
        ("bh1.avi", 0),
        ("cw1.avi", 1),
    ]


def test_integer_label_list_and_fixed_class_order(tmp_path):
    _tiny(tmp_path / "v" / "one.avi")
    _tiny(tmp_path / "v" / "two.avi")
    (tmp_path / "list.csv").write_text("path,label\nv/one.avi,2\nv/two.avi,0\n")
    prepare(tmp_path / "list.csv", tmp_path / "a", workers=1, quiet=True, log=lambda *_: None)
    assert [e.label for e in read_manifest(tmp_path / "a" / "manifest.csv")] == [2, 0]
    assert read_classes(tmp_path / "a" / "classes.txt") == ["0", "1", "2"]
    (tmp_path / "names.txt").write_text("one.avi b\ntwo.avi v\n")
    (tmp_path / "classes.txt").write_text("v\nb\n")
    prepare(
        tmp_path / "names.txt",
        tmp_path / "b",
        videos=tmp_path / "v",
        classes_file=tmp_path / "classes.txt",
        workers=1,
        quiet=True,
        log=lambda *_: None,
    )
    assert [e.label for e in read_manifest(tmp_path / "b" / "manifest.csv")] == [1, 0]


# ------------------------------------------------------------------------------------------- bad arguments
def test_bad_arguments_name_the_path(tmp_path, capsys):
    with pytest.raises(PrepareError, match="nowhere"):
        prepare(tmp_path / "nowhere", tmp_path / "out")
    (tmp_path / "l.txt").write_text("a.mp4 0\n")
    with pytest.raises(PrepareError, match="novids"):
        prepare(tmp_path / "l.txt", tmp_path / "out", videos=tmp_path / "novids")
    with pytest.raises(PrepareError, match="gop"):
        prepare(tmp_path / "l.txt", tmp_path / "out", transcode=Transcode("vp9", gop=0))
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(PrepareError, match="empty_dir"):
        prepare(tmp_path / "empty_dir", tmp_path / "out")
    assert main([str(tmp_path / "missing_src"), "--out", str(tmp_path / "o")]) == 2
    assert "missing_src" in capsys.readouterr().err
