"""Checkpoints that survive anything: atomic writes, the last K kept, the newest loadable one found on restart.

A checkpoint is one ``torch.save`` file ``<run>/checkpoints/ckpt_<step>.pt``. It is written to a temporary
file in the same folder, flushed, fsync'ed and renamed over its final name (``os.replace`` is atomic on
POSIX), and the folder is fsync'ed so the rename itself survives a crash. A process killed mid-write
(SIGKILL, power loss) leaves only a ``*.tmp.*`` file, which never has a checkpoint's name and is removed on
the next start. On restart ``load_latest`` tries the newest checkpoint first and skips, with a warning, any
that cannot be read.
"""
from __future__ import annotations

import os
import random
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

CKPT_DIR = "checkpoints"
_NAME = re.compile(r"^ckpt_(\d+)\.pt$")


# ------------------------------------------------------------------------------------------- atomic files
def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to a temporary file beside ``path``, fsync, then rename: ``path`` is old or whole."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp.{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


# -------------------------------------------------------------------------------------------- checkpoints
def checkpoint_dir(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / CKPT_DIR


def list_checkpoints(run_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """``[(step, path), ...]`` of the finished checkpoints in ``run_dir``, oldest first."""
    folder = checkpoint_dir(run_dir)
    if not folder.is_dir():
        return []
    found = []
    for p in folder.iterdir():
        m = _NAME.match(p.name)
        if m and p.is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def remove_partial(run_dir: str | os.PathLike) -> list[Path]:
    """Delete temporary files left by a writer that was killed mid-write; returns what was removed."""
    folder = checkpoint_dir(run_dir)
    if not folder.is_dir():
        return []
    removed = []
    for p in folder.iterdir():
        if ".tmp." in p.name:
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def save_checkpoint(state: dict, run_dir: str | os.PathLike, step: int, keep: int = 3) -> Path:
    """Write ``state`` atomically as the checkpoint of ``step``, then delete all but the newest ``keep``."""
    path = atomic_torch_save(state, checkpoint_dir(run_dir) / f"ckpt_{step:09d}.pt")
    if keep > 0:
        for _, old in list_checkpoints(run_dir)[:-keep]:
            old.unlink(missing_ok=True)
    return path


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict:
    """Load one checkpoint (tensors only plus plain Python containers: ``weights_only=True``)."""
    state = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(state, dict) or "step" not in state:
        raise ValueError(f"{path}: not a fastcvrl checkpoint (no 'step')")
    return state


def load_latest(run_dir: str | os.PathLike, map_location: Any = "cpu") -> tuple[dict, Path] | None:
    """The newest checkpoint in ``run_dir`` that loads, or None; unreadable ones are skipped with a warning."""
    for _, path in reversed(list_checkpoints(run_dir)):
        try:
            return load_checkpoint(path, map_location), path
        except Exception as e:  # a truncated or corrupt file: fall back to the one before it
            warnings.warn(f"skipping unreadable checkpoint {path}: {type(e).__name__}: {e}", stacklevel=2)
    return None


# -------------------------------------------------------------------------------------------- RNG states
def rng_state() -> dict:
    """The random generators' states: Python, NumPy, torch CPU and (where present) every CUDA device."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        # NumPy's key array stored as a tensor so that the file loads with weights_only=True
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what ``rng_state`` returned (CUDA states only where the device count matches)."""
    random.setstate(_to_tuple(state["python"]))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), int(pos), int(has_gauss), float(cached)))
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def _to_tuple(x: Any) -> Any:
    """``random.setstate`` wants tuples all the way down; a round trip through a file may give lists."""
    return tuple(_to_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x
