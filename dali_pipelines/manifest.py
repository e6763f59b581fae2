"""The dataset manifest, as the data path reads it: one CSV row per usable video.

Header: ``path,label,num_frames,fps,width,height,codec`` and, from ``prepare``, ``fingerprint``. Paths are
relative to the manifest's folder or absolute; ``num_frames`` is the decoded frame count (not the container's
claim), which the pipelines need to place clips before decoding. ``fingerprint`` (``<size>-<hash of the first
and last 64 KiB>``, ``file_fingerprint``) lets the loader tell from the bytes it reads anyway that a file was
replaced after the manifest was written; manifests without the column (hand-written ones) are read as before
and their files are not checked.

File names that are not valid UTF-8 cannot be written to the manifest (UTF-8 text): ``prepare`` rejects them
in ``rejected.csv`` (``escaped_name`` writes them there readably).
"""

from __future__ import annotations

import csv
import hashlib
import math
import os
import warnings
from dataclasses import dataclass, fields
from pathlib import Path

HEADER = ["path", "label", "num_frames", "fps", "width", "height", "codec"]
OPTIONAL = ["fingerprint"]  # written by prepare; absent from hand-written manifests
FINGERPRINT_BYTES = 1 << 16  # hashed at each end of the file
INT64_MAX = 2**63 - 1


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
    fingerprint: str = ""  # file_fingerprint of the file when the manifest was written; "" = unchecked


_TYPES = {f.name: f.type for f in fields(VideoEntry)}
_CAST = {"str": str, "int": int, "float": float}


def read_manifest(path: str | os.PathLike, check_files: bool = True) -> list[VideoEntry]:
    """Parse ``path``; relative video paths are resolved against the manifest's folder.

    Raises ``ManifestError`` naming the manifest and line for a bad header or value, and (with
    ``check_files``) naming every listed video that does not exist. A video listed on more than one row is
    kept as listed (each row is a sample) with a ``ManifestWarning`` naming the video and its lines.
    """
    try:
        return _read_manifest(Path(path), check_files)
    except UnicodeDecodeError as e:
        raise ManifestError(f"{path}: not UTF-8 text ({_cut(e.reason)}); save it as UTF-8") from None
    except csv.Error as e:  # e.g. a field beyond csv's size limit: not a manifest
        raise ManifestError(f"{path}: not a readable CSV manifest ({_cut(str(e))})") from None


def _read_manifest(path: Path, check_files: bool) -> list[VideoEntry]:
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"manifest not found: {path}")
    root = path.resolve().parent
    entries: list[VideoEntry] = []
    lines: dict[str, list[int]] = {}  # video path -> the manifest lines listing it
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        names = [h.strip() for h in header] if header is not None else None
        if names is None or not (names == HEADER or names == HEADER + OPTIONAL):
            raise ManifestError(
                f"{path}: expected the header {','.join(HEADER)} (optionally ,{','.join(OPTIONAL)}), "
                f"got {_cut(header)}"
            )
        for lineno, row in enumerate(reader, start=2):
            if not row or all(not c.strip() for c in row):
                continue
            if len(row) != len(names):
                raise ManifestError(
                    f"{path}:{lineno}: expected {len(names)} fields, got {len(row)}: {_cut(row)}"
                )
            values = {}
            for name, raw in zip(names, row):
                try:
                    values[name] = _CAST[_TYPES[name]](raw.strip())
                except ValueError:
                    raise ManifestError(f"{path}:{lineno}: bad {name} value {_cut(raw)}") from None
            for name in ("label", "num_frames", "width", "height"):
                if not -INT64_MAX <= values[name] <= INT64_MAX:
                    raise ManifestError(
                        f"{path}:{lineno}: {name} {_cut(values[name])} is beyond a 64-bit integer"
                    )
            if not math.isfinite(values["fps"]) or values["fps"] < 0:
                raise ManifestError(
                    f"{path}:{lineno}: fps must be a finite number >= 0, got {row[3].strip()!r}"
                )
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
            stacklevel=4,
        )


def read_classes(path: str | os.PathLike) -> list[str]:
    """``classes.txt``: one class name per line, line i is label i (blank lines at the end ignored). A blank
    line between names would shift every later label: ``ManifestError`` naming the line."""
    with open(path, encoding="utf-8", newline="\n") as f:
        lines = f.read().split("\n")
    while lines and not lines[-1].strip():
        lines.pop()
    for i, line in enumerate(lines, start=1):
        if not line.strip():
            raise ManifestError(
                f"{path}:{i}: blank line between class names (line i is label i - 1): remove it or name the "
                "class"
            )
    return lines


def _cut(value: object, limit: int = 120) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _fingerprint(size: int, head: bytes, tail: bytes) -> str:
    h = hashlib.blake2b(head, digest_size=8)
    h.update(tail)
    return f"{size}-{h.hexdigest()}"


def fingerprint_bytes(data: bytes | memoryview) -> str:
    """The fingerprint of a file whose whole content is ``data`` (the loader has it in memory anyway):
    its size and a hash of its first and last ``FINGERPRINT_BYTES``."""
    n = len(data)
    return _fingerprint(
        n, bytes(data[:FINGERPRINT_BYTES]), bytes(data[max(FINGERPRINT_BYTES, n - FINGERPRINT_BYTES) :])
    )


def file_fingerprint(path: str | os.PathLike) -> str:
    """``fingerprint_bytes`` of the file at ``path``, reading only its two ends (two reads, any size)."""
    with open(path, "rb") as f:
        n = os.fstat(f.fileno()).st_size
        head = f.read(FINGERPRINT_BYTES)
        f.seek(max(FINGERPRINT_BYTES, n - FINGERPRINT_BYTES))
        tail = f.read(FINGERPRINT_BYTES) if n > FINGERPRINT_BYTES else b""
    return _fingerprint(n, head, tail)


def escaped_name(path: str) -> str:
    """``path`` as UTF-8 text: a file name's bytes that are not valid UTF-8 written as ``\\xNN``."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")
