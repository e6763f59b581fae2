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


GPU_MIN_THREADS = 8  # decode threads on the GPU at least: each decodes one sample at a time on NVDEC
CPU_THREADS = 2  # DALI threads on the CPU, where host workers and torch augmentation take the other cores


def resolve_num_threads(setting: int | str, device: str) -> int:
    """``data.num_threads`` -> DALI threads per pipeline. ``auto``: on the GPU (``device`` "gpu") the cores
    of this rank (``cores_per_rank``), at least ``GPU_MIN_THREADS``: each thread decodes one sample at a
    time and waits on its CUDA stream once per frame, so NVDEC's parallelism is the thread count; on the CPU
    ``CPU_THREADS``. A number is used as it is."""
    if setting == "auto":
        return max(GPU_MIN_THREADS, cores_per_rank()) if device == "gpu" else CPU_THREADS
    if isinstance(setting, bool) or not isinstance(setting, int) or setting < 1:
        raise ValueError(f"data.num_threads must be auto or an integer >= 1, got {setting!r}")
    return setting
