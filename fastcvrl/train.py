"""CVRL pretraining: ``torchrun --nproc_per_node=N fastcvrl/train.py --config fastcvrl/configs/X.yaml
[--key=value ...]``.

The same with plain ``python`` runs one process. Without ``--config`` it runs the built-in default: the
synthetic motion dataset (generated once, cached) and a small R3D, on the GPU if there is one
(``fastcvrl/configs/synthetic_gpu.yaml``) else on the CPU (``fastcvrl/configs/synthetic_cpu.yaml``).

Also ``python -m fastcvrl.train ...``. Run folder (``train.out_dir``, ``fastcvrl.runfolder``): ``config.yaml``
(resolved), ``env.json``, ``tb/`` (TensorBoard), ``checkpoints/`` (atomic, last ``train.keep_ckpts``),
``backbone.pt`` (the trained backbone on its own), ``train.lock`` (one trainer at a time) and, after
``--resume-with-changes``, ``config_changes.yaml``. Restarted in the same folder a run resumes from its newest
loadable checkpoint if the config agrees with it; SIGTERM checkpoints and exits.

The steps, each in its own module: config (``resolve_config``) -> data check (``resolve_data``) -> run folder
lock -> model, loader, optimizer (``build_run``) -> resume rules and state (``fastcvrl.checkpoint``) -> the
loop (``train``) -> backbone export.

Profiling steps 50..59 (after the CUDA-graph capture; NVTX ranges: data, forward, backward, optimizer)::

    nsys profile --capture-range=cudaProfilerApi --capture-range-end=stop --trace=cuda,nvtx,cudnn,cublas,osrt
    \
        --cuda-graph-trace=node -o cvrl_steps50-60 python fastcvrl/train.py --config C.yaml --profile-steps
        50:60
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

_HERE = Path(__file__).resolve().parent
# run as a script: keep fastcvrl/*.py unimportable as top-level modules
if sys.path and Path(sys.path[0] or ".").resolve() == _HERE:
    sys.path.pop(0)
try:
    import fastcvrl  # noqa: F401  (installed, or run from the repo root)
except ImportError:  # pragma: no cover - a checkout that was not pip-installed
    sys.path.insert(0, str(_HERE.parent))

import torch
from torch import nn

from dali_pipelines.codecs import UndecodableError
from dali_pipelines.manifest import ManifestError, read_manifest
from dali_pipelines.normalize import Normalize
from fastcvrl import checkpoint as ckpt
from fastcvrl import dist, preflight, resolve
from fastcvrl.commands import HelpFormatter, prog, sibling
from fastcvrl.config import (
    Config,
    ConfigError,
    add_config_flags,
    config_help,
    config_yaml,
    load_config,
    to_dict,
)
from fastcvrl.datasets.synthetic import ensure_synthetic
from fastcvrl.faults import OOM_EXIT, out_of_memory_message, skipped_summary
from fastcvrl.logger import Board, Progress, Report, closing_lines
from fastcvrl.model import build_model
from fastcvrl.optim import build_optimizer
from fastcvrl.precision import input_dtype, train_precision
from fastcvrl.runfolder import PeerFailed, RunFolder, RunFolderError, StorageError, agreed
from fastcvrl.schedule import WarmupCosine
from fastcvrl.schema import scaled_lr, steps_range
from fastcvrl.step import Metrics, TrainStep, build_step, nvtx_range, side_stream, synthetic_views, warm_up


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or infinite; the run stops and keeps its last good checkpoint."""


# ------------------------------------------------------------------------------------------ configuration
def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    ap = argparse.ArgumentParser(
        prog=prog("fastcvrl-train", "fastcvrl.train"),
        description="CVRL video pretraining",
        formatter_class=HelpFormatter,
        epilog="Any config key can be overridden: --optim.lr=0.32 --train.epochs=200 "
        "(--help-config lists them all)",
    )
    ap.add_argument(
        "--config",
        default=None,
        help="YAML file or shipped config name, e.g. cvrl_r3d50_k400 (default: the built-in synthetic_gpu "
        "with a GPU, else synthetic_cpu)",
    )
    ap.add_argument(
        "--profile-steps",
        default=None,
        metavar="A:B",
        help="start the CUDA profiler at step A, stop it before step B (nsys cudaProfilerApi)",
    )
    add_config_flags(ap)
    ap.add_argument(
        "--resume-with-changes",
        action="store_true",
        help="resume even though keys that change the run (model, data, batch, optimizer, schedule) "
        "differ from the checkpoint's config; the change is appended to config_changes.yaml",
    )
    args, overrides = ap.parse_known_args(argv)
    if args.help_config:  # the keys, with the values of the config this command line would run
        print(config_help(args.config or default_config_path(), overrides))
        raise SystemExit(0)
    return args, overrides


