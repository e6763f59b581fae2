"""Checkpoints and the training state: what is saved, how it is written, and the rules for resuming.

A checkpoint is one ``torch.save`` file ``<run>/checkpoints/ckpt_<step>.pt`` holding everything needed to
continue exactly (weights, optimizer, scaler, schedule, data position, every rank's RNG) and the config it
was trained under. It is serialised in memory and written with ``fastcvrl.atomic`` (temporary file, fsync,
rename, folder fsync): a process killed mid-write leaves a temporary, never a partial checkpoint.

Corruption and errors are told apart. Only a failed integrity check (empty file, bytes that do not unpickle,
missing keys) makes a checkpoint *corrupt*: it is skipped with a warning and the one before it is used. A
permission or I/O error while listing or reading is not corruption: it raises ``CheckpointAccessError`` and
the run stops, so a good checkpoint is never taken for missing. Rotation keeps the newest ``keep`` by step
and never deletes the checkpoint just written.
"""

from __future__ import annotations

import dataclasses
import io
import os
import random
import re
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fastcvrl.atomic import atomic_write, sweep

CKPT_DIR = "checkpoints"
_NAME = re.compile(r"^ckpt_(\d+)\.pt$")
# what the trainer's checkpoints hold; a file without one of these is corrupt
TRAINING_KEYS = ("step", "epoch", "batch", "model", "optimizer", "schedule", "rng", "config")


class CorruptCheckpoint(ValueError):
    """A checkpoint failed its integrity check (empty, not unpicklable, or missing keys)."""


class CheckpointAccessError(OSError):
    """The checkpoints could not be listed or read (permission, I/O): not corruption, the run must stop."""


