"""Preparing one collection on many machines: ``prepare --shard I/N`` on each, then ``prepare --merge``.

    python -m fastcvrl.prepare SRC --out parts/03 --shard 3/16 [options]   # on each machine, I = 0..15
    python -m fastcvrl.prepare --merge data/k400/train parts/*               # once, after all have finished

A shard is the share of the listed videos whose key (the path relative to the source's folder, so the same
on machines that mount the collection elsewhere) hashes to ``I`` modulo ``N`` (SHA-256, not Python's salted
``hash``): deterministic, about 1/N of the videos each, and a video added to the collection changes no other
video's shard. Each shard is an ordinary prepare run in its own folder (its own journal, resumed by rerunning
the same command) that also writes ``part.json``: the source, the run's settings, the shard, a digest of the
whole listing and what became of each of its videos.

The merge checks that the parts come from the same listing (same digest, classes and count) and the same
settings, that every shard ``0..N-1`` is there exactly once and that together they hold every listed video
exactly once, each part's manifest and rejections matching its record; then it writes ``OUT/manifest.csv``
(in the listing's order, as one unsharded run would), ``classes.txt`` and ``rejected.csv`` atomically. The
videos stay where the parts put them (a transcode's files in each part's ``videos/``).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dali_pipelines.manifest import ManifestError, VideoEntry, read_manifest
from fastcvrl.datasets.listings import Item, Source
from fastcvrl.datasets.manifest import write_classes, write_manifest

PART = "part.json"
PART_VERSION = 1

__all__ = [
    "PART",
    "MergeError",
    "Shard",
    "parse_shard",
    "shard_key",
    "shard_of",
    "select",
    "listing_digest",
    "write_part",
    "merge",
    "merge_main",
]


class MergeError(ValueError):
    """Parts that cannot be merged; the message names the part folder and what is wrong."""


@dataclass(frozen=True)
class Shard:
    index: int
    count: int

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def parse_shard(text: str) -> Shard:
    """``"I/N"`` with ``0 <= I < N`` (the ``--shard`` argument); anything else is an ``ArgumentTypeError``
    saying what is expected."""
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected I/N (e.g. 3/16), got {text!r}") from None
    if not (n >= 1 and 0 <= i < n):
        raise argparse.ArgumentTypeError(f"expected I/N with 0 <= I < N, got {text!r}")
    return Shard(i, n)


def source_root(src: Path, videos: Path | None) -> Path:
    """The folder the listing's paths are keyed against: ``--videos`` if given, the source itself when it is
    a folder, else the folder of the listing file."""
    if videos is not None:
        return videos
    return src if src.is_dir() else src.parent


def shard_key(path: str, root: Path) -> str:
    """A video's sharding key: its path relative to ``root`` (POSIX separators), or the absolute path for a
    video outside it."""
    try:
        return Path(path).relative_to(root).as_posix()
    except ValueError:
        return Path(path).as_posix()


def shard_of(key: str, count: int) -> int:
    """The shard (0..count-1) of a key: the first 8 bytes of its SHA-256, modulo ``count``."""
    return int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big") % count


def select(source: Source, shard: Shard, root: Path) -> Source:
    """``source`` with only the items of ``shard`` (their order kept)."""
    mine = [it for it in source.items if shard_of(shard_key(it.path, root), shard.count) == shard.index]
    return Source(source.format, mine, source.classes, source.notes)


def listing_digest(items: Sequence[Item], root: Path) -> str:
    """SHA-256 of the whole listing (keys and labels in order): equal for two machines listing the same
    collection, whatever its mount point."""
    h = hashlib.sha256()
    for it in items:
        h.update(f"{shard_key(it.path, root)}\t{it.label}\n".encode())
    return h.hexdigest()


def write_part(
    out: Path,
    src: Path,
    root: Path,
    settings: dict[str, Any],
    shard: Shard,
    listing: Sequence[Item],
    classes: Sequence[str],
    outcomes: Sequence[tuple[str, bool]],
) -> None:
    """``out/part.json`` (atomically) for a finished shard: ``outcomes`` are ``(source path, usable)`` of
    the shard's videos in listing order; the manifest holds the usable ones and ``rejected.csv`` the rest,
    in the same order."""
    from fastcvrl.atomic import atomic_write

    index = {it.path: i for i, it in enumerate(listing)}
    record = {
        "version": PART_VERSION,
        "source": str(src),
        "root": str(root),
        "settings": settings,
        "shard": [shard.index, shard.count],
        "listed": len(listing),
        "listing": listing_digest(listing, root),
        "classes": list(classes),
        "videos": [[index[path], shard_key(path, root), "ok" if ok else "rejected"] for path, ok in outcomes],
    }
    atomic_write(out / PART, json.dumps(record, indent=1) + "\n")


# ------------------------------------------------------------------------------------------------ merging
@dataclass
class _Part:
    folder: Path
    record: dict
    entries: list[VideoEntry]
    rejected: list[list[str]]


def _read_part(folder: Path) -> _Part:
    path = folder / PART
    if not path.is_file():
        raise MergeError(f"{folder}: no {PART} (not a finished `prepare --shard` run; rerun its command)")
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise MergeError(f"{path}: not readable as a part record ({e})") from None
    if not isinstance(record, dict) or record.get("version") != PART_VERSION:
        raise MergeError(f"{path}: not a part record of version {PART_VERSION}")
    ok = sum(v[2] == "ok" for v in record["videos"])
    entries: list[VideoEntry] = []
    if (folder / "manifest.csv").is_file():
        try:
            entries = read_manifest(folder / "manifest.csv")
        except ManifestError as e:
            raise MergeError(str(e)) from None
    if len(entries) != ok:
        raise MergeError(
            f"{folder}: manifest.csv lists {len(entries)} videos, {PART} records {ok} usable ones "
            "(changed after the run? rerun its command)"
        )
    try:
        with open(folder / "rejected.csv", newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))[1:]
    except OSError as e:
        raise MergeError(f"{folder}: rejected.csv not readable ({e.strerror})") from None
    if len(rows) != len(record["videos"]) - ok:
        raise MergeError(
            f"{folder}: rejected.csv lists {len(rows)} videos, {PART} records {len(record['videos']) - ok}"
        )
    return _Part(folder, record, entries, rows)


def _same(parts: list[_Part], key: str, what: str) -> None:
    first = parts[0]
    for p in parts[1:]:
        if p.record[key] != first.record[key]:
            raise MergeError(
                f"{p.folder} and {first.folder} differ in {what}: {p.record[key]!r:.200} vs "
                f"{first.record[key]!r:.200}"
            )


def merge(
    out: str | os.PathLike, folders: Sequence[str | os.PathLike], log: Callable[[str], None] = print
) -> int:
    """Join the shard folders into ``out`` (manifest.csv, classes.txt, rejected.csv); returns the number of
    usable videos. Raises ``MergeError`` naming the part at fault before anything is written."""
    if not folders:
        raise MergeError("--merge needs the output folder and at least one part folder")
    out_p = Path(out).absolute()
    parts = [_read_part(Path(f).absolute()) for f in folders]
    _same(parts, "listing", "the listing (another source, or it changed between the runs)")
    _same(parts, "settings", "the prepare settings")
    _same(parts, "classes", "the classes")
    counts = {p.record["shard"][1] for p in parts}
    if len(counts) != 1:
        raise MergeError(f"the parts were cut into different shard counts: {sorted(counts)}")
    (n,) = counts
    seen: dict[int, Path] = {}
    for p in parts:
        i = p.record["shard"][0]
        if i in seen:
            raise MergeError(f"shard {i}/{n} given twice: {seen[i]} and {p.folder}")
        seen[i] = p.folder
    missing = sorted(set(range(n)) - set(seen))
    if missing:
        raise MergeError(f"shard(s) {', '.join(f'{i}/{n}' for i in missing)} missing")
    listed = parts[0].record["listed"]
    where: dict[int, tuple[Path, str]] = {}
    for p in parts:
        for index, key, _ in p.record["videos"]:
            if index in where:
                raise MergeError(f"video {key} is in two parts: {where[index][0]} and {p.folder}")
            where[index] = (p.folder, key)
    if len(where) != listed:
        raise MergeError(
            f"the parts hold {len(where)} of the {listed} listed videos: {listed - len(where)} missing"
        )
    usable: list[tuple[int, VideoEntry]] = []
    rejected: list[tuple[int, list[str]]] = []
    for p in parts:
        ok = [index for index, _, outcome in p.record["videos"] if outcome == "ok"]
        bad = [index for index, _, outcome in p.record["videos"] if outcome != "ok"]
        usable += zip(ok, p.entries)
        rejected += zip(bad, p.rejected)
    usable.sort(key=lambda t: t[0])
    rejected.sort(key=lambda t: t[0])
    out_p.mkdir(parents=True, exist_ok=True)
    from fastcvrl.atomic import atomic_open

    with atomic_open(out_p / "rejected.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "reason", "detail"])
        w.writerows(row for _, row in rejected)
    write_classes(out_p / "classes.txt", parts[0].record["classes"])
    if usable:
        write_manifest(out_p / "manifest.csv", [e for _, e in usable])  # last: its presence means done
    elif (out_p / "manifest.csv").exists():
        os.remove(out_p / "manifest.csv")
    log(
        f"merged {n} shards of {listed} videos: {len(usable)} usable, {len(rejected)} rejected; wrote "
        + (str(out_p / "manifest.csv") if usable else "no manifest (no usable video)")
    )
    return len(usable)


def merge_main(argv: Sequence[str]) -> int:
    """``python -m fastcvrl.prepare --merge OUT PART_DIR...``: exit 0 merged, 1 no usable video, 2 parts
    that do not fit together (one line naming the part)."""
    ap = argparse.ArgumentParser(
        prog="python -m fastcvrl.prepare --merge",
        description="join the folders of `prepare --shard I/N` runs into one manifest",
    )
    ap.add_argument("out", help="output folder (manifest.csv, classes.txt, rejected.csv)")
    ap.add_argument("parts", nargs="+", help="the shard runs' --out folders, every shard 0..N-1 once")
    a = ap.parse_args(argv)
    try:
        return 0 if merge(a.out, a.parts) else 1
    except MergeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
