"""The run folder (``train.out_dir``): one trainer at a time, resumed only under the config it was trained
with, and file-system failures told in one line.

    folder = RunFolder.open(out_dir)          # creates it, takes its lock (refuses a second trainer)
    folder.check_resume(found, cfg, ...)      # refuses a changed config, a finished run without checkpoints
    folder.start(cfg, env, changes)           # config.yaml, env.json, config_changes.yaml; sweeps temporaries

The lock is ``fcntl.flock`` on ``<run>/train.lock``, held for the process's life and released by the OS when
the process dies (SIGKILL included); the file names the holder (pid, host, start time) for the refusal
message. It is advisory: it binds fastcvrl trainers, not other programs.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml

from fastcvrl import checkpoint as ckpt
from fastcvrl import dist
from fastcvrl.atomic import atomic_write, sweep, temp_path
from fastcvrl.config import Config, save_config, to_dict
from fastcvrl.logger import write_env

LOCK_NAME = "train.lock"
CHANGES_NAME = "config_changes.yaml"
BACKBONE_NAME = "backbone.pt"
T = TypeVar("T")


class RunFolderError(RuntimeError):
    """The run folder's state forbids this run (in use, a changed config, a finished run): nothing written."""

    exit_code = 2


class StorageError(RuntimeError):
    """A file-system error (permission, read-only, full disk, I/O): the message names the path and what to
    do."""

    exit_code = 4


class PeerFailed(RuntimeError):
    """Another rank failed; its own message is printed by the lowest failing rank."""

    exit_code = 1


def storage_error(e: OSError, doing: str, after: str = "") -> StorageError:
    """One line from an ``OSError``: what failed on which path, the system's reason, and what to do."""
    path = e.filename or "?"
    code = errno.errorcode.get(e.errno or 0, "")
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        todo = f"free space on the file system holding {path} (or set train.out_dir elsewhere)"
    elif e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        where = path if os.path.isdir(path) else os.path.dirname(path) or path
        todo = f"make {where} writable (and readable) for this user, or set train.out_dir elsewhere"
    else:
        todo = f"check the disk and file system holding {path}"
    return StorageError(
        f"{doing} {path}: {e.strerror or e}{f' ({code})' if code else ''}. {after}"
        f"{todo}, then rerun the same command (it resumes from the last good checkpoint)."
    )


def agreed(fn: Callable[[], T], rank0_only: bool = False) -> T | None:
    """Run ``fn`` (on rank 0 only, or on every rank) and agree across ranks on failure: every rank raises
    if any rank failed, so no rank waits forever at the next collective. Single process: just ``fn()``."""
    err: BaseException | None = None
    result = None
    if not rank0_only or dist.is_main():
        try:
            result = fn()
        except Exception as e:  # re-raised below, on this rank, after the others know
            err = e
    if dist.world_size() == 1:
        if err is not None:
            raise err
        return result
    failed = [i for i, f in enumerate(dist.gather_objects(err is not None)) if f]
    if not failed:
        return result
    if err is None:
        err = PeerFailed(f"rank {failed[0]} failed (see its message)")
    err.quiet = _rank() != failed[0]  # the lowest failing rank prints its message; the others exit quietly
    raise err


def _rank() -> int:
    return int(os.environ.get("RANK", 0))


def _holder(path: Path) -> str:
    """Who holds the lock, from the lock file: pid, host and start time (and whether that pid is gone)."""
    try:
        text = path.read_text(encoding="utf-8").split()
    except OSError:
        text = []
    if len(text) < 2 or not text[0].isdigit():
        return "a process that has not written its pid yet"
    who = f"pid {text[0]} on host {text[1]}" + (f", since {text[2]}" if len(text) > 2 else "")
    if text[1] == socket.gethostname():
        try:
            os.kill(int(text[0]), 0)
        except (
            ProcessLookupError
        ):  # a process forked by it (a data worker) inherited the lock and outlived it
            who += f"; that process has ended but a child of it still holds the lock: `fuser {path}` names it"
        except PermissionError:
            pass
    return who