def default_config_path() -> Path:
    """The built-in default: the synthetic dataset with a small model, sized for the device at hand."""
    return resolve.default_config_path()  # package data: works from a wheel, in any folder


def resolve_config(args: argparse.Namespace, overrides: list[str], device: torch.device) -> Config:
    """Load and override (the loader checks every value), fill ``auto`` values for this device, and check what
    depends on this process's environment."""
    if args.profile_steps is not None:
        overrides = [*overrides, f"--train.profile_steps={args.profile_steps}"]
    cfg = load_config(args.config or default_config_path(), overrides)
    cfg.train.precision = train_precision(cfg.train.precision, device)
    check_config(cfg)
    return cfg


def check_config(cfg: Config) -> None:
    """What the config loader cannot know (it checks every value and relation): the device, the number of
    processes, and whether the built-in dataset this run would generate holds one batch. Each names its
    key."""
    t, d = cfg.train, cfg.data
    world = int(os.environ.get("WORLD_SIZE", 1))
    if t.batch_size % world:
        raise ConfigError(
            f"train.batch_size: {t.batch_size} is not divisible by the {world} processes; "
            + lower_batch_to(t.batch_size, world)
        )
    videos = d.synthetic_classes * d.synthetic_videos_per_class
    if d.source == "video" and not d.train_manifest and t.batch_size > videos:
        raise ConfigError(
            f"train.batch_size: {t.batch_size} is more than the {videos} training videos of the "
            "built-in dataset (data.synthetic_classes x data.synthetic_videos_per_class); "
            + lower_batch_to(videos, world)
            + " or raise those"
        )


def lower_batch_to(limit: int, world: int) -> str:
    """The hint of a batch-size error: the largest global batch that is at most ``limit`` (the videos there
    are, or the batch asked for) and divisible by the ``world`` processes."""
    best = limit // world * world
    procs = f"{world} process{'es' if world > 1 else ''}"
    if best == 0:
        return f"no global batch fits: {limit} video(s) for {procs} (each needs one); use fewer processes"
    return f"the largest train.batch_size that works with {procs} is {best} (--train.batch_size={best})"


def resolve_data(cfg: Config, env: dist.DistEnv) -> str:
    """The training manifest, checked (every file exists) before any work; the synthetic one by default."""
    if cfg.data.source == "random":
        return ""
    if not cfg.data.train_manifest:
        preflight.data_device(cfg.data.device)  # CUDA, before generating a synthetic set for a missing device
        d = cfg.data
        dist.print0(
            f"no data.train_manifest: using the built-in synthetic dataset in {d.synthetic_dir} "
            "(generated once, then cached)"
        )
        # concurrent ranks serialise on ensure_synthetic's lock: one generates, the others reuse
        d.train_manifest, test_manifest = ensure_synthetic(
            os.path.expanduser(d.synthetic_dir),
            d.synthetic_classes,
            d.synthetic_videos_per_class,
            seed=0,
            scene=d.synthetic_scene,
            codec=d.synthetic_codec,
            size=d.synthetic_size,
            verbose=dist.is_main(),
        )
        d.val_manifest = d.val_manifest or test_manifest  # the kNN monitor's labelled split
    entries = read_manifest(cfg.data.train_manifest, check_files=True)
    if len(entries) < cfg.train.batch_size:
        raise ManifestError(
            f"{cfg.data.train_manifest}: {len(entries)} videos, fewer than one global batch "
            f"(train.batch_size={cfg.train.batch_size}); " + lower_batch_to(len(entries), env.world_size)
        )
    checked = [(cfg.data.train_manifest, entries)]
    if cfg.train.knn_every and cfg.data.val_manifest:
        # fail now, not at the first kNN epoch
        checked.append((cfg.data.val_manifest, read_manifest(cfg.data.val_manifest, check_files=True)))
    decoder = preflight.data_device(cfg.data.device, require_cuda=False)
    for path, listed in checked:  # before the CUDA check: the codec problem is the one to fix first
        for note in preflight.check_videos(listed, path, decoder, env.local_rank, cfg.data.num_threads):
            dist.print0(f"warning: {note}")
    preflight.data_device(cfg.data.device)  # CUDA for data.device=gpu
    return cfg.data.train_manifest


