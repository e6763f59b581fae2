"""The training step: eager step vs an obvious reference, layouts agree, metrics, and graphed == eager
(GPU)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from fastcvrl.loss import nt_xent_reference
from fastcvrl.step import GraphedStep, Metrics, TrainStep, build_step


class _Counter:
    """Stand-in schedule: counts its steps (the real one writes the lr tensor)."""

    def __init__(self) -> None:
        self.n = 0

    def step(self) -> None:
        self.n += 1


def _model(seed: int = 0, dtype: torch.dtype = torch.float64) -> nn.Module:
    """Conv3d + BN + pool + MLP head: enough for BN statistics and channels-last to matter (float64: the
    comparisons below are then exact up to summation order)."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv3d(3, 8, kernel_size=3, padding=1),
        nn.BatchNorm3d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool3d(1),
        nn.Flatten(),
        nn.Linear(8, 16),
        nn.BatchNorm1d(16),
        nn.ReLU(),
        nn.Linear(16, 8),
    ).to(dtype)


def _views(
    b: int = 6, seed: int = 1, dtype: torch.dtype = torch.float64
) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(b, 3, 4, 8, 8, generator=g, dtype=dtype)  # (B, 3, T, H, W)
    v1 = base + 0.3 * torch.randn(base.shape, generator=g, dtype=dtype)
    v2 = base + 0.3 * torch.randn(base.shape, generator=g, dtype=dtype)
    fmt = torch.channels_last_3d
    return v1.contiguous(memory_format=fmt), v2.contiguous(memory_format=fmt)


def test_eager_step_matches_reference_loss_and_sgd_update():
    """One step = NT-Xent over one 2B-clip forward (BN statistics over both views), backward, SGD,
    schedule."""
    model, ref = _model(), _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    sched = _Counter()
    step = TrainStep(model, opt, sched, temperature=0.2, channels_last=True)
    for i in range(3):
        v1, v2 = _views(seed=i)
        loss, acc = step(v1, v2)
        z = ref(torch.cat([v1, v2]))  # (2B, 8), the obvious way
        expect = nt_xent_reference(*z.chunk(2), temperature=0.2)
        expect.backward()
        with torch.no_grad():
            for p in ref.parameters():
                p -= 0.5 * p.grad
                p.grad = None
        assert loss.dim() == 0 and acc.dim() == 0
        assert torch.allclose(loss, expect.detach(), rtol=1e-10, atol=1e-10)
        for p, q in zip(model.parameters(), ref.parameters()):
            assert torch.allclose(p, q, rtol=1e-9, atol=1e-10)
    for b, c in zip(model.buffers(), ref.buffers()):  # BN running stats saw the same 2B batches
        assert torch.allclose(b.double(), c.double(), rtol=1e-9, atol=1e-10)
    assert sched.n == 3


def test_concatenated_views_share_batchnorm_statistics():
    """The decision documented in TrainStep: BN sees both views together, which differs from two passes."""
    model = _model()
    v1, v2 = _views()
    joint = model(torch.cat([v1, v2]))
    separate = torch.cat([model(v1), model(v2)])
    assert not torch.allclose(joint, separate, atol=1e-4)


def test_channels_last_and_contiguous_steps_agree():
    a, b = _model(), _model()
    sa = TrainStep(a, torch.optim.SGD(a.parameters(), lr=0.3, momentum=0.9), _Counter(), channels_last=True)
    sb = TrainStep(b, torch.optim.SGD(b.parameters(), lr=0.3, momentum=0.9), _Counter(), channels_last=False)
    for i in range(3):
        v1, v2 = _views(seed=10 + i)
        la, _ = sa(v1, v2)
        lb, _ = sb(v1.contiguous(), v2.contiguous())
        assert torch.allclose(la, lb, rtol=1e-10, atol=1e-10)
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.allclose(p, q, rtol=1e-9, atol=1e-10)


def test_bf16_autocast_step_is_close_to_fp32():
    a, b = _model(dtype=torch.float32), _model(dtype=torch.float32)
    sa = TrainStep(a, torch.optim.SGD(a.parameters(), lr=0.1), _Counter(), precision="fp32")
    sb = TrainStep(b, torch.optim.SGD(b.parameters(), lr=0.1), _Counter(), precision="bf16")
    v1, v2 = _views(dtype=torch.float32)
    la, _ = sa(v1, v2)
    lb, _ = sb(v1, v2)
    assert lb.dtype == torch.float32  # the loss is computed in fp32 from bf16 activations
    assert torch.allclose(la, lb, rtol=0.05)


def test_loss_falls_over_steps_on_learnable_views():
    model = _model()
    step = TrainStep(
        model, torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9), _Counter(), temperature=0.2
    )
    v1, v2 = _views(b=8, seed=3)
    losses = [float(step(v1, v2)[0]) for _ in range(20)]
    assert losses[-1] < 0.8 * losses[0]


