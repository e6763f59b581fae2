"""Training-step throughput on synthetic device tensors: each fast path beside its baseline, in one process.

    python benchmarks/train_bench.py --json results/train_gpu.json                     # GPU: R3D-50, 16x224^2
    python benchmarks/train_bench.py --device cpu --json results/train_cpu.json        # CPU: r3d_tiny, small
    clips

One step = forward of both views as one batch of 2B clips, NT-Xent, backward, LARS, schedule (the trainer's
``fastcvrl.step.TrainStep``; graphed by its ``GraphedStep``). Rows: the fast configuration (CUDA graph, bf16,
channels-last, fused LARS; on CPU eager and fp32), then each optimisation switched off alone, then the
baseline with all of them off (the per-parameter reference syncs with the host, so its rows are eager).
A *clip* is one view of T frames: clips/s = 2B / step time. On a GPU, model
FLOPs utilisation = clips/s x ``flops_per_clip`` (3 x the counted forward matmul/conv FLOPs) / the device's
dense bf16 peak (table below; fp32 rows are measured against the same bf16 peak). The optimizer step alone
is timed for fused LARS and the per-parameter reference on R3D-50's parameters (``--opt-arch``) with random
gradients, on every device. CPU runs use a small model (``r3d_tiny``) for the step rows and say so.
Warm-up steps (cuDNN autotuning, graph capture) are untimed; each row is ``--repeats`` windows of
``--iters`` steps; CUDA events time GPU windows.
Saved activations per clip (with and without activation checkpointing): ``benchmarks/memory_bench.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch  # noqa: E402
from common import environment, format_table, summarize, write_json  # noqa: E402
from torch import nn  # noqa: E402

from fastcvrl.model import CVRLModel, ProjectionHead, build_backbone, count_params, flops_per_clip  # noqa: E402

# dense bf16 tensor-core peak FLOP/s by device name (vendor datasheets); first match wins
PEAK_BF16 = [
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("GH200", 989e12),
    ("H200", 989e12),
    ("H100", 989e12),
    ("B200", 2250e12),
    ("A100", 312e12),
    ("L40S", 362e12),
    ("A10G", 70e12),
    ("L4", 121e12),
]

GPU_DEFAULTS = dict(
    arch="r3d50",
    opt_arch="r3d50",
    frames=16,
    size=224,
    batch_size=16,
    warmup=6,
    iters=10,
    repeats=3,
    opt_iters=5,
    proj_hidden=2048,
)
CPU_DEFAULTS = {
    **GPU_DEFAULTS,
    "arch": "r3d_tiny",
    "frames": 8,
    "size": 64,
    "batch_size": 4,
    "warmup": 2,
    "iters": 3,
}
QUICK = {
    **CPU_DEFAULTS,
    "opt_arch": "r3d_tiny",
    "frames": 4,
    "size": 32,
    "batch_size": 2,
    "warmup": 1,
    "iters": 1,
    "repeats": 2,
    "opt_iters": 2,
    "proj_hidden": 64,
}


def peak_flops(name: str | None) -> float | None:
    for key, peak in PEAK_BF16:
        if name and key in name:
            return peak
    return None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--arch", default=None, help="step model; default r3d50 on GPU, r3d_tiny on CPU")
    p.add_argument(
        "--opt-arch", default=None, help="model whose parameters the optimizer-alone rows use (r3d50)"
    )
    p.add_argument("--frames", type=int, default=None, help="T; default 16 on GPU, 8 on CPU")
    p.add_argument("--size", type=int, default=None, help="crop size; default 224 on GPU, 64 on CPU")
    p.add_argument(
        "--batch-size", type=int, default=None, help="videos per step (2 clips each); GPU default 16"
    )
    p.add_argument("--warmup", type=int, default=None, help="untimed steps per row (GPU default 6)")
    p.add_argument("--iters", type=int, default=None, help="timed steps per window (GPU default 10)")
    p.add_argument("--repeats", type=int, default=None, help="windows per row (default 3)")
    p.add_argument("--opt-iters", type=int, default=None, help="timed optimizer steps per window (5)")
    p.add_argument("--proj-hidden", type=int, default=None, help="projection head width (CVRL: 2048)")
    p.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch CPU threads (0 = torch's default); 1 avoids OpenMP barrier stalls on a busy machine",
    )
    p.add_argument(
        "--rows", default="", help="comma-separated subset of row names (default: all for the device)"
    )
    p.add_argument("--json", default="", help="write the result as one JSON line to this path")
    p.add_argument("--quick", action="store_true", help="tiny settings (tests, smoke runs)")
    args = p.parse_args(argv)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    defaults = QUICK if args.quick else (CPU_DEFAULTS if args.device == "cpu" else GPU_DEFAULTS)
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    return args


def make_model(arch: str, proj_hidden: int = 2048) -> CVRLModel:
    """Backbone + the CVRL projection head (config defaults; no YAML import, for bare GPU machines)."""
    backbone = build_backbone(arch)
    return CVRLModel(backbone, ProjectionHead(backbone.out_dim, hidden=proj_hidden))


# ------------------------------------------------------------------------------------------ configurations
ROW_FLAGS = ("graph", "bf16", "channels_last", "fused")


def rows_for(device: str) -> list[tuple[str, dict[str, bool]]]:
    """(name, flags): the fast configuration, each optimisation off alone, then all off (the baseline)."""
    fast = {"graph": device == "cuda", "bf16": device == "cuda", "channels_last": True, "fused": True}
    rows = [("fast", fast)]
    off = {"graph": "eager", "bf16": "fp32", "channels_last": "contiguous", "fused": "LARS reference"}
    for flag in ROW_FLAGS:
        if fast[flag]:
            row = {**fast, flag: False}
            if flag == "fused":
                row["graph"] = False  # the reference reads norms back to the host: it cannot be captured
            rows.append((off[flag], row))
    rows.append(("baseline", {k: False for k in ROW_FLAGS}))
    return rows


def describe(flags: dict[str, bool]) -> str:
    return ", ".join(
        [
            "graph" if flags["graph"] else "eager",
            "bf16" if flags["bf16"] else "fp32",
            "CL" if flags["channels_last"] else "contig",
            "fused LARS" if flags["fused"] else "ref LARS",
        ]
    )


def make_optimizer(params, fused: bool) -> torch.optim.Optimizer:
    from fastcvrl.optim import LARS, LARSReference

    cls = LARS if fused else LARSReference
    return cls(list(params), lr=0.1, momentum=0.9, weight_decay=1e-6, eta=0.001)


class _NullSchedule:
    def step(self) -> None:
        pass


def make_schedule(optimizer: torch.optim.Optimizer):
    """The trainer's warm-up + cosine on the optimizer's lr tensor where both exist, else nothing."""
    lr = getattr(optimizer, "lr_tensor", None)
    try:
        from fastcvrl.schedule import WarmupCosine
    except ImportError:
        return _NullSchedule()
    return WarmupCosine(lr, 0.1, 10, 10_000) if lr is not None else _NullSchedule()


def make_step(model: nn.Module, optimizer, flags: dict[str, bool], device: torch.device) -> Callable:
    """The trainer's step (``fastcvrl.step``), graphed when asked; the disabled path is the eager step."""
    from fastcvrl.step import TrainStep, build_step

    step = TrainStep(
        model,
        optimizer,
        make_schedule(optimizer),
        temperature=0.1,
        precision="bf16" if flags["bf16"] else "fp32",
        channels_last=flags["channels_last"],
    )
    return build_step(step, cuda_graph=flags["graph"], device=device, warmup=3)


