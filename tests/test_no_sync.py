"""The per-step path makes no blocking host-device transfer, shown by instrumentation on the CPU.

Every tensor op is watched by a dispatch mode: a copy between two devices, and a read of a tensor's value
into Python (``item``, ``float``, ``bool``: ``_local_scalar_dense``; ``tolist``), are recorded with the step
they happen in. On a GPU each such event is a host-device sync; here the loader hands over to a stand-in
device (``meta``), so that the copies a GPU run would make are visible as real cross-device copies.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

pytest.importorskip("nvidia.dali")
pytest.importorskip("av")

from dali_videos import make_index_videos, small_config  # noqa: E402

from dali_pipelines.normalize import Normalize  # noqa: E402
from fastcvrl import train as trainer  # noqa: E402
from fastcvrl.step import TrainStep  # noqa: E402

_COPIES = {
    torch.ops.aten._to_copy.default,
    torch.ops.aten.copy_.default,
    torch.ops.aten.to.device,
    torch.ops.aten.to.dtype_layout,
}


class Transfers(TorchDispatchMode):
    """Records cross-device copies and value reads made on this thread (DALI's threads are not ours)."""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[tuple[str, str, tuple, torch.dtype]] = []
        self.step = 0
        self.thread = threading.get_ident()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if threading.get_ident() == self.thread:
            if func is torch.ops.aten._local_scalar_dense.default:
                self.events.append(("read", f"step {self.step}", tuple(args[0].shape), args[0].dtype))
            elif func in _COPIES:
                src = args[-1] if func is torch.ops.aten.copy_.default else args[0]
                dst = out if isinstance(out, torch.Tensor) else args[0]
                if isinstance(src, torch.Tensor) and src.device != dst.device:
                    self.events.append(
                        (
                            f"{src.device.type}->{dst.device.type}",
                            f"step {self.step}",
                            tuple(src.shape),
                            src.dtype,
                        )
                    )
        return out


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    return make_index_videos(tmp_path_factory.mktemp("nosync"), [40, 33, 50, 45, 38, 41, 36, 44], codec="vp9")


def test_the_gpu_hand_off_copies_the_views_only_and_keeps_labels_on_the_host(manifest):
    """The DALI-augmented hand-off (the GPU default) to a device: the uint8 views cross (on a GPU that is an
    asynchronous device-to-device copy), the labels never do, nothing is read back."""
    from fastcvrl.data import build_pretrain_loader

    cfg = small_config(augment="dali")
    loader = build_pretrain_loader(cfg, str(manifest), device="meta", seed=0, normalize=False)
    with Transfers() as t:
        batches = list(loader)
    assert len(batches) == 2
    for v1, v2, label in batches:
        assert v1.device.type == v2.device.type == "meta" and v1.dtype == torch.uint8
        assert v1.shape == (4, 3, 4, 16, 16) and v1.is_contiguous(memory_format=torch.channels_last_3d)
        assert label.device.type == "cpu" and label.dtype == torch.int64
    assert [e for e in t.events if e[0] == "read"] == []
    crossed = [e for e in t.events if e[0] != "read"]
    assert crossed and all(e[0] == "cpu->meta" and e[3] == torch.uint8 and len(e[2]) == 5 for e in crossed), (
        crossed
    )
    assert not any(e[3] == torch.int64 for e in crossed)


class _Loader:
    """Batches as the trainer's loader hands them over: uint8 views on the device, labels on the host."""

    def __init__(self, steps: int) -> None:
        g = torch.Generator().manual_seed(0)
        fmt = torch.channels_last_3d
        self.batches = [
            (
                torch.randint(0, 256, (4, 3, 4, 16, 16), generator=g, dtype=torch.uint8).contiguous(
                    memory_format=fmt
                ),
                torch.randint(0, 256, (4, 3, 4, 16, 16), generator=g, dtype=torch.uint8).contiguous(
                    memory_format=fmt
                ),
                torch.arange(4),
            )
            for _ in range(steps)
        ]

    def __len__(self) -> int:
        return len(self.batches)

    def set_epoch(self, epoch: int) -> None:
        pass

    def iter_from(self, start: int):
        return iter(self.batches[start:])

    def __iter__(self):
        return self.iter_from(0)


def test_the_training_loop_reads_nothing_back_between_log_steps(tmp_path, monkeypatch):
    """The loop (data -> step -> metrics -> stop check) over 8 steps with log_every=4: values are read on the
    log steps (4 and 8) only; no tensor crosses devices. The step is the real one, uint8 views normalised."""
    from fastcvrl.config import Config
    from fastcvrl.model import build_model
    from fastcvrl.optim import build_optimizer
    from fastcvrl.schedule import WarmupCosine

    cfg = Config()
    cfg.model.arch, cfg.model.proj_hidden, cfg.model.proj_dim, cfg.model.sync_bn = "r3d_tiny", 32, 16, False
    cfg.train.epochs, cfg.train.batch_size, cfg.train.log_every, cfg.train.ckpt_every = 1, 4, 4, 1000
    cfg.train.precision = "fp32"
    torch.manual_seed(0)
    model = build_model(cfg.model).to(memory_format=torch.channels_last_3d)
    opt = build_optimizer(cfg.optim, model, 4)
    sched = WarmupCosine(opt.lr_tensor, 0.1, 2, 8)
    step = TrainStep(
        model, opt, sched, normalize=Normalize(cfg.data.mean, cfg.data.std, torch.float32, "cpu")
    )
    env = trainer.dist.DistEnv(0, 1, 0, torch.device("cpu"), False)
    monkeypatch.setattr(trainer.Run, "save", lambda self, pos: None)  # checkpoints are not the per-step path
    mode = Transfers()

    def counted(v1, v2):
        mode.step += 1
        return step(v1, v2)

    real_tolist = torch.Tensor.tolist

    def tolist(self):
        mode.events.append(("read", f"step {mode.step}", tuple(self.shape), self.dtype))
        return real_tolist(self)

    monkeypatch.setattr(torch.Tensor, "tolist", tolist)
    folder = type("Folder", (), {"path": tmp_path})()  # the run folder: TensorBoard only, here
    run = trainer.Run(
        cfg,
        env,
        folder,
        model,
        model,
        _Loader(8),
        opt,
        sched,
        None,
        step_fn=counted,
        stop=trainer.dist.StopFlag(),
    )
    try:
        with mode:
            pos = trainer.train(run, trainer.ckpt.Position())
    finally:
        run.stop.close()
    assert pos.step == 8
    reads = {e[1] for e in mode.events if e[0] == "read"}
    assert reads == {"step 4", "step 8"}, mode.events
    assert [e for e in mode.events if e[0] != "read"] == []


def test_a_uint8_step_equals_the_step_on_views_normalised_beforehand():
    """The eager step normalises uint8 views itself (as the graph does): same loss and update as normalising
    first, the obvious way; without a Normalize it refuses uint8."""
    from fastcvrl.config import ModelConfig
    from fastcvrl.model import build_model

    mean, std = [0.4, 0.5, 0.6], [0.2, 0.25, 0.3]
    norm = Normalize(mean, std, torch.float32, "cpu")
    g = torch.Generator().manual_seed(3)
    fmt = torch.channels_last_3d
    u1, u2 = (torch.randint(0, 256, (4, 4, 16, 16, 3), generator=g, dtype=torch.uint8) for _ in range(2))
    raw = [u.permute(0, 4, 1, 2, 3) for u in (u1, u2)]  # (B, 3, T, H, W) uint8 views, channels_last_3d
    assert raw[0].is_contiguous(memory_format=fmt)
    obvious = []
    for u in (u1, u2):  # the obvious way: float, /255, -mean, /std, channels first
        x = u.permute(0, 4, 1, 2, 3).double() / 255.0
        obvious.append((x - torch.tensor(mean).view(1, 3, 1, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1, 1))
    ref = [
        norm(u).contiguous(memory_format=fmt) for u in (u1, u2)
    ]  # normalised beforehand, as the loader did
    for r, o in zip(ref, obvious):
        torch.testing.assert_close(r.double(), o, rtol=1e-6, atol=1e-6)
    losses, params = [], []
    for views, normalize in ((raw, norm), (ref, None)):
        torch.manual_seed(0)
        model = build_model(ModelConfig(arch="r3d_tiny", proj_hidden=32, proj_dim=16, sync_bn=False))
        model = model.to(memory_format=fmt)
        step = TrainStep(model, torch.optim.SGD(model.parameters(), lr=0.1), _Null(), normalize=normalize)
        losses.append(step(*views)[0])
        params.append([p.detach().clone() for p in model.parameters()])
    assert torch.equal(losses[0], losses[1])  # the same elementwise math: bit for bit
    for p, q in zip(*params):
        assert torch.equal(p, q)
    with pytest.raises(ValueError, match="normalize"):
        TrainStep(model, torch.optim.SGD(model.parameters(), lr=0.1), _Null())(*raw)


class _Null:
    def step(self) -> None:
        pass


def test_step_input_keeps_channels_last_and_is_normalised_once():
    norm = Normalize([0.5] * 3, [0.5] * 3, torch.bfloat16, "cpu")
    step = TrainStep(
        torch.nn.Identity(),
        torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1),
        _Null(),
        normalize=norm,
    )
    u = torch.full((2, 4, 8, 8, 3), 255, dtype=torch.uint8).permute(0, 4, 1, 2, 3)
    x = step.input(u, torch.zeros_like(u))
    assert x.shape == (4, 3, 4, 8, 8) and x.dtype == torch.bfloat16
    assert x.is_contiguous(memory_format=torch.channels_last_3d)
    assert np.allclose(x[:2].float().numpy(), 1.0) and np.allclose(x[2:].float().numpy(), -1.0)
