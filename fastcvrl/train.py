"""CVRL pretraining: ``torchrun --nproc_per_node=N fastcvrl/train.py --config configs/X.yaml [--key=value ...]``.

The same with plain ``python`` runs one process. Without ``--config`` it runs the built-in default: the
synthetic motion dataset (generated once, cached) and a small R3D, on the GPU if there is one
(``configs/synthetic_gpu.yaml``) else on the CPU (``configs/synthetic_cpu.yaml``).

Run folder (``train.out_dir``): ``config.yaml`` (resolved), ``env.json``, ``tb/`` (TensorBoard),
``checkpoints/`` (atomic, last ``train.keep_ckpts``), ``backbone.pt`` (the trained backbone on its own).
Restarted in the same folder a run resumes from its newest loadable checkpoint; SIGTERM checkpoints and exits.

Profiling steps 50..59 (after the CUDA-graph capture; NVTX ranges: data, forward, backward, optimizer)::

    nsys profile --capture-range=cudaProfilerApi --capture-range-end=stop --trace=cuda,nvtx,cudnn,cublas,osrt \
        --cuda-graph-trace=node -o cvrl_steps50-60 python fastcvrl/train.py --config C.yaml --profile-steps 50:60
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
import os
import signal
import sys
import time
import warnings
from pathlib import Path

_HERE = Path(__file__).resolve().parent
if sys.path and Path(sys.path[0] or ".").resolve() == _HERE:  # run as a script: keep fastcvrl/*.py unimportable
    sys.path.pop(0)                                            # as top-level modules
try:
    import fastcvrl  # noqa: F401  (installed, or run from the repo root)
except ImportError:  # pragma: no cover - a checkout that was not pip-installed
    sys.path.insert(0, str(_HERE.parent))

import torch
import torch.distributed as torch_dist
from torch import nn

from fastcvrl import checkpoint as ckpt
from fastcvrl import dist
from fastcvrl.config import Config, ConfigError, add_config_flags, config_yaml, load_config, save_config, to_dict
from fastcvrl.logger import Board, Progress, Report, write_env
from fastcvrl.manifest import ManifestError, read_manifest
from fastcvrl.model import build_model
from fastcvrl.optim import build_optimizer
from fastcvrl.schedule import WarmupCosine
from fastcvrl.step import Metrics, TrainStep, build_step, nvtx_range
from fastcvrl.datasets.synthetic import ensure_synthetic

REPO_ROOT = _HERE.parent


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or infinite; the run stops and keeps its last good checkpoint."""


# ------------------------------------------------------------------------------------------ configuration
def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    ap = argparse.ArgumentParser(prog="fastcvrl/train.py", description="CVRL video pretraining",
                                 epilog="Any config key can be overridden: --optim.lr=0.32 --train.epochs=200 "
                                        "(--help-config lists them all)")
    ap.add_argument("--config", default=None, help="YAML config (default: configs/synthetic_{gpu,cpu}.yaml)")
    ap.add_argument("--profile-steps", default=None, metavar="A:B",
                    help="start the CUDA profiler at step A, stop it before step B (nsys cudaProfilerApi)")
    add_config_flags(ap)
    return ap.parse_known_args(argv)


def default_config_path() -> Path:
    """The built-in default: the synthetic dataset with a small model, sized for the device at hand."""
    return REPO_ROOT / "configs" / ("synthetic_gpu.yaml" if torch.cuda.is_available() else "synthetic_cpu.yaml")


def resolve_config(args: argparse.Namespace, overrides: list[str], device: torch.device) -> Config:
    """Load and override (the loader checks every value), fill ``auto`` values for this device, and check what
    depends on this process's environment."""
    if args.profile_steps is not None:
        overrides = [*overrides, f"--train.profile_steps={args.profile_steps}"]
    cfg = load_config(args.config or default_config_path(), overrides)
    if cfg.train.precision == "auto":
        cfg.train.precision = "bf16" if device.type == "cuda" else "fp32"
    check_config(cfg)
    return cfg


