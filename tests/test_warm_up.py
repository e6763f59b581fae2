"""Warm-up (and capture) on synthetic views before the data starts: the run afterwards equals a run without
it, step for step, and the trainer does it before the loader's first batch (which starts DALI's pipeline).
On the CPU the graph is off; the warm-up-and-restore path is the same."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from fastcvrl import train
from fastcvrl.optim import LARS
from fastcvrl.random_clips import RandomClipLoader
from fastcvrl.schedule import WarmupCosine
from fastcvrl.step import TrainStep, synthetic_views, warm_up

REPO = Path(__file__).resolve().parents[1]


class _Tiny(nn.Module):
    """Conv3d + BatchNorm3d (running statistics) + a head: everything a step changes, in miniature."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv3d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm3d(4)
        self.head = nn.Linear(4, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.bn(self.conv(x))).mean((2, 3, 4)))


def _run(warm: bool, steps: int = 4, dtype: torch.dtype = torch.float32):
    torch.manual_seed(0)
    random.seed(0)
    model = _Tiny()
    opt = LARS(model.parameters(), lr=0.5, momentum=0.9, weight_decay=1e-4)
    sched = WarmupCosine(opt.lr_tensor, 0.5, 2, 10)
    step = TrainStep(model, opt, sched, channels_last=True)
    if warm:
        assert warm_up(step, step, synthetic_views(4, 4, 8, dtype, torch.device("cpu"), seed=7), calls=3) == 3
    g = torch.Generator().manual_seed(1)
    losses = []
    for _ in range(steps):
        v1, v2 = (torch.randn(4, 3, 4, 8, 8, generator=g) for _ in range(2))
        loss, _ = step(v1, v2)
        losses.append(loss.item())
    return losses, model.state_dict(), opt.state_dict(), sched.state_dict(), torch.rand(3), random.random()


def test_a_warmed_up_step_trains_exactly_as_a_fresh_one():
    a, b = _run(False), _run(True)
    assert a[0] == b[0]  # losses, every step
    assert a[1].keys() == b[1].keys() and all(torch.equal(a[1][k], b[1][k]) for k in a[1])  # incl. BN stats
    assert int(b[1]["bn.num_batches_tracked"]) == 4
    for sa, sb in zip(a[2]["state"].values(), b[2]["state"].values()):
        assert torch.equal(sa["momentum_buffer"], sb["momentum_buffer"])
    assert torch.equal(a[2]["lr_tensor"], b[2]["lr_tensor"]) and a[3] == b[3] == {"step": 4}
    assert torch.equal(a[4], b[4]) and a[5] == b[5]  # the random generators too


def test_the_warm_up_really_changed_what_it_restores():
    """The restore is needed: without it the warm-up's three steps show in the state."""
    torch.manual_seed(0)
    model = _Tiny()
    opt = LARS(model.parameters(), lr=0.5, momentum=0.9)
    sched = WarmupCosine(opt.lr_tensor, 0.5, 2, 10)
    step = TrainStep(model, opt, sched, channels_last=True)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    views = synthetic_views(4, 4, 8, torch.float32, torch.device("cpu"))
    for _ in range(2):
        step(*views)
    assert not torch.equal(before["bn.running_mean"], model.bn.running_mean)
    assert int(sched.step_tensor) == 2


def test_synthetic_views_match_the_loaders_views():
    loader = RandomClipLoader(num_videos=8, batch_size=4, num_frames=4, crop_size=16)
    real = next(iter(loader))[:2]
    fake = synthetic_views(4, 4, 16, torch.float32, torch.device("cpu"))
    for r, f in zip(real, fake):
        assert (r.shape, r.dtype, r.stride()) == (f.shape, f.dtype, f.stride())
    u = synthetic_views(2, 4, 16, torch.uint8, torch.device("cpu"))[0]
    assert u.dtype == torch.uint8 and u.is_contiguous(memory_format=torch.channels_last_3d)


# ------------------------------------------------------------------------------------------- the trainer
TINY = [
    "--data.source=random",
    "--data.random_videos=8",
    "--data.num_frames=4",
    "--data.crop_size=16",
    "--model.arch=r3d_tiny",
    "--model.proj_hidden=16",
    "--model.proj_layers=2",
    "--model.proj_dim=8",
    "--optim.base_batch_size=4",
    "--train.batch_size=4",
    "--train.epochs=2",
    "--optim.warmup_epochs=1",
    "--train.log_every=2",
    "--train.ckpt_every=100",
    "--train.precision=fp32",
    "--train.cuda_graph=false",
]


_ORIGINAL = (train.warm_up, RandomClipLoader.iter_from)  # unpatched, whatever a test patched before
_ORIGINAL_BUILD = train.build_step


