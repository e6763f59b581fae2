"""Decisions made once, before any work: which device decodes, whether it takes every video, CUDA.

    device = data_device(cfg.data.device)    # "cpu" | "gpu"; ConfigError for gpu without CUDA
    notes = check_videos(entries, "train/manifest.csv", device)    # UndecodableError naming the offenders

``data_device`` is the one place ``data.device`` (auto | cpu | gpu) becomes the decoder that runs; the
loaders' settings (``fastcvrl.data``), training, evaluation and the benchmarks take its answer. The codec
and size check runs on the manifest alone (no file is opened) and before the CUDA check, so a dataset the GPU
cannot decode is named even on a machine without a GPU (``require_cuda=False``). The precision's resolution
lives in ``fastcvrl.precision``.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from dali_pipelines.codecs import check_decodable, nvdec_min_size
from dali_pipelines.cores import resolve_num_threads
from dali_pipelines.nvdec import gpu_warning
from fastcvrl.domains import ConfigError

DATA_DEVICES = ("auto", "cpu", "gpu")


def data_device(setting: str, *, require_cuda: bool = True, cuda_available: bool | None = None) -> str:
    """``data.device`` -> the decoder that will run: ``"gpu"`` (NVDEC) or ``"cpu"`` (DALI's CPU decoder).

    ``auto``: the GPU when CUDA is available. ``gpu`` without CUDA raises ``ConfigError`` unless
    ``require_cuda`` is False (the codec check names what the GPU would refuse before that)."""
    if setting not in DATA_DEVICES:
        raise ConfigError(f"data.device: expected one of {', '.join(DATA_DEVICES)}, got {setting!r}")
    cuda = torch.cuda.is_available() if cuda_available is None else cuda_available
    if setting == "auto":
        return "gpu" if cuda else "cpu"
    if setting == "gpu" and require_cuda and not cuda:
        raise ConfigError("data.device: 'gpu' but CUDA is not available (use data.device=cpu or auto)")
    return setting


def check_videos(
    entries: Iterable, manifest: str, device: str, local_rank: int = 0, num_threads: int | str = "auto"
) -> list[str]:
    """Every manifest row against what ``device``'s decoder takes (codec, and on the GPU NVDEC's minimum
    sizes, asked of the driver where CUDA is up, and its maximum): raises ``UndecodableError`` naming the
    offenders and the ``prepare`` command that fixes them; returns warnings: codecs that decode with caveats
    and, on the GPU, the dataset audit's one line (``dali_pipelines.nvdec``: sizes that defeat NVDEC's
    decoder reuse, or more decoder configurations x ``num_threads`` than its cache holds)."""
    entries = list(entries)
    min_size = nvdec_min_size(local_rank) if device == "gpu" and torch.cuda.is_available() else None
    notes = check_decodable(entries, device, manifest, min_size)
    if device == "gpu":
        slow = gpu_warning(entries, resolve_num_threads(num_threads, "gpu"), manifest)
        notes += [slow] if slow else []
    return notes