def check_config(cfg: Config) -> None:
    """What the config loader cannot know (it checks every value and relation): the device, the number of
    processes, and whether the built-in dataset this run would generate holds one batch. Each names its key."""
    t, d = cfg.train, cfg.data
    if d.device == "gpu" and d.source == "video" and not torch.cuda.is_available():
        raise ConfigError("data.device: 'gpu' but CUDA is not available (use data.device=cpu or auto)")
    world = int(os.environ.get("WORLD_SIZE", 1))
    if t.batch_size % world:
        raise ConfigError(f"train.batch_size: {t.batch_size} is not divisible by the {world} processes")
    videos = d.synthetic_classes * d.synthetic_videos_per_class
    if d.source == "video" and not d.train_manifest and t.batch_size > videos:
        raise ConfigError(f"train.batch_size: {t.batch_size} is more than the {videos} training videos of the "
                          "built-in dataset (data.synthetic_classes x data.synthetic_videos_per_class); lower it or "
                          "raise those")


def parse_profile_steps(spec: str) -> tuple[int, int] | None:
    """``"A:B"`` -> (A, B), profiling steps A..B-1; ``""`` -> None."""
    if not spec:
        return None
    try:
        a, b = (int(v) for v in spec.split(":"))
    except ValueError:
        raise ConfigError(f"train.profile_steps: expected A:B (e.g. 50:60), got {spec!r}") from None
    if not 0 <= a < b:
        raise ConfigError(f"train.profile_steps: expected 0 <= A < B, got {spec!r}")
    return a, b


def resolve_data(cfg: Config, env: dist.DistEnv) -> str:
    """The training manifest, checked (every file exists) before any work; the synthetic one by default."""
    if cfg.data.source == "random":
        return ""
    if not cfg.data.train_manifest:
        d = cfg.data
        dist.print0(f"no data.train_manifest: using the built-in synthetic dataset in {d.synthetic_dir} "
                    "(generated once, then cached)")
        # concurrent ranks serialise on ensure_synthetic's lock: one generates, the others reuse
        d.train_manifest, test_manifest = ensure_synthetic(os.path.expanduser(d.synthetic_dir), d.synthetic_classes,
                                                           d.synthetic_videos_per_class, seed=0, scene=d.synthetic_scene,
                                                           verbose=dist.is_main())
        d.val_manifest = d.val_manifest or test_manifest  # the kNN monitor's labelled split
    entries = read_manifest(cfg.data.train_manifest, check_files=True)
    if len(entries) < cfg.train.batch_size:
        raise ManifestError(f"{cfg.data.train_manifest}: {len(entries)} videos, fewer than one global batch "
                            f"(train.batch_size={cfg.train.batch_size})")
    if cfg.train.knn_every and cfg.data.val_manifest:
        read_manifest(cfg.data.val_manifest, check_files=True)  # fail now, not at the first kNN epoch
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


def prepare_run_dir(cfg: Config, env: dist.DistEnv) -> Path:
    """The run folder with the resolved config and the environment record (rank 0 writes)."""
    run_dir = Path(cfg.train.out_dir).expanduser().absolute()
    if env.rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
        write_env(run_dir, env.world_size, env.device)
        for p in ckpt.remove_partial(run_dir):
            print(f"removed an unfinished checkpoint write: {p}", flush=True)
    dist.barrier()
    return run_dir


# ------------------------------------------------------------------------------------------------ building
def seed_everything(seed: int) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_training_model(cfg: Config, env: dist.DistEnv) -> tuple[nn.Module, nn.Module]:
    """(module to call, plain module to save): SyncBatchNorm where asked, channels_last_3d, DDP."""
    model_cfg = cfg.model
    if model_cfg.sync_bn and env.world_size > 1 and env.device.type != "cuda":
        dist.print0("note: SyncBatchNorm needs CUDA; on CPU each rank normalises over its own batch")
        model_cfg = dataclasses.replace(model_cfg, sync_bn=False)
    model = build_model(model_cfg).to(env.device)
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last_3d)
    if not env.distributed:
        return model, model
    graphed = cfg.train.cuda_graph and env.device.type == "cuda"
    ids = [env.device.index] if env.device.type == "cuda" else None
    # A CUDA graph needs DDP's static graph, built on a side stream (PyTorch CUDA-graphs notes, DDP section)
    stream = torch.cuda.Stream() if graphed else None
    with torch.cuda.stream(stream) if graphed else contextlib.nullcontext():
        ddp = nn.parallel.DistributedDataParallel(
            model, device_ids=ids, static_graph=graphed,
            broadcast_buffers=not (model_cfg.sync_bn and env.device.type == "cuda"))  # SyncBN keeps them equal
    if graphed:
        torch.cuda.current_stream().wait_stream(stream)
    return ddp, model