def _train(run_dir: Path, monkeypatch, warm: bool, events: list):
    monkeypatch.setattr(train, "warm_up_first", lambda env: warm)
    real_warm_up, real_iter = _ORIGINAL
    monkeypatch.setattr(train, "warm_up", lambda *a, **k: events.append("warm-up") or real_warm_up(*a, **k))
    monkeypatch.setattr(
        RandomClipLoader, "iter_from", lambda self, s: events.append("data") or real_iter(self, s)
    )
    real_build = _ORIGINAL_BUILD
    losses: list = []

    def build_step(*a, **k):
        fn = real_build(*a, **k)
        return lambda v1, v2: (lambda out: losses.append(out[0].item()) or out)(fn(v1, v2))

    monkeypatch.setattr(train, "build_step", build_step)
    result = train.main(
        ["--config", str(REPO / "fastcvrl/configs/synthetic_cpu.yaml"), *TINY, f"--train.out_dir={run_dir}"]
    )
    assert result.exit_code == 0 and result.step == 4
    return losses, result.model.state_dict()


def test_the_trainer_warms_up_before_the_data_and_then_runs_as_without(tmp_path, monkeypatch):
    plain_events, warm_events = [], []
    plain = _train(tmp_path / "plain", monkeypatch, False, plain_events)
    warm = _train(tmp_path / "warm", monkeypatch, True, warm_events)
    assert plain_events[0] == "data" and "warm-up" not in plain_events
    assert warm_events[:2] == ["warm-up", "data"]  # before the loader's first batch
    assert len(warm[0]) == len(plain[0]) + 1  # the warm-up's one call went through the same step
    assert warm[0][1:] == plain[0]  # then every loss equal
    assert all(torch.equal(v, warm[1][k]) for k, v in plain[1].items())


def test_view_spec_follows_the_data_path():
    from fastcvrl.config import load_config

    env = type("Env", (), {"world_size": 2, "device": torch.device("cpu")})()
    cfg = load_config(None, ["--data.source=random", "--train.batch_size=8", "--data.crop_size=32"])
    assert train.view_spec(cfg, env) == (4, 16, 32, torch.float32, env.device)
    cfg = load_config(None, ["--data.device=cpu", "--data.augment=torch", "--train.precision=fp32"])
    assert train.view_spec(cfg, env)[3] == torch.float32
    cfg = load_config(None, ["--data.device=cpu", "--data.augment=dali"])
    assert train.view_spec(cfg, env)[3] == torch.uint8


def test_the_dali_loader_builds_no_pipeline_until_its_first_batch(tmp_path):
    """So a warm-up before the first batch runs before DALI's threads start."""
    from dali_pipelines.manifest import VideoEntry
    from fastcvrl.config import load_config
    from fastcvrl.data import build_pretrain_loader
    from fastcvrl.datasets.manifest import write_manifest
    from fastcvrl.datasets.video import write_video

    entries = []
    for i in range(4):
        p = write_video(tmp_path / f"{i}.webm", np.zeros((8, 32, 32, 3), np.uint8), codec="vp9")
        entries.append(VideoEntry(str(p), 0, 8, 25.0, 32, 32, "vp9"))
    write_manifest(tmp_path / "m.csv", entries)
    cfg = load_config(
        None, ["--data.device=cpu", "--train.batch_size=2", "--data.crop_size=16", "--data.host_workers=0"]
    )
    loader = build_pretrain_loader(cfg, str(tmp_path / "m.csv"))
    assert loader._pipe is None


@pytest.mark.gpu
def test_graphed_step_captured_before_the_data_trains_as_the_eager_step():
    """On a GPU: warm-up and capture on synthetic uint8 views, then real batches through the graph, against
    the eager step from the same start (the device check runs this)."""
    from dali_pipelines.normalize import Normalize
    from fastcvrl.step import GraphedStep

    dev = torch.device("cuda")
    g = torch.Generator().manual_seed(1)
    batches = [
        tuple(
            torch.randint(0, 256, (4, 3, 4, 16, 16), generator=g, dtype=torch.uint8)
            .to(dev)
            .contiguous(memory_format=torch.channels_last_3d)
            for _ in range(2)
        )
        for _ in range(4)
    ]
    runs = []
    for graphed in (False, True):
        torch.manual_seed(0)
        model = _Tiny().to(dev).to(memory_format=torch.channels_last_3d)
        opt = LARS(model.parameters(), lr=0.5, momentum=0.9)
        sched = WarmupCosine(opt.lr_tensor, 0.5, 2, 10)
        norm = Normalize([0.5] * 3, [0.25] * 3, torch.float32, dev)
        step = TrainStep(model, opt, sched, normalize=norm)
        fn = GraphedStep(step, warmup=3) if graphed else step
        if graphed:
            warm_up(fn, step, synthetic_views(4, 4, 16, torch.uint8, dev))
            assert fn.graph is not None  # captured before the first real batch
        losses = [fn(*b)[0].item() for b in batches]
        runs.append((losses, {k: v.clone() for k, v in model.state_dict().items()}))
    (la, sa), (lb, sb) = runs
    assert np.allclose(la, lb, rtol=1e-4, atol=1e-5), (la, lb)
    assert all(torch.allclose(sa[k].float(), sb[k].float(), rtol=1e-3, atol=1e-5) for k in sa)