def make_knn_monitor(cfg: Config, manifest: str, model: nn.Module, env: dist.DistEnv):
    """``train.knn_every``: a callable giving the weighted kNN top-1/top-5 of the backbone (bank: the training
    manifest's videos, queries: ``data.val_manifest``, both capped; clips as ``cfg.eval``), every rank
    extracting its share; the stats on rank 0 (empty elsewhere); None when off."""
    if not (cfg.train.knn_every and manifest and cfg.data.val_manifest):
        if cfg.train.knn_every:
            dist.print0("train.knn_every is set but data.val_manifest is empty: the kNN monitor is off")
        return None
    from fastcvrl.eval.knn import EvalError, KnnMonitor

    try:
        monitor = KnnMonitor(cfg, manifest, cfg.data.val_manifest, env.device)  # checks both splits now
    except EvalError as e:
        raise ManifestError(str(e)) from None

    def run() -> dict[str, float]:
        stats = monitor(model.backbone)  # collective: every rank calls it
        return stats if env.rank == 0 else {}

    return run


# ------------------------------------------------------------------------------------------------ building
def seed_everything(seed: int) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_training_model(cfg: Config, env: dist.DistEnv, stream=None) -> tuple[nn.Module, nn.Module]:
    """(module to call, plain module to save): SyncBatchNorm where asked, channels_last_3d, DDP (built on
    ``stream``, the side stream the graphed step warms up and captures on, when it is graphed)."""
    model_cfg = cfg.model
    if model_cfg.sync_bn and env.world_size > 1 and env.device.type != "cuda":
        dist.print0("note: SyncBatchNorm needs CUDA; on CPU each rank normalises over its own batch")
        model_cfg = dataclasses.replace(model_cfg, sync_bn=False)
    model = build_model(model_cfg).to(env.device)
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last_3d)
    if not env.distributed:
        return model, model
    graphed = stream is not None
    ids = [env.device.index] if env.device.type == "cuda" else None
    # A CUDA graph needs DDP's static graph, built on the capture's side stream (PyTorch CUDA-graphs notes)
    with torch.cuda.stream(stream) if graphed else contextlib.nullcontext():
        ddp = dist.wrap_ddp(
            model,
            ids,
            static_graph=graphed,
            sync_buffers=not (model_cfg.sync_bn and env.device.type == "cuda"),
        )  # SyncBN: equal
    if graphed:
        torch.cuda.current_stream().wait_stream(stream)
    return ddp, model


def build_loader(cfg: Config, manifest: str, env: dist.DistEnv):
    """The per-rank pretraining loader (DALI over the manifest, or random tensors)."""
    if cfg.data.source == "random":
        from fastcvrl.random_clips import RandomClipLoader

        return RandomClipLoader(
            num_videos=cfg.data.random_videos,
            batch_size=cfg.train.batch_size,
            num_frames=cfg.data.num_frames,
            crop_size=cfg.data.crop_size,
            rank=env.rank,
            world_size=env.world_size,
            device=env.device,
            seed=cfg.train.seed,
        )
    from fastcvrl.data import build_pretrain_loader

    return build_pretrain_loader(
        cfg,
        manifest,
        rank=env.rank,
        world_size=env.world_size,
        device=env.device,
        seed=cfg.train.seed,
        normalize=False,
    )  # uint8 views: the step normalises


def step_normalize(cfg: Config, device: torch.device) -> Normalize:
    """The step's normalisation of uint8 views (``data.mean``/``data.std``) into the model's input dtype."""
    return Normalize(cfg.data.mean, cfg.data.std, input_dtype(cfg.train.precision), device)


