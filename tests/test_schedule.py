"""Warm-up + cosine schedule: shape, endpoints, device path vs host reference, checkpointing."""

from __future__ import annotations

import pytest
import torch

from fastcvrl.optim import LARS
from fastcvrl.schedule import WarmupCosine

BASE, MIN, WARM, TOTAL = 0.32, 0.01, 7, 40


def _sched(**kw) -> WarmupCosine:
    args = dict(base_lr=BASE, warmup_steps=WARM, total_steps=TOTAL, min_lr=MIN) | kw
    return WarmupCosine(torch.tensor(0.0), **args)


def test_device_path_equals_reference_every_step():
    s = _sched()
    ptr = s.lr_tensor.data_ptr()
    for k in range(TOTAL + 5):
        assert s.lr_tensor.item() == pytest.approx(s.value_at(k), rel=1e-6, abs=1e-9), k
        s.step()
    assert s.lr_tensor.data_ptr() == ptr  # written in place


def test_endpoints_and_shape():
    s = _sched()
    assert 0 < s.value_at(0) <= BASE / WARM + 1e-12  # starts near 0
    assert s.value_at(WARM - 1) == pytest.approx(BASE)
    assert s.value_at(WARM) == pytest.approx(BASE)
    assert s.value_at(TOTAL) == pytest.approx(MIN) and s.value_at(TOTAL + 100) == pytest.approx(MIN)
    warm = [s.value_at(k) for k in range(WARM)]
    assert all(b - a == pytest.approx(BASE / WARM) for a, b in zip(warm, warm[1:]))  # linear
    decay = [s.value_at(k) for k in range(WARM, TOTAL + 1)]
    assert all(b < a for a, b in zip(decay, decay[1:]))  # strictly decreasing to the end


def test_cosine_midpoint():
    s = WarmupCosine(torch.tensor(0.0), 1.0, 10, 110, 0.0)
    assert s.value_at(60) == pytest.approx(0.5)
    assert s.value_at(35) == pytest.approx(0.5 * (1 + 2**-0.5))


def test_no_warmup_starts_at_base():
    s = _sched(warmup_steps=0)
    assert s.lr_tensor.item() == pytest.approx(BASE) and s.value_at(0) == pytest.approx(BASE)


def test_drives_the_optimizer_lr_tensor():
    p = torch.nn.Parameter(torch.ones(3, 3))
    opt = LARS([p], 0.0)
    s = WarmupCosine(opt.lr_tensor, BASE, WARM, TOTAL)
    for _ in range(3):
        s.step()
    assert opt.lr_tensor.item() == pytest.approx(s.value_at(3))


def test_state_dict_round_trip():
    a = _sched()
    for _ in range(13):
        a.step()
    b = _sched()
    b.load_state_dict(a.state_dict())
    assert b.state_dict() == {"step": 13}
    for _ in range(5):
        assert b.lr_tensor.item() == a.lr_tensor.item()
        a.step()
        b.step()


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="warmup_steps"):
        _sched(warmup_steps=50)
    with pytest.raises(ValueError, match="min_lr"):
        _sched(min_lr=1.0)
    with pytest.raises(ValueError, match="0-dim"):
        WarmupCosine(torch.zeros(1), 0.1, 1, 10)


@pytest.mark.gpu
def test_cuda_graph_replay_advances_schedule():
    lr = torch.zeros((), device="cuda")
    s = WarmupCosine(lr, BASE, WARM, TOTAL, MIN)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        s.step()  # warm-up outside the graph
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        s.step()
    for _ in range(10):
        graph.replay()
    torch.cuda.synchronize()
    # 1 eager step + 1 during capture (captured, not executed) + 10 replays
    assert lr.item() == pytest.approx(s.value_at(11), rel=1e-6)
