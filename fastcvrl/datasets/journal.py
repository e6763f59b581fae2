"""The resume journal of ``prepare`` (``DIR/.prepare-journal.jsonl``): one JSON line per finished file, so
that an interrupted run is resumed by running the same command again."""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path

from fastcvrl.datasets.videoprobe import Probe

JOURNAL = ".prepare-journal.jsonl"
JOURNAL_VERSION = 1
NO_PERMISSION = "no permission to read"  # the detail of a rejection the next run retries


def _retry_later(probe: Probe) -> bool:
    """A result that may be the machine's fault, not the file's (a worker failure, a timeout, no read
    permission): not journaled, so the next run tries the file again. (Journals of earlier versions hold
    permission rejections as ``unreadable`` with a ``PermissionError: ...`` detail: retried too.)"""
    return (
        probe.reason in ("failed", "timeout")
        or probe.detail.startswith(NO_PERMISSION)
        or (probe.reason == "unreadable" and probe.detail.startswith("PermissionError"))
    )


class Journal:
    """Append-only record of finished files (``DIR/.prepare-journal.jsonl``), one JSON line each.

    A record is reused when the source's size and mtime and the run's settings are unchanged and, for a
    transcode, the output still exists with the recorded size. A line cut short by a kill is ignored.
    """

    def __init__(self, path: Path, settings: str):
        self.path, self.settings = path, settings
        self.records: dict[str, dict] = {}
        if path.is_file():
            with open(path, encoding="utf-8") as f:
                for line in f:
                    try:
                        rec = json.loads(line)
                    except ValueError:
                        continue
                    if isinstance(rec, dict) and rec.get("settings") == settings and "src" in rec:
                        self.records[rec["src"]] = rec
        self._file = open(path, "a", encoding="utf-8")

    def lookup(self, src: str) -> Probe | None:
        rec = self.records.get(src)
        if rec is None or _retry_later(Probe(**rec["probe"])):
            return None
        try:
            st = os.stat(src)
            if (st.st_size, st.st_mtime_ns) != (rec["size"], rec["mtime_ns"]):
                return None
        except OSError:
            if rec["probe"]["reason"] != "missing":
                return None
        probe = Probe(**rec["probe"])
        if rec.get("out_size") is not None:
            try:
                if os.path.getsize(probe.path) != rec["out_size"]:
                    return None
            except OSError:
                return None
        return probe

    def add(self, src: str, probe: Probe) -> None:
        try:
            st = os.stat(src)
            size, mtime = st.st_size, st.st_mtime_ns
        except OSError:
            size, mtime = None, None
        out_size = os.path.getsize(probe.path) if probe.ok and probe.path != src else None
        rec = {
            "src": src,
            "size": size,
            "mtime_ns": mtime,
            "settings": self.settings,
            "probe": asdict(probe),
            "out_size": out_size,
        }
        self.records[src] = rec
        self._file.write(json.dumps(rec) + "\n")
        self._file.flush()

    def close(self) -> None:
        if not self._file.closed:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
