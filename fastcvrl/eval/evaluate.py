"""The evaluation command: CVRL's linear protocol (default) or fine-tuning of a pretrained backbone.

    python -m fastcvrl.eval --checkpoint runs/default/backbone.pt \\
        --train-manifest data/ucf101/train/manifest.csv --test-manifest data/ucf101/test/manifest.csv \\
        [--config fastcvrl/configs/X.yaml] [--finetune] [--random-init] [--out DIR] [--eval.epochs=100 ...]

Linear protocol (Qian et al. 2021, Sec. 4.1; ``fastcvrl.eval.linear``): the backbone is frozen with BatchNorm
in eval mode; its pooled features are L2-normalised and one linear layer is trained on them with SGD
(momentum 0.9, no weight decay), lr 32 per 1024 clips scaled linearly, 5 warm-up epochs then cosine, on
crop-and-flip augmented clips (``eval.num_frames`` x ``eval.stride``, ``eval.crop_size``). Test:
``test_clips`` temporal x ``test_crops`` spatial views per video (the reference's 10 x 3: short side resized
to ``eval.short_side`` 256, crops of ``eval.test_crop_size`` 256), softmax scores averaged per video.
``--finetune`` (``eval.finetune``; ``fastcvrl.eval.finetune``) trains the whole network instead.

CKPT is a trainer checkpoint (``<run>/checkpoints/ckpt_*.pt``) or the exported backbone; the architecture is
taken from the checkpoint's config, else from ``config.yaml`` in its run folder, else from ``--config``.
``--random-init`` evaluates a randomly initialised backbone instead (the baseline of the learning proof).
Evaluation runs in ``train.precision`` where the device supports it (fp32 on the CPU, whatever the training
run used). Results: printed, written to ``OUT/eval.json`` and to TensorBoard in ``OUT`` (``eval/top1``,
``eval/top5``).

Before any model work the inputs are checked against each other (``fastcvrl.eval.inputs``): the eval keys,
both manifests, the test split's classes against the training split's (by name, via ``classes.txt``).
A test video that cannot be read or decoded is named in a warning and left out: accuracy is over the readable
test videos (``num_scored_videos``), and ``unreadable_test_videos`` lists the files. An unreadable training
video is replaced by another one of the set (also named), as in pretraining.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fastcvrl import preflight
from fastcvrl.commands import HelpFormatter, prog
from fastcvrl.config import Config, add_config_flags, config_help, config_yaml, load_config, merge, to_dict
from fastcvrl.eval.features import unreadable
from fastcvrl.eval.finetune import finetune
from fastcvrl.eval.inputs import check_eval_config, match_splits
from fastcvrl.eval.linear import linear_probe
from fastcvrl.eval.weights import EvalError, load_backbone
from fastcvrl.precision import eval_precision

__all__ = ["EvalError", "evaluate", "main"]


def evaluate(
    cfg: Config,
    backbone: nn.Module,
    train_manifest: str,
    test_manifest: str,
    *,
    device: torch.device,
    finetune_all: bool | None = None,
    seed: int = 0,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run the linear protocol (or fine-tuning) with the DALI loaders (``fastcvrl.data``) on two
    manifests."""
    from fastcvrl.data import build_linear_loader, build_test_loader  # DALI only where loaders are needed

    check_eval_config(cfg)
    splits = match_splits(train_manifest, test_manifest, log=log)
    precision = eval_precision(cfg.train.precision, device)
    cfg = merge(cfg, {"train": {"precision": precision}})  # the loaders hand over clips in this dtype
    do_finetune = cfg.eval.finetune if finetune_all is None else finetune_all
    e = cfg.eval
    check_batch(cfg, len(splits.train), train_manifest)
    test_loader = build_test_loader(cfg, splits.test, device=device)
    train_loader = build_linear_loader(cfg, splits.train, device=device, seed=seed, train=True)
    t0 = time.perf_counter()
    common = dict(
        num_classes=splits.num_classes,
        num_test_videos=len(splits.test),
        cfg=cfg,
        device=device,
        precision=precision,
        seed=seed,
        log=log,
    )
    if do_finetune:
        result = finetune(backbone, lambda epoch: _at_epoch(train_loader, epoch), test_loader, **common)
        passes = 0
    else:
        passes = max(1, min(e.feature_passes, e.epochs))
        result = linear_probe(
            backbone, (_at_epoch(train_loader, p) for p in range(passes)), test_loader, **common
        )
    result.update(
        unreadable_test_videos=[splits.test[v].path for v in sorted(unreadable(test_loader))],
        unreadable_train_videos=[splits.train[v].path for v in sorted(unreadable(train_loader))],
        mode="finetune" if do_finetune else "linear",
        num_classes=splits.num_classes,
        test_labels_renumbered=splits.remapped,
        num_train_videos=len(splits.train),
        num_test_videos=len(splits.test),
        views_per_video=e.test_clips * e.test_crops,
        epochs=e.epochs,
        feature_passes=passes,
        precision=precision,
        seconds=round(time.perf_counter() - t0, 1),
        device=str(device),
    )
    return result