def build_optimization(cfg: Config, model: nn.Module, steps_per_epoch: int):
    """Optimizer (lr in a device tensor), warm-up + cosine schedule over all epochs, fp16 grad scaler."""
    optimizer = build_optimizer(cfg.optim, model, cfg.train.batch_size)
    base_lr = scaled_lr(cfg.optim.lr, cfg.train.batch_size, cfg.optim.base_batch_size)  # as build_optimizer
    total = cfg.train.epochs * steps_per_epoch
    warmup = round(cfg.optim.warmup_epochs * steps_per_epoch)
    schedule = WarmupCosine(optimizer.lr_tensor, base_lr, warmup, total, cfg.optim.min_lr)
    scaler = (
        torch.amp.GradScaler(next(model.parameters()).device.type) if cfg.train.precision == "fp16" else None
    )
    return optimizer, schedule, scaler


# --------------------------------------------------------------------------------------------------- run
@dataclasses.dataclass
class Run:
    """Everything the loop needs, built once (``build_run``): the config, the process, the run folder, the
    model (as called, and unwrapped for saving), the loader, the optimization and the step."""

    cfg: Config
    env: dist.DistEnv
    folder: RunFolder
    model: nn.Module  # the module the step calls (DDP-wrapped when distributed)
    plain: nn.Module  # the same CVRLModel unwrapped: what is saved and exported
    loader: Any
    optimizer: Any
    schedule: WarmupCosine
    scaler: Any
    knn: Callable[[], dict[str, float]] | None = None  # the kNN monitor (make_knn_monitor), None when off
    step_fn: Callable | None = None  # built after resuming (a CUDA graph captures the restored state)
    side: Any = None  # graphed runs: the one side stream of DDP construction, warm-up and capture
    stop: dist.StopFlag | None = None
    progress: Progress | None = None  # set by the loop; its loss figures and time go into the closing lines

    @property
    def run_dir(self) -> Path:
        return self.folder.path

    @property
    def steps_per_epoch(self) -> int:
        return len(self.loader)

    @property
    def end_step(self) -> int:
        """Where this command stops: all epochs, or ``train.max_steps`` when set."""
        total = self.cfg.train.epochs * self.steps_per_epoch
        return min(total, self.cfg.train.max_steps) if self.cfg.train.max_steps else total

    def state(self, pos: ckpt.Position) -> dict:
        """The checkpoint of this moment (collective: every rank's RNG state is gathered)."""
        return ckpt.training_state(
            pos,
            self.plain,
            self.optimizer,
            self.schedule,
            self.scaler,
            to_dict(self.cfg),
            dist.gather_objects(ckpt.rng_state()),
            self.steps_per_epoch,
        )

    def save(self, pos: ckpt.Position) -> None:
        """Checkpoint ``pos`` (rank 0 writes, every rank learns whether it worked); ``StorageError`` on a
        file-system error, the previous checkpoints untouched."""
        agreed(
            functools.partial(
                ckpt.write_checkpoint, self.state(pos), self.run_dir, pos.step, self.cfg.train.keep_ckpts
            ),
            rank0_only=True,
        )


def build_run(cfg: Config, env: dist.DistEnv, manifest: str, folder: RunFolder) -> Run:
    """Model (SyncBN, channels_last, DDP), loader, optimizer, schedule and scaler; nothing written."""
    seed_everything(cfg.train.seed + env.rank)
    if env.device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    side = side_stream(cfg.train.cuda_graph, env.device, cfg.train.precision)
    model, plain = build_training_model(cfg, env, side)
    loader = build_loader(cfg, manifest, env)
    optimizer, schedule, scaler = build_optimization(cfg, plain, len(loader))
    return Run(
        cfg,
        env,
        folder,
        model,
        plain,
        loader,
        optimizer,
        schedule,
        scaler,
        knn=make_knn_monitor(cfg, manifest, plain, env),
        side=side,
    )


