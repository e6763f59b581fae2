"""Saved activations per clip, without and with activation checkpointing (no timing, CPU only).

    python benchmarks/memory_bench.py                       # R3D-50 at 16 x 224^2, bf16 autocast
    python benchmarks/memory_bench.py --quick --json m.json

Times nothing: counts the bytes one forward pass keeps for the backward pass (saved-tensor hooks,
unique storages, parameters left out), per clip, of ``--arch`` (R3D-50) at ``--frames`` x ``--size``^2 (16 x
224^2) under bf16 autocast, without and with activation checkpointing (``model.activation_checkpointing``),
and the activation memory at ``--clips-per-gpu`` clips (256: the paper's batch 1024 on 8 GPUs, two views
each). It runs on fake CPU tensors (shapes and dtypes, no data: seconds, no memory), which count exactly what
real CPU tensors do (``--real`` counts on real ones, slowly; the tests compare the two on a small model)."""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch  # noqa: E402
from common import environment, format_table, write_json  # noqa: E402
from torch import nn  # noqa: E402
from train_bench import make_model  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--arch", default="r3d50", help="backbone (default r3d50)")
    p.add_argument("--frames", type=int, default=16, help="T (default 16)")
    p.add_argument("--size", type=int, default=224, help="crop size (default 224)")
    p.add_argument("--proj-hidden", type=int, default=2048, help="projection head width (CVRL: 2048)")
    p.add_argument("--clips-per-gpu", type=int, default=256, help="clips per GPU per step (paper: 256)")
    p.add_argument(
        "--real", action="store_true", help="count on real CPU tensors instead of fake ones (slow)"
    )
    p.add_argument(
        "--quick", action="store_true", help="tiny settings (tests, smoke runs): r3d_tiny at 4 x 32^2"
    )
    p.add_argument("--json", default="", help="write the result as one JSON line to this path")
    args = p.parse_args(argv)
    if args.quick:
        args.arch, args.frames, args.size, args.proj_hidden = "r3d_tiny", 4, 32, 64
    return args


def saved_bytes(
    model: nn.Module,
    shape: tuple[int, ...],
    mode: str,
    fake: bool = True,
    units: dict[str, nn.Module] | None = None,
) -> tuple[int, dict[str, int]]:
    """Bytes one training forward of an input of ``shape`` (B, 3, T, H, W) keeps for the backward pass, under
    bf16 autocast on the CPU with ``model.backbone.activation_checkpointing = mode``: the unique storages that
    autograd saves (a ReLU's in-place output and the BN input it aliases count once), parameters left out.
    ``units``: modules whose own saved bytes are also returned (by name), for what recomputing them holds.
    ``fake``: fake CPU tensors (shapes and dtypes only) instead of real ones; the count is the same."""
    from torch.autograd.graph import saved_tensors_hooks
    from torch.func import functional_call

    backbone = model.backbone
    previous, backbone.activation_checkpointing = backbone.activation_checkpointing, mode
    ctx: contextlib.AbstractContextManager = contextlib.nullcontext()
    state = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    if fake:
        from torch._subclasses.fake_tensor import FakeTensorMode

        ctx = FakeTensorMode()
        state = {k: ctx.from_tensor(v) for k, v in state.items()}
    params = {v.untyped_storage()._cdata for k, v in state.items() if k in dict(model.named_parameters())}
    total: dict[int, int] = {}
    inside: list[str] = []  # the units running now (a block inside its stage)
    per_unit: dict[str, dict[int, int]] = {name: {} for name in units or {}}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage._cdata not in params:
            total[storage._cdata] = storage.nbytes()
            for name in inside:
                per_unit[name][storage._cdata] = storage.nbytes()
        return t

    handles = []
    for name, unit in (units or {}).items():
        handles.append(unit.register_forward_pre_hook(lambda m, a, name=name: inside.append(name)))
        handles.append(unit.register_forward_hook(lambda m, a, out, name=name: inside.remove(name)))
    try:
        with ctx, saved_tensors_hooks(pack, lambda t: t), torch.autocast("cpu", dtype=torch.bfloat16):
            x = torch.zeros(shape).contiguous(memory_format=torch.channels_last_3d)  # (B, 3, T, H, W)
            functional_call(model, state, (x,))
    finally:
        backbone.activation_checkpointing = previous
        for h in handles:
            h.remove()
    return sum(total.values()), {name: sum(v.values()) for name, v in per_unit.items()}