def build_loader(cfg: Config, manifest: str, env: dist.DistEnv):
    """The per-rank pretraining loader (DALI over the manifest, or random tensors)."""
    if cfg.data.source == "random":
        from fastcvrl.random_clips import RandomClipLoader

        return RandomClipLoader(num_videos=cfg.data.random_videos, batch_size=cfg.train.batch_size,
                                num_frames=cfg.data.num_frames, crop_size=cfg.data.crop_size, rank=env.rank,
                                world_size=env.world_size, device=env.device, seed=cfg.train.seed)
    from fastcvrl.data import build_pretrain_loader

    return build_pretrain_loader(cfg, manifest, rank=env.rank, world_size=env.world_size, device=env.device,
                                 seed=cfg.train.seed)


def build_optimization(cfg: Config, model: nn.Module, steps_per_epoch: int):
    """Optimizer (lr in a device tensor), warm-up + cosine schedule over all epochs, fp16 grad scaler."""
    optimizer = build_optimizer(cfg.optim, model, cfg.train.batch_size)
    base_lr = cfg.optim.lr * cfg.train.batch_size / cfg.optim.base_batch_size  # linear scaling (CVRL App. A)
    total = cfg.train.epochs * steps_per_epoch
    warmup = round(cfg.optim.warmup_epochs * steps_per_epoch)
    schedule = WarmupCosine(optimizer.lr_tensor, base_lr, warmup, total, cfg.optim.min_lr)
    scaler = torch.amp.GradScaler(next(model.parameters()).device.type) if cfg.train.precision == "fp16" else None
    return optimizer, schedule, scaler


# ------------------------------------------------------------------------------------------------- state
@dataclasses.dataclass
class Position:
    step: int = 0  # optimizer steps done
    epoch: int = 0  # data epoch of the next batch
    batch: int = 0  # batches of that epoch already consumed


def training_state(pos: Position, model: nn.Module, optimizer, schedule, scaler, cfg: Config) -> dict:
    """Everything needed to continue exactly: weights, optimizer, scaler, schedule, position, RNG (all ranks)."""
    rng = ckpt.rng_state()
    rngs = [None] * dist_world() if dist_world() > 1 else [rng]
    if dist_world() > 1:
        torch_dist.all_gather_object(rngs, rng)  # note: a host sync, at checkpoint time only
    return {
        "step": pos.step, "epoch": pos.epoch, "batch": pos.batch,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "schedule": schedule.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "rng": rngs,
        "world_size": dist_world(),
        "config": to_dict(cfg),
    }


def dist_world() -> int:
    return torch_dist.get_world_size() if torch_dist.is_available() and torch_dist.is_initialized() else 1


