"""Check a video collection once, up front: ``python -m fastcvrl.prepare SRC --out DIR [options]``.

Every listed file is decoded in parallel worker processes (``fastcvrl.datasets.videoprobe``): usable videos go
to ``DIR/manifest.csv`` (``dali_pipelines.manifest`` header; the decoded frame count, not the header's claim),
their class names to ``DIR/classes.txt``, unusable ones to ``DIR/rejected.csv`` with the reason.
``--transcode`` re-encodes each video into ``DIR/videos/`` with a keyframe every ``--gop`` frames and the
short side scaled to ``--short-side``, so that a clip decodes from a nearby keyframe instead of from the start
of a long GOP (H.264 for NVDEC on the GPU; VP9 or MJPEG for DALI on the CPU, whose CPU decoder lacks H.264).
Every frame is kept, in order; the manifest then lists the new files.

Sources are never written to. Results are appended to ``DIR/.prepare-journal.jsonl`` as each file finishes,
so an interrupted run (Ctrl-C, a crash, ``--stop-after``) is resumed by running the same command again, which
redoes nothing already done. Rejections that may be the machine's fault rather than the file's (no read
permission, a worker failure, a timeout) are not journaled: the next run tries those files again. The manifest
is written only when every file is done, atomically (temporary file, then rename), so it is never
half-written. The worker processes die with the command (a parent-death signal on Linux), even when it is
killed.

One run per output folder: ``DIR/.prepare.lock`` is ``flock``'ed for the run's life (a second run is refused
naming the holder), and only temporaries whose writer is dead are swept. A fault of the machine while writing
(full disk, file-size limit, I/O error, no permission) stops the run with exit 4 in one line; the partial
file is removed and nothing is journaled for it, so the same command redoes it."""

from __future__ import annotations

import argparse
import contextlib
import csv
import ctypes
import fcntl
import hashlib
import json
import os
import re
import signal
import socket
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field, replace
from multiprocessing import get_context
from pathlib import Path

from dali_pipelines.codecs import CPU_CODECS
from dali_pipelines.cores import usable_cores
from dali_pipelines.manifest import ManifestError, VideoEntry, escaped_name, file_fingerprint, read_classes
from fastcvrl.atomic import host_tag, sweep, temp_writer, writer_alive
from fastcvrl.datasets import shards
from fastcvrl.datasets.journal import (
    JOURNAL,
    JOURNAL_VERSION,
    NO_PERMISSION,
    RERUN,
    STORAGE,
    Journal,
    _retry_later,
)
from fastcvrl.datasets.listings import FORMATS, Item, SourceError, read_source
from fastcvrl.datasets.manifest import write_classes, write_manifest
from fastcvrl.datasets.transcode import TRANSCODE_CODECS, Transcode, transcode_video
from fastcvrl.datasets.video import CODECS
from fastcvrl.datasets.videoprobe import Probe, probe_video
from fastcvrl.storage import WRITE_FAULTS, StorageError, storage_error

# CPU training: MJPEG costs the least CPU per clip (every frame a JPEG: only the needed frames are decoded)
# and the most disk; figures from benchmarks/loader_bench.py --peers decord (docs/performance.md)
CPU_ADVICE = (
    "--transcode mjpeg (the least CPU per clip; about 1.3 GB per hour of video at short side 256) "
    "or vp9 (about 0.4 GB per hour, about 4x the CPU per clip)"
)
NAME_MAX = 255  # bytes in one file name on Linux, macOS and Windows file systems
LOCK = ".prepare.lock"  # in --out: flock'ed for the run's life (one prepare per output folder)


class PrepareError(ValueError):
    """Bad arguments or paths; the message names the value at fault."""


Job = tuple[str, str | None, Transcode | None, int]  # (source, output, transcode options, codec threads)


