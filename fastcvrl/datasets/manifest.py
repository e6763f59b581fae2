"""Writing the dataset manifest and ``classes.txt`` (the contract ``dali_pipelines.manifest`` reads).

Both are written atomically (``fastcvrl.atomic``), so a reader sees the old file or the new one, never a
half-written one. ``prepare`` and the synthetic set write through here; the loaders read through
``dali_pipelines.manifest``.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable
from dataclasses import astuple
from pathlib import Path

from dali_pipelines.manifest import HEADER, OPTIONAL, VideoEntry
from fastcvrl.atomic import atomic_open, atomic_write


def write_manifest(path: str | os.PathLike, entries: Iterable[VideoEntry], relative: bool = True) -> None:
    """Write atomically (``fastcvrl.atomic``); paths under the manifest's folder become relative. The
    ``fingerprint`` column is written when every entry has one (``prepare``'s), else the header stays the
    seven columns of a hand-written manifest."""
    path = Path(path)
    root = path.resolve().parent
    entries = list(entries)
    checked = bool(entries) and all(e.fingerprint for e in entries)
    with atomic_open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(HEADER + OPTIONAL if checked else HEADER)
        for e in entries:
            row = list(astuple(e))[: len(HEADER) + len(OPTIONAL) * checked]
            if relative:
                p = Path(e.path)
                if p.is_absolute():
                    try:
                        row[0] = str(p.resolve().relative_to(root))
                    except ValueError:
                        pass
            w.writerow(row)


def write_classes(path: str | os.PathLike, names: Iterable[str]) -> None:
    """``classes.txt``, atomically (``fastcvrl.atomic``). A name that would not read back as itself (a line
    break in it, or only white space) is a ``ValueError``: nothing is written."""
    names = list(names)
    for n in names:
        if not n.strip() or any(c in n for c in "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"):
            shown = repr(n) if len(repr(n)) <= 120 else repr(n)[:117] + "..."
            raise ValueError(f"{path}: class name {shown} would not read back from classes.txt")
    atomic_write(path, "".join(f"{n}\n" for n in names))
