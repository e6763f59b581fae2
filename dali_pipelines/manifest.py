"""The dataset manifest, as the data path reads it: one CSV row per usable video.

Header: ``path,label,num_frames,fps,width,height,codec``. Paths are relative to the manifest's folder or
absolute; ``num_frames`` is the decoded frame count (not the container's claim), which the pipelines need to
place clips before decoding.
"""

from __future__ import annotations

import csv
import os
import warnings
from dataclasses import dataclass, fields
from pathlib import Path

HEADER = ["path", "label", "num_frames", "fps", "width", "height", "codec"]


class ManifestError(ValueError):
    """A problem with a manifest; the message names the file (and line) at fault."""


class ManifestWarning(UserWarning):
    """A manifest that is usable but probably not what was meant (e.g. a video listed twice)."""


@dataclass(frozen=True)
class VideoEntry:
    path: str  # absolute after read_manifest
    label: int
    num_frames: int
    fps: float
    width: int
    height: int
    codec: str


_TYPES = {f.name: f.type for f in fields(VideoEntry)}
_CAST = {"str": str, "int": int, "float": float}


def read_manifest(path: str | os.PathLike, check_files: bool = True) -> list[VideoEntry]:
    """Parse ``path``; relative video paths are resolved against the manifest's folder.

    Raises ``ManifestError`` naming the manifest and line for a bad header or value, and (with
    ``check_files``) naming every listed video that does not exist. A video listed on more than one row is
    kept as listed (each row is a sample) with a ``ManifestWarning`` naming the video and its lines.
    """
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"manifest not found: {path}")
    root = path.resolve().parent
    entries: list[VideoEntry] = []
    lines: dict[str, list[int]] = {}  # video path -> the manifest lines listing it
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None or [h.strip() for h in header] != HEADER:
            raise ManifestError(f"{path}: expected the header {','.join(HEADER)}, got {header}")
        for lineno, row in enumerate(reader, start=2):
            if not row or all(not c.strip() for c in row):
                continue
            if len(row) != len(HEADER):
                raise ManifestError(f"{path}:{lineno}: expected {len(HEADER)} fields, got {len(row)}: {row}")
            values = {}
            for name, raw in zip(HEADER, row):
                try:
                    values[name] = _CAST[_TYPES[name]](raw.strip())
                except ValueError:
                    raise ManifestError(f"{path}:{lineno}: bad {name} value {raw!r}") from None
            p = Path(values["path"])
            values["path"] = str(p if p.is_absolute() else root / p)
            if values["num_frames"] <= 0:
                raise ManifestError(
                    f"{path}:{lineno}: num_frames must be positive, got {values['num_frames']}"
                )
            if values["label"] < 0:
                raise ManifestError(f"{path}:{lineno}: label must be >= 0, got {values['label']}")
            entries.append(VideoEntry(**values))
            lines.setdefault(os.path.normpath(values["path"]), []).append(lineno)
    if not entries:
        raise ManifestError(f"{path}: no videos listed")
    _warn_duplicates(path, lines)
    if check_files:
        missing = [e.path for e in entries if not os.path.isfile(e.path)]
        if missing:
            more = f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""
            raise ManifestError(
                f"{path}: {len(missing)} listed video(s) missing: {', '.join(missing[:5])}{more}"
            )
    return entries


def _warn_duplicates(path: Path, lines: dict[str, list[int]]) -> None:
    dup = [(p, n) for p, n in lines.items() if len(n) > 1]
    if dup:
        named = "; ".join(f"{p} (lines {', '.join(map(str, n))})" for p, n in dup[:5])
        more = f"; and {len(dup) - 5} more" if len(dup) > 5 else ""
        warnings.warn(
            ManifestWarning(
                f"{path}: {len(dup)} video(s) listed more than once, each row kept as a sample: {named}{more}"
            ),
            stacklevel=3,
        )


def read_classes(path: str | os.PathLike) -> list[str]:
    """``classes.txt``: one class name per line, line i is label i."""
    with open(path, encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f if line.strip()]