def resume(run: Run, allow_changes: bool) -> tuple[ckpt.Position, dict]:
    """The resume rules (``RunFolder.check_resume``) and the restored state: ``(position, accepted changes)``.
    Refusals raise ``RunFolderError`` before anything is written."""
    found = agreed(run.folder.latest_checkpoint)
    changes = agreed(
        functools.partial(run.folder.check_resume, found, run.cfg, run.steps_per_epoch, allow_changes)
    )
    if found is None:
        return ckpt.Position(), changes
    state, path = found

    def load() -> ckpt.Position:
        try:
            return ckpt.restore(
                state,
                run.plain,
                run.optimizer,
                run.schedule,
                run.scaler,
                run.env.rank,
                run.env.world_size,
                run.steps_per_epoch,
            )
        except (RuntimeError, KeyError, ValueError) as e:
            raise RunFolderError(
                f"{path}: the checkpoint does not fit the model or optimizer of the new config "
                f"({type(e).__name__}: {str(e).splitlines()[0][:200]}); set another "
                "train.out_dir for a run with this config"
            ) from None

    pos = agreed(load)
    dist.print0(f"resumed from {path} (step {pos.step}, epoch {pos.epoch + 1}, batch {pos.batch})")
    return pos, changes


# ------------------------------------------------------------------------------------------------ training
def train(run: Run, pos: ckpt.Position) -> ckpt.Position:
    """The loop: data -> step -> metrics every log_every -> checkpoint every ckpt_every -> kNN monitor every
    train.knn_every epochs; returns where it ended."""
    cfg, env, run_dir, loader = run.cfg, run.env, run.run_dir, run.loader
    t = cfg.train
    steps_per_epoch, end = run.steps_per_epoch, run.end_step
    profile = steps_range(t.profile_steps) if env.device.type == "cuda" else None  # validated at load
    use_nvtx = env.device.type == "cuda"
    metrics = Metrics(env.device)
    progress = run.progress = Progress(end, pos.step, enabled=env.rank == 0)
    board = Board(run_dir, enabled=env.rank == 0)
    lr_tensor = run.optimizer.lr_tensor
    loader.set_epoch(pos.epoch)
    batches = loader.iter_from(pos.batch)  # resume mid-epoch: batches are a function of (seed, epoch, index)
    window_start, window_steps, waited = time.perf_counter(), 0, 0.0
    try:
        while pos.step < end:
            if profile and pos.step == profile[0]:
                torch.cuda.synchronize()  # note: deliberate sync so the profile starts on a clean step
                torch.cuda.profiler.start()
            t0 = time.perf_counter()
            with nvtx_range("data", use_nvtx):
                batch = next(batches, None)
            if batch is None:  # epoch done
                pos.epoch, pos.batch = pos.epoch + 1, 0
                loader.set_epoch(pos.epoch)
                batches = iter(loader)
                continue
            waited += time.perf_counter() - t0
            view1, view2, _ = batch
            loss, acc = run.step_fn(view1, view2)
            metrics.add(loss, acc)
            pos.step, pos.batch, window_steps = pos.step + 1, pos.batch + 1, window_steps + 1
            progress.tick(pos.step)
            if profile and pos.step == profile[1]:
                torch.cuda.synchronize()
                torch.cuda.profiler.stop()
            stopping = run.stop.check()
            last = pos.step == end or stopping
            if pos.step % t.log_every == 0 or last or pos.step % t.ckpt_every == 0:
                # note: the only host sync of the loop (every log_every steps, and before every checkpoint)
                loss_v, acc_v, lr_v = read_window(metrics, lr_tensor)
                if not math.isfinite(loss_v):
                    raise NonFiniteLoss(
                        f"the loss became {loss_v} between step {pos.step - metrics.count + 1} and step "
                        f"{pos.step}; "
                        f"stopping. The last good checkpoint in {run_dir / ckpt.CKPT_DIR} is kept; lower "
                        "optim.lr, "
                        "use train.precision=fp32 or bf16, or check the data, then rerun to resume from it."
                    )
                elapsed = time.perf_counter() - window_start
                report = Report(
                    pos.epoch,
                    t.epochs,
                    pos.step,
                    end,
                    loss_v,
                    acc_v,
                    lr_v,
                    window_steps * t.batch_size / elapsed,
                    waited / elapsed,
                    (end - pos.step) * elapsed / window_steps,
                )
                progress.update(report)
                board.log(report, env.device)
                metrics.reset()
                window_start, window_steps, waited = time.perf_counter(), 0, 0.0
            if pos.step % t.ckpt_every == 0 or last:
                run.save(pos)
            if run.knn is not None and pos.batch == steps_per_epoch and (pos.epoch + 1) % t.knn_every == 0:
                stats = (
                    run.knn()
                )  # note: host work outside the step (feature extraction), every knn_every epochs
                if stats:
                    progress.write(
                        f"epoch {pos.epoch + 1}: kNN top-1 {stats['knn_top1']:.3f} "
                        f"top-5 {stats['knn_top5']:.3f} ({int(stats['knn_test_size'])} videos)"
                    )
                    board.scalars({"knn/top1": stats["knn_top1"], "knn/top5": stats["knn_top5"]}, pos.step)
            if stopping:
                progress.write(
                    f"SIGTERM/interrupt: checkpoint written at step {pos.step}; exiting (rerun to resume)"
                )
                break
    finally:
        progress.close()
        board.close()
    return pos