def _work(job: Job) -> dict:
    """Worker: probe (or transcode) one file; any failure becomes a rejection, never an exception.

    An unexpected error (a full disk, an encoder failure) is reported as reason ``failed``, which is not
    journaled, so the next run tries the file again."""
    src, dst, opts, threads = job
    try:  # a permission problem is the machine's, not the file's: said apart, retried by the next run
        os.close(os.open(src, os.O_RDONLY | os.O_NONBLOCK))  # non-blocking: a FIFO must not hang the worker
    except PermissionError as e:
        return asdict(
            Probe(src, reason="unreadable", detail=f"{NO_PERMISSION} ({e.strerror}); retried by the next run")
        )
    except OSError:
        pass  # missing, a broken link...: probing says which
    try:
        probe = (
            transcode_video(src, dst, opts, threads) if opts and dst else probe_video(src, threads=threads)
        )
    except OSError as e:
        if not (dst and e.errno in WRITE_FAULTS):
            return asdict(Probe(src, reason="failed", detail=f"{type(e).__name__}: {e}"))
        # writing failed (full disk, file-size limit, I/O): the machine's fault; the run stops (exit 4)
        where = dst if temp_writer(os.path.basename(str(e.filename or ""))) else e.filename or dst
        fault = storage_error(
            OSError(e.errno, e.strerror, where), "cannot write", setting="--out", rerun=RERUN
        )
        return asdict(Probe(src, reason=STORAGE, detail=str(fault)))
    except Exception as e:  # one bad file never stops the run
        probe = Probe(src, reason="failed", detail=f"{type(e).__name__}: {e}")
    if probe.ok:
        try:  # the loader checks it against the bytes it reads (dali_pipelines.manifest)
            probe = replace(probe, fingerprint=file_fingerprint(probe.path))
        except OSError as e:
            probe = Probe(src, reason="failed", detail=f"{type(e).__name__}: {e}")
    return asdict(probe)


PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _worker_init(parent: int) -> None:
    """In each worker: Ctrl-C is the parent's to handle; and the worker is killed when its parent dies (a
    parent-death signal: even a SIGKILLed ``prepare`` leaves no worker decoding on). ``parent``: the pid
    that created the pool; a parent that died before the signal was set is caught by the ``getppid`` check."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and stops the workers
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # beyond the file-size limit: EFBIG, told, not a crash
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:  # not fatal: the work is still right
            print(
                f"prepare: worker {os.getpid()} could not ask to die with its parent "
                f"({os.strerror(ctypes.get_errno())})",
                file=sys.stderr,
                flush=True,
            )
        if os.getppid() != parent:  # the parent is already gone: the signal would never come
            os._exit(1)


# ------------------------------------------------------------------------------------------- the run
@dataclass
class Summary:
    listed: int = 0
    usable: int = 0
    rejected: Counter = field(default_factory=Counter)
    reused: int = 0  # taken from the journal
    processed: int = 0  # probed or transcoded in this run
    complete: bool = False  # False after --stop-after or Ctrl-C: no manifest written
    manifest: str = ""
    seconds: float = 0.0


def _fit_name(stem: str, suffix: str, ext: str, key: str) -> str:
    """``<stem><suffix><ext>`` within ``NAME_MAX`` bytes: a longer stem is cut (on a character boundary) and
    tagged with a hash of ``key`` (the source path), so that two cut names stay apart."""
    name = f"{stem}{suffix}{ext}"
    if len(name.encode("utf-8", "surrogateescape")) <= NAME_MAX:
        return name
    suffix = "-" + hashlib.sha1(key.encode("utf-8", "surrogateescape")).hexdigest()[:8]
    room = NAME_MAX - len(f"{suffix}{ext}".encode("utf-8", "surrogateescape"))
    cut = stem.encode("utf-8", "surrogateescape")[:room].decode("utf-8", "ignore")
    return f"{cut}{suffix}{ext}"


def _output_paths(items: list[Item], classes: list[str], out: Path, codec: str) -> dict[str, str]:
    """``DIR/videos/<class>/<stem><ext>``; a short hash of the source path tells apart equal stems, and names
    longer than the file-name limit are cut (``_fit_name``)."""
    ext = CODECS[codec][2]
    names: dict[str, list[Item]] = {}
    for it in items:
        safe_class = "".join(c if c.isalnum() or c in "-_." else "_" for c in classes[it.label]) or "_"
        safe_class = _fit_name(safe_class, "", "", safe_class)
        names.setdefault(f"{safe_class}/{Path(it.path).stem}", []).append(it)
    paths = {}
    for name, group in names.items():
        folder, stem = name.split("/", 1)
        for it in group:
            suffix = (
                ""
                if len(group) == 1
                else "-" + hashlib.sha1(it.path.encode("utf-8", "surrogateescape")).hexdigest()[:8]
            )
            paths[it.path] = str(out / "videos" / folder / _fit_name(stem, suffix, ext, it.path))
    return paths


_LEGACY_TEMP = re.compile(r"^\.prepare-tmp-(\d+)-[0-9a-f]{16}\.\w+$")  # earlier versions' transcodes


def _legacy_temp_pid(name: str) -> int | None:
    """The pid in the name of a transcode temporary left by an earlier version (``.prepare-tmp-<pid>-<hash>``
    or ``<stem>.tmp<pid><ext>``); ``None`` for any other name. Today's are ``fastcvrl.atomic``'s."""
    m = _LEGACY_TEMP.match(name)
    if m:
        return int(m.group(1))
    stem = os.path.splitext(name)[0]
    if ".tmp" in stem and stem.rsplit(".tmp", 1)[-1].isdigit():
        return int(stem.rsplit(".tmp", 1)[-1])
    return None


def _remove_stale_temporaries(out: Path) -> list[Path]:
    """Half-written outputs under ``DIR/videos`` whose writer is dead: a killed run's (``atomic.sweep`` per
    folder, and earlier versions' names). A live writer's temporary is never touched (the ``--out`` lock keeps
    a second run out; this is the second line of defence). Best effort: what cannot be removed stays."""
    removed: list[Path] = []
    videos = out / "videos"
    if videos.is_dir():
        for folder, _, names in os.walk(videos):
            removed += sweep(folder)
            for name in names:
                pid = _legacy_temp_pid(name)
                p = Path(folder) / name
                if pid is not None and p.is_file() and not writer_alive(host_tag(), pid):
                    with contextlib.suppress(OSError):
                        p.unlink()
                        removed.append(p)
    return removed


def _lock_out(out: Path) -> int:
    """Take ``DIR/.prepare.lock`` (``flock``, released by the OS when the process ends, however it ends);
    ``PrepareError`` naming the holder when another ``prepare`` writes into ``out``."""
    path = out / LOCK
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise storage_error(e, "cannot create the lock file", setting="--out", rerun=RERUN) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        try:
            holder = os.pread(fd, 200, 0).decode("utf-8", "replace").split()
        except OSError:
            holder = []
        os.close(fd)
        who = f"pid {holder[0]} on host {holder[1]}" if len(holder) >= 2 else "a process starting up"
        raise PrepareError(
            f"{out} is in use by another prepare ({who}; lock file {path}): wait for it to end, or use "
            "another --out"
        ) from None
    try:
        os.ftruncate(fd, 0)
        os.pwrite(
            fd, f"{os.getpid()} {socket.gethostname()} {time.strftime('%Y-%m-%dT%H:%M:%S%z')}\n".encode(), 0
        )
    except OSError as e:
        os.close(fd)
        raise storage_error(e, "cannot write the lock file", setting="--out", rerun=RERUN) from None
    return fd


def _result(fut: Future, src: str, crashed: Probe | None = None) -> Probe:
    """The worker's answer; a crashed pool re-raises (or gives ``crashed``), anything else is a ``failed``."""
    try:
        return Probe(**fut.result())
    except BrokenProcessPool:
        if crashed is None:
            raise
        return crashed
    except Exception as e:  # e.g. a job that cannot be sent to the worker: retried by the next run
        return Probe(src, reason="failed", detail=f"{type(e).__name__}: {e}")


