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

from dali_pipelines.manifest import HEADER, VideoEntry
from fastcvrl.atomic import atomic_open, atomic_write


def write_manifest(path: str | os.PathLike, entries: Iterable[VideoEntry], relative: bool = True) -> None:
    """Write atomically (``fastcvrl.atomic``); paths under the manifest's folder become relative."""
    path = Path(path)
    root = path.resolve().parent
    with atomic_open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(HEADER)
        for e in entries:
            row = list(astuple(e))
            if relative:
                p = Path(e.path)
                if p.is_absolute():
                    try:
                        row[0] = str(p.resolve().relative_to(root))
                    except ValueError:
                        pass
            w.writerow(row)


def write_classes(path: str | os.PathLike, names: Iterable[str]) -> None:
    """``classes.txt``, atomically (``fastcvrl.atomic``)."""
    atomic_write(path, "".join(f"{n}\n" for n in names))
