"""Out-of-memory errors told in one line with the settings to lower (``train.cli``: exit code 5), instead of
the allocator's traceback ("DefaultCPUAllocator: can't allocate memory", ``MemoryError``, CUDA's OOM)."""

from __future__ import annotations

OOM_EXIT = 5
_HOST_SIGNS = ("can't allocate memory", "cannot allocate memory", "bad_alloc", "out of memory")


def out_of_memory_message(e: BaseException) -> str | None:
    """The one line for an out-of-memory error ``e`` (host or GPU), naming the settings that lower the
    memory a run needs; ``None`` when ``e`` is something else."""
    first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
    text = str(e).lower()
    gpu = type(e).__name__ == "OutOfMemoryError" or ("cuda" in text and "out of memory" in text)
    if gpu:  # torch.cuda.OutOfMemoryError, or a CUDA allocation error from DALI
        return (
            f"out of GPU memory ({first}): lower train.batch_size (the global batch; optim.lr scales with it "
            "through optim.base_batch_size), or use train.precision=bf16"
        )
    if isinstance(e, MemoryError) or (isinstance(e, RuntimeError) and any(s in text for s in _HOST_SIGNS)):
        return (
            f"out of host memory ({first or 'MemoryError'}): lower train.batch_size, data.prefetch or "
            "data.host_workers (each host worker holds batches of encoded clips), or free memory on this "
            "machine"
        )
    return None


def skipped_summary(loader: object, limit: int = 10) -> str | None:
    """One line naming the videos this process's loader left out as unreadable or changed since the manifest
    was written (``loader.source.bad``, each named in a warning when met), for the end of the run; ``None``
    when there are none (or the loader keeps no such record, e.g. random clips)."""
    source = getattr(loader, "source", None)
    bad = sorted(getattr(source, "bad", ()) or ())
    if not bad:
        return None
    paths = [source.entries[v].path for v in bad[:limit]]
    more = f" and {len(bad) - limit} more" if len(bad) > limit else ""
    return (
        f"note: {len(bad)} video(s) were skipped as unreadable or changed (another video of the shard took "
        f"each place; the warnings above say why): {', '.join(paths)}{more}. Prepare them again, or remove "
        "them from the manifest"
    )
