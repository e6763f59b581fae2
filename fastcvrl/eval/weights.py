"""The backbone a checkpoint file holds: a trainer checkpoint, an exported ``backbone.pt`` or a bare state
dict.

    backbone, cfg = load_backbone("runs/x/backbone.pt", cfg)   # cfg.model from the checkpoint where recorded

Files are read with ``torch.load(weights_only=True)`` (tensors and plain containers only, never code); a file
that is not such a checkpoint is refused in one line naming it.
"""

from __future__ import annotations

import os
import pickle
import re
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fastcvrl.config import Config, load_config, merge, to_dict

__all__ = ["EvalError", "load_backbone", "read_checkpoint"]


class EvalError(RuntimeError):
    """A problem with the evaluation's inputs; the message names the file at fault."""


def _strip(state: dict, prefix: str) -> dict:
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def read_checkpoint(path: str | os.PathLike) -> Any:
    """``torch.load`` (weights only) of ``path``; any failure is an ``EvalError`` of one line naming the
    file."""
    path = Path(path)
    if not path.is_file():
        raise EvalError(f"checkpoint not found: {path}")
    try:
        # a file that is not a checkpoint gets one line, not torch's pickle-protocol warning too
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except OSError as e:
        raise EvalError(f"{path}: cannot read the checkpoint ({e.strerror or type(e).__name__})") from None
    except (
        pickle.UnpicklingError,
        RuntimeError,
        EOFError,
        ValueError,
        KeyError,
        AttributeError,
        TypeError,
        IndexError,  # random bytes can stop the unpickler on an empty stack
    ) as e:
        raise EvalError(
            f"{path}: cannot read the checkpoint: not a file written by torch.save with only tensors "
            f"and plain containers, or truncated ({type(e).__name__}: {_reason(e)})"
        ) from None


def _reason(e: BaseException) -> str:
    """The informative line of a ``torch.load`` error (without its advice to load with weights_only=False)."""
    text = str(e)
    m = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\n\s*\n|$)", text, re.S)
    line = (m.group(1) if m else text).strip().splitlines()
    line = line[0] if line else type(e).__name__
    line = re.sub(r"^\[enforce fail at [^\]]*\]\s*\.?\s*", "", line)
    return line[:160]


def _backbone_state(obj: Any, path: str) -> dict[str, torch.Tensor]:
    """The backbone's state dict out of a trainer checkpoint, a CVRLModel state dict or an exported
    backbone."""
    if not isinstance(obj, dict):
        raise EvalError(f"{path}: not a checkpoint (a {type(obj).__name__}, expected a dict)")
    state: Any = obj
    for key in ("backbone", "model", "state_dict"):
        if isinstance(obj.get(key), dict):
            state = obj[key]
            break
    if not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise EvalError(f"{path}: found no model weights (expected keys 'backbone', 'model' or a state dict)")
    for prefix in ("module.", "_orig_mod."):  # DDP / torch.compile wrappers
        if all(k.startswith(prefix) for k in state):
            state = _strip(state, prefix)
    if any(k.startswith("backbone.") for k in state):
        state = _strip(state, "backbone.")
    return state


def _checkpoint_model_cfg(obj: Any, path: Path) -> dict | None:
    """The ``model`` config section saved with the checkpoint, or in ``config.yaml`` of its run folder."""
    if isinstance(obj, dict):
        cfg = obj.get("config")
        if isinstance(cfg, dict) and isinstance(cfg.get("model"), dict):
            return cfg["model"]
        if isinstance(obj.get("arch"), str):
            return {"arch": obj["arch"], "width": int(obj.get("width", 1))}
    for folder in (path.parent, path.parent.parent):
        if (folder / "config.yaml").is_file():
            return to_dict(load_config(folder / "config.yaml").model)
    return None


def load_backbone(path: str | os.PathLike, cfg: Config) -> tuple[nn.Module, Config]:
    """Build the backbone the checkpoint at ``path`` holds and load its weights (strictly).

    Returns the backbone (CPU, eval mode) and ``cfg`` with its ``model`` section replaced by the checkpoint's,
    where the checkpoint records one. Raises ``EvalError`` naming the file if it is missing, unreadable or
    does not fit the architecture.
    """
    from fastcvrl.model import build_backbone

    path = Path(path)
    obj = read_checkpoint(path)
    state = _backbone_state(obj, str(path))
    model_cfg = _checkpoint_model_cfg(obj, path)
    if model_cfg is not None:
        known = {k: v for k, v in model_cfg.items() if k in to_dict(cfg.model)}
        cfg = merge(cfg, {"model": known})
    backbone = build_backbone(cfg.model.arch, cfg.model.width)
    missing, unexpected = [], []
    try:
        result = backbone.load_state_dict(state, strict=False)
        missing, unexpected = list(result.missing_keys), list(result.unexpected_keys)
    except RuntimeError as e:  # shape mismatches
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        detail = lines[1] if len(lines) > 1 else lines[0]
        more = f"; {len(lines) - 2} more" if len(lines) > 2 else ""
        raise EvalError(
            f"{path}: weights do not fit model.arch={cfg.model.arch} width={cfg.model.width} ({detail}{more})"
        ) from None
    if missing or unexpected:
        raise EvalError(
            f"{path}: weights do not fit model.arch={cfg.model.arch} width={cfg.model.width} "
            f"({len(missing)} missing, e.g. {missing[:3]}; {len(unexpected)} unexpected, e.g. "
            f"{unexpected[:3]}); "
            "pass the run's config with --config or the matching --model.arch"
        )
    return backbone.eval(), cfg