def read_window(metrics: Metrics, lr_tensor: torch.Tensor) -> tuple[float, float, float]:
    """(loss, acc) means over the window and all ranks, and the current lr: one device->host copy."""
    mean = metrics.mean()  # (2,) loss, acc
    if dist.world_size() > 1:
        mean = dist.all_reduce_mean(mean)
    loss, acc, lr = torch.cat([mean, lr_tensor.detach().reshape(1).to(mean)]).tolist()
    return loss, acc, lr


# ----------------------------------------------------------------------------------------------------- main
@dataclasses.dataclass
class RunResult:
    exit_code: int  # 0 finished (or nothing to do), 143 stopped by SIGTERM or Ctrl-C (resumable)
    step: int
    run_dir: Path
    model: nn.Module  # the trained CVRLModel (unwrapped), for callers in the same process


def main(argv: list[str] | None = None) -> RunResult:
    args, overrides = parse_args(argv)
    device = _planned_device()
    cfg = resolve_config(args, overrides, device)
    if args.print_config:  # the resolved config of this command line; nothing runs, nothing is written
        if int(os.environ.get("RANK", 0)) == 0:
            print(config_yaml(resolve.resolved_config(cfg)), end="", flush=True)
        raise SystemExit(0)
    if cfg.train.cuda_graph and device.type == "cuda":
        os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "0")  # NCCL collectives inside a CUDA graph
    env = dist.init_distributed()
    folder = None
    run = None
    try:
        if not args.config:
            dist.print0(f"no --config: the built-in default {default_config_path()}")
        manifest = resolve_data(cfg, env)
        folder = agreed(functools.partial(RunFolder.open, cfg.train.out_dir, lock=env.rank == 0))
        run = build_run(cfg, env, manifest, folder)
        pos, changes = resume(run, args.resume_with_changes)
        if folder.finished(pos.step, run.end_step):
            dist.print0(
                f"nothing to do: the run in {run.run_dir} finished at step {pos.step} of {run.end_step} "
                f"({folder.backbone.name} exported); nothing was rewritten"
            )
            return RunResult(0, pos.step, run.run_dir, run.plain)
        agreed(
            functools.partial(folder.start, cfg, env.world_size, env.device, changes, pos.step),
            rank0_only=True,
        )
        if changes:
            dist.print0(
                "resumed with changes (recorded in config_changes.yaml): "
                + "; ".join(f"{k}: {o!r} -> {n!r}" for k, (o, n) in changes.items())
            )
        dist.print0(
            f"run folder: {run.run_dir}  (device {env.device}, {env.world_size} process(es), "
            f"{cfg.model.arch}, {cfg.train.precision}, global batch {cfg.train.batch_size})"
        )
        step = TrainStep(
            run.model,
            run.optimizer,
            run.schedule,
            temperature=cfg.loss.temperature,
            precision=cfg.train.precision,
            scaler=run.scaler,
            gather=dist.gather_with_grad if env.world_size > 1 else None,
            channels_last=cfg.train.channels_last,
            nvtx=env.device.type == "cuda",
            normalize=step_normalize(cfg, env.device),
        )
        run.step_fn = build_step(
            step,
            cuda_graph=cfg.train.cuda_graph,
            device=env.device,
            ddp=env.distributed,
            warmup=cfg.train.cuda_graph_warmup,
            stream=run.side,
        )
        if warm_up_first(env):  # before the loader's first batch, which starts the DALI pipeline
            warm_up(run.step_fn, step, synthetic_views(*view_spec(cfg, env)))
        run.stop = dist.StopFlag()
        pos = train(run, pos)
        if skipped_summary(run.loader):  # the files left out on the way, named once more at the end
            print(skipped_summary(run.loader), flush=True)
        if run.stop.raised:
            return RunResult(143, pos.step, run.run_dir, run.plain)
        path = agreed(
            functools.partial(ckpt.export_backbone, run.run_dir, run.plain, cfg, pos.step), rank0_only=True
        )
        if env.rank == 0:
            print(closing_lines_of(run, pos.step, path), flush=True)
        return RunResult(0, pos.step, run.run_dir, run.plain)
    finally:
        if run is not None and run.stop is not None:
            run.stop.close()
        if folder is not None:
            folder.release()
        dist.destroy()