def _kill_workers(ex: ProcessPoolExecutor) -> None:
    """SIGKILL the pool's processes and wait for them to end (so their temporaries can be swept)."""
    procs = list(getattr(ex, "_processes", {}).values())
    for p in procs:
        p.kill()
    for p in procs:
        p.join(timeout=30)
    ex.shutdown(wait=False, cancel_futures=True)


def _timed_out(path: str, timeout: float) -> Probe:
    return Probe(path, reason="timeout", detail=f"no result after {timeout:g} s")


def _run_pool(
    jobs: list[Job],
    workers: int,
    on_result: Callable[[str, Probe], None],
    timeout: float | None = None,
) -> None:
    """Run ``_work`` over ``jobs`` in ``workers`` processes, keeping a bounded number in flight. A worker that
    dies (a decoder crash) breaks the pool: the files then in flight are retried one by one, each alone in a
    fresh process, and the one that kills its process again is rejected. A file still running ``timeout``
    seconds after its worker took it (a hung decoder) is rejected as ``timeout``: the pool's processes are
    killed and the other files in flight start again in a fresh pool."""
    ctx = get_context("fork" if sys.platform == "linux" else "spawn")
    pending = list(reversed(jobs))
    suspects: list[Job] = []
    while pending or suspects:
        if suspects:
            job = suspects.pop()
            ex = ProcessPoolExecutor(1, mp_context=ctx, initializer=_worker_init, initargs=(os.getpid(),))
            fut = ex.submit(_work, job)
            wait([fut], timeout=timeout)
            if not fut.done():
                _kill_workers(ex)
                on_result(job[0], _timed_out(job[0], timeout))
                continue
            on_result(
                job[0],
                _result(
                    fut,
                    job[0],
                    crashed=Probe(job[0], reason="unreadable", detail="the decoder crashed its process"),
                ),
            )
            ex.shutdown(wait=True)
            continue
        ex = ProcessPoolExecutor(workers, mp_context=ctx, initializer=_worker_init, initargs=(os.getpid(),))
        inflight: dict[Future, tuple] = {}  # in submission order, which is the order the workers take them
        started: dict[Future, float] = {}
        try:
            while pending or inflight:
                while pending and len(inflight) < 4 * workers:
                    job = pending.pop()
                    inflight[ex.submit(_work, job)] = job
                now = time.monotonic()
                for fut in list(inflight)[:workers]:  # the oldest unfinished ones are the ones running
                    started.setdefault(fut, now)
                wait_s = None if not timeout else max(0.0, min(started.values()) + timeout - now)
                done, _ = wait(inflight, timeout=wait_s, return_when=FIRST_COMPLETED)
                for fut in done:
                    probe = _result(
                        fut, inflight[fut][0]
                    )  # raises BrokenProcessPool with fut still in flight
                    on_result(inflight.pop(fut)[0], probe)
                    started.pop(fut, None)
                now = time.monotonic()
                late = (
                    [f for f, t0 in started.items() if now - t0 >= timeout and not f.done()]
                    if timeout
                    else []
                )
                if late:
                    _kill_workers(ex)
                    for fut in late:
                        path = inflight.pop(fut)[0]
                        on_result(path, _timed_out(path, timeout))
                    pending.extend(reversed(list(inflight.values())))  # the others start again, in order
                    break
        except BrokenProcessPool:
            suspects.extend(inflight.values())
            ex.shutdown(wait=False, cancel_futures=True)
            continue
        except BaseException:  # Ctrl-C: stop the workers now, do not wait for their files
            _kill_workers(ex)
            raise
        ex.shutdown(wait=True)


def _write_rejected(path: Path, rows: list[tuple[str, str, str]]) -> None:
    """``rejected.csv``; names that are not valid UTF-8 written with ``\\xNN`` escapes (``escaped_name``)."""
    from fastcvrl.atomic import atomic_open

    with atomic_open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "reason", "detail"])
        w.writerows([tuple(escaped_name(c) for c in row) for row in rows])


def _utf8(path: str) -> bool:
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _bad_name(path: str) -> Probe:
    return Probe(
        path,
        reason="bad name",
        detail="the file name is not valid UTF-8 (the manifest is UTF-8 text): rename it, e.g. with "
        "convmv -f latin1 -t utf-8",
    )