def check_batch(cfg: Config, videos: int, train_manifest: str) -> None:
    """Training batches are whole (none at all would be a silent no-op): EvalError naming the largest
    ``eval.batch_size`` that works when the training split holds fewer videos than one batch."""
    if videos < cfg.eval.batch_size:
        raise EvalError(
            f"{train_manifest}: {videos} videos, fewer than one training batch "
            f"(eval.batch_size={cfg.eval.batch_size}); the largest eval.batch_size that works for it is "
            f"{videos} (--eval.batch_size={videos})"
        )


def _at_epoch(loader, epoch: int):
    """The loader reseeded for ``epoch`` (a fresh augmentation draw and order, deterministic per epoch)."""
    if hasattr(loader, "set_epoch"):
        loader.set_epoch(epoch)
    return loader


def check_codecs(cfg: Config, manifest: str, entries) -> None:
    """Every video decodable by the decoder ``data.device`` picks (``dali_pipelines.codecs``), else
    EvalError."""
    from dali_pipelines.codecs import UndecodableError

    try:
        for note in preflight.check_videos(
            entries, manifest, preflight.data_device(cfg.data.device, require_cuda=False)
        ):
            print(f"eval: warning: {note}", file=sys.stderr)
    except UndecodableError as e:
        raise EvalError(str(e)) from None


# --------------------------------------------------------------------------------------------------- CLI
def _parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    p = argparse.ArgumentParser(
        prog=prog("fastcvrl-eval", "fastcvrl.eval"),
        description=__doc__.split("\n\n")[0],
        formatter_class=HelpFormatter,
    )
    # required, but checked after --help-config and --print-config, which need none of them
    src = p.add_mutually_exclusive_group()
    src.add_argument("--checkpoint", help="trainer checkpoint or exported backbone (.pt) (required, or:)")
    src.add_argument(
        "--random-init", action="store_true", help="evaluate a randomly initialised backbone (baseline)"
    )
    p.add_argument("--train-manifest", help="labelled manifest the probe is trained on (required)")
    p.add_argument("--test-manifest", help="labelled manifest it is tested on (required)")
    p.add_argument(
        "--config",
        help="YAML file or shipped config name (default: config.yaml of the checkpoint's run folder, else "
        "the trainer's built-in default for this machine)",
    )
    p.add_argument(
        "--finetune", action="store_true", help="fine-tune the whole network (= --eval.finetune=true)"
    )
    p.add_argument(
        "--retrieval",
        action="store_true",
        help="video retrieval instead: test videos as queries, training videos as the gallery, "
        "Recall@1/5/10/20 (fastcvrl.eval.retrieval)",
    )
    p.add_argument(
        "--out", help="output folder for eval.json and TensorBoard (default: beside the checkpoint)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the probe's initialisation and data order")
    add_config_flags(p)
    args, overrides = p.parse_known_args(argv)
    if args.help_config:  # the keys, with the values of the config this command line would use
        print(config_help(_default_config_path(args), overrides))
        raise SystemExit(0)
    if not args.print_config:
        missing = [
            flag
            for flag, given in (
                ("--checkpoint or --random-init", args.checkpoint or args.random_init),
                ("--train-manifest", args.train_manifest),
                ("--test-manifest", args.test_manifest),
            )
            if not given
        ]
        if missing:
            raise EvalError(f"missing {', '.join(missing)} (see {p.prog} --help)")
    return args, overrides


def _default_config_path(args: argparse.Namespace) -> str:
    """``--config``, else the checkpoint's run folder's ``config.yaml``, else the trainer's built-in default
    for this machine (CPU-sized without a GPU): ``eval --random-init`` then matches a plain training run."""
    if args.config:
        return args.config
    if args.checkpoint:
        ck = Path(args.checkpoint)
        for folder in (ck.parent, ck.parent.parent):
            if (folder / "config.yaml").is_file():
                return str(folder / "config.yaml")
    from fastcvrl.resolve import default_config_path

    return str(default_config_path())


