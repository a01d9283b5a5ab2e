"""overlap_table and leakage_table on planted ground truth."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import roc_auc_score

from mnemoscope.analysis import leakage_table, overlap_table
from mnemoscope.analysis.correlations import percentile_interval
from mnemoscope.analysis.leakage import leakage_resampled
from mnemoscope.analysis.resampling import Resamples
from mnemoscope.store import TABLES
from mnemoscope.store.tables import to_arrow

from .study_frames import INFLUENCE, MEMORIZATION, not_fit, scores_frame

MEM = np.random.default_rng(0).normal(size=400)


def _cell() -> pd.DataFrame:
    rng = np.random.default_rng(1)
    return scores_frame(
        {
            ("d", "mlp"): {
                "fz": (MEMORIZATION, MEM),
                "tracin": (INFLUENCE, np.exp(MEM)),  # a monotone transform
                "random": (INFLUENCE, rng.normal(size=400)),
                "reversed": (INFLUENCE, -MEM),
            }
        }
    )


def test_overlap_planted_relations() -> None:
    table = overlap_table(_cell(), None, ks=(0.05, 0.1), n_bootstrap=200)
    assert list(table.columns) == TABLES["overlap"].names
    to_arrow(table, TABLES["overlap"])
    rows = table.set_index(["influence", "k"])
    same = rows.loc["tracin"]
    assert (same[["jaccard", "jaccard_low", "jaccard_high", "precision"]] == 1.0).all().all()
    assert (same["precision_low"] == 1.0).all()
    assert list(same["n_top"]) == [20, 40]
    assert (rows.loc["reversed", "precision"] == 0.0).all()
    unrelated = rows.loc[("random", 0.1)]
    assert unrelated["precision_low"] <= 0.1 <= unrelated["precision_high"]
    assert unrelated["jaccard"] == pytest.approx(
        unrelated["precision"] * 40 / (80 - unrelated["precision"] * 40)
    )
    assert (table["n"] == 400).all() and (table["n_dropped"] == 0).all()
    assert table["fit"].all()


def test_overlap_by_hand_with_ties_broken_by_example_id() -> None:
    # All influence scores tie: its top-2 are ids 0, 1. Memorization's top-2: ids 1, 3.
    cells = {
        ("d", "mlp"): {
            "mem": (MEMORIZATION, np.array([0.0, 5.0, 1.0, 4.0, 2.0, 3.0, -1.0, -2.0, -3.0, -4.0])),
            "flat": (INFLUENCE, np.zeros(10)),
        }
    }
    row = overlap_table(scores_frame(cells), None, ks=(0.2,), n_bootstrap=20).iloc[0]
    assert row["n_top"] == 2
    assert row["precision"] == 0.5
    assert row["jaccard"] == pytest.approx(1 / 3)


def test_overlap_drops_non_finite_pairwise_and_counts_them() -> None:
    mem = MEM.copy()
    mem[:7] = np.nan
    mem[7] = np.inf
    cells = {("d", "mlp"): {"fz": (MEMORIZATION, mem), "tracin": (INFLUENCE, np.exp(MEM))}}
    row = overlap_table(scores_frame(cells), None, ks=(0.1,), n_bootstrap=50).iloc[0]
    assert (row["n"], row["n_dropped"], row["n_top"]) == (392, 8, 39)
    assert row["jaccard"] == 1.0


def test_overlap_fit_determinism_and_bad_ks() -> None:
    fits = not_fit("d", "mlp")
    first = overlap_table(_cell(), fits, ks=(0.1,), n_bootstrap=100, seed=3)
    again = overlap_table(_cell(), fits, ks=(0.1,), n_bootstrap=100, seed=3)
    other = overlap_table(_cell(), fits, ks=(0.1,), n_bootstrap=100, seed=4)
    pd.testing.assert_frame_equal(first, again)
    assert not first["fit"].any()
    assert not np.array_equal(first["precision_low"], other["precision_low"]) or not np.array_equal(
        first["precision_high"], other["precision_high"]
    )
    for ks in ((0.0,), (1.0,), ()):
        with pytest.raises(ValueError, match="ks"):
            overlap_table(_cell(), None, ks=ks)


def _leakage_scores() -> pd.DataFrame:
    rng = np.random.default_rng(2)
    lira = rng.normal(size=500)
    methods = {
        "lira": (MEMORIZATION, lira),
        "same": (MEMORIZATION, 3 * lira + 1),
        "reversed": (INFLUENCE, -lira),
        "random": (INFLUENCE, rng.normal(size=500)),
    }
    return scores_frame({("d", "mlp"): methods, ("d", "cnn"): {"other": (INFLUENCE, lira)}})


def test_leakage_planted_relations_and_costs() -> None:
    costs = pd.DataFrame(
        {"dataset": "d", "arch": "mlp", "method": ["lira", "same"], "seconds": [90.0, 2.0]}
    )
    table = leakage_table(_leakage_scores(), not_fit("d", "mlp"), costs, ks=(0.1,), n_bootstrap=200)
    assert list(table.columns) == TABLES["leakage"].names
    to_arrow(table, TABLES["leakage"])
    assert set(table["arch"]) == {"mlp"}  # the cnn cell has no reference
    rows = table.set_index("method")
    assert list(rows.index) == ["same", "reversed", "random"]
    assert (
        rows.loc["same", ["precision", "precision_low", "auc", "auc_low", "auc_high"]].eq(1).all()
    )
    assert rows.loc["reversed", "auc"] == 0.0 and rows.loc["reversed", "precision"] == 0.0
    random = rows.loc["random"]
    assert random["precision_low"] <= 0.1 <= random["precision_high"]
    assert random["auc_low"] <= 0.5 <= random["auc_high"]
    assert (rows["n_positive"] == 50).all() and (rows["reference"] == "lira").all()
    assert list(rows["family"]) == ["memorization", "influence", "influence"]
    assert rows.loc["same", "seconds"] == 2.0 and np.isnan(rows.loc["random", "seconds"])
    assert (rows["reference_seconds"] == 90.0).all()
    assert not rows["fit"].any()


def test_leakage_auc_is_sklearns_and_nan_is_dropped_pairwise() -> None:
    scores = _leakage_scores()
    random = scores["method"] == "random"
    scores.loc[random & (scores["example_id"] < 10), "score"] = np.nan
    table = leakage_table(scores, None, None, ks=(0.2,), n_bootstrap=20)
    row = table.set_index("method").loc["random"]
    assert (row["n"], row["n_dropped"], row["n_positive"]) == (490, 10, 98)
    lira = scores[scores["method"] == "lira"]["score"].to_numpy()[10:]
    other = scores[random]["score"].to_numpy()[10:]
    positive = np.zeros(490, dtype=bool)
    positive[np.argsort(-lira, kind="stable")[:98]] = True
    assert row["auc"] == pytest.approx(roc_auc_score(positive, other))
    assert row["precision"] == positive[np.argsort(-other, kind="stable")[:98]].mean()


_VALUE = st.one_of(
    st.sampled_from([0.0, 1.0, 2.0, np.nan, np.inf]), st.floats(-5, 5, allow_nan=False)
)


@settings(max_examples=25, deadline=None)
@given(
    st.lists(st.tuples(_VALUE, _VALUE), min_size=1, max_size=30),
    st.sampled_from([0.05, 0.2, 0.5, 0.9]),
)
def test_point_values_equal_brute_force_sets(pairs: list, k: float) -> None:
    a = np.array([p[0] for p in pairs])
    b = np.array([p[1] for p in pairs])
    cells = {("d", "mlp"): {"lira": (MEMORIZATION, a), "tracin": (INFLUENCE, b)}}
    kept = np.isfinite(a) & np.isfinite(b)
    ids = np.flatnonzero(kept)
    overlap = overlap_table(scores_frame(cells), None, ks=(k,), n_bootstrap=5)
    leakage = leakage_table(scores_frame(cells), None, None, ks=(k,), n_bootstrap=5)
    if ids.size == 0:
        assert overlap.empty and leakage.empty
        return
    n_top = max(1, round(k * ids.size))
    # highest first, ties by smaller example id (ids are ascending already)
    top_a = set(ids[np.argsort(-a[kept], kind="stable")[:n_top]])
    top_b = set(ids[np.argsort(-b[kept], kind="stable")[:n_top]])
    row = overlap.iloc[0]
    assert (row["n"], row["n_dropped"], row["n_top"]) == (ids.size, len(pairs) - ids.size, n_top)
    assert row["precision"] == len(top_a & top_b) / n_top
    assert row["jaccard"] == pytest.approx(len(top_a & top_b) / len(top_a | top_b))
    for name in ("jaccard", "precision"):
        assert 0 <= row[f"{name}_low"] <= row[f"{name}_high"] <= 1
    leak = leakage.iloc[0]
    assert leak["precision"] == row["precision"]
    positive = np.isin(ids, list(top_a))
    if 0 < positive.sum() < ids.size:
        assert leak["auc"] == pytest.approx(roc_auc_score(positive, b[kept]))
    else:
        assert np.isnan(leak["auc"])


@pytest.mark.slow
def test_leakage_intervals_cover_the_population_values() -> None:
    """Over 100 fresh samples of n = 1,500, the 95% intervals cover the population value of
    precision@0.1 (0.1 for an unrelated score; that of a correlated score, measured on
    400,000 examples) and AUC 0.5 in at least 90 (measured: 97, 97, 98)."""
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=400_000), rng.normal(size=400_000)
    b += a
    n_top = 40_000
    population = np.isin(np.argsort(-b)[:n_top], np.argsort(-a)[:n_top]).mean()
    covered = np.zeros(3, dtype=int)
    for rep in range(100):
        rng = np.random.default_rng(100 + rep)
        reference = rng.normal(size=1500)
        values = {"unrelated": rng.normal(size=1500), "related": reference + rng.normal(size=1500)}
        out = leakage_resampled(np.arange(1500), reference, values, (0.1,), Resamples(300, rep))
        checks = (
            (out["precision"][1][0, 0], 0.1),
            (out["auc"][1][0, 0], 0.5),
            (out["precision"][1][1, 0], population),
        )
        for i, (boot, truth) in enumerate(checks):
            low, high = percentile_interval(boot, 0.95)
            covered[i] += low <= truth <= high
    assert (covered >= 90).all(), covered
