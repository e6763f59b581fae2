"""Fused LARS vs the per-parameter reference, its SGD mode, no host sync, checkpointing, build_optimizer."""

from __future__ import annotations

import copy
import io

import pytest
import torch
from torch import nn

from fastcvrl.config import OptimConfig
from fastcvrl.optim import LARS, LARSReference, build_optimizer

LRS = [0.5, 1.0, 0.8, 0.3, 0.1, 0.05]


def _params(seed=0) -> list[nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    shapes = [(4, 3, 3, 3, 3), (5, 4), (5,), (4,), (3, 3), (2, 2)]  # conv, linear, bias, BN, ...
    ps = [nn.Parameter(torch.randn(s, generator=g)) for s in shapes]
    ps[4].data.zero_()  # zero weight: ||w|| = 0 -> trust 1
    ps[5].data.zero_()  # zero weight and (below) zero grad: both norms 0
    return ps


def _grads(step: int, params) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(100 + step)
    out = [torch.randn(p.shape, generator=g) for p in params]
    out[5].zero_()
    return out


def _run(opt_cls, params, steps, set_lr, **kw):
    opt = opt_cls(params, LRS[0], **kw)
    for k in range(steps):
        set_lr(opt, LRS[k])
        for p, g in zip(params, _grads(k, params)):
            p.grad = g
        opt.step()
    return opt


def _set_fused(opt, lr):
    opt.lr_tensor.fill_(lr)


def _set_ref(opt, lr):
    for group in opt.param_groups:
        group["lr"] = lr


@pytest.mark.parametrize("trust", [True, False])
def test_fused_matches_reference_over_steps(trust):
    kw = dict(momentum=0.9, weight_decay=1e-2, eta=0.01, trust=trust)
    fused_p, ref_p = _params(), _params()
    _run(LARS, fused_p, len(LRS), _set_fused, **kw)
    _run(LARSReference, ref_p, len(LRS), _set_ref, **kw)
    for a, b in zip(fused_p, ref_p):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert not torch.equal(fused_p[0], _params()[0])


def test_first_step_formulas():
    params = _params()
    w0 = [p.detach().clone() for p in params]
    wd, eta, lr = 1e-2, 0.01, LRS[0]
    _run(LARS, params, 1, _set_fused, momentum=0.9, weight_decay=wd, eta=eta)
    g = _grads(0, params)
    # kernel: trust-scaled, weight-decayed
    gp = g[1] + wd * w0[1]
    expected = w0[1] - lr * eta * w0[1].norm() / gp.norm() * gp
    torch.testing.assert_close(params[1], expected)
    # bias and BN (ndim <= 1): plain momentum step, no decay, no trust
    for i in (2, 3):
        torch.testing.assert_close(params[i], w0[i] - lr * g[i])
    # zero weight: trust 1; zero weight and zero grad: unchanged, no NaN
    torch.testing.assert_close(params[4], -lr * g[4])
    assert torch.equal(params[5], torch.zeros(2, 2))


def test_sgd_mode_equals_torch_sgd_with_decay_on_kernels():
    model = nn.Sequential(nn.Conv3d(3, 4, 3), nn.BatchNorm3d(4), nn.Flatten(), nn.LazyLinear(5))
    model(torch.randn(2, 3, 4, 4, 4))
    ref = copy.deepcopy(model)
    ours = LARS(model.parameters(), 0.1, momentum=0.9, weight_decay=1e-3, trust=False)
    kernels = [p for p in ref.parameters() if p.ndim > 1]
    others = [p for p in ref.parameters() if p.ndim <= 1]
    sgd = torch.optim.SGD(
        [{"params": kernels, "weight_decay": 1e-3}, {"params": others, "weight_decay": 0.0}],
        lr=0.1,
        momentum=0.9,
    )
    for k in range(4):
        x = torch.randn(2, 3, 4, 4, 4, generator=torch.Generator().manual_seed(k))
        for m, opt in ((model, ours), (ref, sgd)):
            opt.zero_grad()
            m(x).square().mean().backward()
            opt.step()
    for a, b in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_step_never_syncs_with_host(monkeypatch):
    params = _params()
    opt = LARS(params, 0.1, weight_decay=1e-2)
    for p, g in zip(params, _grads(0, params)):
        p.grad = g

    def forbidden(*a, **k):
        raise AssertionError("host sync in LARS.step")

    for name in ("item", "__bool__", "__float__", "__int__", "tolist", "cpu", "numpy"):
        monkeypatch.setattr(torch.Tensor, name, forbidden)
    opt.step()
    opt.step()


def test_lr_tensor_shared_and_in_place():
    params = _params()
    lr = torch.tensor(0.25)
    opt = LARS([{"params": params[:2]}, {"params": params[2:], "weight_decay": 0.0}], lr)
    assert opt.lr_tensor is lr and opt.lr_tensor.dim() == 0
    lr.fill_(0.0)  # lr 0: nothing moves
    before = [p.detach().clone() for p in params]
    for p, g in zip(params, _grads(0, params)):
        p.grad = g
    opt.step()
    assert all(torch.equal(a, b) for a, b in zip(params, before))
    with pytest.raises(ValueError, match="0-dim"):
        LARS(params, torch.tensor([0.1]))


def test_state_dict_round_trip_preserves_tensors():
    params = _params()
    opt = _run(LARS, params, 3, _set_fused, weight_decay=1e-2)
    buf = io.BytesIO()
    torch.save({"params": [p.detach().clone() for p in params], "opt": opt.state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf)

    # a fresh optimizer that has already stepped (buffers and lr exist, e.g. held by a captured graph)
    restored = [nn.Parameter(torch.zeros_like(p)) for p in params]
    opt2 = LARS(restored, 9.0, weight_decay=1e-2)
    for p in restored:
        p.grad = torch.ones_like(p)
    opt2.step()
    lr_obj, buf_objs = opt2.lr_tensor, [opt2.state[p]["momentum_buffer"] for p in restored]
    with torch.no_grad():
        for p, s in zip(restored, saved["params"]):
            p.copy_(s)
    opt2.load_state_dict(saved["opt"])
    assert opt2.lr_tensor is lr_obj and opt2.lr_tensor.item() == opt.lr_tensor.item()
    assert all(opt2.state[p]["momentum_buffer"] is b for p, b in zip(restored, buf_objs))

    for k in range(3, 5):  # both continue identically (momentum buffers matter here)
        for ps, o in ((params, opt), (restored, opt2)):
            for p, g in zip(ps, _grads(k, ps)):
                p.grad = g
            o.step()
    for a, b in zip(restored, params):
        torch.testing.assert_close(a, b)


def test_build_optimizer_scales_lr_and_selects_mode():
    model = nn.Linear(4, 2)
    opt = build_optimizer(OptimConfig(lr=0.32, base_batch_size=1024), model, 512)
    assert isinstance(opt, LARS) and opt.lr_tensor.item() == pytest.approx(0.16)
    assert opt.param_groups[0]["trust"] and opt.param_groups[0]["weight_decay"] == 1e-6
    sgd = build_optimizer(OptimConfig(name="sgd", lr=0.1, base_batch_size=256), model, 1024)
    assert not sgd.param_groups[0]["trust"] and sgd.lr_tensor.item() == pytest.approx(0.4)
    with pytest.raises(ValueError, match="optim.name"):
        build_optimizer(OptimConfig(name="adam"), model, 256)


@pytest.mark.gpu
def test_cuda_step_no_sync_and_graph_capture_matches_eager():
    dev = torch.device("cuda")
    params = [nn.Parameter(p.detach().to(dev)) for p in _params()]
    ref = [nn.Parameter(p.detach().clone()) for p in params]
    opt, opt_ref = LARS(params, 0.5, weight_decay=1e-2), LARS(ref, 0.5, weight_decay=1e-2)
    grads = [g.to(dev) for g in _grads(0, params)]
    for ps in (params, ref):
        for p, g in zip(ps, grads):
            p.grad = g.clone()
    opt.step()  # warm-up: creates the momentum buffers
    opt_ref.step()
    torch.cuda.set_sync_debug_mode("error")
    try:
        opt_ref.step()  # eager, must not sync
    finally:
        torch.cuda.set_sync_debug_mode("default")
    graph = torch.cuda.CUDAGraph()
    torch.cuda.synchronize()
    with torch.cuda.graph(graph):
        opt.step()
    graph.replay()
    opt.lr_tensor.fill_(0.1)
    opt_ref.lr_tensor.fill_(0.1)
    graph.replay()
    opt_ref.step()
    torch.cuda.synchronize()
    for a, b in zip(params, ref):
        torch.testing.assert_close(a, b)
