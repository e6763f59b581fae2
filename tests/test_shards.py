"""prepare on many machines: shards are a stable hash partition, sharded runs merged equal one unsharded run,
and a merge of parts that do not fit together is refused in one line naming the part, writing nothing."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("av")

from videos import index_frames

from dali_pipelines.manifest import read_classes, read_manifest
from fastcvrl.datasets.prepare import main, prepare
from fastcvrl.datasets.shards import PART, MergeError, Shard, merge, parse_shard, shard_of
from fastcvrl.datasets.video import write_video

QUIET = dict(workers=1, quiet=True, log=lambda *_: None)


def test_shards_partition_the_keys_and_adding_keys_moves_none():
    keys = [f"class_{i % 7}/video_{i:05d}.mp4" for i in range(3000)]
    n = 8
    first = {k: shard_of(k, n) for k in keys}
    sizes = [sum(s == i for s in first.values()) for i in range(n)]
    assert sum(sizes) == len(keys) and all(0.8 * 3000 / n < s < 1.2 * 3000 / n for s in sizes), sizes
    more = keys + [f"class_new/video_{i:05d}.mp4" for i in range(500)]
    assert all(shard_of(k, n) == first[k] for k in keys)  # the old videos keep their shards
    assert {shard_of(k, n) for k in more} == set(range(n))


def test_shards_do_not_depend_on_python_hash_seed():
    keys = [f"c/v{i}.mp4" for i in range(50)]
    code = (
        "import sys; from fastcvrl.datasets.shards import shard_of as s\n"
        "print([s(k, 5) for k in sys.argv[1:]])"
    )
    got = set()
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        r = subprocess.run(
            [sys.executable, "-c", code, *keys], capture_output=True, text=True, env=env, timeout=60
        )
        assert r.returncode == 0, r.stderr
        got.add(r.stdout)
    assert got == {str([shard_of(k, 5) for k in keys]) + "\n"}


@pytest.mark.parametrize("bad", ["3", "2/2", "-1/4", "a/b", "1/0"])
def test_bad_shard_arguments_are_refused(bad, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main([str(tmp_path), "--out", str(tmp_path / "o"), "--shard", bad])
    assert e.value.code == 2
    assert "--shard" in capsys.readouterr().err
    assert parse_shard("3/16") == Shard(3, 16)


@pytest.fixture(scope="module")
def collection(tmp_path_factory) -> Path:
    """``src/<class>/``: 9 good videos in 3 classes and 3 bad files."""
    src = tmp_path_factory.mktemp("shards") / "src"
    for c, name in enumerate(("jump", "run", "swim")):
        (src / name).mkdir(parents=True)
        for v in range(3):
            write_video(src / name / f"{v}.webm", index_frames(12 + 2 * v + c, 16, 16, v), codec="vp9", gop=4)
        (src / name / "bad.mp4").write_bytes(b"not a video" * (c + 1))
    return src


def _rows(path: Path) -> list[list[str]]:
    with open(path, newline="") as f:
        return list(csv.reader(f))


def _sharded(collection: Path, root: Path, n: int, **kw) -> list[Path]:
    parts = []
    for i in range(n):
        s = prepare(collection, root / f"part{i}", shard=Shard(i, n), **QUIET, **kw)
        assert s.complete
        parts.append(root / f"part{i}")
    return parts


def test_merged_shards_equal_one_unsharded_run(collection, tmp_path):
    ref = prepare(collection, tmp_path / "ref", **QUIET)
    assert ref.listed == 12 and ref.usable == 9
    parts = _sharded(collection, tmp_path, 3)
    sizes = [len(json.loads((p / PART).read_text())["videos"]) for p in parts]
    assert sum(sizes) == 12
    assert main(["--merge", str(tmp_path / "merged"), *map(str, reversed(parts))]) == 0  # any order
    got, want = (
        read_manifest(tmp_path / "merged" / "manifest.csv"),
        read_manifest(tmp_path / "ref" / "manifest.csv"),
    )
    assert got == want  # same videos, labels, frame counts, in the listing's order
    assert _rows(tmp_path / "merged" / "rejected.csv") == _rows(tmp_path / "ref" / "rejected.csv")
    assert read_classes(tmp_path / "merged" / "classes.txt") == read_classes(tmp_path / "ref" / "classes.txt")
    # a shard rerun is resumed from its own journal
    again = prepare(collection, parts[0], shard=Shard(0, 3), **QUIET)
    assert again.processed == 0 and again.reused == sizes[0]


def _refused(out: Path, parts: list[Path], match: str) -> None:
    with pytest.raises(MergeError, match=match):
        merge(out, parts, log=lambda *_: None)
    assert not out.exists()  # nothing written


def test_merge_refuses_parts_that_do_not_fit(collection, tmp_path):
    parts = _sharded(collection, tmp_path / "a", 3)
    out = tmp_path / "out"
    _refused(out, parts[:2], r"shard\(s\) 2/3 missing")
    _refused(out, [parts[0], parts[1], parts[1]], r"shard 1/3 given twice: .*part1 and .*part1")
    other_n = _sharded(collection, tmp_path / "b", 2)
    _refused(out, [*parts, other_n[0]], "different shard counts")
    strict = prepare(collection, tmp_path / "c" / "part2", shard=Shard(2, 3), min_frames=14, **QUIET)
    assert strict.complete
    _refused(out, [parts[0], parts[1], tmp_path / "c" / "part2"], "differ in the prepare settings")
    # another collection: one more video in one class
    grown = tmp_path / "grown"
    shutil.copytree(collection, grown)
    write_video(grown / "run" / "9.webm", index_frames(15, 16, 16, 9), codec="vp9", gop=4)
    moved = prepare(grown, tmp_path / "d" / "part1", shard=Shard(1, 3), **QUIET)
    assert moved.complete
    _refused(out, [parts[0], tmp_path / "d" / "part1", parts[2]], "differ in the listing")
    # a part whose manifest lost a row after the run
    broken = tmp_path / "e"
    shutil.copytree(parts[0], broken)
    lines = (broken / "manifest.csv").read_text().splitlines(keepends=True)
    (broken / "manifest.csv").write_text("".join(lines[:-1]))
    _refused(out, [broken, parts[1], parts[2]], r"e: manifest.csv lists \d+ videos, part.json records \d+")
    # a folder that is not a finished shard run
    (tmp_path / "f").mkdir()
    _refused(out, [tmp_path / "f", parts[1], parts[2]], r"f: no part.json")


def test_merge_command_reports_a_bad_part_in_one_line(collection, tmp_path, capsys):
    parts = _sharded(collection, tmp_path, 2)
    assert main(["--merge", str(tmp_path / "out"), str(parts[0])]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: shard(s) 1/2 missing"]
    assert not (tmp_path / "out").exists()


def test_merged_transcodes_point_into_the_parts(collection, tmp_path):
    from fastcvrl.datasets.transcode import Transcode

    opts = Transcode("mjpeg", 0, 4, None, 0)
    parts = _sharded(collection, tmp_path, 2, transcode=opts)
    assert main(["--merge", str(tmp_path / "merged"), *map(str, parts)]) == 0
    merged = read_manifest(tmp_path / "merged" / "manifest.csv")  # every listed file exists (checked)
    assert len(merged) == 9 and all(e.codec == "mjpeg" for e in merged)
    homes = {Path(e.path).resolve().relative_to(tmp_path.resolve()).parts[:2] for e in merged}
    assert homes == {("part0", "videos"), ("part1", "videos")}
    assert prepare(collection, tmp_path / "ref", transcode=opts, **QUIET).usable == 9
    want = read_manifest(tmp_path / "ref" / "manifest.csv")
    assert [(e.label, e.num_frames) for e in merged] == [(e.label, e.num_frames) for e in want]
    assert [Path(e.path).name for e in merged] == [Path(e.path).name for e in want]