def resume(run_dir: Path, env: dist.DistEnv, model: nn.Module, optimizer, schedule, scaler,
           steps_per_epoch: int) -> Position:
    """Load the newest loadable checkpoint in ``run_dir`` (skipping corrupt ones), or start at step 0."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        found = ckpt.load_latest(run_dir, map_location=env.device)
    for w in caught:
        dist.print0(f"warning: {w.message}")
    if found is None:
        return Position()
    state, path = found
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    schedule.load_state_dict(state["schedule"])
    if scaler is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    rngs = state.get("rng") or []
    if len(rngs) == env.world_size:
        ckpt.set_rng_state(rngs[env.rank])
    pos = Position(state["step"], state["epoch"], state["batch"])
    if pos.batch >= steps_per_epoch:  # saved at an epoch's end, or the epoch length changed
        pos = Position(pos.step, pos.epoch + pos.batch // steps_per_epoch, pos.batch % steps_per_epoch)
    dist.print0(f"resumed from {path} (step {pos.step}, epoch {pos.epoch + 1}, batch {pos.batch})")
    return pos


class StopFlag:
    """SIGTERM (or a first Ctrl-C) sets a flag; the loop checks it between steps, all ranks agreeing, and
    checkpoints before it exits. A second Ctrl-C interrupts at once."""

    def __init__(self, env: dist.DistEnv) -> None:
        self.raised = False
        self.env = env
        self.group = None
        if env.distributed:  # agree across ranks on the host, without touching the GPU stream
            self.group = torch_dist.new_group(backend="gloo") if torch_dist.get_backend() != "gloo" else None
        self.previous = {s: signal.signal(s, self._handle) for s in (signal.SIGTERM, signal.SIGINT)}

    def _handle(self, signum, frame) -> None:
        if signum == signal.SIGINT and self.raised:
            raise KeyboardInterrupt
        self.raised = True

    def check(self) -> bool:
        if not self.env.distributed:
            return self.raised
        flag = torch.tensor([int(self.raised)])
        torch_dist.all_reduce(flag, op=torch_dist.ReduceOp.MAX, group=self.group)  # CPU tensor, gloo
        return bool(flag.item())

    def close(self) -> None:
        for s, handler in self.previous.items():
            signal.signal(s, handler)


# ------------------------------------------------------------------------------------------------ training
def train(cfg: Config, env: dist.DistEnv, run_dir: Path, loader, step_fn, state_fn, pos: Position,
          lr_tensor: torch.Tensor, stop: StopFlag, knn=None) -> Position:
    """The loop: data -> step -> metrics every log_every -> checkpoint every ckpt_every -> kNN monitor every
    train.knn_every epochs (``knn``, from ``make_knn_monitor``); returns where it ended."""
    t = cfg.train
    steps_per_epoch = len(loader)
    total = t.epochs * steps_per_epoch
    end = min(total, t.max_steps) if t.max_steps else total
    profile = parse_profile_steps(t.profile_steps) if env.device.type == "cuda" else None
    use_nvtx = env.device.type == "cuda"
    metrics = Metrics(env.device)
    progress = Progress(end, pos.step, enabled=env.rank == 0)
    board = Board(run_dir, enabled=env.rank == 0)
    if pos.step >= end:
        progress.write(f"nothing to do: the run in {run_dir} is at step {pos.step} of {end}")
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
            loss, acc = step_fn(view1, view2)
            metrics.add(loss, acc)
            pos.step, pos.batch, window_steps = pos.step + 1, pos.batch + 1, window_steps + 1
            if profile and pos.step == profile[1]:
                torch.cuda.synchronize()
                torch.cuda.profiler.stop()
            stopping = stop.check()
            last = pos.step == end or stopping
            if pos.step % t.log_every == 0 or last or pos.step % t.ckpt_every == 0:
                # note: the only host sync of the loop (every log_every steps, and before every checkpoint)
                loss_v, acc_v, lr_v = read_window(metrics, lr_tensor)
                if not math.isfinite(loss_v):
                    raise NonFiniteLoss(
                        f"the loss became {loss_v} between step {pos.step - metrics.count + 1} and step {pos.step}; "
                        f"stopping. The last good checkpoint in {run_dir / ckpt.CKPT_DIR} is kept; lower optim.lr, "
                        "use train.precision=fp32 or bf16, or check the data, then rerun to resume from it.")
                elapsed = time.perf_counter() - window_start
                report = Report(pos.epoch, t.epochs, pos.step, end, loss_v, acc_v, lr_v,
                                window_steps * t.batch_size / elapsed, waited / elapsed,
                                (end - pos.step) * elapsed / window_steps)
                progress.update(report)
                board.log(report, env.device)
                metrics.reset()
                window_start, window_steps, waited = time.perf_counter(), 0, 0.0
            if pos.step % t.ckpt_every == 0 or last:
                save(run_dir, state_fn(pos), pos, t.keep_ckpts, env)
            if knn is not None and pos.batch == steps_per_epoch and (pos.epoch + 1) % t.knn_every == 0:
                stats = knn()  # note: host work outside the step (feature extraction), every knn_every epochs
                if stats:
                    progress.write(f"epoch {pos.epoch + 1}: kNN top-1 {stats['knn_top1']:.3f} "
                                   f"top-5 {stats['knn_top5']:.3f} ({int(stats['knn_test_size'])} videos)")
                    board.scalars({"knn/top1": stats["knn_top1"], "knn/top5": stats["knn_top5"]}, pos.step)
            if stopping:
                progress.write(f"SIGTERM/interrupt: checkpoint written at step {pos.step}; exiting (rerun to resume)")
                break
    finally:
        progress.close()
        board.close()
    return pos


def read_window(metrics: Metrics, lr_tensor: torch.Tensor) -> tuple[float, float, float]:
    """(loss, acc) means over the window and all ranks, and the current lr: one device->host copy."""
    mean = metrics.mean()  # (2,) loss, acc
    if dist_world() > 1:
        mean = dist.all_reduce_mean(mean)
    loss, acc, lr = torch.cat([mean, lr_tensor.detach().reshape(1).to(mean)]).tolist()
    return loss, acc, lr


def save(run_dir: Path, state: dict, pos: Position, keep: int, env: dist.DistEnv) -> None:
    if env.rank == 0:
        ckpt.save_checkpoint(state, run_dir, pos.step, keep)
    dist.barrier()


def export_backbone(run_dir: Path, model: nn.Module, cfg: Config, step: int) -> Path:
    """The trained backbone on its own, for downstream use: ``torch.load(p)["state_dict"]`` fits
    ``fastcvrl.model.build_backbone(p["arch"], p["width"])``."""
    backbone = model.backbone
    return ckpt.atomic_torch_save({
        "arch": cfg.model.arch, "width": cfg.model.width, "out_dim": backbone.out_dim, "step": step,
        "state_dict": {k: v.detach().cpu() for k, v in backbone.state_dict().items()},
        "config": to_dict(cfg),
    }, run_dir / "backbone.pt")


# ----------------------------------------------------------------------------------------------------- main
@dataclasses.dataclass
class RunResult:
    exit_code: int  # 0 finished, 143 stopped by SIGTERM or Ctrl-C (resumable)
    step: int
    run_dir: Path
    model: nn.Module  # the trained CVRLModel (unwrapped), for callers in the same process


def main(argv: list[str] | None = None) -> RunResult:
    args, overrides = parse_args(argv)
    device = _planned_device()
    cfg = resolve_config(args, overrides, device)
    if args.print_config:  # the resolved config of this command line; nothing runs, nothing is written
        if int(os.environ.get("RANK", 0)) == 0:
            print(config_yaml(cfg), end="", flush=True)
        raise SystemExit(0)
    if cfg.train.cuda_graph and device.type == "cuda":
        os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "0")  # NCCL collectives inside a CUDA graph
    env = dist.init_distributed()
    stop = None
    try:
        if not args.config:
            dist.print0(f"no --config: the built-in default {default_config_path()}")
        manifest = resolve_data(cfg, env)
        run_dir = prepare_run_dir(cfg, env)
        dist.print0(f"run folder: {run_dir}  (device {env.device}, {env.world_size} process(es), "
                    f"{cfg.model.arch}, {cfg.train.precision}, global batch {cfg.train.batch_size})")
        seed_everything(cfg.train.seed + env.rank)
        if env.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        model, plain = build_training_model(cfg, env)
        loader = build_loader(cfg, manifest, env)
        optimizer, schedule, scaler = build_optimization(cfg, plain, len(loader))
        pos = resume(run_dir, env, plain, optimizer, schedule, scaler, len(loader))
        step = TrainStep(model, optimizer, schedule, temperature=cfg.loss.temperature,
                         precision=cfg.train.precision, scaler=scaler,
                         gather=dist.gather_with_grad if env.world_size > 1 else None,
                         channels_last=cfg.train.channels_last, nvtx=env.device.type == "cuda")
        step_fn = build_step(step, cuda_graph=cfg.train.cuda_graph, device=env.device, ddp=env.distributed,
                             warmup=cfg.train.cuda_graph_warmup)
        stop = StopFlag(env)
        pos = train(cfg, env, run_dir, loader, step_fn,
                    lambda p: training_state(p, plain, optimizer, schedule, scaler, cfg), pos,
                    optimizer.lr_tensor, stop, knn=make_knn_monitor(cfg, manifest, plain, env))
        if stop.raised:
            return RunResult(143, pos.step, run_dir, plain)
        if env.rank == 0:
            path = export_backbone(run_dir, plain, cfg, pos.step)
            print(f"done at step {pos.step}. Results in {run_dir}: {path.name} (the trained backbone), "
                  f"{ckpt.CKPT_DIR}/, config.yaml, env.json; TensorBoard: tensorboard --logdir {run_dir / 'tb'}",
                  flush=True)
        return RunResult(0, pos.step, run_dir, plain)
    finally:
        if stop is not None:
            stop.close()
        dist.destroy()


def _planned_device() -> torch.device:
    """The device this process will train on (before the process group exists): its GPU, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def cli(argv: list[str] | None = None) -> int:
    """``main`` with the known failures turned into one clear line and an exit code (no traceback)."""
    try:
        return main(argv).exit_code
    except (ConfigError, ManifestError) as e:
        _error(f"error: {e}")
        return 2
    except NonFiniteLoss as e:
        _error(f"error: {e}")
        return 3


def _error(msg: str) -> None:
    if int(os.environ.get("RANK", 0)) == 0:
        print(msg, file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(cli())
