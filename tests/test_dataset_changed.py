"""The dataset cannot change under a run: ``prepare`` records each file's fingerprint in the manifest and
the loader compares it with the bytes it reads anyway; a replaced file is named and handled as a bad file
(or stops the run with ``data.skip_corrupt: false``). Manifests without the column still read, and values
beyond what the loader can hold are refused when the manifest is read."""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import replace

import pytest

from dali_pipelines.manifest import (
    FINGERPRINT_BYTES,
    HEADER,
    OPTIONAL,
    ManifestError,
    VideoEntry,
    file_fingerprint,
    fingerprint_bytes,
    read_classes,
    read_manifest,
)
from fastcvrl.datasets.manifest import write_manifest


def reference_fingerprint(data: bytes) -> str:
    """The obvious definition: size, then a hash of the first 64 KiB and of the (non-overlapping) last."""
    n = FINGERPRINT_BYTES
    head, tail = data[:n], data[n:][-n:] if len(data) > n else b""
    return f"{len(data)}-{hashlib.blake2b(head + tail, digest_size=8).hexdigest()}"


@pytest.mark.parametrize(
    "size",
    [
        0,
        1,
        FINGERPRINT_BYTES - 1,
        FINGERPRINT_BYTES,
        FINGERPRINT_BYTES + 1,
        2 * FINGERPRINT_BYTES - 1,
        2 * FINGERPRINT_BYTES,
        3 * FINGERPRINT_BYTES + 7,
    ],
)
def test_file_fingerprint_agrees_with_the_in_memory_one_and_the_reference(tmp_path, size):
    data = os.urandom(size)
    p = tmp_path / "f.bin"
    p.write_bytes(data)
    assert file_fingerprint(p) == fingerprint_bytes(data) == reference_fingerprint(data)
    if size:
        changed = bytearray(data)
        changed[-1] ^= 1  # the last byte is always hashed
        assert fingerprint_bytes(bytes(changed)) != fingerprint_bytes(data)


def _entry(path: str, fingerprint: str = "") -> VideoEntry:
    return VideoEntry(path, 1, 40, 25.0, 64, 48, "vp9", fingerprint)


def test_fingerprint_column_round_trips_and_hand_written_manifests_still_read(tmp_path):
    (tmp_path / "a.webm").write_bytes(b"x")
    m = tmp_path / "manifest.csv"
    write_manifest(m, [_entry(str(tmp_path / "a.webm"), "1-abc")])
    assert m.read_text().splitlines()[0] == ",".join(HEADER + OPTIONAL)
    assert read_manifest(m)[0].fingerprint == "1-abc"
    write_manifest(m, [_entry(str(tmp_path / "a.webm"))])  # no fingerprint: the old header, unchanged
    assert m.read_text().splitlines()[0] == ",".join(HEADER)
    m.write_text(",".join(HEADER) + "\na.webm,1,40,25,64,48,vp9\n")  # hand-written
    assert read_manifest(m)[0].fingerprint == ""


@pytest.mark.parametrize(
    "row, match",
    [
        ("a.webm,99999999999999999999999,40,25,64,48,vp9", "label .* beyond a 64-bit integer"),
        ("a.webm,1,99999999999999999999999,25,64,48,vp9", "num_frames .* beyond a 64-bit integer"),
        ("a.webm,1,40,nan,64,48,vp9", "fps must be a finite number"),
        ("a.webm,1,40,inf,64,48,vp9", "fps must be a finite number"),
    ],
)
def test_values_beyond_the_loader_are_refused_in_one_line(tmp_path, row, match):
    (tmp_path / "a.webm").write_bytes(b"x")
    m = tmp_path / "manifest.csv"
    m.write_text(",".join(HEADER) + "\n" + row + "\n")
    with pytest.raises(ManifestError, match=match) as e:
        read_manifest(m)
    assert f"{m}:2" in str(e.value) and "\n" not in str(e.value)


def test_a_manifest_that_is_not_utf8_or_not_csv_is_one_line(tmp_path):
    m = tmp_path / "manifest.csv"
    m.write_bytes((",".join(HEADER) + "\ncaf\xe9.webm,1,40,25,64,48,vp9\n").encode("latin-1"))
    with pytest.raises(ManifestError, match="not UTF-8 text") as e:
        read_manifest(m)
    assert str(m) in str(e.value)
    m.write_text(
        ",".join(HEADER) + '\n"' + "x" * 200_000 + '",1,40,25,64,48,vp9\n'
    )  # beyond csv's field limit
    with pytest.raises(ManifestError, match="not a readable CSV manifest") as e:
        read_manifest(m)
    assert len(str(e.value)) < 400


@pytest.mark.parametrize("name", ["a\nb", "  ", "", "x\r"])
def test_a_class_name_that_would_not_read_back_is_not_written(tmp_path, name):
    from fastcvrl.datasets.manifest import write_classes

    with pytest.raises(ValueError, match="would not read back"):
        write_classes(tmp_path / "classes.txt", ["ok", name])
    assert not (tmp_path / "classes.txt").exists()


def test_a_blank_line_between_class_names_is_refused(tmp_path):
    p = tmp_path / "classes.txt"
    p.write_text("a\n\nb\n")
    with pytest.raises(ManifestError, match=r"classes.txt:2: blank line"):
        read_classes(p)
    p.write_text("a\n b \nc\n\n")
    assert read_classes(p) == ["a", " b ", "c"]


# ------------------------------------------------------------------------------------------ the loader
pytest.importorskip("nvidia.dali")
pytest.importorskip("av")


@pytest.fixture
def replaced(tmp_path):
    """Six fingerprinted VP9 videos; then v2 is replaced by another video of the same name and length."""
    from dali_videos import make_index_videos
    from videos import index_frames

    from fastcvrl.datasets.video import write_video

    manifest = make_index_videos(tmp_path, [24] * 6, codec="vp9")
    entries = [replace(e, fingerprint=file_fingerprint(e.path)) for e in read_manifest(manifest)]
    write_manifest(manifest, entries)
    v2 = entries[2].path
    os.remove(v2)
    write_video(v2, index_frames(24, 32, 48, video_id=9), codec="vp9", gop=8)
    assert file_fingerprint(v2) != entries[2].fingerprint
    return manifest, v2


def test_a_replaced_file_is_named_and_left_out(replaced, caplog):
    from dali_videos import small_config

    from fastcvrl.data import build_linear_loader

    manifest, v2 = replaced
    loader = build_linear_loader(small_config(), str(manifest), device="cpu", seed=0, train=False)
    with caplog.at_level(logging.WARNING, logger="dali_pipelines"):
        seen = sum(len(batch[1]) for batch in loader)
    assert seen == 5 and loader.source.bad == {2}
    named = [r.getMessage() for r in caplog.records if v2 in r.getMessage()]
    assert named and "changed since the manifest was written" in named[0]


@pytest.mark.parametrize("workers", [0, 2])
def test_a_replaced_file_stops_a_strict_run_naming_it(replaced, workers):
    from dali_videos import small_config

    from dali_pipelines.packets import VideoReadError
    from fastcvrl.data import build_pretrain_loader

    manifest, v2 = replaced
    loader = build_pretrain_loader(
        small_config(skip_corrupt=False, host_workers=workers), str(manifest), device="cpu", seed=0
    )
    with pytest.raises(VideoReadError, match="changed since the manifest was written") as e:
        for _ in loader:
            pass
    assert e.value.path == v2
