"""``python -m fastcvrl.prepare --audit MANIFEST``: will the GPU path decode this dataset at full speed?

Reads the manifest (codec and size per video) and, since the manifest does not record keyframes, demuxes
each file (no decoding) for its longest keyframe interval, its H.264 IDR pictures and sequence parameter set
(coded and display size, DPB frames, chroma format, bit depth) or its pixel format; then
applies ``dali_pipelines.nvdec``'s rules and prints per codec and size the number of files, NVDEC's verdict,
the coded size, the longest keyframe interval, and the totals with the ``prepare`` command that fixes what
is wrong. Exit status 0 when the GPU path would run at full speed, 1 when some files would decode slowly or
not at all, 2 when the manifest cannot be read.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor

from dali_pipelines import nvdec
from dali_pipelines.codecs import nvdec_min_size
from dali_pipelines.cores import resolve_num_threads, usable_cores
from dali_pipelines.manifest import ManifestError, read_manifest


def stream_facts(path: str) -> nvdec.StreamFacts | None:
    """What one file's packets say (keyframes, IDR pictures, H.264's sequence parameter set), None if the
    file cannot be read."""
    from fastcvrl.datasets.keyframes import keyframe_info

    try:
        info = keyframe_info(path)
    except Exception:  # a file the audit cannot read is counted, not fatal: the trainer's checks name it
        return None
    sps = info.sps
    return nvdec.StreamFacts(
        info.longest_interval,
        info.non_idr_keyframes,
        coded=sps.coded if sps else None,
        display=sps.display if sps else None,
        decoder=sps.decoder[2:] if sps else (info.pix_fmt,),
    )


def read_keyframes(paths: list[str], workers: int | None = None) -> dict[str, nvdec.StreamFacts]:
    """``stream_facts`` of every path that exists, in ``workers`` processes (default: the usable cores)."""
    todo = sorted({p for p in paths if os.path.isfile(p)})
    workers = max(1, min(workers or usable_cores(), len(todo)))
    if workers == 1:
        found = map(stream_facts, todo)
    else:
        with ProcessPoolExecutor(workers) as ex:
            found = list(ex.map(stream_facts, todo, chunksize=16))
    return {p: k for p, k in zip(todo, found) if k is not None}


def run_audit(
    manifest: str,
    threads: int | None = None,
    probe: bool = True,
    workers: int | None = None,
    log: Callable[[str], None] = print,
) -> int:
    """Print the audit of ``manifest`` for a GPU pipeline of ``threads`` decode threads (default: what
    ``data.num_threads: auto`` gives on a GPU here); returns the exit status (0 ok, 1 slow or refused, 2 the
    manifest is unreadable). ``probe``: demux the files for their keyframes (the manifest lacks them)."""
    try:
        entries = read_manifest(manifest, check_files=False)
    except (ManifestError, OSError, UnicodeDecodeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    threads = threads or resolve_num_threads("auto", "gpu")
    keyframes = read_keyframes([e.path for e in entries], workers) if probe else {}
    unread = len({e.path for e in entries} - set(keyframes)) if probe else 0
    groups = nvdec.audit(entries, keyframes, nvdec_min_size())  # the driver's minimums where a GPU answers
    report = nvdec.summarize(groups, threads, manifest)
    for line in nvdec.format_report(groups, report):
        log(line)
    if unread:
        log(f"note: {unread} file(s) could not be read for their keyframes (gop '?': none of the group read)")
    return 0 if report.ok else 1


def audit_main(argv: list[str]) -> int:
    """``prepare --audit MANIFEST [--threads N] [--workers N] [--no-probe]``."""
    ap = argparse.ArgumentParser(
        prog="python -m fastcvrl.prepare --audit", description=__doc__.split("\n\n")[0]
    )
    ap.add_argument("--audit", required=True, metavar="MANIFEST", help="the manifest.csv to check")
    ap.add_argument(
        "--threads", type=int, default=None, help="decode threads per pipeline (default: auto on a GPU)"
    )
    ap.add_argument("--workers", type=int, default=None, help="processes reading keyframes (default: cores)")
    ap.add_argument("--no-probe", action="store_true", help="the manifest only: no keyframe intervals")
    a = ap.parse_args(argv)
    if a.threads is not None and a.threads < 1:
        ap.error(f"--threads must be >= 1, got {a.threads}")
    return run_audit(a.audit, a.threads, probe=not a.no_probe, workers=a.workers)
