"""Activation checkpointing (``model.activation_checkpointing``): the same step as without it, exactly.

Gradients, outputs, BN running statistics and the optimizer's result of a checkpointed model equal the plain
model's (the recomputation must not update BN a second time); on a GPU the checkpointed step is captured in a
CUDA graph and equals the eager plain step.
"""

from __future__ import annotations

import pytest
import torch

from fastcvrl.config import ModelConfig, OptimConfig
from fastcvrl.model import CHECKPOINTING, build_model
from fastcvrl.optim import build_optimizer
from fastcvrl.schedule import WarmupCosine
from fastcvrl.step import GraphedStep, TrainStep

CL = torch.channels_last_3d


def _pair(mode: str, device: str = "cpu", sync_bn: bool = False):
    """A plain model and an identical copy checkpointed per ``mode`` (r3d_tiny with a small head); with
    ``sync_bn`` both use SyncBatchNorm (as the paper configs; without a process group it syncs nothing)."""
    torch.manual_seed(0)
    cfg = ModelConfig(arch="r3d_tiny", proj_hidden=32, proj_layers=2, proj_dim=16, sync_bn=False)
    plain = build_model(cfg).to(device, memory_format=CL)
    ckpt = build_model(ModelConfig(**{**vars(cfg), "activation_checkpointing": mode}))
    ckpt.load_state_dict(plain.state_dict())
    ckpt = ckpt.to(device, memory_format=CL)
    if sync_bn:
        plain, ckpt = (torch.nn.SyncBatchNorm.convert_sync_batchnorm(m) for m in (plain, ckpt))
        assert isinstance(ckpt.backbone.res2[0].body[1], torch.nn.SyncBatchNorm)
    assert (
        ckpt.backbone.activation_checkpointing == mode and plain.backbone.activation_checkpointing == "none"
    )
    return plain, ckpt


def _views(i: int, b: int = 3, device: str = "cpu"):
    g = torch.Generator().manual_seed(i)
    return tuple(
        torch.randn(b, 3, 4, 32, 32, generator=g).to(device).contiguous(memory_format=CL) for _ in range(2)
    )


def _step(model, steps: int, precision: str):
    opt = build_optimizer(OptimConfig(name="lars", lr=0.3, base_batch_size=8), model, 8)
    return opt, TrainStep(
        model, opt, WarmupCosine(opt.lr_tensor, 0.3, 2, steps), precision=precision, temperature=0.1
    )


@pytest.mark.parametrize("mode, sync_bn", [("stage", False), ("block", False), ("block", True)])
def test_checkpointed_gradients_equal_the_plain_models(mode, sync_bn):
    plain, ckpt = _pair(mode, sync_bn=sync_bn)
    x = torch.cat(_views(0))  # (8, 3, 4, 32, 32), channels-last
    outs = []
    for model in (plain, ckpt):
        z = model(x)
        z.square().sum().backward()
        outs.append(z.detach())
    torch.testing.assert_close(outs[1], outs[0], rtol=0, atol=0)
    for (name, p), q in zip(plain.named_parameters(), ckpt.parameters()):
        assert p.grad is not None and q.grad is not None, name
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-6, atol=1e-7, msg=name)
    # BN running statistics and batch counts updated once, as without checkpointing (not again in backward)
    sp, sc = plain.state_dict(), ckpt.state_dict()
    assert sp["backbone.res2.0.body.1.num_batches_tracked"].item() == 1
    for k in sp:
        torch.testing.assert_close(sc[k], sp[k], rtol=0, atol=0, msg=k)


@pytest.mark.parametrize("mode, precision", [("block", "fp32"), ("stage", "bf16")])
def test_checkpointed_training_steps_equal_plain_ones(mode, precision):
    """Two LARS steps (bf16 autocast on the CPU too): same losses, same weights, same BN statistics."""
    plain, ckpt = _pair(mode)
    results = []
    for model in (plain, ckpt):
        _, step = _step(model, 2, precision)
        losses = [step(*_views(i))[0] for i in range(2)]
        results.append((torch.stack(losses), model.state_dict()))
    (lp, sp), (lc, sc) = results
    torch.testing.assert_close(lc, lp, rtol=1e-5, atol=1e-6)
    for k in sp:
        torch.testing.assert_close(sc[k], sp[k], rtol=1e-4, atol=1e-6, msg=k)


def test_no_checkpointing_without_gradients_and_unknown_modes_refused():
    plain, ckpt = _pair("block")
    x = torch.cat(_views(1))
    plain.eval(), ckpt.eval()
    with torch.no_grad():
        torch.testing.assert_close(ckpt(x), plain(x), rtol=0, atol=0)
    assert CHECKPOINTING == ("none", "stage", "block")
    with pytest.raises(ValueError, match="model.activation_checkpointing.*'layer'"):
        build_model(ModelConfig(arch="r3d_tiny", activation_checkpointing="layer"))


@pytest.mark.gpu
@pytest.mark.parametrize("mode", ["stage", "block"])
def test_checkpointed_step_is_captured_in_a_cuda_graph_and_equals_the_eager_plain_step(mode):
    flags = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        plain, ckpt = _pair(mode, "cuda")
        steps, runs = 7, []  # 3 warm-up, the capture step, 3 replays
        for k, model in enumerate((plain, ckpt)):
            opt, eager = _step(model, steps, "bf16")
            fn = GraphedStep(eager, warmup=3) if k == 1 else eager
            losses = [fn(*_views(i, 8, "cuda"))[0].clone() for i in range(steps)]
            runs.append((torch.stack(losses).cpu(), {k: v.cpu() for k, v in model.state_dict().items()}))
        assert isinstance(fn, GraphedStep) and fn.graph is not None
        (lp, sp), (lc, sc) = runs
        torch.testing.assert_close(lc, lp, rtol=2e-2, atol=2e-3)
        for k in sp:
            torch.testing.assert_close(sc[k].float(), sp[k].float(), rtol=2e-2, atol=2e-3, msg=k)
    finally:
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = flags


def test_switching_checkpointing_is_not_a_change_of_the_run():
    """Resuming with checkpointing switched on (say, after running out of memory) continues the same run."""
    from fastcvrl.checkpoint import run_changes
    from fastcvrl.config import Config, to_dict

    old, new = Config(), Config()
    new.model.activation_checkpointing = "block"
    assert run_changes(to_dict(old), to_dict(new)) == {}
    new.model.proj_dim = 64  # a model key that does change it, for contrast
    assert set(run_changes(to_dict(old), to_dict(new))) == {"model.proj_dim"}
