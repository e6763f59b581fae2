"""What a user sees: the progress line, TensorBoard scalars, and the run's environment record (env.json).

Only rank 0 logs. The progress line is a tqdm bar on a terminal and one plain line per report otherwise
(log files stay readable); both show epoch, step, loss, contrastive accuracy, lr, clips/s, the fraction of
time spent waiting for data, and the ETA.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TextIO

import torch
from tqdm import tqdm

from dali_pipelines.cores import usable_cores
from fastcvrl.atomic import atomic_write

REPO_ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Report:
    """One logging window's numbers (means over the window)."""

    epoch: int
    epochs: int
    step: int
    total_steps: int
    loss: float
    acc: float
    lr: float
    clips_per_s: float
    data_wait: float  # fraction of the window's wall time spent waiting for the next batch
    eta_s: float


def format_eta(seconds: float) -> str:
    seconds = max(int(seconds), 0)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


def format_report(r: Report) -> str:
    return (
        f"ep {r.epoch + 1}/{r.epochs} step {r.step}/{r.total_steps} loss {r.loss:.4f} acc {r.acc:.3f} "
        f"lr {r.lr:.3g} {r.clips_per_s:.0f} clips/s wait {100 * r.data_wait:.0f}% eta {format_eta(r.eta_s)}"
    )


class Progress:
    """A tqdm bar when ``stream`` is a terminal, else one printed line per ``update``."""

    def __init__(
        self, total_steps: int, start_step: int = 0, stream: TextIO | None = None, enabled: bool = True
    ) -> None:
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.bar = None
        if enabled and self.stream.isatty():
            # the width from shutil (which falls back where the terminal reports 0 columns); the bar comes
            # last so that a narrow terminal cuts the bar, not the numbers
            self.bar = tqdm(
                total=total_steps,
                initial=start_step,
                file=self.stream,
                ncols=shutil.get_terminal_size((100, 20)).columns,
                bar_format="{desc} {bar:10}",
                leave=True,
            )
        self.step = start_step

    def update(self, r: Report) -> None:
        if not self.enabled:
            return
        line = format_report(r)
        if self.bar is not None:
            self.bar.update(r.step - self.step)
            self.bar.set_description_str(line, refresh=True)
        else:
            print(line, file=self.stream, flush=True)
        self.step = r.step

    def write(self, msg: str) -> None:
        """A message that does not break the bar."""
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(msg, file=self.stream)
        else:
            print(msg, file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class Board:
    """TensorBoard scalars under ``<run>/tb``: the progress line's numbers plus GPU memory."""

    def __init__(self, run_dir: str | os.PathLike, enabled: bool = True) -> None:
        self.writer = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(Path(run_dir) / "tb"))

    def log(self, r: Report, device: torch.device) -> None:
        if self.writer is None:
            return
        w, s = self.writer, r.step
        w.add_scalar("train/loss", r.loss, s)
        w.add_scalar("train/contrastive_acc", r.acc, s)
        w.add_scalar("train/lr", r.lr, s)
        w.add_scalar("train/clips_per_s", r.clips_per_s, s)
        w.add_scalar("train/data_wait_fraction", r.data_wait, s)
        w.add_scalar("train/epoch", r.epoch, s)
        if device.type == "cuda":
            w.add_scalar("gpu/memory_allocated_gib", torch.cuda.memory_allocated(device) / 2**30, s)
            w.add_scalar("gpu/max_memory_allocated_gib", torch.cuda.max_memory_allocated(device) / 2**30, s)
            w.add_scalar("gpu/memory_reserved_gib", torch.cuda.memory_reserved(device) / 2**30, s)

    def scalars(self, values: dict[str, float], step: int) -> None:
        if self.writer is not None:
            for k, v in values.items():
                self.writer.add_scalar(k, v, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _version(dist_name: str) -> str | None:
    try:
        return metadata.version(dist_name)
    except metadata.PackageNotFoundError:
        return None


def _dali_version() -> str | None:
    """The installed DALI wheel's version (any CUDA flavour), without importing DALI."""
    for d in metadata.distributions():
        name = (d.metadata["Name"] or "").lower()
        if name.startswith("nvidia-dali"):
            return d.version
    return None


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_commit(repo: Path = REPO_ROOT) -> dict:
    """The source's git commit and whether the tree had local changes; both None outside a git checkout
    (an installed package, a copied tree) or without git: the record never requires one."""
    try:
        commit = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = (
            subprocess.run(
                ["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                capture_output=True,
                text=True,
                timeout=10,
                check=True,
            ).stdout.strip()
            != ""
        )
        return {"commit": commit or None, "dirty": dirty if commit else None}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def environment(world_size: int = 1, device: torch.device | None = None) -> dict:
    """The one environment record (the trainer's env.json, evaluation, every benchmark's JSON): versions,
    devices, CPU and load, and the source commit; what is needed to reproduce or compare a result."""
    cuda = torch.cuda.is_available()
    git = git_commit()
    return {
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "host": socket.gethostname(),
        "argv": sys.argv,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cores": usable_cores(),  # usable by this process (affinity)
        "cpu_count": os.cpu_count(),
        "loadavg_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "torch_threads": torch.get_num_threads(),
        "fastcvrl": _version("fastcvrl"),
        "torch": torch.__version__,
        "dali": _dali_version(),
        "numpy": _version("numpy"),
        "av": _version("av"),
        "tensorboard": _version("tensorboard"),
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "nccl": ".".join(map(str, torch.cuda.nccl.version())) if cuda else None,
        "gpu": torch.cuda.get_device_name(device if device is not None and device.type == "cuda" else 0)
        if cuda
        else None,
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else [],
        "device": str(device) if device is not None else None,
        "world_size": world_size,
        "git_commit": git["commit"],  # None outside a git checkout
        "git_dirty": git["dirty"],
    }


def write_env(run_dir: str | os.PathLike, world_size: int = 1, device: torch.device | None = None) -> Path:
    """``<run_dir>/env.json``: the environment record, written atomically."""
    return atomic_write(
        Path(run_dir) / "env.json", json.dumps(environment(world_size, device), indent=2) + "\n"
    )