def warm_up_first(env: dist.DistEnv) -> bool:
    """Whether the step is warmed up (and captured) on synthetic views before the data starts: on CUDA,
    where cuDNN autotunes and the graph is captured (``fastcvrl.step.warm_up``)."""
    return env.device.type == "cuda"


def view_spec(cfg: Config, env: dist.DistEnv) -> tuple[int, int, int, torch.dtype, torch.device]:
    """(batch per rank, frames, crop side, dtype, device) of the views the training loader yields: DALI's
    uint8 frames where DALI augments, else the normalised views in the trainer's data dtype (random clips:
    float32)."""
    dtype = torch.float32
    if cfg.data.source != "random":
        from fastcvrl.data import runtime

        rt = runtime(cfg, env.device)
        dtype = torch.uint8 if rt.augment == "dali" else rt.dtype
    return cfg.train.batch_size // env.world_size, cfg.data.num_frames, cfg.data.crop_size, dtype, env.device


def closing_lines_of(run: Run, step: int, backbone: Path | None) -> str:
    """``logger.closing_lines`` for this run: its newest checkpoint, and the evaluation command with the
    run's labelled splits where it has them (the built-in dataset's train and test splits)."""
    try:
        kept = ckpt.list_checkpoints(run.run_dir)
    except OSError:  # the folder became unreadable after the run: the lines name what they can
        kept = []
    d = run.cfg.data
    labelled = (d.train_manifest, d.val_manifest) if d.train_manifest and d.val_manifest else None
    return closing_lines(
        run.run_dir,
        step,
        backbone,
        kept[-1][1] if kept else None,
        run.progress,
        sibling("fastcvrl-eval"),
        labelled,
    )


def _planned_device() -> torch.device:
    """The device this process will train on (before the process group exists): its GPU, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def cli(argv: list[str] | None = None) -> int:
    """``main`` with the known failures turned into one clear line and an exit code (no traceback): 2 bad
    input or a refused run folder, 3 a non-finite loss, 4 a file-system error, 5 out of memory, 1 another
    rank failed."""
    try:
        return main(argv).exit_code
    except (ConfigError, ManifestError, UndecodableError) as e:
        _error(e)
        return 2
    except NonFiniteLoss as e:
        _error(e)
        return 3
    except (RunFolderError, StorageError, PeerFailed) as e:
        _error(e)
        return e.exit_code
    except (MemoryError, RuntimeError) as e:  # out of memory: one line naming the settings to lower (exit 5)
        msg = out_of_memory_message(e)
        if msg is None:
            raise
        _error(RuntimeError(msg))
        return OOM_EXIT


def _error(e: BaseException) -> None:
    """Print ``e`` once: on rank 0, or (errors agreed across ranks) on the lowest rank that raised it."""
    quiet = getattr(e, "quiet", None)
    if (int(os.environ.get("RANK", 0)) == 0) if quiet is None else not quiet:
        print(f"error: {e}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(cli())
