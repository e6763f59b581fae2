"""prepare never loses a good video and never exits 0 on a fault of its own: one run per ``--out`` (a lock),
only a dead run's temporaries swept, a write fault (full disk, file-size limit) stops the run with exit 4
and nothing permanent journaled, names and special files end in ``rejected.csv`` with their reason."""

from __future__ import annotations

import csv
import errno
import json
import os
import resource
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

av = pytest.importorskip("av")

from processes import kill_and_wait  # noqa: E402
from videos import index_frames  # noqa: E402

from dali_pipelines.manifest import read_classes, read_manifest  # noqa: E402
from fastcvrl.atomic import temp_path, temp_writer  # noqa: E402
from fastcvrl.datasets import journal as journal_mod  # noqa: E402
from fastcvrl.datasets import prepare as prep  # noqa: E402
from fastcvrl.datasets.journal import JOURNAL  # noqa: E402
from fastcvrl.datasets.listings import class_name_problem, read_folder  # noqa: E402
from fastcvrl.datasets.manifest import write_classes  # noqa: E402
from fastcvrl.datasets.prepare import main, prepare  # noqa: E402
from fastcvrl.datasets.transcode import Transcode  # noqa: E402
from fastcvrl.datasets.video import write_video  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
QUIET = dict(quiet=True, log=lambda *_: None)


def _rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:  # strict UTF-8: the file must be text
        return list(csv.DictReader(f))


@pytest.fixture()
def three(tmp_path) -> Path:
    src = tmp_path / "src"
    (src / "k").mkdir(parents=True)
    for i in range(3):
        write_video(src / "k" / f"v{i}.webm", index_frames(30, 64, 64, i), codec="vp9", gop=8)
    return src


# ---------------------------------------------------------------------------------------- write faults
def _limited(limit: int):
    def setup() -> None:  # in the child: EFBIG instead of a SIGXFSZ death, for every process it starts
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return setup


def test_a_full_output_stops_with_exit_4_keeps_nothing_partial_and_the_rerun_finishes(three, tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "fastcvrl.prepare", str(three), "--out", str(out), "--quiet"]
    cmd += ["--transcode", "mjpeg", "--short-side", "0", "--workers", "2"]
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        cmd,
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_limited(6000),  # a 30-frame 64 x 64 MJPEG is about 13 kB: every transcode fails
    )
    try:
        stdout, stderr = proc.communicate(timeout=300)
    finally:
        kill_and_wait(proc)
    assert proc.returncode == 4, (stdout, stderr)
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: cannot write") and "File too large" in lines[0]
    assert "--out" in lines[0] and "Traceback" not in stderr
    assert not [p for p in out.rglob("*") if temp_writer(p.name)]  # partial files removed
    assert not [p for p in out.rglob("*.avi") if p.is_file()]
    assert not (out / "manifest.csv").exists()
    journaled = [json.loads(x) for x in (out / JOURNAL).read_text().splitlines() if x.strip()]
    assert journaled == []  # nothing permanent: every video is done by the next run
    s = prepare(three, out, transcode=Transcode("mjpeg", 0), workers=2, **QUIET)
    assert s.complete and s.usable == 3 and s.processed == 3


class _FullFile:
    """A journal file on a full disk: every write fails with ENOSPC."""

    def __init__(self, real):
        self._real = real

    def write(self, text):
        raise OSError(errno.ENOSPC, "No space left on device")

    def __getattr__(self, name):
        return getattr(self._real, name)