# ------------------------------------------------------------------------------------------ timing
class Timer:
    """Wall time of a window; CUDA events on a GPU (no sync inside the window)."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    @contextlib.contextmanager
    def window(self, out: list[float]):
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            yield
            end.record()
            end.synchronize()  # note: the one host sync per window
            out.append(start.elapsed_time(end) / 1000.0)
        else:
            t0 = time.perf_counter()
            yield
            out.append(time.perf_counter() - t0)


def bench_row(flags: dict[str, bool], args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    torch.manual_seed(0)
    fmt = torch.channels_last_3d if flags["channels_last"] else torch.contiguous_format
    model = make_model(args.arch, args.proj_hidden).to(device).to(memory_format=fmt)
    opt = make_optimizer(model.parameters(), flags["fused"])
    step = make_step(model, opt, flags, device)
    shape = (args.batch_size, 3, args.frames, args.size, args.size)  # (B, 3, T, H, W) per view
    v1 = torch.randn(shape, device=device).contiguous(memory_format=fmt)
    v2 = torch.randn(shape, device=device).contiguous(memory_format=fmt)
    for _ in range(args.warmup):
        loss, _ = step(v1, v2)
    if device.type == "cuda":
        torch.cuda.synchronize()
    timer, times = Timer(device), []
    for _ in range(args.repeats):
        with timer.window(times):
            for _ in range(args.iters):
                loss, _ = step(v1, v2)
    finite = bool(torch.isfinite(loss).item())  # note: host sync after timing
    peak_mem = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
    del step, opt, model, v1, v2
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    step_s = summarize([t / args.iters for t in times])
    return {
        "flags": flags,
        "step_s": step_s,
        "clips_per_s": 2 * args.batch_size / step_s["median"],
        "loss_finite": finite,
        "peak_gpu_mem_gib": peak_mem,
    }


def bench_optimizer(arch: str, fused: bool, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """The optimizer step alone on ``arch``'s parameters, every step on the same random gradients.

    The fused LARS overwrites ``.grad`` with its update, so the gradients are restored before each step,
    outside the timed window (each step is its own window), for both variants alike."""
    torch.manual_seed(0)
    model = make_model(arch, args.proj_hidden).to(device)
    params = list(model.parameters())
    grads = [torch.randn_like(p) * 1e-3 for p in params]
    for p, g in zip(params, grads):
        p.grad = g.clone()
    opt = make_optimizer(params, fused)

    def restore() -> None:
        torch._foreach_copy_([p.grad for p in params], grads)

    for _ in range(2):
        restore()
        opt.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    timer, times = Timer(device), []
    for _ in range(args.repeats):
        steps: list[float] = []
        for _ in range(args.opt_iters):
            restore()
            with timer.window(steps):
                opt.step()
        times.append(sum(steps))
    n = count_params(model)
    del opt, model
    gc.collect()
    return {"arch": arch, "params": n, "step_s": summarize([t / args.opt_iters for t in times])}


def run(args: argparse.Namespace) -> dict[str, Any]:
    device = torch.device(args.device)
    env = environment()
    gpu = env["gpu"] if device.type == "cuda" else None
    peak = peak_flops(gpu)
    flops = flops_per_clip(make_model(args.arch, args.proj_hidden), args.frames, args.size)
    result: dict[str, Any] = {
        "benchmark": "train",
        "device": args.device,
        "gpu": gpu,
        "small_model_on_cpu": device.type == "cpu" and args.arch == "r3d_tiny",
        "cpu_threads": torch.get_num_threads(),
        "settings": {
            k: getattr(args, k)
            for k in (
                "arch",
                "opt_arch",
                "frames",
                "size",
                "batch_size",
                "warmup",
                "iters",
                "repeats",
                "opt_iters",
                "proj_hidden",
            )
        },
        "clips_per_step": 2 * args.batch_size,
        "flops_per_clip": flops,
        "peak_flops": peak,
        "rows": {},
        "optimizer": {},
        "env": env,
    }
    wanted = {r.strip() for r in args.rows.split(",") if r.strip()}
    for name, flags in rows_for(args.device):
        if wanted and name not in wanted:
            continue
        try:
            row = bench_row(flags, args, device)
        except Exception as err:  # noqa: BLE001 - report the row, run the others
            traceback.print_exc()
            result["rows"][name] = {"flags": flags, "error": f"{type(err).__name__}: {err}"}
            continue
        row["tflops"] = row["clips_per_s"] * flops / 1e12
        row["mfu"] = row["clips_per_s"] * flops / peak if peak else None
        result["rows"][name] = row
        progress(result, name, row, args)
    for fused in (True, False):
        key = "fused" if fused else "reference"
        try:
            result["optimizer"][key] = bench_optimizer(args.opt_arch, fused, args, device)
        except Exception as err:  # noqa: BLE001
            traceback.print_exc()
            result["optimizer"][key] = {"error": f"{type(err).__name__}: {err}"}
        progress(result, f"LARS {key}", result["optimizer"][key], args)
    opt = result["optimizer"]
    if "step_s" in opt["fused"] and "step_s" in opt["reference"]:
        opt["speedup"] = opt["reference"]["step_s"]["median"] / opt["fused"]["step_s"]["median"]
    rows = result["rows"]
    for name in rows:
        if "error" not in rows[name] and "error" not in rows.get("fast", {"error": 1}):
            rows[name]["fast_speedup"] = rows["fast"]["clips_per_s"] / rows[name]["clips_per_s"]
    return result


def progress(result: dict[str, Any], name: str, row: dict[str, Any], args: argparse.Namespace) -> None:
    """One line per finished row, flushed at once, and the JSON so far (``"partial": true``): a run cut short
    by a time limit keeps every row it finished."""
    if "error" in row:
        line = f"error: {row['error']}"
    else:
        line = f"step {1000 * row['step_s']['median']:.1f} ms (spread {row['step_s']['spread']:.2f})"
        if "clips_per_s" in row:
            mfu = f", MFU {row['mfu']:.3f}" if row.get("mfu") else ""
            line += f", {row['clips_per_s']:.1f} clips/s{mfu}, {describe(row['flags'])}"
    if args.json:
        write_json({**result, "partial": True}, args.json)
    print(f"row {name}: {line}", flush=True)


def print_table(result: dict[str, Any]) -> None:
    s, env = result["settings"], result["env"]
    where = result["gpu"] or f"CPU {env['cpu']} ({env['cores']} cores, {result['cpu_threads']} torch threads)"
    print(f"train-step benchmark on {where}; torch {env['torch']}")
    note = " (small model: CPU run)" if result["small_model_on_cpu"] else ""
    print(
        f"  {s['arch']}{note}, {s['frames']}x{s['size']}^2, batch {s['batch_size']} videos = "
        f"{result['clips_per_step']} clips per step, {result['flops_per_clip'] / 1e9:.1f} GFLOP per training "
        "clip; "
        f"{s['warmup']} warm-up + {s['repeats']} x {s['iters']} timed steps"
    )
    rows = []
    for name, r in result["rows"].items():
        if "error" in r:
            rows.append([name, describe(r["flags"]), "error", None, None, None, None, None])
            continue
        rows.append(
            [
                name,
                describe(r["flags"]),
                1000 * r["step_s"]["median"],
                r["step_s"]["spread"],
                r["clips_per_s"],
                r["tflops"],
                r["mfu"],
                r.get("fast_speedup"),
            ]
        )
    print(
        format_table(
            ["row", "configuration", "step ms", "spread", "clips/s", "TFLOP/s", "MFU", "fast/row"], rows
        )
    )
    if result["peak_flops"]:
        print(f"  MFU against {result['peak_flops'] / 1e12:.0f} TFLOP/s dense bf16 peak")
    opt = result["optimizer"]
    orows = []
    for key in ("fused", "reference"):
        o = opt[key]
        if "error" in o:
            orows.append([f"LARS {key}", None, "error", None])
        else:
            orows.append(
                [
                    f"LARS {key}",
                    f"{o['arch']} ({o['params'] / 1e6:.1f}M params)",
                    1000 * o["step_s"]["median"],
                    o["step_s"]["spread"],
                ]
            )
    print(format_table(["optimizer step alone", "parameters", "ms", "spread"], orows))
    if "speedup" in opt:
        print(f"  fused LARS is {opt['speedup']:.2f}x the per-parameter reference")
    for name, r in list(result["rows"].items()) + list(opt.items()):
        if isinstance(r, dict) and "error" in r:
            print(f"  {name}: {r['error']}")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.backends.cudnn.benchmark = True
    result = run(args)
    print_table(result)
    print(write_json(result, args.json))
    return result


if __name__ == "__main__":
    main()
