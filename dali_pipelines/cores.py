"""The CPU cores this process may use: the one place the project asks the operating system.

``usable_cores`` counts the process's CPU affinity (what a container, ``taskset`` or a scheduler grants), not
the machine's cores; ``cores_per_rank`` shares them among the ranks on this node (``LOCAL_WORLD_SIZE``, set by
``torchrun``). Host workers, decode threads, prepare's worker pool and the benchmarks all size from these.
"""

from __future__ import annotations

import os


def usable_cores() -> int:
    """Cores this process may run on (its affinity mask), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


def cores_per_rank() -> int:
    """``usable_cores`` shared by the ranks on this node (``LOCAL_WORLD_SIZE``; 1 outside torchrun), at
    least 1."""
    return max(1, usable_cores() // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))
