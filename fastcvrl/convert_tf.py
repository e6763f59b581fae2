"""Convert a CVRL reference checkpoint (TF Model Garden ``video_ssl``) into fastcvrl's ``backbone.pt``.

    pip install fastcvrl[tf]           # TensorFlow, for this command only
    python -m fastcvrl.convert_tf r3d_1x_k400_800ep_backbone-1 --out backbone.pt
    python -m fastcvrl.eval --checkpoint backbone.pt ...

CHECKPOINT_PREFIX is what ``tf.train.Checkpoint.write/save`` was given (the files beside it end in ``.index``
and ``.data-*``). Two forms are read, as the reference writes them:

- ``tf.train.Checkpoint(backbone=...)``: the backbone alone (the released ``r3d_*_backbone-1`` files), and the
  ``backbone/`` items of the trainer's checkpoints;
- ``tf.train.Checkpoint(model=...)``: the whole pretraining model (backbone + projection head), as written by
  the reference trainer (optimizer slots and other items are ignored).

Variables are read with ``tf.train.load_checkpoint`` (no model is built) and mapped by the checkpoint's
object graph, which names Keras layers by their order (``layer_with_weights-N``) and a block's sub-layers
by attribute (``_temporal_conv``, ``_norm1``, ...): the backbone's layer 0/1 are the stem conv/BN, then one
``BottleneckBlock3D`` per block in order; a block with ``_shortcut_conv`` starts a stage, which gives the
stage depths (3, 4, 6, 3 -> r3d50) and the stem's channel count the width. Conv kernels are TF
(T, H, W, in, out) -> torch (out, in, T, H, W); dense kernels (in, out) -> (out, in); BN gamma/beta/
moving_mean/moving_variance -> weight/bias/running_mean/running_var. Every variable our model expects must be
present with the right shape, else nothing is written and the error names them.

The file written is the one the trainer exports (``fastcvrl.train.export_backbone``): ``arch``, ``width``,
``out_dim``, ``step``, ``state_dict`` (fits ``build_backbone(arch, width)``) and ``config``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from fastcvrl.config import Config, merge, to_dict
from fastcvrl.model import DEPTHS, ProjectionHead, build_backbone

INSTALL_HINT = "pip install fastcvrl[tf]"
_VALUE = "/.ATTRIBUTES/VARIABLE_VALUE"
# where the backbone's layers sit in the two checkpoint forms (the whole model first: it also has the head)
_MODEL_BACKBONE = "model/layer_with_weights-0/"
_BACKBONE = "backbone/"
_BLOCK_LAYERS = {  # BottleneckBlock3D attribute -> our Bottleneck3D module
    "_shortcut_conv": "shortcut.0",
    "_norm0": "shortcut.1",
    "_temporal_conv": "body.0",
    "_norm1": "body.1",
    "_spatial_conv": "body.3",
    "_norm2": "body.4",
    "_expand_conv": "body.6",
    "_norm3": "body.7",
}
_BN_VARS = {
    "gamma": "weight",
    "beta": "bias",
    "moving_mean": "running_mean",
    "moving_variance": "running_var",
}
_LAYER = re.compile(r"^layer_with_weights-(\d+)/")


class ConvertError(ValueError):
    """A checkpoint that cannot be converted (missing TensorFlow, unreadable, not a CVRL R3D)."""


@dataclasses.dataclass
class Converted:
    """A reference checkpoint in fastcvrl's terms: ``build_backbone(arch, width)`` fits ``backbone``;
    ``ProjectionHead(out_dim, *head_dims)`` fits ``head`` when the checkpoint held the whole model."""

    arch: str
    width: int
    backbone: dict[str, torch.Tensor]
    head: dict[str, torch.Tensor] | None = None
    head_dims: tuple[int, int, int] | None = None  # (hidden, layers, out_dim)
    step: int = 0
    out_dim: int = 0


# --------------------------------------------------------------------------------------------- reading
def import_tensorflow() -> Any:
    """TensorFlow, or a one-line ``ConvertError`` saying how to install it (an optional extra)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TF's start-up chatter (no CUDA driver, CPU flags)
    try:
        import tensorflow as tf
    except ImportError:
        raise ConvertError(f"converting a TensorFlow checkpoint needs TensorFlow: {INSTALL_HINT}") from None
    try:  # reading a checkpoint needs no GPU; a CUDA build of TF would otherwise reserve GPU memory
        tf.config.set_visible_devices([], "GPU")
    except (RuntimeError, ValueError, AttributeError):  # already initialised, or a stub
        pass
    return tf