@dataclass
class RunFolder:
    path: Path
    _lock_fd: int = -1

    # ---------------------------------------------------------------------------------------------- lock
    @classmethod
    def open(cls, out_dir: str | os.PathLike, lock: bool = True) -> RunFolder:
        """Create the folder and take its lock; ``RunFolderError`` naming the holder's pid and host if another
        trainer has it, ``StorageError`` if the folder cannot be created or written."""
        path = Path(out_dir).expanduser().absolute()
        folder = cls(path)
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise storage_error(e, "cannot create the run folder (train.out_dir)") from None
        if lock:
            folder._lock()
        return folder

    def _lock(self) -> None:
        lock_path = self.path / LOCK_NAME
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise storage_error(e, "cannot create the run folder's lock file") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RunFolderError(
                f"{self.path} is in use by another trainer ({_holder(lock_path)}; lock file "
                f"{lock_path}): wait for it to end or stop it, or set another train.out_dir"
            ) from None
        except OSError as e:
            os.close(fd)
            raise storage_error(e, "cannot lock the run folder's lock file") from None
        try:
            os.ftruncate(fd, 0)
            os.pwrite(
                fd,
                f"{os.getpid()} {socket.gethostname()} {time.strftime('%Y-%m-%dT%H:%M:%S%z')}\n".encode(),
                0,
            )
        except OSError as e:
            os.close(fd)
            raise storage_error(e, "cannot write the run folder's lock file") from None
        self._lock_fd = fd

    def release(self) -> None:
        """Give up the lock (the OS does the same when the process ends, however it ends)."""
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1

    # --------------------------------------------------------------------------------------------- state
    @property
    def backbone(self) -> Path:
        return self.path / BACKBONE_NAME

    def latest_checkpoint(self, map_location: Any = "cpu") -> tuple[dict, Path] | None:
        """The newest checkpoint that passes the integrity check (corrupt ones skipped with a warning
        printed); ``StorageError`` if the checkpoints cannot be listed or read."""
        import warnings

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                found = ckpt.load_latest(self.path, map_location=map_location, required=ckpt.TRAINING_KEYS)
            except ckpt.CheckpointAccessError as e:
                raise storage_error(
                    e,
                    "cannot read the checkpoints:",
                    "Nothing was changed (a checkpoint that cannot be read is not taken for missing). ",
                ) from None
        for w in caught:
            dist.print0(f"warning: {w.message}")
        return found

    def check_resume(
        self, found: tuple[dict, Path] | None, cfg: Config, steps_per_epoch: int, allow_changes: bool
    ) -> dict[str, tuple[Any, Any]]:
        """The rules for continuing in this folder, checked before anything is written. Returns the changes
        that ``allow_changes`` accepted (``{key: (old, new)}``); raises ``RunFolderError`` when:
        - the folder holds a finished run's ``backbone.pt`` but no loadable checkpoint (it would restart at
          step 0 and overwrite that backbone);
        - the checkpoint was trained under a config that differs in a key that changes the run (or saw another
          number of steps per epoch: the data changed) and ``allow_changes`` is off."""
        if found is None:
            if self.backbone.is_file():
                raise RunFolderError(
                    f"{self.path} holds a finished run ({BACKBONE_NAME}) but no loadable checkpoint in "
                    f"{ckpt.CKPT_DIR}/ to resume from; it is not restarted from step 0 over it. Use another "
                    f"train.out_dir for a new run, or move {self.backbone} away to train here from scratch"
                )
            return {}
        state, path = found
        changes = ckpt.run_changes(state["config"], to_dict(cfg))
        old_spe = state.get("steps_per_epoch")
        if old_spe is not None and old_spe != steps_per_epoch:
            changes["steps_per_epoch (the data or its length)"] = (old_spe, steps_per_epoch)
        if changes and not allow_changes:
            listed = "; ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in changes.items())
            raise RunFolderError(
                f"{path} (step {state['step']}) was trained under another config: {listed}. Rerun with the "
                "checkpoint's values, set another train.out_dir for a new run, or add --resume-with-changes "
                "to "
                f"continue under the new values (recorded in {self.path / CHANGES_NAME})"
            )
        return changes

    def finished(self, step: int, end_step: int) -> bool:
        """A run resumed at ``step`` that reached ``end_step`` and exported its backbone: nothing to do, and
        nothing to rewrite (a run killed between its last checkpoint and the export is not finished)."""
        return step >= end_step and self.backbone.is_file()

    # ----------------------------------------------------------------------------------------- writing
    def start(
        self, cfg: Config, world_size: int, device, changes: dict[str, tuple[Any, Any]], step: int
    ) -> None:
        """Rank 0, once the checks passed: the resolved config, the environment record, the accepted changes
        appended to ``config_changes.yaml``, the checkpoint folder made (and checked writable) and the
        temporaries of dead writers removed. ``StorageError`` naming the path on any file-system error."""
        try:
            folder = ckpt.checkpoint_dir(self.path)
            folder.mkdir(exist_ok=True)
            probe = temp_path(folder / "write-test")  # a temporary's name: swept if we die right here
            try:  # a read-only checkpoints/ fails now, not after the first train.ckpt_every steps
                os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644))
                os.unlink(probe)
            except OSError as e:
                raise OSError(e.errno, e.strerror, str(folder)) from e
            for p in [*ckpt.remove_partial(self.path), *sweep(self.path)]:
                print(f"removed an unfinished write of a stopped process: {p}", flush=True)
            if changes:
                self.record_changes(changes, step)
            save_config(cfg, self.path / "config.yaml")
            write_env(self.path, world_size, device)
        except OSError as e:
            raise storage_error(e, "cannot write to the run folder:") from None

    def record_changes(self, changes: dict[str, tuple[Any, Any]], step: int) -> Path:
        """Append one YAML document (time, step, ``key: {old, new}``) to ``config_changes.yaml``."""
        path = self.path / CHANGES_NAME
        old = path.read_text(encoding="utf-8") if path.is_file() else ""
        doc = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "resumed_at_step": step,
            "changes": {k: {"old": o, "new": n} for k, (o, n) in changes.items()},
        }
        text = yaml.safe_dump(doc, sort_keys=False, explicit_start=True)
        return atomic_write(path, old + text)
