"""CVRL temporal sampling and sharding (pure NumPy): the gap follows the configured law, clips fit the
video."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("av")  # absent on a bare GPU image: skip, not a collection error
stats = pytest.importorskip("scipy.stats")

from dali_pipelines import temporal
from dali_pipelines.host import shard_order


def _reference_pmf(m: int, rule: str, power: float) -> np.ndarray:
    """The rule stated directly: density 1 - (g/M)^p (uniform: 1) integrated numerically over each frame
    bin."""
    g = np.linspace(0.0, m, 200 * m + 1)
    dens = np.ones_like(g) if rule == "uniform" else 1.0 - (g / m) ** (1.0 if rule == "linear" else power)
    cell = (dens[1:] + dens[:-1]) / 2  # trapezoid per fine cell
    bins = cell.reshape(m, 200).sum(1)
    return bins / bins.sum()


@pytest.mark.parametrize("rule,power", [("linear", 1.0), ("power", 2.5), ("uniform", 1.0)])
def test_gap_follows_configured_distribution(rule, power):
    m = 40
    assert np.allclose(temporal.gap_pmf(m, rule, power), _reference_pmf(m, rule, power), atol=1e-6)
    rng = np.random.default_rng(0)
    length = m + (8 - 1) * 2  # T=8, s=2
    starts = temporal.sample_starts(rng, np.full(20000, length), 8, 2, rule, power)
    gaps = np.abs(starts[:, 1] - starts[:, 0])
    observed = np.bincount(gaps, minlength=m)
    assert len(observed) == m
    chi = stats.chisquare(observed, 20000 * _reference_pmf(m, rule, power))
    assert chi.pvalue > 1e-3, (rule, chi)


def test_other_rules_are_rejected_by_a_chi_square():
    """The test above has power: linear draws do not pass as uniform."""
    m = 40
    starts = temporal.sample_starts(np.random.default_rng(1), np.full(20000, m + 14), 8, 2, "linear")
    observed = np.bincount(np.abs(starts[:, 1] - starts[:, 0]), minlength=m)
    assert stats.chisquare(observed, 20000 * _reference_pmf(m, "uniform", 1.0)).pvalue < 1e-6


def test_starts_fit_the_video_and_order_is_swapped_half_the_time():
    rng = np.random.default_rng(2)
    lengths = rng.integers(15, 120, 5000)
    starts = temporal.sample_starts(rng, lengths, 8, 2)
    m = lengths - 14
    assert (starts >= 0).all() and (starts.max(1) < m).all()
    first = starts.min(1)
    gap = starts.max(1) - first
    assert (first < m - gap).all()
    swapped = (starts[:, 0] > starts[:, 1])[gap > 0].mean()
    assert 0.45 < swapped < 0.55
    # the first start is uniform on [0, M - gap): its position relative to that range is U(0, 1)
    u = (first + 0.5) / (m - gap)
    assert stats.kstest(u[(m - gap) > 20], "uniform").pvalue > 1e-3


def test_short_videos_loop_their_frames():
    assert temporal.num_starts(10, 8, 2) == 10
    idx = temporal.clip_indices(7, 10, 8, 2)
    assert idx.tolist() == [7, 9, 1, 3, 5, 7, 9, 1]
    starts = temporal.sample_starts(np.random.default_rng(0), np.full(200, 10), 8, 2)
    assert (starts >= 0).all() and (starts < 10).all()


def test_short_videos_get_two_independent_uniform_starts():
    """L <= (T-1)s: no gap rule; the two starts are independent and uniform on [0, L) (as
    sample_ssl_sequence)."""
    n, length = 20000, 10
    starts = temporal.sample_starts(np.random.default_rng(3), np.full(n, length), 8, 2)
    joint = np.zeros((length, length))
    np.add.at(joint, (starts[:, 0], starts[:, 1]), 1)
    assert stats.chisquare(joint.ravel()).pvalue > 1e-3  # uniform on the L x L grid: independent uniforms
    gaps = np.bincount(np.abs(starts[:, 1] - starts[:, 0]), minlength=length)
    want = np.array([length] + [2 * (length - k) for k in range(1, length)]) / length**2  # |U1 - U2|
    assert stats.chisquare(gaps, n * want).pvalue > 1e-3
    # the boundary: L = (T-1)s + 1 has M = 1 start and the gap rule (gap 0)
    one = temporal.sample_starts(np.random.default_rng(4), np.full(100, 15), 8, 2)
    assert (one == 0).all()


def test_even_starts_cover_first_and_last():
    # M = 100 - 7 * 2 = 86 starts: 0..85
    assert temporal.even_starts(100, 8, 2, 3).tolist() == [0, 42, 85]
    assert temporal.even_starts(100, 8, 2, 1).tolist() == [42]


def test_unknown_rule_names_it():
    with pytest.raises(ValueError, match="triangular"):
        temporal.sample_starts(np.random.default_rng(0), [50], 8, 2, "triangular")


@pytest.mark.parametrize("world", [1, 2, 3])
def test_shards_partition_every_epoch(world):
    n = 23
    for epoch in range(3):
        shards = [shard_order(n, r, world, epoch, seed=5, shuffle=True) for r in range(world)]
        allv = np.concatenate(shards)
        assert sorted(allv.tolist()) == list(range(n))  # no video twice, none lost
        assert max(map(len, shards)) - min(map(len, shards)) <= 1
    e0, e1 = shard_order(n, 0, 1, 0, 5, True), shard_order(n, 0, 1, 1, 5, True)
    assert not np.array_equal(e0, e1)  # reshuffled every epoch
    assert np.array_equal(e0, shard_order(n, 0, 1, 0, 5, True))  # deterministic for a seed
    assert not np.array_equal(e0, shard_order(n, 0, 1, 0, 6, True))
    assert shard_order(n, 0, 1, 3, 5, False).tolist() == list(range(n))


@pytest.mark.parametrize("rule", ["linear", "uniform"])
def test_one_video_scalar_starts_match_the_array_path(rule):
    """``sample_starts`` for one video takes ``starts_one`` (Python floats): the same starts, from the same
    three uniforms, as the vectorised path over a one-video array, for long, exact and short (looping)
    videos."""
    for seed in range(300):
        n = (
            1 + seed % 97
        )  # 1..97 frames: shorter than, equal to and longer than a 16 x 2 clip's 31-frame reach
        for frames, stride in ((16, 2), (4, 2), (1, 1)):
            scalar = temporal.sample_starts(np.random.default_rng(seed), n, frames, stride, rule)
            array = temporal.sample_starts(np.random.default_rng(seed), np.array([n]), frames, stride, rule)
            assert scalar.dtype == array.dtype and scalar.tolist() == array.tolist(), (
                seed,
                n,
                frames,
                stride,
            )
