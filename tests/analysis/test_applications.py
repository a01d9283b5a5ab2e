"""detection_by_kind, group_means and accuracy_curve_rows on planted ground truth."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from sklearn.metrics import roc_auc_score

from mnemoscope.analysis import accuracy_curve_rows, detection_by_kind, group_means
from mnemoscope.store import TABLES
from mnemoscope.store.tables import to_arrow

from .study_frames import INFLUENCE, MEMORIZATION, examples_frame, not_fit, scores_frame

N = 3000
SHIFT = 1.0


def _planted() -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(0)
    occluded = np.zeros(N, dtype=bool)
    occluded[rng.choice(N, 300, replace=False)] = True
    canary = np.zeros(N, dtype=bool)
    canary[:30] = True
    score = rng.normal(size=N) + SHIFT * occluded
    score[:30] += 10.0  # the canaries score above everything
    scores = scores_frame(
        {
            ("d", "mlp"): {"sample_info": (MEMORIZATION, score)},
            ("d", "cnn"): {"tracin": (INFLUENCE, -score)},
        }
    )
    examples = examples_frame(
        "d",
        N,
        is_occluded=occluded,
        is_canary=canary,
        is_mislabeled=np.zeros(N, dtype=bool),  # no positives: skipped
        source=np.where(occluded, "noisy", "clean"),
    )
    return scores, examples


def test_detection_auc_matches_the_closed_form() -> None:
    scores, examples = _planted()
    kinds = ["is_occluded", "is_canary", "is_mislabeled", "is_adversarial"]
    table = detection_by_kind(scores, examples, not_fit("d", "cnn"), kinds, n_bootstrap=200)
    assert list(table.columns) == TABLES["applications"].names
    to_arrow(table, TABLES["applications"])
    rows = table.set_index(["arch", "group"])
    assert list(table["group"]) == ["is_occluded", "is_canary"] * 2
    assert (table["application"] == "detection").all() and (table["metric"] == "auc").all()
    occluded = rows.loc[("mlp", "is_occluded")]
    # Gaussian scores shifted by d: AUC = P(X + d > Y) = Φ(d / √2).
    closed_form = stats.norm.cdf(SHIFT / np.sqrt(2))
    assert occluded["ci_low"] <= closed_form <= occluded["ci_high"]
    assert occluded["value"] == pytest.approx(closed_form, abs=0.04)
    flags = examples["is_occluded"].to_numpy()[:N]
    mlp_score = scores[scores["arch"] == "mlp"]["score"].to_numpy()
    assert occluded["value"] == pytest.approx(roc_auc_score(flags, mlp_score))
    assert rows.loc[("mlp", "is_canary"), "value"] == 1.0
    assert rows.loc[("cnn", "is_canary"), "value"] == 0.0
    assert (table["n"] == N).all()
    assert table.set_index("arch")["fit"].to_dict() == {"mlp": True, "cnn": False}


def test_detection_counts_only_finite_scores() -> None:
    scores, examples = _planted()
    scores.loc[scores["example_id"].isin(range(30, 40)), "score"] = np.nan
    table = detection_by_kind(scores, examples, None, ["is_canary"], n_bootstrap=20)
    assert (table["n"] == N - 10).all()


def test_group_means_equal_numpy_with_covering_intervals() -> None:
    scores, examples = _planted()
    table = group_means(scores, examples, None, "source", n_bootstrap=300)
    to_arrow(table, TABLES["applications"])
    mlp = table[table["arch"] == "mlp"].set_index("group")
    assert list(mlp.index) == ["noisy", "clean", "difference"]  # descending, then difference
    assert (mlp["application"] == "source").all() and (mlp["metric"] == "mean").all()
    score = scores[scores["arch"] == "mlp"]["score"].to_numpy()
    noisy = examples["source"].to_numpy()[:N] == "noisy"
    for group, mask in (("noisy", noisy), ("clean", ~noisy)):
        assert mlp.loc[group, "value"] == pytest.approx(score[mask].mean())
        assert mlp.loc[group, "ci_low"] <= score[mask].mean() <= mlp.loc[group, "ci_high"]
        assert mlp.loc[group, "n"] == mask.sum()
    difference = mlp.loc["difference"]
    assert difference["value"] == pytest.approx(score[noisy].mean() - score[~noisy].mean())
    assert difference["ci_low"] > 0 and difference["n"] == N
    # the planted shift is 1; the canaries add 30 · 10 / N to clean's mean
    assert difference["value"] == pytest.approx(SHIFT - 300 / 2700, abs=0.15)


def test_group_means_order_and_missing_column() -> None:
    scores, examples = _planted()
    table = group_means(
        scores, examples, None, "is_occluded", "undersampling", groups=[False, True], n_bootstrap=50
    )
    mlp = table[table["arch"] == "mlp"].set_index("group")
    assert list(mlp.index) == ["False", "True", "difference"]
    assert mlp.loc["difference", "value"] == pytest.approx(
        mlp.loc["False", "value"] - mlp.loc["True", "value"]
    )
    assert (table["application"] == "undersampling").all()
    with pytest.raises(ValueError, match="is_undersampled"):
        group_means(scores, examples, None, "is_undersampled")


def test_accuracy_curve_rows() -> None:
    results = pd.DataFrame(
        {
            "dataset": "d",
            "arch": "mlp",
            "method": "sample_info",
            "direction": ["top"] * 3 + ["random"] * 3,
            "fraction": [0.25] * 6,
            "seed": [0, 1, 2] * 2,
            "accuracy": [0.90, 0.92, 0.91, 0.80, 0.83, np.nan],
        }
    )
    table = accuracy_curve_rows(results, not_fit("d", "mlp"), confidence=0.9)
    to_arrow(table, TABLES["applications"])
    rows = table.set_index("group")
    assert list(rows.index) == ["top@0.25", "random@0.25"]
    top = rows.loc["top@0.25"]
    expected = stats.t.interval(0.9, 2, loc=0.91, scale=stats.sem([0.90, 0.92, 0.91]))
    assert top["value"] == pytest.approx(0.91)
    assert (top["ci_low"], top["ci_high"]) == pytest.approx(expected)
    assert rows.loc["random@0.25", "n"] == 2  # the NaN seed is left out
    assert (table["metric"] == "accuracy").all() and not table["fit"].any()
    assert (table["application"] == "summarization").all()
