"""Influence evaluation: LDS against an exactly additive ground truth and a hand-computed case,
LOO agreement and mislabel AUC against direct computations, and the table's rows."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from sklearn.metrics import roc_auc_score

from mnemoscope.analysis import (
    INFLUENCE_EVAL,
    LdsData,
    influence_eval_table,
    lds,
    lds_masks,
    loo_agreement,
    mislabel_auc,
)
from mnemoscope.store.tables import without_fit
from mnemoscope.train import subset_masks


def test_lds_of_the_true_additive_model_is_one():
    rng = np.random.default_rng(0)
    masks = lds_masks(40, 30, 0.5, seed=1)
    tau = rng.normal(size=(30, 25))
    per_target, mean = lds(tau, masks, masks @ tau)  # measured = Σ_{i∈S_j} τ(i, t) exactly
    np.testing.assert_allclose(per_target, 1.0)
    assert mean == pytest.approx(1.0)
    # a monotone distortion of the output keeps every rank, hence LDS = 1
    _, mean = lds(tau, masks, np.exp(masks @ tau))
    assert mean == pytest.approx(1.0)
    # the opposite sign is -1
    _, mean = lds(-tau, masks, masks @ tau)
    assert mean == pytest.approx(-1.0)


def test_lds_of_a_random_attribution_is_near_zero():
    rng = np.random.default_rng(1)
    masks = lds_masks(400, 50, 0.5, seed=2)
    tau = rng.normal(size=(50, 2000))
    guess = rng.normal(size=tau.shape)
    per_target, mean = lds(guess, masks, masks @ tau)
    assert abs(mean) < 0.05
    # Over many subsets a target's LDS tends to the correlation of the two additive models,
    # i.e. the cosine of the centred attributions (std ≈ 1/sqrt(n) for random ones).
    centred = (guess - guess.mean(0)), (tau - tau.mean(0))
    cosine = (centred[0] * centred[1]).sum(0) / np.sqrt(
        (centred[0] ** 2).sum(0) * (centred[1] ** 2).sum(0)
    )
    assert stats.pearsonr(per_target, cosine)[0] > 0.85


def test_lds_hand_computed():
    # J = 4 subsets of n = 3 examples, one target
    masks = np.array([[1, 1, 0], [0, 1, 1], [1, 0, 1], [1, 1, 1]], dtype=bool)
    tau = np.array([[1.0], [2.0], [4.0]])  # predictions: 3, 6, 5, 7
    measured = np.array([[0.1], [0.4], [0.3], [0.2]])  # ranks 1, 4, 3, 2 vs 1, 3, 2, 4
    per_target, mean = lds(tau, masks, measured)
    # Spearman of ranks (1, 3, 2, 4) and (1, 4, 3, 2): d = 0, −1, −1, 2 → 1 − 6·6/(4·15) = 0.4
    assert per_target[0] == pytest.approx(0.4)
    assert mean == pytest.approx(0.4)


def test_lds_nan_where_undefined_and_shape_errors():
    masks = np.array([[1, 0], [0, 1], [1, 1]], dtype=bool)
    tau = np.array([[1.0, 1.0, np.nan], [2.0, 1.0, 0.0]])
    measured = np.array([[1.0, 5.0, 1.0], [2.0, 5.0, 2.0], [3.0, 5.0, 3.0]])
    per_target, mean = lds(tau, masks, measured)
    assert per_target[0] == pytest.approx(1.0)
    assert np.isnan(per_target[1])  # the measured output is constant
    assert np.isnan(per_target[2])  # a missing attribution
    assert mean == pytest.approx(1.0)
    with pytest.raises(ValueError, match="shapes disagree"):
        lds(tau, masks[:, :1], measured)
    with pytest.raises(ValueError, match="shapes disagree"):
        lds(tau, masks, measured[:2])


def test_lds_masks_are_seeded_subsets_of_their_own():
    masks = lds_masks(6, 20, 0.5, seed=3)
    assert masks.shape == (6, 20) and masks.dtype == bool and (masks.sum(1) == 10).all()
    np.testing.assert_array_equal(masks, lds_masks(6, 20, 0.5, seed=3))
    assert not np.array_equal(masks, lds_masks(6, 20, 0.5, seed=4))
    # not the subsets an estimator draws from the same study seed
    assert not np.array_equal(masks, subset_masks(6, 20, 0.5, seed=3).numpy())
    for fraction in (0.0, 1.5):
        with pytest.raises(ValueError):
            lds_masks(6, 20, fraction)


def test_loo_agreement_ignores_nan_and_matches_scipy():
    rng = np.random.default_rng(4)
    loo = rng.normal(size=80)
    estimate = loo + 0.5 * rng.normal(size=80)
    loo[::4] = np.nan  # examples loo did not choose
    result = loo_agreement(estimate, loo, n_bootstrap=200, seed=0)
    kept = np.isfinite(loo)
    assert result["pearson"][0] == pytest.approx(stats.pearsonr(estimate[kept], loo[kept])[0])
    assert result["spearman"][0] == pytest.approx(stats.spearmanr(estimate[kept], loo[kept])[0])
    for value, low, high, n in result.values():
        assert n == 60 and low <= value <= high and high - low < 0.3
    assert set(result) == {"pearson", "spearman"}


def test_mislabel_auc_hand_computed_with_ci():
    # positives 0.9, 0.3; negatives 0.1, 0.5: 3 of 4 pairs ordered right
    auc, low, high = mislabel_auc(
        np.array([0.1, 0.9, 0.5, 0.3, np.nan]),
        np.array([False, True, False, True, True]),
        n_bootstrap=500,
    )
    assert auc == 0.75
    assert 0.0 <= low <= high <= 1.0
    rng = np.random.default_rng(5)
    flipped = rng.random(300) < 0.1
    scores = rng.normal(size=300) + 2 * flipped
    auc, low, high = mislabel_auc(scores, flipped, n_bootstrap=500, seed=1)
    assert auc == pytest.approx(roc_auc_score(flipped, scores))
    assert low < auc < high and high - low < 0.2
    assert all(np.isnan(mislabel_auc(scores, np.zeros(300, dtype=bool))))


def _study():
    """A small study: 40 training examples (4 flipped), loo on the first 20, one estimator."""
    rng = np.random.default_rng(6)
    n, n_t = 40, 8
    flipped = np.zeros(n, dtype=bool)
    flipped[[1, 5, 9, 30]] = True
    loo_self = rng.normal(size=n) + 3 * flipped
    estimate_self = loo_self + 0.3 * rng.normal(size=n)
    loo_self[20:] = np.nan
    tau = rng.normal(size=(n, n_t))
    estimate_tau = tau + 0.3 * rng.normal(size=(n, n_t))

    def score_rows(method, values):
        return pd.DataFrame(
            dict(dataset="d", arch="a", seed=0, family="influence", method=method,
                 example_id=np.arange(n) + 100, score=values, stderr=np.nan)
        )  # fmt: skip

    def influence_rows(method, matrix, rows):
        train, target = np.meshgrid(np.arange(n) + 100, np.arange(n_t) + 500, indexing="ij")
        return pd.DataFrame(
            dict(dataset="d", arch="a", seed=0, method=method, train_id=train[rows].ravel(),
                 target_id=target[rows].ravel(), score=matrix[rows].ravel())
        )  # fmt: skip

    scores = pd.concat(
        [
            score_rows("loo", loo_self),
            score_rows("tracin", estimate_self),
            score_rows("feldman_zhang", estimate_self).assign(family="memorization"),
        ]
    )
    examples = pd.DataFrame(
        dict(dataset="d", example_id=np.arange(n) + 100, split="train", label=0,
             original_label=0, is_mislabeled=flipped)
    )  # fmt: skip
    influence = pd.concat(
        [
            influence_rows("loo", tau, slice(0, 20)),
            influence_rows("tracin", estimate_tau, slice(None)),
        ]
    )
    masks = lds_masks(30, n, 0.5, seed=0)
    lds_data = LdsData(masks, masks @ tau, np.arange(n) + 100, np.arange(n_t) + 500)
    return (
        scores,
        examples,
        influence,
        lds_data,
        (loo_self, estimate_self, tau, estimate_tau, flipped),
    )


def test_influence_eval_table_rows():
    scores, examples, influence, lds_data, truth = _study()
    loo_self, estimate_self, tau, estimate_tau, flipped = truth
    table = influence_eval_table(
        scores, examples, influence, {("d", "a"): lds_data}, n_bootstrap=200, seed=0
    )
    assert list(table.columns) == without_fit(INFLUENCE_EVAL).names
    assert set(table["method"]) == {"loo", "tracin"}  # memorization methods are not evaluated
    rows = table.set_index(["method", "metric"])
    assert set(rows.loc["tracin"].index) == {
        "mislabel_auc", "loo_pearson", "loo_spearman", "loo_target_pearson",
        "loo_target_spearman", "lds",
    }  # fmt: skip
    # loo itself: detection, and an LDS that is NaN (half its rows are missing)
    assert set(rows.loc["loo"].index) == {"mislabel_auc", "lds"}
    assert np.isnan(rows.loc[("loo", "lds"), "value"])
    kept = np.isfinite(loo_self)
    pearson = stats.pearsonr(estimate_self[kept], loo_self[kept])[0]
    assert rows.loc[("tracin", "loo_pearson"), "value"] == pytest.approx(pearson)
    pairs = stats.spearmanr(estimate_tau[:20].ravel(), tau[:20].ravel())[0]
    assert rows.loc[("tracin", "loo_target_spearman"), "value"] == pytest.approx(pairs)
    assert rows.loc[("tracin", "mislabel_auc"), "value"] == pytest.approx(
        roc_auc_score(flipped, estimate_self)
    )
    assert rows.loc[("loo", "mislabel_auc"), "value"] == pytest.approx(
        roc_auc_score(flipped[kept], loo_self[kept])
    )
    _, expected_lds = lds(estimate_tau, lds_data.masks, lds_data.measured)
    assert rows.loc[("tracin", "lds"), "value"] == pytest.approx(expected_lds)
    finite = rows.dropna()
    assert (finite["ci_low"] <= finite["value"]).all() and (
        finite["value"] <= finite["ci_high"]
    ).all()


def test_influence_eval_table_without_targets_or_loo():
    scores, examples, _, _, _ = _study()
    table = influence_eval_table(scores[scores["method"] != "loo"], examples, n_bootstrap=50)
    assert table[["method", "metric"]].values.tolist() == [["tracin", "mislabel_auc"]]
    empty = influence_eval_table(scores.iloc[:0], examples, n_bootstrap=50)
    assert empty.empty and list(empty.columns) == without_fit(INFLUENCE_EVAL).names
    with pytest.raises(ValueError, match="n_bootstrap"):
        influence_eval_table(scores, examples, n_bootstrap=0)