def memory_report(
    arch: str, frames: int, size: int, clips_per_gpu: int = 256, proj_hidden: int = 2048, fake: bool = True
) -> dict[str, Any]:
    """Saved activations per clip (GB, 1e9 bytes) without and with checkpointing per stage and per block.

    Per clip = (the count for four clips - the count for two) / 2 (what does not grow with the batch, such as
    the bf16 copies of the weights autocast makes, cancels; the head's BN needs two clips or more). With
    checkpointing the backward pass also holds the recomputed activations of one unit (stage or block) at a
    time: the largest is ``recompute``, and ``at_clips_per_gpu`` = clips x (saved + recompute) is the
    activation memory of a step on one GPU."""
    from fastcvrl.model import CHECKPOINTING

    torch.manual_seed(0)
    model = make_model(arch, proj_hidden).to(memory_format=torch.channels_last_3d)
    model.train()
    b = model.backbone
    units = {f"res{i + 2}": stage for i, stage in enumerate((b.res2, b.res3, b.res4, b.res5))}
    units.update(
        {
            f"res{i + 2}.{j}": block
            for i, stage in enumerate((b.res2, b.res3, b.res4, b.res5))
            for j, block in enumerate(stage)
        }
    )
    saved, unit_bytes = {}, {}
    for mode in CHECKPOINTING:
        two, units2 = saved_bytes(
            model, (2, 3, frames, size, size), mode, fake, units if mode == "none" else None
        )
        four, units4 = saved_bytes(
            model, (4, 3, frames, size, size), mode, fake, units if mode == "none" else None
        )
        saved[mode] = (four - two) / 2 / 1e9
        if mode == "none":
            unit_bytes = {name: (units4[name] - units2[name]) / 2 / 1e9 for name in units}
    recompute = {
        "none": 0.0,
        "stage": max(v for k, v in unit_bytes.items() if "." not in k),
        "block": max(v for k, v in unit_bytes.items() if "." in k),
    }
    at_clips = {mode: clips_per_gpu * (saved[mode] + recompute[mode]) for mode in CHECKPOINTING}
    best = min(("stage", "block"), key=lambda m: at_clips[m])
    return {
        "benchmark": "train-memory",
        "arch": arch,
        "frames": frames,
        "size": size,
        "precision": "bf16 autocast",
        "counted_on": "fake CPU tensors" if fake else "CPU tensors",
        "checkpointing": best,
        "saved_activation_gb_per_clip": {
            "plain": saved["none"],
            "checkpointed": saved[best],
            "stage": saved["stage"],
            "block": saved["block"],
        },
        "recompute_gb_per_clip": {"stage": recompute["stage"], "block": recompute["block"]},
        "clips_per_gpu": clips_per_gpu,
        "activation_gb_at_clips_per_gpu": {
            "plain": at_clips["none"],
            "stage": at_clips["stage"],
            "block": at_clips["block"],
        },
        "env": environment(),
    }


def print_memory(result: dict[str, Any]) -> None:
    s, r, a = (
        result["saved_activation_gb_per_clip"],
        result["recompute_gb_per_clip"],
        result["activation_gb_at_clips_per_gpu"],
    )
    n = result["clips_per_gpu"]
    print(
        f"saved activations of {result['arch']} at {result['frames']}x{result['size']}^2, "
        f"{result['precision']}, "
        f"counted on {result['counted_on']} (GB = 1e9 bytes)"
    )
    rows = [
        ["none", s["plain"], 0.0, a["plain"]],
        ["stage", s["stage"], r["stage"], a["stage"]],
        ["block", s["block"], r["block"], a["block"]],
    ]
    print(format_table(["checkpointing", "saved GB/clip", "+ recompute GB/clip", f"GB at {n} clips"], rows))
    print(f"  least activation memory: {result['checkpointing']}")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """The saved-activation report, printed as a table, then one JSON line."""
    args = parse_args(argv)
    result = memory_report(
        args.arch, args.frames, args.size, args.clips_per_gpu, args.proj_hidden, fake=not args.real
    )
    print_memory(result)
    print(write_json(result, args.json), flush=True)
    return result


if __name__ == "__main__":
    main()
