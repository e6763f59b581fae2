"""Shared benchmark helpers: the environment record, repeat statistics, process-tree memory, table and
JSON."""

from __future__ import annotations

import json
import os
import statistics
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as `python benchmarks/x.py` from anywhere
    sys.path.insert(0, str(REPO))

from dali_pipelines.cores import usable_cores  # noqa: F401  (re-exported for the benchmarks)
from fastcvrl.atomic import atomic_write  # noqa: E402
from fastcvrl.logger import environment as _record  # noqa: E402


def environment() -> dict[str, Any]:
    """The project's environment record (``fastcvrl.logger.environment``, also the trainer's env.json):
    versions, CPU and GPU model, usable cores, load average and git commit (None outside a checkout), with
    every result."""
    return _record()


def summarize(values: Sequence[float]) -> dict[str, float]:
    """Median and spread (min, max, and (max - min) / median) of repeated measurements."""
    vals = sorted(float(v) for v in values)
    med = statistics.median(vals)
    return {
        "median": med,
        "min": vals[0],
        "max": vals[-1],
        "spread": (vals[-1] - vals[0]) / med if med else 0.0,
        "n": len(vals),
    }


# ------------------------------------------------------------------------------------------ memory
def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                out += [int(c) for c in f.read().split()]
    except OSError:
        pass
    return out


def _tree(pid: int) -> list[int]:
    todo, seen = [pid], []
    while todo:
        p = todo.pop()
        seen.append(p)
        todo += _children(p)
    return seen


def _rss_pss_kb(pid: int) -> tuple[int, int]:
    rss = pss = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Rss:"):
                    rss = int(line.split()[1])
                elif line.startswith("Pss:"):
                    pss = int(line.split()[1])
    except OSError:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        rss = pss = int(line.split()[1])
        except OSError:
            pass
    return rss, pss


def tree_memory_mb(pid: int | None = None) -> tuple[float, float]:
    """(RSS, PSS) in MB summed over this process and all its descendants (loader workers included).

    RSS counts pages shared between forked workers once per process; PSS splits them, so it is the fair
    total. Both read from /proc (Linux); elsewhere they are 0.
    """
    rss = pss = 0
    for p in _tree(pid or os.getpid()):
        r, s = _rss_pss_kb(p)
        rss, pss = rss + r, pss + s
    return rss / 1024.0, pss / 1024.0


_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def tree_cpu_seconds(pid: int | None = None) -> float:
    """User + system CPU seconds used so far by this process and its live descendants (Linux /proc).

    On a shared machine wall-clock rates swing with the other load; CPU time per unit of work swings much
    less, so benchmarks report both. This process's own time (all its threads, DALI's included) comes from
    ``time.process_time`` (sub-microsecond); the live descendants' from /proc, in clock ticks (10 ms); the
    children already waited for (a ``DataLoader``'s workers at the end of each epoch) from ``os.times``, so
    a difference of two readings also counts the children that exited between them."""
    me = os.getpid()
    root = pid or me
    ticks = 0
    for p in _tree(root):
        if p == me:
            continue
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
        except (OSError, IndexError, ValueError):
            pass
    own = 0.0
    if root == me:
        t = os.times()
        own = time.process_time() + t.children_user + t.children_system
    return own + ticks / _TICK


def ratio(num: float | None, den: float | None) -> float | None:
    """num / den, or None where either is missing or den is 0 (a figure below its clock's resolution)."""
    if num is None or not den:
        return None
    return num / den


class PeakMemory:
    """Samples ``tree_memory_mb`` every ``interval`` s in a thread; ``peak_rss_mb``/``peak_pss_mb`` after
    exit."""

    def __init__(self, interval: float = 0.05) -> None:
        self.interval = interval
        self.peak_rss_mb = self.peak_pss_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        rss, pss = tree_memory_mb()
        self.peak_rss_mb, self.peak_pss_mb = max(self.peak_rss_mb, rss), max(self.peak_pss_mb, pss)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> PeakMemory:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()


# ------------------------------------------------------------------------------------------ output
def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain fixed-width table; floats with 3 significant digits (or 1 decimal when >= 100)."""

    def cell(v: Any) -> str:
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{v:.1f}" if abs(v) >= 100 else f"{v:.3g}"
        return str(v)

    cells = [[cell(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths)), "  ".join("-" * w for w in widths)]
    lines += [
        "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in cells
    ]
    return "\n".join(lines)


def write_json(result: dict[str, Any], path: str | None) -> str:
    """The result as one JSON line, written to ``path`` when given, and returned."""
    line = json.dumps(result, sort_keys=True, default=float)
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, line + "\n")
    return line