def prepare(
    src: str | os.PathLike,
    out: str | os.PathLike,
    fmt: str = "auto",
    videos: str | os.PathLike | None = None,
    subset: str | None = None,
    split_id: int = 1,
    classes_file: str | os.PathLike | None = None,
    transcode: Transcode | None = None,
    min_frames: int = 1,
    workers: int | None = None,
    stop_after: int | None = None,
    timeout: float | None = 1800.0,
    quiet: bool = False,
    log: Callable[[str], None] = print,
    shard: shards.Shard | None = None,
) -> Summary:
    """Probe (and optionally transcode) every video listed by ``src``; write the manifest, classes and
    rejections into ``out``. Raises ``PrepareError`` for bad arguments (or an ``out`` in use by another run),
    ``StorageError`` when writing into ``out`` fails (nothing journaled for the file at fault: the next run
    does it again); never for a bad video. ``shard``: only that share of the listing, and ``out/part.json``
    for ``--merge`` (``fastcvrl.datasets.shards``)."""
    start = time.perf_counter()
    say = log
    log = lambda msg: say(escaped_name(msg))  # noqa: E731 (names that are not UTF-8 are printed escaped)
    src_p, out_p = (
        Path(os.path.expanduser(os.fspath(src))).absolute(),
        Path(os.path.expanduser(os.fspath(out))).absolute(),
    )
    if not src_p.exists():
        raise PrepareError(f"source not found: {src_p}")
    if src_p == out_p:
        raise PrepareError(
            f"--out must differ from the source folder ({out_p}): sources are never written to"
        )
    if transcode is not None:
        if transcode.codec not in TRANSCODE_CODECS:
            raise PrepareError(
                f"--transcode {transcode.codec!r}: choose one of {', '.join(TRANSCODE_CODECS)}"
            )
        if transcode.bframes < 0:
            raise PrepareError(f"--bframes must be >= 0, got {transcode.bframes}")
        if transcode.short_side < 0 or transcode.gop < 1:
            raise PrepareError(
                f"--short-side must be >= 0 and --gop >= 1, got {transcode.short_side} and {transcode.gop}"
            )
    if min_frames < 1:
        raise PrepareError(f"--min-frames must be >= 1, got {min_frames}")
    if timeout is not None and not timeout >= 0:
        raise PrepareError(f"--timeout must be >= 0 seconds (0 = no limit), got {timeout}")
    workers = workers or usable_cores()
    if workers < 1:
        raise PrepareError(f"--workers must be >= 1, got {workers}")
    classes = None
    if classes_file is not None:
        if not os.path.isfile(classes_file):
            raise PrepareError(f"--classes file not found: {classes_file}")
        try:
            classes = read_classes(classes_file)
        except (ManifestError, UnicodeDecodeError) as e:
            raise PrepareError(f"--classes {classes_file}: {e}") from None
    try:
        source = read_source(
            src_p, fmt, Path(videos).absolute() if videos else None, subset, split_id, classes, exclude=out_p
        )
    except UnicodeDecodeError as e:  # a list, CSV or split file that is not UTF-8 text
        raise PrepareError(
            f"{src_p} (or a file it needs, such as classInd.txt) is not UTF-8 text ({e.reason}): "
            "save it as UTF-8"
        ) from None
    except (SourceError, OSError) as e:
        raise PrepareError(str(e)) from None
    for note in source.notes:
        log(note)
    listing, root = source.items, shards.source_root(src_p, Path(videos).absolute() if videos else None)
    if shard is not None:
        source = shards.select(source, shard, root)
        log(f"shard {shard}: {len(source.items)} of the {len(listing)} listed videos")
    if transcode is not None:
        inside = [it.path for it in source.items if (out_p / "videos") in Path(it.path).parents]
        if inside:
            raise PrepareError(
                f"source video {inside[0]} lies inside {out_p / 'videos'}, where transcodes are written"
            )
    try:
        out_p.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise storage_error(e, "cannot create the output folder", setting="--out", rerun=RERUN) from None
    part = None
    if shard is not None:  # out/part.json for --merge, written before the manifest

        def part(settings: str, outcomes: list[tuple[str, bool]]) -> None:
            run = dict(journal=settings, min_frames=min_frames, format=fmt, subset=subset, split=split_id)
            shards.write_part(out_p, src_p, root, run, shard, listing, source.classes, outcomes)

    lock = _lock_out(out_p)  # held until this process ends (the OS releases it, however it ends)
    try:
        return _prepare_locked(
            source, out_p, transcode, min_frames, workers, stop_after, timeout, quiet, log, start, part
        )
    finally:
        os.close(lock)


