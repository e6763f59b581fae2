"""The tiny training run the process tests share (test_train, test_run_folder, test_slurm): random clips,
``r3d_tiny``, 4 frames of 32 x 32, global batch 4 (``videos / 4`` steps an epoch), a checkpoint every 2
steps, fp32, no CUDA graph. Each test file says only what it changes."""

from __future__ import annotations


def tiny_run(*, videos: int = 16, epochs: int = 2, extra: dict[str, object] | None = None) -> list[str]:
    """The run's ``--key=value`` overrides; ``extra`` adds or replaces keys (``{"train.keep_ckpts": 2}``)."""
    keys: dict[str, object] = {
        "data.source": "random",
        "data.random_videos": videos,
        "data.num_frames": 4,
        "data.crop_size": 32,
        "model.arch": "r3d_tiny",
        "model.proj_hidden": 32,
        "model.proj_layers": 2,
        "model.proj_dim": 16,
        "optim.lr": 2.0,
        "optim.base_batch_size": 4,
        "optim.warmup_epochs": 1,
        "train.batch_size": 4,
        "train.epochs": epochs,
        "train.log_every": 2,
        "train.ckpt_every": 2,
        "train.precision": "fp32",
        "train.cuda_graph": "false",
        **(extra or {}),
    }
    return [f"--{k}={v}" for k, v in keys.items()]
