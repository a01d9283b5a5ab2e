"""The empirical ε lower bound against μ-Gaussian DP, whose exact ε is known."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from mnemoscope.analysis.dp import clopper_pearson, empirical_epsilon, gaussian_dp_epsilon


def _trials(mu: float, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    member = np.arange(2 * n) < n
    return rng.normal(mu * member, 1.0), member


def test_bound_stays_below_the_exact_epsilon_and_grows_with_the_leak():
    medians = []
    for mu in (0.5, 1.0, 2.0):
        truth = gaussian_dp_epsilon(mu, 1e-5)
        bounds = [empirical_epsilon(*_trials(mu, 20_000, s), delta=1e-5).epsilon for s in range(5)]
        assert max(bounds) <= truth
        medians.append(float(np.median(bounds)))
        if mu >= 1:  # 40 000 trials find a good part of it (not in the far tail δ needs)
            assert medians[-1] > 0.35 * truth
    assert medians == sorted(medians)


def test_no_leak_gives_no_epsilon():
    found = [empirical_epsilon(*_trials(0.0, 5_000, seed), delta=1e-5) for seed in range(10)]
    assert all(f.epsilon < 0.15 for f in found)
    assert sum(f.epsilon == 0 for f in found) >= 5


def test_bound_is_the_formula_at_the_chosen_threshold():
    scores, member = _trials(1.5, 2_000, 3)
    found = empirical_epsilon(scores, member, delta=1e-5, seed=1)
    n_in, n_out = found.trials
    assert (n_in, n_out) == (1_000, 1_000)
    tpr_lo = stats.beta.ppf(0.025, found.tpr * n_in, n_in - found.tpr * n_in + 1)
    fpr_hi = stats.beta.ppf(0.975, found.fpr * n_out + 1, n_out - found.fpr * n_out)
    expected = max(np.log((tpr_lo - 1e-5) / fpr_hi), np.log((1 - fpr_hi - 1e-5) / (1 - tpr_lo)))
    assert found.epsilon == pytest.approx(max(expected, 0.0), rel=1e-9)


def test_clopper_pearson_covers():
    rng = np.random.default_rng(0)
    k = rng.binomial(50, 0.2, size=4000)
    lower, upper = clopper_pearson(k, 50, 0.025)
    covered = (lower <= 0.2) & (0.2 <= upper)
    assert covered.mean() >= 0.95
    assert clopper_pearson(np.array([0]), 10, 0.05)[0][0] == 0.0


def test_gaussian_dp_epsilon_solves_its_equation():
    eps = gaussian_dp_epsilon(1.0, 1e-5)
    delta = stats.norm.cdf(-eps + 0.5) - np.exp(eps) * stats.norm.cdf(-eps - 0.5)
    assert delta == pytest.approx(1e-5, rel=1e-6)


def test_auc_interval_covers_the_binormal_auc():
    """Positives N(d, 1), negatives N(0, 1): AUC = Φ(d/√2). The 95% bootstrap interval
    holds it in most replicate samples, shrinks with n, and is [1, 1] for a perfect score."""
    from mnemoscope.analysis.detection import detection_auc
    from mnemoscope.analysis.dp import auc_interval

    d = 1.0
    truth = stats.norm.cdf(d / np.sqrt(2))
    covered, widths = 0, {}
    for n in (100, 400):
        for seed in range(25):
            scores, positive = _trials(d, n // 2, seed)
            low, high = auc_interval(scores, positive, 100, 0.95, seed)
            assert low <= detection_auc(scores, positive) <= high
            covered += int(low <= truth <= high) if n == 400 else 0
            widths.setdefault(n, []).append(high - low)
    assert covered >= 21  # of 25 (nominal 23.75)
    assert np.median(widths[400]) < 0.65 * np.median(widths[100])  # ~ 1/√n
    perfect = np.arange(50.0)
    assert auc_interval(perfect, perfect >= 25, 100, 0.95, 0) == (1.0, 1.0)


def test_auc_interval_resamples_an_examples_models_together():
    """K identical rows per example are one example: the interval is the 1-D one's."""
    from mnemoscope.analysis.dp import auc_interval

    scores, positive = _trials(0.7, 60, 3)
    one = auc_interval(scores, positive, 300, 0.9, 7)
    stacked = auc_interval(np.tile(scores, (8, 1)), np.tile(positive, (8, 1)), 300, 0.9, 7)
    assert stacked == pytest.approx(one, abs=1e-12)