def read_checkpoint(prefix: str) -> dict[str, np.ndarray]:
    """All variable values of the TF checkpoint at ``prefix``, keyed by object-graph path without the
    ``/.ATTRIBUTES/VARIABLE_VALUE`` suffix; optimizer slots are left out."""
    tf = import_tensorflow()
    try:
        reader = tf.train.load_checkpoint(prefix)
        keys = [
            k for k in reader.get_variable_to_shape_map() if k.endswith(_VALUE) and ".OPTIMIZER_SLOT" not in k
        ]
        return {k[: -len(_VALUE)]: reader.get_tensor(k) for k in keys}
    except (tf.errors.OpError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConvertError(f"{prefix}: cannot read a TensorFlow checkpoint there ({first})") from None


# --------------------------------------------------------------------------------------------- mapping
def _layers(variables: Mapping[str, np.ndarray], root: str) -> dict[int, dict[str, np.ndarray]]:
    """``{N: {rest_of_path: value}}`` for the ``root + layer_with_weights-N/...`` variables."""
    out: dict[int, dict[str, np.ndarray]] = {}
    for key, value in variables.items():
        if key.startswith(root):
            m = _LAYER.match(key[len(root) :])
            if m:
                out.setdefault(int(m.group(1)), {})[key[len(root) + m.end() :]] = value
    return out


def _conv(kernel: np.ndarray) -> torch.Tensor:
    arr = np.asarray(kernel, dtype=np.float32)
    if arr.ndim != 5:  # a shape error is reported by the caller with names; keep the array as is
        return torch.from_numpy(arr.copy())
    return torch.from_numpy(
        np.ascontiguousarray(arr.transpose(4, 3, 0, 1, 2))
    )  # (T,H,W,in,out) -> (out,in,T,H,W)


def _dense(kernel: np.ndarray) -> torch.Tensor:
    arr = np.asarray(kernel, dtype=np.float32)
    return torch.from_numpy(np.ascontiguousarray(arr.T if arr.ndim == 2 else arr))  # (in, out) -> (out, in)


def _vector(v: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(v, dtype=np.float32))


def _map_layer(
    tf_vars: Mapping[str, np.ndarray],
    tf_name: str,
    ours: str,
    kind: str,
    out: dict[str, tuple[str, torch.Tensor]],
    expect: dict[str, str],
) -> None:
    """Add ``ours.<param>`` -> (TF path, tensor) for the variables of one conv / BN / dense layer found under
    ``tf_name``; ``expect`` gets every TF path the layer should have (for naming the missing ones)."""
    if kind == "bn":
        pairs = [
            (f"{tf_name}/{tf_var}", f"{ours}.{torch_var}", _vector) for tf_var, torch_var in _BN_VARS.items()
        ]
    else:
        pairs = [(f"{tf_name}/kernel", f"{ours}.weight", _conv if kind == "conv" else _dense)]
        if kind == "dense":
            pairs.append((f"{tf_name}/bias", f"{ours}.bias", _vector))
    for tf_key, our_key, fn in pairs:
        expect[our_key] = tf_key
        if tf_key in tf_vars:
            out[our_key] = (tf_key, fn(tf_vars[tf_key]))


def _infer_arch(blocks: list[dict[str, np.ndarray]], stem_out: int, where: str) -> tuple[str, int]:
    """(arch, width) from the blocks' stage boundaries (a ``_shortcut_conv`` starts a stage) and the stem."""
    starts = [i for i, b in enumerate(blocks) if "_shortcut_conv/kernel" in b]
    if not blocks or not starts or starts[0] != 0:
        raise ConvertError(
            f"{where}: no R3D bottleneck blocks found (expected layer_with_weights-2.../"
            "_temporal_conv, _spatial_conv, _expand_conv, _shortcut_conv)"
        )
    stages = tuple(b - a for a, b in zip(starts, starts[1:] + [len(blocks)]))
    for depth, spec in DEPTHS.items():
        if stages == spec and stem_out % 64 == 0 and stem_out >= 64:
            return f"r3d{depth}", stem_out // 64
    if stages == (1, 1, 1, 1) and stem_out % 8 == 0 and stem_out >= 8:
        return "r3d_tiny", stem_out // 8
    known = ", ".join(f"r3d{d} {list(s)}" for d, s in DEPTHS.items())
    raise ConvertError(
        f"{where}: blocks per stage {list(stages)} with a {stem_out}-channel stem match no fastcvrl "
        f"backbone ({known}, with 64 x width stem channels)"
    )


def _check(
    expected: Mapping[str, torch.Tensor],
    found: dict[str, tuple[str, torch.Tensor]],
    tf_paths: dict[str, str],
    unused: Sequence[str],
    where: str,
    what: str,
) -> dict[str, torch.Tensor]:
    """The state dict for ``expected`` (a module's ``state_dict()``) out of ``found``, or a ConvertError
    naming the missing and mis-shaped variables (checkpoint path, and ours)."""
    missing = [
        f"{tf_paths.get(k, '?')} (for {k})"
        for k in expected
        if k not in found and not k.endswith("num_batches_tracked")
    ]
    bad = [
        f"{found[k][0]} {tuple(found[k][1].shape)} for {k} {tuple(expected[k].shape)}"
        for k in expected
        if k in found and found[k][1].shape != expected[k].shape
    ]
    if missing or bad or unused:
        parts = []
        if missing:
            parts.append(f"{len(missing)} variables missing (e.g. {', '.join(missing[:4])})")
        if bad:
            parts.append(
                f"{len(bad)} with mismatched shapes (checkpoint vs expected, e.g. {'; '.join(bad[:3])})"
            )
        if unused:
            parts.append(f"{len(unused)} checkpoint variables unused (e.g. {', '.join(unused[:4])})")
        raise ConvertError(f"{where}: does not fit the {what}: " + "; ".join(parts))
    state = {}
    for k in expected:
        state[k] = torch.zeros((), dtype=torch.long) if k.endswith("num_batches_tracked") else found[k][1]
    return state


def _convert_backbone(variables: Mapping[str, np.ndarray], root: str, where: str) -> tuple[str, int, dict]:
    layers = _layers(variables, root)
    if 0 not in layers or "kernel" not in layers[0] or np.ndim(layers[0]["kernel"]) != 5:
        raise ConvertError(
            f"{where}: no stem convolution at {root}layer_with_weights-0/kernel (not a CVRL R3D)"
        )
    stem_out = int(np.shape(layers[0]["kernel"])[-1])
    blocks = [layers[i] for i in sorted(layers) if i >= 2]
    arch, width = _infer_arch(blocks, stem_out, where)
    with torch.device("meta"):  # shapes only
        model = build_backbone(arch, width)
    names = [
        f"{stage}.{j}"
        for stage in ("res2", "res3", "res4", "res5")
        for j in range(len(getattr(model, stage)))
    ]
    found: dict[str, tuple[str, torch.Tensor]] = {}
    paths: dict[str, str] = {}
    flat = {f"{root}layer_with_weights-{n}/{rest}": v for n, sub in layers.items() for rest, v in sub.items()}
    _map_layer(flat, f"{root}layer_with_weights-0", "stem.0", "conv", found, paths)
    _map_layer(flat, f"{root}layer_with_weights-1", "stem.1", "bn", found, paths)
    for n, ours in zip(sorted(i for i in layers if i >= 2), names):
        for attr, sub in _BLOCK_LAYERS.items():
            _map_layer(
                flat,
                f"{root}layer_with_weights-{n}/{attr}",
                f"{ours}.{sub}",
                "bn" if "_norm" in attr else "conv",
                found,
                paths,
            )
    used = {tf_key for tf_key, _ in found.values()}
    unused = sorted(k for k in flat if k not in used)
    return (
        arch,
        width,
        _check(model.state_dict(), found, paths, unused, where, f"{arch} width {width} backbone"),
    )


def _convert_head(
    variables: Mapping[str, np.ndarray], where: str, in_dim: int
) -> tuple[dict, tuple[int, int, int]]:
    """The projection head of a whole-model checkpoint: model/layer_with_weights-1.. = Dense, BN, ...,
    Dense."""
    layers = {n: v for n, v in _layers(variables, "model/").items() if n >= 1}
    order = sorted(layers)
    dense = [n for n in order if "kernel" in layers[n] and np.ndim(layers[n]["kernel"]) == 2]
    if not dense:
        raise ConvertError(f"{where}: the model has no dense projection head after the backbone")
    hidden = int(np.shape(layers[dense[0]]["kernel"])[1]) if len(dense) > 1 else 0
    out_dim = int(np.shape(layers[dense[-1]]["kernel"])[1])
    n_hidden = len(dense) - 1
    with torch.device("meta"):
        head = ProjectionHead(in_dim, hidden or out_dim, n_hidden, out_dim)
    mods = [(i, m) for i, m in enumerate(head.mlp) if isinstance(m, (nn.Linear, nn.BatchNorm1d))]
    found: dict[str, tuple[str, torch.Tensor]] = {}
    paths: dict[str, str] = {}
    for n, (i, m) in zip(order, mods):
        kind = "dense" if isinstance(m, nn.Linear) else "bn"
        _map_layer(
            {f"model/layer_with_weights-{n}/{k}": v for k, v in layers[n].items()},
            f"model/layer_with_weights-{n}",
            f"mlp.{i}",
            kind,
            found,
            paths,
        )
    used = {tf_key for tf_key, _ in found.values()}
    unused = sorted(
        f"model/layer_with_weights-{n}/{k}"
        for n in order
        for k in layers[n]
        if f"model/layer_with_weights-{n}/{k}" not in used
    )
    state = _check(
        head.state_dict(),
        found,
        paths,
        unused,
        where,
        f"projection head ({n_hidden} x {hidden} -> {out_dim})",
    )
    return state, (hidden or out_dim, n_hidden, out_dim)


def _out_dim(backbone: Mapping[str, torch.Tensor]) -> int:
    """Channels of the last block's expand conv: the pooled feature's size."""
    return int([v for k, v in backbone.items() if k.endswith("body.6.weight")][-1].shape[0])


def convert_variables(variables: Mapping[str, np.ndarray], where: str = "checkpoint") -> Converted:
    """Map a reference checkpoint's variables (``read_checkpoint``'s output) onto fastcvrl's modules."""
    if any(k.startswith(_MODEL_BACKBONE) for k in variables):
        arch, width, backbone = _convert_backbone(variables, _MODEL_BACKBONE, where)
        head, dims = _convert_head(variables, where, _out_dim(backbone))
    elif any(k.startswith(_BACKBONE) for k in variables):
        arch, width, backbone = _convert_backbone(variables, _BACKBONE, where)
        head, dims = None, None
    else:
        sample = ", ".join(sorted(variables)[:4]) or "none"
        raise ConvertError(
            f"{where}: not a CVRL checkpoint: no variables under '{_MODEL_BACKBONE}' (a "
            f"tf.train.Checkpoint(model=...)) or '{_BACKBONE}' (tf.train.Checkpoint(backbone=...)); "
            f"found e.g. {sample}"
        )
    step = np.asarray(variables.get("global_step", 0)).reshape(-1)  # the reference trainer's step, if saved
    return Converted(arch, width, backbone, head, dims, int(step[0]) if step.size else 0, _out_dim(backbone))


def convert_checkpoint(prefix: str) -> Converted:
    """Read and convert the reference checkpoint at ``prefix`` (needs TensorFlow)."""
    return convert_variables(read_checkpoint(prefix), where=prefix)


# ----------------------------------------------------------------------------------------------- writing
def backbone_file(conv: Converted) -> dict:
    """The dict the trainer exports as ``backbone.pt`` (``fastcvrl.train.export_backbone``)."""
    model: dict[str, Any] = {"arch": conv.arch, "width": conv.width}
    if conv.head_dims is not None:
        model.update(proj_hidden=conv.head_dims[0], proj_layers=conv.head_dims[1], proj_dim=conv.head_dims[2])
    cfg = merge(Config(), {"model": model})
    return {
        "arch": conv.arch,
        "width": conv.width,
        "out_dim": conv.out_dim,
        "step": conv.step,
        "state_dict": conv.backbone,
        "config": to_dict(cfg),
    }


def main(argv: Sequence[str] | None = None) -> int:
    from fastcvrl.checkpoint import atomic_torch_save
    from fastcvrl.commands import HelpFormatter, prog

    p = argparse.ArgumentParser(
        prog=prog("python -m fastcvrl.convert_tf", "fastcvrl.convert_tf"),
        description=__doc__.split("\n\n")[0],
        formatter_class=HelpFormatter,
    )
    p.add_argument("prefix", metavar="CHECKPOINT_PREFIX", help="TF checkpoint prefix (without .index)")
    p.add_argument("--out", default="backbone.pt", help="where to write the backbone (default: backbone.pt)")
    args = p.parse_args(argv)
    try:
        conv = convert_checkpoint(args.prefix)
    except ConvertError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    path = atomic_torch_save(backbone_file(conv), args.out)
    n = sum(
        v.numel()
        for k, v in conv.backbone.items()
        if not k.startswith("_") and "running" not in k and "num_batches" not in k
    )
    head = ""
    if conv.head_dims is not None:
        hidden, layers, out_dim = conv.head_dims
        head = f"; the checkpoint's projection head ({layers} x {hidden} -> {out_dim}) is not exported"
    print(f"{args.prefix} -> {os.fspath(path)}: {conv.arch} width {conv.width}, {n:,} parameters{head}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