def test_unknown_precision_is_an_error_naming_the_key():
    m = _model()
    with pytest.raises(ValueError, match="train.precision"):
        TrainStep(m, torch.optim.SGD(m.parameters(), lr=0.1), _Counter(), precision="fp8")


def test_disabled_graph_is_exactly_the_eager_step():
    m = _model()
    step = TrainStep(m, torch.optim.SGD(m.parameters(), lr=0.1), _Counter())
    assert build_step(step, cuda_graph=False, device=torch.device("cpu")) is step
    assert build_step(step, cuda_graph=True, device=torch.device("cpu")) is step  # no CUDA: eager


def test_graph_refuses_a_step_with_a_grad_scaler():
    m = _model()
    step = TrainStep(
        m, torch.optim.SGD(m.parameters(), lr=0.1), _Counter(), scaler=torch.amp.GradScaler("cpu")
    )
    with pytest.raises(ValueError, match="GradScaler"):
        GraphedStep(step)


def test_metrics_window_mean_and_non_finite_propagation():
    m = Metrics(torch.device("cpu"))
    for loss, acc in [(1.0, 0.0), (2.0, 0.5), (4.0, 1.0)]:
        m.add(torch.tensor(loss), torch.tensor(acc))
    assert m.mean().tolist() == pytest.approx([7 / 3, 0.5])
    m.reset()
    m.add(torch.tensor(3.0), torch.tensor(1.0))
    assert m.mean().tolist() == pytest.approx([3.0, 1.0])
    m.add(torch.tensor(float("nan")), torch.tensor(1.0))
    m.add(torch.tensor(1.0), torch.tensor(1.0))
    assert torch.isnan(m.mean()[0])  # one bad step in a window is never averaged away


# ------------------------------------------------------------------------------------------------- GPU
def _real_parts(model: nn.Module, steps: int):
    from fastcvrl.config import OptimConfig
    from fastcvrl.optim import build_optimizer
    from fastcvrl.schedule import WarmupCosine

    opt = build_optimizer(OptimConfig(name="lars", lr=0.3, base_batch_size=8), model, 8)
    return opt, WarmupCosine(opt.lr_tensor, 0.3, 2, steps)


@pytest.fixture
def exact_cuda():
    """Deterministic cuDNN, no TF32: eager and graphed runs then pick the same kernels."""
    flags = (
        torch.backends.cudnn.deterministic,
        torch.backends.cudnn.benchmark,
        torch.backends.cuda.matmul.allow_tf32,
        torch.backends.cudnn.allow_tf32,
    )
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    (
        torch.backends.cudnn.deterministic,
        torch.backends.cudnn.benchmark,
        torch.backends.cuda.matmul.allow_tf32,
        torch.backends.cudnn.allow_tf32,
    ) = flags


@pytest.mark.gpu
@pytest.mark.parametrize("precision,uint8", [("fp32", False), ("bf16", False), ("bf16", True)])
def test_graphed_step_equals_eager_step(precision, uint8, exact_cuda):
    from dali_pipelines.normalize import Normalize
    from fastcvrl.config import ModelConfig
    from fastcvrl.model import build_model

    dev = torch.device("cuda")
    torch.manual_seed(0)
    base = build_model(ModelConfig(arch="r3d_tiny", proj_hidden=64, sync_bn=False))
    models = [copy.deepcopy(base).to(dev, memory_format=torch.channels_last_3d) for _ in range(2)]
    steps = 7  # 3 warm-up, the capture step, 3 replays
    runs = []
    for k, model in enumerate(models):
        opt, sched = _real_parts(model, steps)
        norm = Normalize(
            [0.45] * 3, [0.225] * 3, torch.bfloat16 if precision == "bf16" else torch.float32, dev
        )
        eager = TrainStep(model, opt, sched, precision=precision, temperature=0.1, normalize=norm)
        fn = GraphedStep(eager, warmup=3, stream=torch.cuda.Stream()) if k == 1 else eager
        losses = []
        for i in range(steps):
            g = torch.Generator().manual_seed(i)
            if uint8:  # DALI's frames as the GPU hand-off gives them: (B, 3, T, H, W) uint8 views
                v1, v2 = (
                    torch.randint(0, 256, (8, 4, 32, 32, 3), generator=g, dtype=torch.uint8)
                    .to(dev)
                    .permute(0, 4, 1, 2, 3)
                    for _ in range(2)
                )
            else:
                v1, v2 = (
                    torch.randn(8, 3, 4, 32, 32, generator=g)
                    .to(dev)
                    .contiguous(memory_format=torch.channels_last_3d)
                    for _ in range(2)
                )
            loss, _ = fn(v1, v2)
            losses.append(loss.clone())
        runs.append(
            (torch.stack(losses).cpu(), [p.detach().cpu() for p in model.parameters()], float(opt.lr_tensor))
        )
    (le, pe, lre), (lg, pg, lrg) = runs
    assert isinstance(fn, GraphedStep) and fn.graph is not None
    tol = dict(rtol=1e-4, atol=1e-5) if precision == "fp32" else dict(rtol=2e-2, atol=2e-3)
    assert torch.allclose(le, lg, **tol), (le, lg)
    for p, q in zip(pe, pg):
        assert torch.allclose(p, q, **tol)
    assert lre == pytest.approx(lrg)