def check_out(out: Path) -> None:
    """EvalError unless ``out`` can be created (or written) later: the nearest existing folder on its path
    must be a writable folder. Nothing is created here."""
    import os

    probe = out
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise EvalError(f"--out {out}: {probe} is a file, not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise EvalError(f"--out {out}: {probe} is not writable")


def _write_json(obj: dict, path: Path) -> None:
    """The result with the project's environment record (as the trainer's env.json), written atomically."""
    from fastcvrl.atomic import atomic_write
    from fastcvrl.logger import environment

    atomic_write(path, json.dumps({**obj, "env": environment()}, indent=2) + "\n")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Check everything (config, manifests, codecs, checkpoint, batch size, output folder) before any model
    work and before the output folder is named or created; the folder is created only when the results
    are written, so a failing evaluation leaves none behind."""
    from fastcvrl.resolve import resolved_config

    args, overrides = _parse(sys.argv[1:] if argv is None else argv)
    config_path = _default_config_path(args)
    cfg = load_config(config_path, overrides)
    if args.finetune:
        cfg = merge(cfg, {"eval": {"finetune": True}})
    check_eval_config(cfg)
    if args.retrieval and cfg.eval.finetune:
        raise EvalError("--retrieval reads frozen features: it cannot be combined with --finetune")
    # resolved for this machine, with the checkpoint's model section as the run will take it
    if args.print_config:
        if args.checkpoint:
            _, cfg = load_backbone(args.checkpoint, cfg)
        print(config_yaml(resolved_config(cfg)), end="", flush=True)
        raise SystemExit(0)
    splits = match_splits(
        args.train_manifest, args.test_manifest, log=lambda s: None
    )  # bad inputs before model work
    for m, entries in ((args.train_manifest, splits.train), (args.test_manifest, splits.test)):
        check_codecs(cfg, m, entries)  # every video decodable where data.device decodes
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.random_init:
        from fastcvrl.model import build_backbone

        torch.manual_seed(args.seed)
        backbone = build_backbone(cfg.model.arch, cfg.model.width)
        source = "random-init"
    else:
        backbone, cfg = load_backbone(args.checkpoint, cfg)
        source = str(args.checkpoint)
    check_batch(cfg, len(splits.train), args.train_manifest)
    mode = "retrieval" if args.retrieval else "finetune" if cfg.eval.finetune else "linear"
    if args.out:
        out = Path(args.out)
    elif args.checkpoint:
        out = Path(args.checkpoint).parent / f"eval_{mode}"
    else:
        out = Path("runs") / f"eval_random_init_{mode}"
    check_out(out)
    if not args.config:
        print(f"eval: no --config: using {config_path}")
    precision = eval_precision(cfg.train.precision, device)
    note = (
        f" (train.precision={cfg.train.precision} on {device.type}: evaluating in {precision})"
        if cfg.train.precision not in ("auto", precision)
        else ""
    )
    print(
        f"eval: {mode} evaluation of {source} ({cfg.model.arch}) on {device} in {precision}{note}; "
        f"results go to {out} when it is done"
    )
    if args.retrieval:
        from fastcvrl.eval.retrieval import retrieval

        result = retrieval(cfg, backbone, args.train_manifest, args.test_manifest, device=device)
    else:
        result = evaluate(
            cfg, backbone, args.train_manifest, args.test_manifest, device=device, seed=args.seed
        )
    result.update(
        checkpoint=source,
        train_manifest=args.train_manifest,
        test_manifest=args.test_manifest,
        seed=args.seed,
        config=to_dict(cfg),
    )
    out.mkdir(parents=True, exist_ok=True)
    _write_json(result, out / "eval.json")
    from torch.utils.tensorboard import SummaryWriter

    metrics = [k for k in result if k.startswith("recall@")] if args.retrieval else ["top1", "top5"]
    with SummaryWriter(str(out)) as tb:
        for k in metrics:
            tb.add_scalar(f"eval/{k}", result[k], 0)
    if args.retrieval:
        print(
            "eval: retrieval "
            + "  ".join(f"R@{k.split('@')[1]} {100 * result[k]:.2f}%" for k in metrics)
            + f"  ({result['num_queries']} queries, {result['num_gallery']} gallery videos x "
            f"{result['views_per_video']} views, {result['seconds']}s)"
        )
    else:
        print(
            f"eval: {mode} top-1 {100 * result['top1']:.2f}%  top-5 {100 * result['top5']:.2f}%  "
            f"({result['num_scored_videos']} test videos x {result['views_per_video']} views, "
            f"{result['seconds']}s)"
        )
    for split in ("test", "train"):
        bad = result[f"unreadable_{split}_videos"]
        if bad:
            left = "left out of the accuracy" if split == "test" else "replaced by other training videos"
            if args.retrieval:
                left = "left out of the queries" if split == "test" else "left out of the gallery"
            print(
                f"eval: {len(bad)} unreadable {split} video(s) {left}: {', '.join(bad[:5])}"
                + (" ..." if len(bad) > 5 else "")
            )
    print(f"eval: wrote {out / 'eval.json'}")
    return result
