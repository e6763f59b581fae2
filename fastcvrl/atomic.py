"""One way to write a file: whole or not at all, and durable once the call returns.

    atomic_write(path, b"bytes")                      # or a str (UTF-8)
    with atomic_open(path, "w", newline="") as f:     # a text (or "wb": binary) buffer, written on exit
        csv.writer(f).writerows(rows)

The content is built in memory, written to a temporary file beside ``path``, flushed, fsync'ed, renamed
over ``path`` (``os.replace`` is atomic on POSIX) and the folder is fsync'ed so the rename survives a crash.
A reader sees the old file or the new one, never a mix. Building in memory first means an error while
serialising (``torch.save``, ``csv``) happens before any byte reaches the disk, and a disk error (ENOSPC,
EACCES, EIO) surfaces as a plain ``OSError`` naming ``path`` (``torch.save`` writing straight to a full disk
reports "unexpected pos ..." instead).

Temporary names carry their writer: ``.<name>.tmp.<host>.<pid>``. A writer killed mid-write (SIGKILL,
power loss) leaves only such a file, never the final name; ``sweep`` removes those whose writer is dead
(same host, process gone), and every write sweeps its own target's leftovers, so a live writer's temporary
is never touched.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
import socket
from collections.abc import Iterator
from pathlib import Path

_TMP = ".tmp."
_MAX_NAME = 255  # bytes in a file name on ext4, xfs, btrfs, tmpfs


def host_tag() -> str:
    """This machine's name as it appears in temporary names (letters, digits, '-' only)."""
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:64] or "host"


def temp_path(path: str | os.PathLike, keep_suffix: bool = False, pid: int | None = None) -> Path:
    """The temporary file a write of ``path`` by this process (``pid``) uses: hidden, in the same folder (the
    rename into place is atomic), bounded in length: ``.<name>.tmp.<host>.<pid>``. ``keep_suffix``: the
    target's extension is repeated at the end (``.<name>.tmp.<host>.<pid>.mp4``), for writers such as
    encoders that pick the container format from it."""
    path = Path(path)
    ext = path.suffix if keep_suffix else ""
    suffix = f"{_TMP}{host_tag()}.{os.getpid() if pid is None else pid}{ext}"
    name = f".{path.name}{suffix}"
    if len(name.encode("utf-8", "surrogateescape")) > _MAX_NAME:  # a long name: keep the temporary short
        digest = hashlib.sha1(path.name.encode("utf-8", "surrogateescape")).hexdigest()[:16]
        name = f".{digest}{suffix}"
    return path.with_name(name)


def temp_writer(name: str) -> tuple[str, int] | None:
    """``(host, pid)`` of the writer of a temporary file name (``None`` for any other name), with or without
    the repeated extension of ``temp_path(..., keep_suffix=True)``; also reads the older
    ``<name>.tmp.<pid>`` form, taken as this host's."""
    i = name.rfind(_TMP)
    if i < 0:
        return None
    parts = name[i + len(_TMP) :].split(".")
    if len(parts) >= 2 and not parts[-1].isdigit() and parts[-2].isdigit():
        parts = parts[:-1]  # the repeated extension
    if not parts[-1].isdigit():
        return None
    return (".".join(parts[:-1]) or host_tag()), int(parts[-1])


def writer_alive(host: str, pid: int) -> bool:
    """Whether the writer of a temporary may still be running (another host's writer: assumed alive)."""
    if host != host_tag():
        return True
    if pid == os.getpid():
        return (
            False  # our pid on an old file: a previous process reused it (containers); we write nothing yet
        )
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        return True
    return True


def sweep(folder: str | os.PathLike, target: str | None = None, any_host: bool = False) -> list[Path]:
    """Delete the temporaries in ``folder`` (of ``target`` only, when given) whose writer is dead; with
    ``any_host`` also those of other hosts (for a caller that holds the folder's lock). Returns what went.
    Best effort: a folder that cannot be listed, or a file that cannot be removed, is left as it is."""
    removed: list[Path] = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for e in entries:
        who = temp_writer(e.name)
        if who is None or (target is not None and not e.name.startswith(f".{target}{_TMP}")):
            continue
        host, pid = who
        if (any_host and host != host_tag()) or not writer_alive(host, pid):
            with contextlib.suppress(OSError):
                os.unlink(e.path)
                removed.append(Path(e.path))
    return removed


def _write_all(fd: int, data: memoryview) -> None:
    """``os.write`` until all of ``data`` is on its way (the one place bytes go to the disk)."""
    while data:
        n = os.write(fd, data)
        data = data[n:]


def fsync_dir(folder: str | os.PathLike) -> None:
    """fsync a folder so that a rename in it is durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - file systems that refuse fsync on folders
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, data: bytes | bytearray | memoryview | str) -> Path:
    """Replace ``path`` with ``data`` (a str is written as UTF-8): temporary file, fsync, rename, folder
    fsync.

    An ``OSError`` names ``path`` (not the temporary) and leaves ``path`` as it was, with no temporary."""
    path = Path(path)
    if isinstance(data, str):
        data = data.encode("utf-8")
    sweep(path.parent, target=path.name)
    tmp = temp_path(path)
    fd = -1
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        _write_all(fd, memoryview(data).cast("B"))
        os.fsync(fd)
        os.close(fd)
        fd = -1
        os.replace(tmp, path)
    except BaseException as e:
        if fd >= 0:
            os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.errno is not None:
            raise OSError(e.errno, e.strerror, str(path)) from e
        raise
    fsync_dir(path.parent)
    return path


@contextlib.contextmanager
def atomic_open(
    path: str | os.PathLike, mode: str = "w", newline: str | None = None, encoding: str = "utf-8"
) -> Iterator[io.IOBase]:
    """A buffer (``"w"``: text, ``"wb"``: binary) whose content replaces ``path`` atomically when the block
    ends without an exception; nothing is written if it raises."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open: mode must be 'w' or 'wb', got {mode!r}")
    buf: io.IOBase = io.BytesIO() if mode == "wb" else io.StringIO(newline=newline)
    yield buf
    data = buf.getvalue()
    atomic_write(path, data.encode(encoding) if isinstance(data, str) else data)