def test_a_journal_write_failure_is_one_line_exit_4(three, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    real_open = open
    monkeypatch.setattr(journal_mod, "open", lambda *a, **k: _FullFile(real_open(*a, **k)), raising=False)
    rc = main([str(three), "--out", str(out), "--workers", "1", "--quiet"])
    err = capsys.readouterr().err
    assert rc == 4 and len(err.strip().splitlines()) == 1
    assert str(out / JOURNAL) in err and "No space left on device" in err and "ENOSPC" in err
    assert not (out / "manifest.csv").exists()
    monkeypatch.undo()
    s = prepare(three, out, workers=1, **QUIET)
    assert s.complete and s.usable == 3


def test_a_second_prepare_into_the_same_out_is_refused_in_one_line(three, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    held = prep._lock_out(
        out
    )  # another run holds it (flock: a second open file conflicts, same process or not)
    try:
        assert main([str(three), "--out", str(out), "--workers", "1", "--quiet"]) == 2
        err = capsys.readouterr().err
        assert (
            "in use by another prepare" in err and f"pid {os.getpid()}" in err and len(err.splitlines()) == 1
        )
        assert not (out / JOURNAL).exists()  # refused before anything was written
    finally:
        os.close(held)
    assert main([str(three), "--out", str(out), "--workers", "1", "--quiet"]) == 0


def test_only_a_dead_runs_temporaries_are_swept(three, tmp_path):
    out = tmp_path / "out"
    folder = out / "videos" / "k"
    folder.mkdir(parents=True)
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait(timeout=60)
    try:
        # today's names (the atomic writer's) and an earlier version's, each of a live and a dead writer
        live_tmp = temp_path(folder / "a.avi", keep_suffix=True, pid=live.pid)
        dead_tmp = temp_path(folder / "b.avi", keep_suffix=True, pid=dead.pid)
        live_old = folder / f".prepare-tmp-{live.pid}-{'a' * 16}.avi"
        dead_old = folder / f".prepare-tmp-{dead.pid}-{'b' * 16}.avi"
        for p in (live_tmp, dead_tmp, live_old, dead_old):
            p.write_bytes(b"half")
        prepare(three, out, transcode=Transcode("mjpeg", 0), workers=1, **QUIET)
        assert live_tmp.exists() and live_old.exists()
        assert not dead_tmp.exists() and not dead_old.exists()
    finally:
        kill_and_wait(live)


# ---------------------------------------------------------------------------------------------- names
def test_a_file_name_that_is_not_utf8_is_rejected_with_its_reason(three, tmp_path):
    bad = three / "k" / os.fsdecode(b"caf\xe9.webm")  # Latin-1 bytes in the name
    try:
        write_video(bad, index_frames(10, 32, 32, 5), codec="vp9", gop=8)
    except OSError:
        pytest.skip("this file system refuses names that are not UTF-8")
    out = tmp_path / "out"
    s = prepare(three, out, workers=1, **QUIET)
    assert s.complete and s.usable == 3
    rows = _rows(out / "rejected.csv")
    assert [(Path(r["path"]).name, r["reason"]) for r in rows] == [("caf\\xe9.webm", "bad name")]
    assert "UTF-8" in rows[0]["detail"]
    assert len(read_manifest(out / "manifest.csv")) == 3


def test_a_list_that_is_not_utf8_is_one_line_naming_it(tmp_path, capsys):
    lst = tmp_path / "list.txt"
    lst.write_bytes("caf\xe9.webm 0\n".encode("latin-1"))
    assert main([str(lst), "--out", str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and str(lst) in err and "UTF-8" in err


def _folder_names() -> list[str]:
    """Class folder names to try: every ASCII character alone and inside a name, spaces around, and a few
    beyond ASCII (accents, CJK, emoji, no-break and zero-width spaces, NEL, line separators)."""
    chars = [chr(i) for i in range(1, 128) if chr(i) not in "/."] + list(
        "é中😀\u00a0\u200b\u0085\u2028\u2029\u0301"
    )
    names = [f"a{c}b" for c in chars] + [c for c in chars] + ["  x  ", " ", "   ", "\t", "a\r", "x\x7f"]
    return list(dict.fromkeys(names))


def test_class_names_the_folder_reader_accepts_read_back_exactly(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    made = []
    for i, name in enumerate(_folder_names()):
        try:
            (src / name).mkdir()
        except OSError:
            continue
        (src / name / f"v{i}.mp4").write_bytes(b"x")  # listed by name; not decoded here
        made.append(name)
    source = read_folder(src)
    accepted = set(source.classes)
    rejected = {Path(p).parent.name for p, reason, _ in source.rejected if reason == "bad class name"}
    assert accepted | rejected == {n for n in made if not n.startswith(".")} and not accepted & rejected
    assert rejected == {n for n in made if class_name_problem(n)}
    assert {"a\nb", " ", "   ", "a\u2028b", "a\x7fb"} <= rejected and {"  x  ", "a b", "aéb"} <= accepted
    write_classes(tmp_path / "classes.txt", source.classes)
    assert read_classes(tmp_path / "classes.txt") == source.classes


def test_bad_class_folders_are_rejected_and_labels_stay_aligned(tmp_path):
    src = tmp_path / "src"
    for c in ("alpha", "be\nta", "   ", "gamma"):
        (src / c).mkdir(parents=True)
        write_video(src / c / "v.webm", index_frames(8, 32, 32, 1), codec="vp9", gop=8)
    out = tmp_path / "out"
    s = prepare(src, out, workers=1, **QUIET)
    assert s.complete and s.usable == 2 and s.rejected == {"bad class name": 2}
    assert read_classes(out / "classes.txt") == ["alpha", "gamma"]
    assert [e.label for e in read_manifest(out / "manifest.csv")] == [0, 1]
    details = [r["detail"] for r in _rows(out / "rejected.csv")]
    assert any("U+000A" in d for d in details) and any("white space" in d for d in details)
    # the validation split, prepared with the training split's classes.txt, gets the same labels
    s2 = prepare(src, tmp_path / "val", classes_file=out / "classes.txt", workers=1, **QUIET)
    assert [e.label for e in read_manifest(tmp_path / "val" / "manifest.csv")] == [0, 1] and s2.usable == 2


# ------------------------------------------------------------------------------------------ special files
def _special_files(folder: Path) -> dict[str, str]:
    """A FIFO, a socket and a link to a character device with video names; returns name -> kind."""
    os.mkfifo(folder / "pipe.mp4")
    s = socket.socket(socket.AF_UNIX)
    try:
        s.bind(str(folder / "sock.mp4"))
    except OSError:
        pass  # a path beyond the socket name limit: tested without it
    finally:
        s.close()
    os.symlink("/dev/null", folder / "null.mp4")
    kinds = {"pipe.mp4": "FIFO", "null.mp4": "character device"}
    if (folder / "sock.mp4").exists():
        kinds["sock.mp4"] = "socket"
    return kinds


@pytest.mark.parametrize("mode", ["folder", "list"])
def test_special_files_are_rejected_with_a_reason_of_their_own(three, tmp_path, mode):
    kinds = _special_files(three / "k")
    src = three
    if mode == "list":
        src = tmp_path / "list.txt"
        src.write_text("".join(f"{three / 'k' / n} 0\n" for n in [*kinds, "v0.webm"]))
    out = tmp_path / "out"
    s = prepare(src, out, workers=1, timeout=120, **QUIET)
    assert s.complete
    rows = {Path(r["path"]).name: r for r in _rows(out / "rejected.csv")}
    assert set(rows) == set(kinds)
    for name, kind in kinds.items():
        assert rows[name]["reason"] == "special file" and kind in rows[name]["detail"]
    assert "/dev/null" in rows["null.mp4"]["detail"]
