"""The count-based bootstrap equals resampling the examples explicitly."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import roc_auc_score

from mnemoscope.analysis import resampling
from mnemoscope.analysis.leakage import leakage_resampled
from mnemoscope.analysis.overlap import top_overlap_resampled
from mnemoscope.analysis.resampling import (
    RankSide,
    Resamples,
    count_blocks,
    resample_midranks,
    spearman_sides,
    t_interval,
)

N, B, SEED = 50, 6, 11


def _draws() -> np.ndarray:
    """The resamples as explicit lists of positions, drawn the documented way."""
    return np.random.default_rng(SEED).integers(0, N, size=(B, N))


def _values(seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 6, N).astype(float)  # heavy ties
    return a, np.round(a + rng.normal(scale=2.0, size=N), 0)


def test_counts_are_the_draws_of_the_documented_generator() -> None:
    counts = np.concatenate(list(count_blocks(N, B, SEED)))
    expected = np.stack([np.bincount(row, minlength=N) for row in _draws()])
    np.testing.assert_array_equal(counts, expected)
    assert (counts.sum(axis=1) == N).all()


def test_blocks_do_not_change_the_resamples(monkeypatch: pytest.MonkeyPatch) -> None:
    whole = np.concatenate(list(count_blocks(N, B, SEED)))
    monkeypatch.setattr(resampling, "_BLOCK_ELEMENTS", 2 * N)  # two rows a block
    blocks = list(count_blocks(N, B, SEED))
    assert len(blocks) == B // 2
    np.testing.assert_array_equal(np.concatenate(blocks), whole)


def test_midranks_equal_rankdata_on_the_resampled_list() -> None:
    a, _ = _values()
    counts = np.concatenate(list(count_blocks(N, B, SEED)))
    ranks, constant = resample_midranks(a, counts)
    for row, draw in enumerate(_draws()):
        np.testing.assert_allclose(ranks[row, draw], stats.rankdata(a[draw]))
    assert not constant.any()
    _, constant = resample_midranks(np.ones(N), counts)
    assert constant.all()


def test_spearman_sides_equal_scipy_on_each_resample() -> None:
    a, b = _values()
    resamples = Resamples(B, SEED)
    value, boot = spearman_sides(RankSide(a, resamples, "a"), RankSide(b, resamples, "b"))
    assert value == pytest.approx(stats.spearmanr(a, b).statistic, abs=1e-12)
    expected = [stats.spearmanr(a[d], b[d]).statistic for d in _draws()]
    np.testing.assert_allclose(boot, expected, atol=1e-12)


def test_top_overlap_equals_explicit_top_sets() -> None:
    a, b = _values()
    ids = np.arange(N) * 3 + 7
    point, boot = top_overlap_resampled(
        ids, {"a": a, "b": b}, [("a", "b")], (0.1, 0.3), Resamples(B, SEED)
    )

    def top(values: np.ndarray, draw: np.ndarray, n_top: int) -> set[int]:
        # rank the drawn items: highest first, then smaller example id, then draw position
        order = np.lexsort((np.arange(draw.size), ids[draw], -values[draw]))
        return set(order[:n_top].tolist())

    everything = np.arange(N)
    for j, n_top in enumerate((5, 15)):
        assert point[0, j] == len(top(a, everything, n_top) & top(b, everything, n_top))
        expected = [len(top(a, d, n_top) & top(b, d, n_top)) for d in _draws()]
        np.testing.assert_array_equal(boot[0, j], expected)


def test_leakage_auc_and_precision_equal_explicit_resamples() -> None:
    a, b = _values()
    ids = np.arange(N)
    out = leakage_resampled(ids, a, {"b": b}, (0.2,), Resamples(B, SEED))
    for row, draw in enumerate(_draws()):
        order = np.lexsort((np.arange(N), ids[draw], -a[draw]))
        positive = np.zeros(N, dtype=bool)
        positive[order[:10]] = True
        top_b = np.lexsort((np.arange(N), ids[draw], -b[draw]))[:10]
        assert out["auc"][1][0, 0, row] == pytest.approx(
            _auc_of_distinct_examples(draw, positive, b)
        )
        assert out["precision"][1][0, 0, row] == positive[top_b].mean()


def _auc_of_distinct_examples(draw: np.ndarray, positive: np.ndarray, score: np.ndarray) -> float:
    """AUC over (positive item, negative item) pairs that are not copies of one example."""
    wins, pairs = 0.0, 0
    for i in np.flatnonzero(positive):
        for j in np.flatnonzero(~positive):
            if draw[i] != draw[j]:
                pairs += 1
                wins += (
                    1.0
                    if score[draw[i]] > score[draw[j]]
                    else 0.5 * (score[draw[i]] == score[draw[j]])
                )
    return wins / pairs


def test_leakage_auc_without_split_copies_is_sklearns() -> None:
    a, b = _values()
    out = leakage_resampled(np.arange(N), a, {"b": b}, (0.2,), Resamples(1, SEED))
    positive = np.zeros(N, dtype=bool)
    positive[np.lexsort((np.arange(N), -a))[:10]] = True
    assert out["auc"][0][0, 0] == pytest.approx(roc_auc_score(positive, b))


def test_t_interval_is_scipys() -> None:
    values = np.array([0.81, 0.79, 0.84, 0.80])
    mean, low, high = t_interval(values, 0.9)
    expected = stats.t.interval(0.9, 3, loc=values.mean(), scale=stats.sem(values))
    assert mean == pytest.approx(values.mean())
    assert (low, high) == pytest.approx(expected)
    assert np.isnan(t_interval(np.array([0.5]), 0.95)[1])
