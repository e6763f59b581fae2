"""What a user sees: the progress line, TensorBoard scalars, the closing lines, and the run's environment
record (env.json).

Only rank 0 logs. The progress line is one tqdm bar for the whole run on a terminal, moving every step, and
otherwise (a log file, a pipe) a plain line every ``every_s`` seconds and at the last step, so that logs stay
readable; both show epoch, step, loss, contrastive accuracy, lr, clips/s, the fraction of time spent waiting
for data, and the ETA. ``closing_lines`` says where the results are and how to look at them.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
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
    """The run's progress on rank 0: a tqdm bar when ``stream`` is a terminal, else periodic lines.

    ``tick(step)`` after every step (no host sync: it only counts) moves the bar and its ETA, which counts
    down from the last report's; ``update(report)`` after every metric read refreshes the numbers, and
    without a terminal prints a line when ``every_s`` seconds have passed since the last one (always for the
    first report and the last step). ``first_loss``/``last_loss`` and ``elapsed`` are for the closing
    lines."""

    def __init__(
        self,
        total_steps: int,
        start_step: int = 0,
        stream: TextIO | None = None,
        enabled: bool = True,
        every_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.total, self.start, self.every_s, self.clock = total_steps, start_step, every_s, clock
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
        self.started = clock()
        self.last: Report | None = None  # the last report, and when it came
        self.last_at = self.started
        self.printed_at: float | None = None
        self.first_loss: float | None = None
        self.last_loss: float | None = None

    @property
    def elapsed(self) -> float:
        return self.clock() - self.started

    def tick(self, step: int) -> None:
        """Step ``step`` is done: the bar moves (tqdm redraws at most ten times a second)."""
        if self.bar is None or step <= self.step:
            return
        self.bar.set_description_str(self._live(step), refresh=False)
        self.bar.update(step - self.step)
        self.step = step

    def _live(self, step: int) -> str:
        """The bar's text at ``step``: the last report's numbers, this step, an ETA counted down from the last
        report's (before the first report: from the rate since the start)."""
        now = self.clock()
        if self.last is None:
            done = step - self.start
            eta = (self.total - step) * (now - self.started) / done if done > 0 else 0.0
            return f"step {step}/{self.total} eta {format_eta(eta)}"
        eta = max(self.last.eta_s - (now - self.last_at), 0.0) if step < self.total else 0.0
        return format_report(dataclasses.replace(self.last, step=step, eta_s=eta))

    def update(self, r: Report) -> None:
        if not self.enabled:
            return
        now = self.clock()
        self.first_loss = r.loss if self.first_loss is None else self.first_loss
        self.last_loss = r.loss
        self.last, self.last_at = r, now
        if self.bar is not None:
            self.bar.set_description_str(format_report(r), refresh=False)
            self.bar.update(r.step - self.step)
            self.bar.refresh()
        elif self.printed_at is None or now - self.printed_at >= self.every_s or r.step >= r.total_steps:
            print(format_report(r), file=self.stream, flush=True)
            self.printed_at = now
        self.step = max(self.step, r.step)

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


def closing_lines(
    run_dir: str | os.PathLike,
    step: int,
    backbone: str | os.PathLike | None,
    checkpoint: str | os.PathLike | None,
    progress: Progress | None = None,
    eval_command: str = "python -m fastcvrl.eval",
    manifests: tuple[str, str] | None = None,
) -> str:
    """The trainer's last lines: where the trained backbone, the newest checkpoint and the TensorBoard events
    are, and how to look at each (evaluate, load in Python, resume, ``tensorboard --logdir``).
    ``manifests``: a labelled (train, test) pair to put in the evaluation command, else placeholders."""
    run = Path(run_dir)
    head = f"done at step {step}"
    if progress is not None and progress.first_loss is not None:
        head += (
            f" in {format_eta(progress.elapsed)} (loss {progress.first_loss:.2f} -> {progress.last_loss:.2f})"
        )
    train_m, test_m = manifests or ("TRAIN.csv", "TEST.csv")
    lines = [f"{head}. Results in {run}:"]
    if backbone:
        lines += [
            f"  trained backbone  {backbone}",
            f"    evaluate it:    {eval_command} --checkpoint {backbone} --train-manifest {train_m} "
            f"--test-manifest {test_m}",
            f"    load it:        p = torch.load({str(backbone)!r}); "
            "m = fastcvrl.model.build_backbone(p['arch'], p['width']); m.load_state_dict(p['state_dict'])",
        ]
    if checkpoint:
        lines.append(
            f"  checkpoint        {checkpoint}  (the whole training state: rerun the command to resume)"
        )
    lines += [
        f"  TensorBoard       tensorboard --logdir {run / 'tb'}  (then open http://localhost:6006)",
        f"  config, env       {run / 'config.yaml'}, {run / 'env.json'}",
    ]
    return "\n".join(lines)


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
