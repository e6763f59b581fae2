"""Weighted kNN monitor: fast path vs loop reference, the weighting rule, and the monitor's mode handling."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from fastcvrl.eval.knn import extract_features, knn_monitor, knn_predict, knn_predict_reference, topk_accuracy


@pytest.mark.parametrize("k,chunk", [(7, 1024), (7, 3), (500, 4)])  # k > N is capped; several chunks
def test_knn_fast_matches_reference(k, chunk):
    g = torch.Generator().manual_seed(0)
    train = torch.randn(40, 6, generator=g) * 3  # not normalised: knn_predict must normalise itself
    labels = torch.randint(0, 5, (40,), generator=g)
    test = torch.randn(11, 6, generator=g)
    fast = knn_predict(train, labels, test, 5, k=k, temperature=0.1, chunk_size=chunk)
    ref = knn_predict_reference(train, labels, test, 5, k=k, temperature=0.1)
    assert fast.shape == (11, 5)
    torch.testing.assert_close(fast, ref, rtol=1e-4, atol=1e-6)


def _unit(angle_deg: float) -> list[float]:
    a = math.radians(angle_deg)
    return [math.cos(a), math.sin(a)]


def test_weighting_prefers_one_close_neighbour_over_three_far_ones_at_low_temperature():
    # Query at angle 0. Class 0: one training clip at 0 deg (sim 1). Class 1: three clips at +-36.87 deg (sim 0.8).
    s = 0.8
    far = math.degrees(math.acos(s))
    train = torch.tensor([_unit(0), _unit(far), _unit(-far), _unit(far)])
    labels = torch.tensor([0, 1, 1, 1])
    query = torch.tensor([_unit(0)])
    # T=0.1: exp(10) = 22026 > 3 exp(8) = 8943 -> class 0 wins although it is outvoted 3:1.
    votes = knn_predict(train, labels, query, 2, k=4, temperature=0.1)
    assert votes.argmax(1).item() == 0
    torch.testing.assert_close(votes[0], torch.tensor([math.exp(10), 3 * math.exp(8)]), rtol=1e-4, atol=0)
    # T=1: exp(1) = 2.7 < 3 exp(0.8) = 6.7 -> the majority wins.
    assert knn_predict(train, labels, query, 2, k=4, temperature=1.0).argmax(1).item() == 1
    # k=1: only the nearest votes, the other class gets nothing.
    v1 = knn_predict(train, labels, query, 2, k=1, temperature=1.0)
    assert v1[0, 1].item() == 0 and v1[0, 0].item() > 0


def test_topk_accuracy():
    scores = torch.tensor([[0.1, 0.5, 0.4], [0.7, 0.2, 0.1], [0.2, 0.3, 0.5]])
    labels = torch.tensor([2, 0, 0])
    acc = topk_accuracy(scores, labels, (1, 2, 5))
    assert acc[1] == pytest.approx(1 / 3)
    assert acc[2] == pytest.approx(2 / 3)
    assert acc[5] == pytest.approx(1.0)  # k capped at the class count


class _MeanColour(nn.Module):
    """(B,3,T,H,W) -> (B,3) mean colour; records its mode and grad state at each call."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(3))
        self.calls: list[tuple[bool, bool]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append((self.training, torch.is_grad_enabled()))
        return x.mean(dim=(2, 3, 4)) * self.scale


def _clips(labels: torch.Tensor, g: torch.Generator, views: int = 1) -> torch.Tensor:
    """Clips whose mean colour is one-hot in the label's channel plus noise: (B*views, 3, 2, 4, 4)."""
    base = torch.nn.functional.one_hot(labels, 3).float().repeat_interleave(views, 0)  # (B*V, 3)
    return base[:, :, None, None, None] + 0.3 * torch.randn(base.shape[0], 3, 2, 4, 4, generator=g)


def test_knn_monitor_classifies_separable_clips_and_restores_train_mode():
    g = torch.Generator().manual_seed(1)
    train_y = torch.arange(60) % 3
    test_y = torch.arange(30) % 3
    train_loader = [(_clips(y, g), y) for y in train_y.split(16)]
    test_loader = [(_clips(y, g), y) for y in test_y.split(8)]
    backbone = _MeanColour().train()
    stats = knn_monitor(backbone, train_loader, test_loader, k=20, temperature=0.1)
    assert stats["knn_top1"] == pytest.approx(1.0)
    assert stats["knn_train_size"] == 60 and stats["knn_test_size"] == 30
    assert all(not training and not grad for training, grad in backbone.calls)  # eval mode, no grad
    assert backbone.training  # restored
    # shuffled labels carry no information: the monitor must not find any.
    perm = torch.randperm(60, generator=g)
    noisy = [(_clips(y, g), y) for y in train_y.split(16)]
    noisy = [(c, y) for (c, _), y in zip(noisy, train_y[perm].split(16))]
    chance = knn_monitor(backbone, noisy, test_loader, k=20, temperature=0.1)
    assert chance["knn_top1"] < 0.7


def test_extract_features_averages_contiguous_views():
    g = torch.Generator().manual_seed(2)
    y = torch.tensor([0, 2, 1])
    clips = _clips(y, g, views=4)  # (12, 3, 2, 4, 4), views of a video contiguous
    backbone = _MeanColour()
    feats, labels = extract_features(backbone, [(clips, y, torch.arange(3))])
    per_view = torch.nn.functional.normalize(clips.mean(dim=(2, 3, 4)), dim=1).view(3, 4, 3).mean(1)
    torch.testing.assert_close(feats, torch.nn.functional.normalize(per_view, dim=1))
    assert labels.tolist() == [0, 2, 1]