def _prepare_locked(
    source, out_p: Path, transcode, min_frames, workers, stop_after, timeout, quiet, log, start, part=None
) -> Summary:
    """``prepare`` once it holds ``out``'s lock."""
    _remove_stale_temporaries(out_p)
    dst = _output_paths(source.items, source.classes, out_p, transcode.codec) if transcode else {}
    settings = json.dumps({"version": JOURNAL_VERSION, "transcode": asdict(transcode) if transcode else None})
    journal = Journal(out_p / JOURNAL, settings)
    summary = Summary(listed=len(source.items) + len(source.rejected))
    results: dict[str, Probe] = {}
    todo: list[str] = []
    for it in source.items:
        if not _utf8(it.path):
            results[it.path] = _bad_name(it.path)
            continue
        found = journal.lookup(it.path)
        if found is None:
            todo.append(it.path)
        else:
            results[it.path] = found
    summary.reused = len(results)
    if stop_after is not None:
        todo = todo[: max(0, stop_after)]
    workers = min(workers, max(1, len(todo)))
    threads = 1 if workers > 1 else 0  # parallel files, not parallel codec threads: no oversubscription
    jobs: list[Job] = [(path, dst.get(path), transcode, threads) for path in todo]
    action = f"transcoding to {transcode.codec}" if transcode else "probing"
    log(
        f"{len(source.items)} videos in {len(source.classes)} classes; {summary.reused} already done; "
        f"{action} {len(todo)} with {workers} processes"
    )
    from tqdm import tqdm

    bar = tqdm(total=len(todo), unit="video", disable=quiet or not todo, file=sys.stderr, dynamic_ncols=True)

    def on_result(path: str, probe: Probe) -> None:
        if probe.reason == STORAGE:  # the worker could not write: stop now (its partial file is gone)
            raise StorageError(probe.detail)
        if not _retry_later(probe):  # may be ours (disk full, load, permissions): retried by the next run
            journal.add(path, probe)
        results[path] = probe
        summary.processed += 1
        if not probe.ok:
            summary.rejected[probe.reason] += 1
            bar.set_postfix(rejected=sum(summary.rejected.values()), refresh=False)
        bar.update(1)

    try:
        if jobs:
            _run_pool(jobs, workers, on_result, timeout or None)
    except KeyboardInterrupt:
        bar.close()
        journal.close()
        _remove_stale_temporaries(out_p)
        log(
            f"interrupted: {summary.processed} file(s) done in this run; run the same command again to "
            "continue"
        )
        summary.seconds = time.perf_counter() - start
        raise
    except StorageError:
        bar.close()
        journal.close()
        _remove_stale_temporaries(out_p)  # the workers are gone: their partial files go too
        raise
    finally:
        bar.close()
        journal.close()
    summary.seconds = time.perf_counter() - start
    if len(results) < len(source.items):
        log(
            f"stopped after {summary.processed} file(s) (--stop-after); {len(source.items) - len(results)} "
            "left: "
            "run the same command again to continue"
        )
        return summary
    entries, rejected, outcomes = [], list(source.rejected), []
    summary.rejected.clear()  # recounted over every listed file, reused ones included
    summary.rejected.update(r[1] for r in rejected)
    try:
        for it in source.items:
            p = results[it.path]
            if p.ok and p.num_frames < min_frames:
                p = replace(
                    p,
                    reason="too short",
                    detail=f"{p.num_frames} frames, fewer than --min-frames {min_frames}",
                )
            if p.ok and p.rotation:  # only without --transcode (a transcode is stored upright)
                p = replace(
                    p,
                    reason="rotated",
                    detail=f"display rotation {p.rotation} degrees, which the loaders do not apply (clips "
                    "would be sideways): prepare with --transcode, which stores it upright",
                )
            outcomes.append((it.path, p.ok))
            if p.ok:
                fingerprint = p.fingerprint or file_fingerprint(p.path)  # (journals of earlier versions)
                entries.append(
                    VideoEntry(p.path, it.label, p.num_frames, p.fps, p.width, p.height, p.codec, fingerprint)
                )
            else:
                rejected.append((it.path, p.reason, p.detail))
                summary.rejected[p.reason] += 1
        summary.usable, summary.complete = len(entries), True
        _write_rejected(out_p / "rejected.csv", rejected)
        write_classes(out_p / "classes.txt", source.classes)
        if part is not None:  # before the manifest, whose presence means the rest is written
            part(settings, outcomes)
        if entries:
            write_manifest(out_p / "manifest.csv", entries)  # last: its presence means the rest is written
            summary.manifest = str(out_p / "manifest.csv")
        elif (out_p / "manifest.csv").exists():
            os.remove(out_p / "manifest.csv")
    except OSError as e:
        raise storage_error(e, "cannot write", setting="--out", rerun=RERUN) from None
    _print_summary(summary, entries, [results[it.path] for it in source.items], out_p, log)
    return summary