# ------------------------------------------------------------------------------------------- atomic files
def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` into memory, then ``atomic_write``: ``path`` is old or whole; an ``OSError`` (a full
    disk, a read-only folder) names ``path`` and leaves no temporary behind."""
    path = Path(path)
    buf = io.BytesIO()
    torch.save(obj, buf)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(path, buf.getbuffer())


# -------------------------------------------------------------------------------------------- checkpoints
def checkpoint_dir(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / CKPT_DIR


def list_checkpoints(run_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """``[(step, path), ...]`` of the finished checkpoints in ``run_dir``, oldest first; [] without the
    folder.

    Raises ``CheckpointAccessError`` when the folder exists but cannot be read."""
    folder = checkpoint_dir(run_dir)
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return []
    except OSError as e:
        raise CheckpointAccessError(e.errno, f"cannot list the checkpoints: {e.strerror}", str(folder)) from e
    found = []
    for entry in entries:
        m = _NAME.match(entry.name)
        if m and entry.is_file():
            found.append((int(m.group(1)), Path(entry.path)))
    return sorted(found)


def remove_partial(run_dir: str | os.PathLike, any_host: bool = False) -> list[Path]:
    """Delete temporaries left in ``checkpoints/`` by a writer that was killed mid-write (never those of a
    live writer; ``any_host``: other hosts' too, for the holder of the run folder's lock)."""
    return sweep(checkpoint_dir(run_dir), any_host=any_host)


def save_checkpoint(state: dict, run_dir: str | os.PathLike, step: int, keep: int = 3) -> Path:
    """Write ``state`` atomically as the checkpoint of ``step``, then delete older ones beyond the newest
    ``keep`` (the one just written always stays; later steps, left by an abandoned run, are not touched)."""
    path = atomic_torch_save(state, checkpoint_dir(run_dir) / f"ckpt_{step:09d}.pt")
    if keep > 0:
        older = [p for s, p in list_checkpoints(run_dir) if s < step]
        for old in older[: max(len(older) - (keep - 1), 0)]:
            old.unlink(missing_ok=True)
    return path


def load_checkpoint(
    path: str | os.PathLike, map_location: Any = "cpu", required: Iterable[str] = ("step",)
) -> dict:
    """Load one checkpoint (tensors and plain containers only: ``weights_only=True``).

    Raises ``CheckpointAccessError`` if the file cannot be read (permission, I/O) and ``CorruptCheckpoint``
    if what was read fails the integrity check: empty, does not unpickle, or lacks one of ``required``."""
    path = Path(path)
    try:
        data = path.read_bytes()  # read first: an OSError here is an access error, never corruption
    except OSError as e:
        raise CheckpointAccessError(e.errno, f"cannot read the checkpoint: {e.strerror}", str(path)) from e
    if not data:
        raise CorruptCheckpoint(f"{path}: empty file")
    try:
        state = torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except Exception as e:  # in memory: any failure is the bytes' fault
        why = str(e).split(". ")[0][:160]  # torch's first sentence (not its advice to load untrusted pickles)
        raise CorruptCheckpoint(f"{path}: does not unpickle ({type(e).__name__}: {why})") from None
    if not isinstance(state, dict):
        raise CorruptCheckpoint(f"{path}: not a fastcvrl checkpoint (a {type(state).__name__})")
    missing = [k for k in required if k not in state]
    if missing:
        raise CorruptCheckpoint(f"{path}: not a fastcvrl checkpoint (no {', '.join(map(repr, missing))})")
    return state


def load_latest(
    run_dir: str | os.PathLike, map_location: Any = "cpu", required: Iterable[str] = ("step",)
) -> tuple[dict, Path] | None:
    """The newest checkpoint in ``run_dir`` that passes the integrity check, or None; corrupt ones are skipped
    with a warning. An access error (``CheckpointAccessError``) is raised, not skipped."""
    required = tuple(required)
    for _, path in reversed(list_checkpoints(run_dir)):
        try:
            return load_checkpoint(path, map_location, required), path
        except CorruptCheckpoint as e:  # a truncated or damaged file: fall back to the one before it
            warnings.warn(f"skipping corrupt checkpoint {e}", stacklevel=2)
    return None


# ---------------------------------------------------------------------------------------- training state
@dataclasses.dataclass
class Position:
    step: int = 0  # optimizer steps done
    epoch: int = 0  # data epoch of the next batch
    batch: int = 0  # batches of that epoch already consumed


def training_state(
    pos: Position,
    model: torch.nn.Module,
    optimizer,
    schedule,
    scaler,
    config: dict,
    rngs: list[dict],
    steps_per_epoch: int,
) -> dict:
    """Everything needed to continue exactly: weights, optimizer, scaler, schedule, position, every rank's RNG
    (``rngs``, in rank order), the config it was trained under and the epoch length it saw."""
    return {
        "step": pos.step,
        "epoch": pos.epoch,
        "batch": pos.batch,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "schedule": schedule.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "rng": rngs,
        "world_size": len(rngs),
        "config": config,
        "steps_per_epoch": steps_per_epoch,
    }


def restore(
    state: dict,
    model: torch.nn.Module,
    optimizer,
    schedule,
    scaler,
    rank: int,
    world_size: int,
    steps_per_epoch: int,
) -> Position:
    """Load ``state`` into the live objects; the position to continue from (normalised to the epoch
    length)."""
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    schedule.load_state_dict(state["schedule"])
    if scaler is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    rngs = state.get("rng") or []
    if len(rngs) == world_size:
        set_rng_state(rngs[rank])
    pos = Position(state["step"], state["epoch"], state["batch"])
    if (
        pos.batch >= steps_per_epoch
    ):  # saved at an epoch's end (or, with --resume-with-changes, a shorter epoch)
        pos = Position(pos.step, pos.epoch + pos.batch // steps_per_epoch, pos.batch % steps_per_epoch)
    return pos


# ------------------------------------------------------------------------------------------ resume rules
# Keys that may differ between a checkpoint and the command resuming it: where and how often things are
# written or logged, how fast the same computation runs, when to stop early, and the evaluation settings.
# Every other key (model, data, batch, loss, optimizer, schedule, seed, precision) changes the run.
FREE_KEYS = frozenset(
    {
        "train.out_dir",
        "train.max_steps",
        "train.log_every",
        "train.ckpt_every",
        "train.keep_ckpts",
        "train.knn_every",
        "train.profile_steps",
        "train.cuda_graph",
        "train.cuda_graph_warmup",
        "train.channels_last",
        "data.device",
        "data.augment",
        "data.num_threads",
        "data.prefetch",
        "data.skip_corrupt",
        "data.val_manifest",
        "model.activation_checkpointing",  # the same step recomputed (tests/test_activation_checkpointing.py)
    }
)
FREE_SECTIONS = ("eval.",)


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = list(v) if isinstance(v, tuple) else v
    return out


def run_changes(saved: dict, current: dict) -> dict[str, tuple[Any, Any]]:
    """``{key: (old, new)}`` for the keys that change the run and differ between the config a checkpoint was
    trained under (``saved``) and ``current`` (both as ``config.to_dict`` gives them). A key the checkpoint
    does not know (added since) is not compared."""
    old, new = _flatten(saved), _flatten(current)
    return {
        k: (old[k], new[k])
        for k in sorted(new)
        if k in old and old[k] != new[k] and k not in FREE_KEYS and not k.startswith(FREE_SECTIONS)
    }


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
