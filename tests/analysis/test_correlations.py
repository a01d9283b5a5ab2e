"""Correlations between score methods and their bootstrap intervals."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from mnemoscope.analysis import correlation_table, correlation_with_ci
from mnemoscope.store.tables import CORRELATIONS, without_fit

B = 200


def test_monotone_nonlinear_relation_has_rank_correlation_one() -> None:
    a = np.random.default_rng(1).normal(size=100)
    result = correlation_with_ci(a, np.exp(a), n_bootstrap=B)
    for name in ("spearman", "kendall"):
        value, low, high, n = result[name]
        assert (value, low, high, n) == (
            pytest.approx(1.0),
            pytest.approx(1.0),
            pytest.approx(1.0),
            100,
        )
    assert result["pearson"][0] < 0.95


def test_values_match_scipy_and_ci_brackets_value() -> None:
    rng = np.random.default_rng(2)
    a = rng.normal(size=200)
    b = 0.3 * a + rng.normal(size=200)
    result = correlation_with_ci(a, b, n_bootstrap=B)
    expected = {
        "spearman": stats.spearmanr(a, b).statistic,
        "pearson": stats.pearsonr(a, b).statistic,
        "kendall": stats.kendalltau(a, b).statistic,
    }
    for name, want in expected.items():
        value, low, high, n = result[name]
        assert value == pytest.approx(want, abs=1e-12)
        assert low <= value <= high
        assert low < high
        assert n == 200


def test_bootstrap_matches_a_naive_loop_over_scipy() -> None:
    rng = np.random.default_rng(3)
    a = rng.normal(size=40)
    b = a + rng.normal(size=40)
    b[::7] = b[0]  # ties, so average ranking matters
    result = correlation_with_ci(a, b, n_bootstrap=50, confidence=0.9, seed=11)
    idx = np.random.default_rng(11).integers(0, 40, size=(50, 40))
    for name, fn in (
        ("spearman", stats.spearmanr),
        ("pearson", stats.pearsonr),
        ("kendall", stats.kendalltau),
    ):
        boot = [fn(a[i], b[i]).statistic for i in idx]
        low, high = np.nanpercentile(boot, [5.0, 95.0])
        assert result[name][1:3] == (pytest.approx(low, abs=1e-12), pytest.approx(high, abs=1e-12))


def test_strong_correlation_has_narrow_ci_and_independence_covers_zero() -> None:
    rng = np.random.default_rng(4)
    a = rng.normal(size=500)
    strong = correlation_with_ci(a, a + 0.01 * rng.normal(size=500), n_bootstrap=B)
    for name in ("spearman", "pearson", "kendall"):
        _, low, high, _ = strong[name]
        assert high - low < 0.1
    _, low, high, _ = correlation_with_ci(a, rng.normal(size=500), n_bootstrap=B)["spearman"]
    assert low < 0.0 < high


def test_ci_covers_population_rho_in_most_repetitions() -> None:
    rho, n = 0.5, 300
    cov = [[1.0, rho], [rho, 1.0]]
    covered = 0
    for rep in range(10):
        a, b = np.random.default_rng(100 + rep).multivariate_normal([0.0, 0.0], cov, n).T
        _, low, high, _ = correlation_with_ci(a, b, n_bootstrap=B, seed=rep)["pearson"]
        covered += low <= rho <= high
    assert covered >= 8  # P(covered >= 8) ~ 0.99 for a 95% interval


def test_non_finite_pairs_are_dropped() -> None:
    rng = np.random.default_rng(5)
    a, b = rng.normal(size=50), rng.normal(size=50)
    a_holes, b_holes = a.copy(), b.copy()
    a_holes[[0, 3]] = np.nan
    b_holes[7] = np.inf
    keep = np.ones(50, bool)
    keep[[0, 3, 7]] = False
    got = correlation_with_ci(a_holes, b_holes, n_bootstrap=B)
    want = correlation_with_ci(a[keep], b[keep], n_bootstrap=B)
    assert got == want
    assert got["pearson"][3] == 47


@pytest.mark.parametrize(
    "a, b",
    [([1.0, 1.0, 1.0, 1.0], [1.0, 2.0, 3.0, 4.0]), ([1.0, 2.0], [2.0, 1.0]), ([], [])],
)
def test_degenerate_input_gives_nan_silently(a: list[float], b: list[float]) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = correlation_with_ci(np.array(a), np.array(b), n_bootstrap=B)
    for value, low, high, n in result.values():
        assert np.isnan(value) and np.isnan(low) and np.isnan(high)
        assert n == len(a)


def test_seed_determines_the_interval() -> None:
    rng = np.random.default_rng(6)
    a = rng.normal(size=100)
    b = a + rng.normal(size=100)
    first = correlation_with_ci(a, b, n_bootstrap=B, seed=1)
    assert correlation_with_ci(a, b, n_bootstrap=B, seed=1) == first
    other = correlation_with_ci(a, b, n_bootstrap=B, seed=2)
    for name in first:
        assert other[name][0] == first[name][0]
        assert other[name][1:3] != first[name][1:3]


@pytest.mark.parametrize(
    "kwargs", [{"n_bootstrap": 0}, {"confidence": 1.0}, {"confidence": 0.0}, {"n_bootstrap": 2.5}]
)
def test_bad_arguments_raise(kwargs: dict[str, float]) -> None:
    a = np.arange(10.0)
    with pytest.raises(ValueError):
        correlation_with_ci(a, a, **kwargs)


def _scores_frame() -> pd.DataFrame:
    rng = np.random.default_rng(7)
    rows = []
    for dataset in ("mnist1d", "blobs"):
        for arch in ("mlp", "cnn"):
            for family, method in (
                ("memorization", "fz"),
                ("influence", "tracin"),
                ("influence", "graddot"),
            ):
                for example_id in range(30):
                    rows.append(
                        {
                            "dataset": dataset,
                            "arch": arch,
                            "seed": 0,
                            "family": family,
                            "method": method,
                            "example_id": example_id,
                            "score": rng.normal(),
                            "stderr": np.nan,
                        }
                    )
    return pd.DataFrame(rows)


def test_correlation_table_pairs_and_columns() -> None:
    table = correlation_table(_scores_frame(), n_bootstrap=20)
    assert list(table.columns) == without_fit(CORRELATIONS).names
    assert len(table) == 2 * 2 * 3 * 3
    pairs = [("fz", "tracin"), ("fz", "graddot"), ("tracin", "graddot")]
    expected_keys = [
        (d, a, ma, mb, s)
        for d in ("mnist1d", "blobs")
        for a in ("mlp", "cnn")
        for ma, mb in pairs
        for s in ("spearman", "pearson", "kendall")
    ]
    got_keys = list(
        table[["dataset", "arch", "method_a", "method_b", "statistic"]].itertuples(
            index=False, name=None
        )
    )
    assert got_keys == expected_keys
    assert (table["n"] == 30).all()
    assert table["n"].dtype == np.int64


def test_correlation_table_matches_pairwise_call_and_joins_on_example_id() -> None:
    scores = _scores_frame()
    # tracin scored only half the examples, listed in reverse order.
    drop = (scores["method"] == "tracin") & (scores["example_id"] >= 15)
    scores = pd.concat(
        [
            scores[~drop & (scores["method"] != "tracin")],
            scores[~drop & (scores["method"] == "tracin")][::-1],
        ]
    )
    table = correlation_table(scores, n_bootstrap=20, seed=3)
    sub = scores[(scores["dataset"] == "blobs") & (scores["arch"] == "cnn")]
    fz = sub[sub["method"] == "fz"].set_index("example_id")["score"]
    tracin = sub[sub["method"] == "tracin"].set_index("example_id")["score"]
    ids = sorted(tracin.index)
    want = correlation_with_ci(fz[ids].to_numpy(), tracin[ids].to_numpy(), n_bootstrap=20, seed=3)
    row = table[
        (table["dataset"] == "blobs")
        & (table["arch"] == "cnn")
        & (table["method_b"] == "tracin")
        & (table["statistic"] == "kendall")
    ]
    assert tuple(row[["value", "ci_low", "ci_high", "n"]].iloc[0]) == pytest.approx(want["kendall"])
    assert row["n"].iloc[0] == 15


def test_correlation_table_averages_seeds() -> None:
    one = _scores_frame()
    other = one.assign(seed=1, score=np.random.default_rng(8).normal(size=len(one)))
    averaged = one.assign(score=(one["score"].to_numpy() + other["score"].to_numpy()) / 2)
    got = correlation_table(pd.concat([one, other]), n_bootstrap=20)
    pd.testing.assert_frame_equal(got, correlation_table(averaged, n_bootstrap=20))
    assert not got["value"].equals(correlation_table(one, n_bootstrap=20)["value"])


def test_correlation_table_orders_pairs_cross_family_first() -> None:
    rng = np.random.default_rng(9)
    methods = [
        ("influence", "tracin"),
        ("memorization", "fz"),
        ("influence", "graddot"),
        ("memorization", "loss_gap"),
    ]
    scores = pd.DataFrame(
        [
            {
                "dataset": "d",
                "arch": "a",
                "seed": 0,
                "family": family,
                "method": method,
                "example_id": i,
                "score": rng.normal(),
                "stderr": np.nan,
            }
            for family, method in methods
            for i in range(10)
        ]
    )
    table = correlation_table(scores, n_bootstrap=5)
    pairs = list(dict.fromkeys(zip(table["method_a"], table["method_b"], strict=True)))
    assert pairs == [
        ("fz", "tracin"),
        ("fz", "graddot"),
        ("loss_gap", "tracin"),
        ("loss_gap", "graddot"),
        ("fz", "loss_gap"),
        ("tracin", "graddot"),
    ]


def test_correlation_table_empty_and_bad_arguments() -> None:
    empty = correlation_table(_scores_frame().iloc[:0], n_bootstrap=20)
    assert list(empty.columns) == without_fit(CORRELATIONS).names and empty.empty
    with pytest.raises(ValueError, match="n_bootstrap"):
        correlation_table(_scores_frame(), n_bootstrap=0)