def _print_summary(
    summary: Summary, entries: list[VideoEntry], probes: list[Probe], out: Path, log: Callable
) -> None:
    reasons = ", ".join(f"{n} {r}" for r, n in summary.rejected.most_common()) or "none"
    log(f"{summary.usable} usable of {summary.listed}; rejected: {reasons} (see {out / 'rejected.csv'})")
    if not entries:
        log("no usable videos: no manifest written")
        return
    frames = sorted(e.num_frames for e in entries)
    codecs = Counter(e.codec for e in entries)
    log(
        f"frames per video: min {frames[0]}, median {int(statistics.median(frames))}, max {frames[-1]}; "
        f"{sum(f < 32 for f in frames)} shorter than one 16x2 clip (32 frames; the pipelines loop them)"
    )
    log("codecs: " + ", ".join(f"{c} {n}" for c, n in codecs.most_common()))
    gops = [p.num_frames / p.keyframes for p in probes if p.ok and p.keyframes]
    if gops:
        med = statistics.median(gops)
        hint = " (long: clips decode from far back; consider --transcode ... --gop 16)" if med > 32 else ""
        log(f"median keyframe interval: {med:.0f} frames{hint}")
    if set(codecs) - CPU_CODECS:
        log(
            f"note: DALI decodes {', '.join(sorted(set(codecs) - CPU_CODECS))} on the GPU only; "
            f"for CPU decoding use {CPU_ADVICE}"
        )
    log(
        f"wrote {summary.manifest} ({summary.usable} videos) in {summary.seconds:.1f} s; "
        f"{summary.processed} processed in this run, {summary.reused} reused"
    )


