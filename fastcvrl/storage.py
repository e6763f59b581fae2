"""File-system faults told in one line, with exit code 4: the trainer's run folder and ``prepare``'s output
folder share this (a full disk, a file-size limit, no permission, a read-only or failing file system).

    except OSError as e:
        raise storage_error(e, "cannot write the checkpoint:") from None   # StorageError, exit_code 4
"""

from __future__ import annotations

import errno
import os

# Write errors that are the machine's, never the file's: the run stops (exit 4) and redoes the file next time.
WRITE_FAULTS = frozenset(
    {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO, errno.EROFS, errno.EACCES, errno.EPERM}
)


class StorageError(RuntimeError):
    """A file-system error (permission, read-only, full disk, I/O): the message names the path and what to
    do."""

    exit_code = 4


def storage_error(
    e: OSError,
    doing: str,
    after: str = "",
    setting: str = "train.out_dir",
    rerun: str = "it resumes from the last good checkpoint",
) -> StorageError:
    """One line from an ``OSError``: what failed on which path, the system's reason, and what to do.
    ``setting``: the option that moves the output elsewhere; ``rerun``: what running the command again
    does."""
    path = e.filename or "?"
    code = errno.errorcode.get(e.errno or 0, "")
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        todo = f"free space on the file system holding {path} (or set {setting} elsewhere)"
    elif e.errno == errno.EFBIG:
        todo = f"raise the file-size limit (ulimit -f) or the file system's, or set {setting} elsewhere"
    elif e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        where = path if os.path.isdir(path) else os.path.dirname(path) or path
        todo = f"make {where} writable (and readable) for this user, or set {setting} elsewhere"
    else:
        todo = f"check the disk and file system holding {path}"
    return StorageError(
        f"{doing} {path}: {e.strerror or e}{f' ({code})' if code else ''}. {after}"
        f"{todo}, then rerun the same command ({rerun})."
    )