@pytest.mark.gpu
@pytest.mark.parametrize("uint8", [False, True])
def test_step_has_no_host_sync(uint8):
    from dali_pipelines.normalize import Normalize
    from fastcvrl.config import ModelConfig
    from fastcvrl.model import build_model

    dev = torch.device("cuda")
    model = build_model(ModelConfig(arch="r3d_tiny", proj_hidden=64, sync_bn=False)).to(
        dev, memory_format=torch.channels_last_3d
    )
    opt, sched = _real_parts(model, 10)
    step = TrainStep(
        model, opt, sched, precision="bf16", normalize=Normalize([0.45] * 3, [0.225] * 3, torch.bfloat16, dev)
    )
    if uint8:  # the GPU hand-off: DALI's frames, normalised inside the step
        v1, v2 = (
            torch.randint(0, 256, (8, 4, 32, 32, 3), dtype=torch.uint8, device=dev).permute(0, 4, 1, 2, 3)
            for _ in range(2)
        )
    else:
        v1, v2 = (
            torch.randn(8, 3, 4, 32, 32, device=dev).contiguous(memory_format=torch.channels_last_3d)
            for _ in range(2)
        )
    step(v1, v2)  # first step allocates optimizer state
    metrics = Metrics(dev)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            metrics.add(*step(v1, v2))
    finally:
        torch.cuda.set_sync_debug_mode("default")


# ------------------------------------------------------------------ capture wiring, checked with stand-ins
class _FakeStream:
    def __init__(self, name: str) -> None:
        self.name = name

    def wait_stream(self, other) -> None:
        pass


def test_warm_up_and_capture_share_one_side_stream_in_thread_local_mode(monkeypatch):
    """With CUDA's entry points replaced by recorders: warm-up runs under the given side stream, capture runs
    on that same stream with capture_error_mode="thread_local", and the step captured sees the uint8 static
    input buffers (normalisation inside the graph)."""
    import contextlib

    from dali_pipelines.normalize import Normalize

    log = []
    main = _FakeStream("main")
    side = _FakeStream("side")

    @contextlib.contextmanager
    def stream(s):
        log.append(("stream", s.name))
        yield

    @contextlib.contextmanager
    def graph(g, stream=None, capture_error_mode="global", **kw):
        log.append(("capture", stream.name, capture_error_mode))
        yield

    class _Graph:
        def replay(self) -> None:
            log.append(("replay",))

    monkeypatch.setattr(torch.cuda, "current_stream", lambda *a: main)
    monkeypatch.setattr(torch.cuda, "stream", stream)
    monkeypatch.setattr(torch.cuda, "graph", graph)
    monkeypatch.setattr(torch.cuda, "CUDAGraph", _Graph)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: None)
    m = _model(dtype=torch.float32)
    eager = TrainStep(
        m,
        torch.optim.SGD(m.parameters(), lr=0.1),
        _Counter(),
        normalize=Normalize([0.5] * 3, [0.25] * 3, torch.float32, "cpu"),
    )
    seen = []
    real_input = eager.input
    eager.input = lambda a, b: (seen.append((a.dtype, a.data_ptr())), real_input(a, b))[1]
    step = build_step(eager, cuda_graph=True, device=torch.device("cuda"), warmup=2, stream=side)
    assert isinstance(step, GraphedStep) and step.side is side
    u = torch.randint(0, 256, (6, 4, 8, 8, 3), dtype=torch.uint8).permute(0, 4, 1, 2, 3)
    for _ in range(4):
        step(u, u.clone())
    assert log[:2] == [("stream", "side"), ("stream", "side")]  # warm-up
    assert log[2] == ("capture", "side", "thread_local")
    assert log[3:] == [("replay",), ("replay",)]
    assert step.static_in[0].dtype == torch.uint8
    assert step.static_in[0].is_contiguous(memory_format=torch.channels_last_3d)
    assert seen[2] == (torch.uint8, step.static_in[0].data_ptr())  # captured from the static uint8 buffer