def main(argv: list[str] | None = None) -> int:
    import fastcvrl.datasets.listings
    from fastcvrl.commands import HelpFormatter, prog

    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["--merge"]:  # python -m fastcvrl.prepare --merge OUT PART_DIR...
        return shards.merge_main(argv[1:])
    if any(x == "--audit" or x.startswith("--audit=") for x in argv):  # no SRC, no --out: its own parser
        from fastcvrl.datasets.audit import audit_main

        return audit_main(argv)

    epilog = (
        fastcvrl.datasets.listings.__doc__.split("\n", 1)[1]
        + "\nExit status: 0 done, 1 no usable video, 2 bad arguments, "
        "3 stopped by --stop-after, 4 a file-system fault writing --out (full disk, file-size limit, I/O "
        "error, no permission: fix it and rerun, nothing done is lost), 130 interrupted (rerun the same "
        "command to continue)."
    )
    ap = argparse.ArgumentParser(
        prog=prog("fastcvrl-prepare", "fastcvrl.prepare"),
        description=__doc__.split("\n\n")[0],
        epilog=epilog,
        formatter_class=HelpFormatter,
    )
    ap.add_argument(
        "src",
        help="class-folder tree, Kinetics CSV, UCF-101 split file, HMDB-51 split folder, "
        "or 'path label' list",
    )
    ap.add_argument(
        "--out", required=True, help="output folder (manifest.csv, classes.txt, rejected.csv, videos/)"
    )
    ap.add_argument("--format", default="auto", choices=("auto",) + FORMATS)
    ap.add_argument("--videos", help="folder the CSV / split / list paths are relative to")
    ap.add_argument("--subset", help="Kinetics: keep rows with this split value; HMDB-51: train or test")
    ap.add_argument("--split-id", type=int, default=1, help="HMDB-51 split number (1..3)")
    ap.add_argument("--classes", help="classes.txt fixing the label order (e.g. the training split's)")
    ap.add_argument(
        "--transcode",
        choices=TRANSCODE_CODECS,
        help="re-encode into DIR/videos with this codec: h264 for GPU training (NVDEC); for CPU training "
        + CPU_ADVICE.removeprefix("--transcode "),
    )
    ap.add_argument(
        "--short-side", type=int, default=256, help="transcode: scale the short side to this (0 = keep)"
    )
    ap.add_argument("--gop", type=int, default=16, help="transcode: keyframe interval in frames")
    ap.add_argument("--quality", type=int, default=None, help="transcode: CRF (h264, vp9) or qscale (mjpeg)")
    ap.add_argument(
        "--bframes",
        type=int,
        default=Transcode.bframes,
        help="transcode: H.264 B-frames between reference frames (0 = none)",
    )
    ap.add_argument(
        "--allow-upscale",
        action="store_true",
        help="transcode: scale videos up more than 2x (else they are rejected as 'unsupported size')",
    )
    ap.add_argument(
        "--audit",
        metavar="MANIFEST",
        help="instead of preparing: check MANIFEST for NVDEC (codecs, sizes, keyframes, decoder reuse); "
        "exit 0 if the GPU path runs at full speed, 1 if not (the fix is printed), 2 unreadable",
    )
    ap.add_argument("--min-frames", type=int, default=1, help="reject videos with fewer decoded frames")
    ap.add_argument("--workers", type=int, default=None, help="worker processes (default: CPU count)")
    ap.add_argument(
        "--timeout",
        type=float,
        default=1800.0,
        help="seconds one file may take (probe or transcode) before it is rejected as hung (0 = no limit)",
    )
    ap.add_argument(
        "--stop-after", type=int, default=None, help="process at most N files, then stop as if interrupted"
    )
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    ap.add_argument(
        "--shard",
        type=shards.parse_shard,
        metavar="I/N",
        help="only shard I of N (by a hash of each path) and a part.json; join the parts with "
        "`python -m fastcvrl.prepare --merge OUT PART_DIR...`",
    )
    a = ap.parse_args(argv)
    opts = (
        Transcode(a.transcode, a.short_side, a.gop, a.quality, a.bframes, a.allow_upscale)
        if a.transcode
        else None
    )
    try:
        summary = prepare(
            a.src,
            a.out,
            a.format,
            a.videos,
            a.subset,
            a.split_id,
            a.classes,
            opts,
            a.min_frames,
            a.workers,
            a.stop_after,
            timeout=a.timeout,
            quiet=a.quiet,
            shard=a.shard,
        )
    except PrepareError as e:
        print(f"error: {escaped_name(str(e))}", file=sys.stderr)
        return 2
    except StorageError as e:
        print(f"error: {escaped_name(str(e))}", file=sys.stderr)
        return StorageError.exit_code
    except KeyboardInterrupt:
        return 130
    if not summary.complete:
        return 3
    return 0 if summary.usable or a.shard else 1  # a shard without usable videos is still a finished part


if __name__ == "__main__":
    sys.exit(main())
