"""An empirical lower bound on ε from a membership-inference attack (a privacy audit).

A mechanism that is (ε, δ)-DP bounds every test that tells "z was in the training set"
from "z was not": for the attack's rejection region S,
``TPR ≤ e^ε · FPR + δ`` and, for its complement, ``1 − FPR ≤ e^ε · (1 − TPR) + δ``.
So any attack's measured rates give ``ε ≥ log((TPR − δ) / FPR)`` and
``ε ≥ log((1 − FPR − δ) / (1 − TPR))`` (Kairouz, Oh & Viswanath 2015, Thm. 2.1;
the audit of Jagielski, Ullman & Oprea 2020, "Auditing Differentially Private Machine
Learning: How Private is Private SGD?", §3, and Nasr et al. 2021).

To hold with confidence ``1 − alpha`` the rates are replaced by Clopper–Pearson bounds
(a lower bound on the TPR, an upper one on the FPR, each at level ``alpha / 2``), and the
attack's threshold is chosen on one half of the trials and the bound computed on the
other half: choosing it on the same trials would make the bound optimistic. A trial is
one (model, example) pair with its membership; pairs of one model are not independent,
as the bound's binomial model assumes; the audit literature takes the same reading.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats
from scipy.optimize import brentq

from mnemoscope.analysis.detection import detection_auc
from mnemoscope.analysis.resampling import auc_resampled, count_blocks, resample_midranks


@dataclass(frozen=True)
class EpsilonBound:
    """The audit's result.

    Attributes:
        epsilon: the lower bound on ε at confidence ``1 − alpha`` (0 when no threshold
            gives a positive bound).
        threshold: the score at or above which the attack says "member".
        tpr, fpr: the attack's rates on the evaluation half.
        trials: (members, non-members) of the evaluation half.
    """

    epsilon: float
    threshold: float
    tpr: float
    fpr: float
    trials: tuple[int, int]


def clopper_pearson(successes: np.ndarray, trials: int, alpha: float) -> tuple[np.ndarray, ...]:
    """Exact binomial ``(lower, upper)`` bounds, each one-sided at level ``alpha``."""
    k = np.asarray(successes, dtype=np.float64)
    lower = np.where(k > 0, stats.beta.ppf(alpha, k, trials - k + 1), 0.0)
    upper = np.where(k < trials, stats.beta.ppf(1 - alpha, k + 1, trials - k), 1.0)
    return lower, upper


def _bounds(
    scores: np.ndarray, member: np.ndarray, thresholds: np.ndarray, delta: float, alpha: float
) -> np.ndarray:
    """``[thresholds]``: the ε lower bound of the attack "member iff score ≥ t"."""
    pos, neg = np.sort(scores[member]), np.sort(scores[~member])
    tp = len(pos) - np.searchsorted(pos, thresholds, side="left")
    fp = len(neg) - np.searchsorted(neg, thresholds, side="left")
    tpr_lo, tpr_hi = clopper_pearson(tp, len(pos), alpha / 2)
    fpr_lo, fpr_hi = clopper_pearson(fp, len(neg), alpha / 2)
    with np.errstate(divide="ignore", invalid="ignore"):
        direct = np.log((tpr_lo - delta) / fpr_hi)
        complement = np.log((1 - fpr_hi - delta) / (1 - tpr_lo))
    found = np.fmax(direct, complement)
    return np.where(np.isfinite(found), np.maximum(found, 0.0), 0.0)


def empirical_epsilon(
    scores: np.ndarray, member: np.ndarray, delta: float, alpha: float = 0.05, seed: int = 0
) -> EpsilonBound:
    """The ε lower bound from membership scores (higher: more likely a member).

    ``scores``, ``member``: one entry per trial (flattened ``[K, n]`` of an attack taking
    each model in turn as the target). The trials are split at random (``seed``) in two
    halves stratified by membership; the threshold maximising the bound on the first is
    evaluated on the second. Cost: two sorts of the trials.
    """
    scores = np.asarray(scores, dtype=np.float64).ravel()
    member = np.asarray(member, dtype=bool).ravel()
    if scores.shape != member.shape or not (member.any() and (~member).any()):
        raise ValueError("empirical_epsilon needs members and non-members, one score each")
    rng = np.random.default_rng(seed)
    first = np.zeros(len(scores), dtype=bool)
    for group in (member, ~member):
        where = np.flatnonzero(group)
        first[rng.permutation(where)[: len(where) // 2]] = True
    second = ~first
    candidates = np.unique(scores[first])
    chosen = candidates[
        int(np.argmax(_bounds(scores[first], member[first], candidates, delta, alpha)))
    ]
    s, m = scores[second], member[second]
    (epsilon,) = _bounds(s, m, np.array([chosen]), delta, alpha)
    return EpsilonBound(
        float(epsilon),
        float(chosen),
        float((s[m] >= chosen).mean()),
        float((s[~m] >= chosen).mean()),
        (int(m.sum()), int((~m).sum())),
    )


def gaussian_dp_epsilon(mu: float, delta: float) -> float:
    """The exact ε at ``delta`` of μ-Gaussian DP (Dong, Roth & Su 2019, Cor. 2.13):
    the ε solving ``δ = Φ(−ε/μ + μ/2) − e^ε Φ(−ε/μ − μ/2)``; a ground truth for the audit
    (members' scores ``N(μ, 1)``, non-members' ``N(0, 1)``)."""

    def gap(eps: float) -> float:
        return (
            stats.norm.cdf(-eps / mu + mu / 2) - math.exp(eps) * stats.norm.cdf(-eps / mu - mu / 2)
        ) - delta

    if gap(0.0) <= 0:
        return 0.0
    return float(brentq(gap, 0.0, 100.0))


DP_COLUMNS = (
    "dataset",
    "arch",
    "setting",
    "noise_multiplier",
    "epsilon",
    "delta",
    "epsilon_lower",
    "epsilon_lower_tpr",
    "epsilon_lower_fpr",
    "test_accuracy",
    "fz_mean",
    "fz_q50",
    "fz_q90",
    "fz_q99",
    "fz_flipped_auc",
    "fz_flipped_auc_low",
    "fz_flipped_auc_high",
    "lira_auc",
    "lira_auc_low",
    "lira_auc_high",
    "lira_tpr_at_0_1pct_fpr",
    "privacy_score_mean",
    "canary_exposure",
    "canary_lira",
    "n_models",
)
"""Columns of ``dp.parquet``, one row per (dataset, arch, DP setting) (README's tables)."""


def auc_interval(
    scores: np.ndarray, positive: np.ndarray, n_bootstrap: int, confidence: float, seed: int
) -> tuple[float, float]:
    """Percentile bootstrap interval of the ROC AUC of ``scores`` for ``positive``, both
    ``[n]`` or ``[K, n]``: the resamples draw the n examples (columns) with replacement
    (:func:`~mnemoscope.analysis.resampling.count_blocks`), so the K entries of one example
    (one per model) stay together, as they are not independent. NaN scores are dropped,
    as :func:`_auc` does; the AUC of a resample is the Mann–Whitney one over its midranks
    (:func:`~mnemoscope.analysis.resampling.auc_resampled`)."""
    scores, positive = np.atleast_2d(scores), np.atleast_2d(np.asarray(positive, dtype=bool))
    kept = np.isfinite(scores)
    n = scores.shape[-1]
    example = np.broadcast_to(np.arange(n), scores.shape)[kept]
    values, positives = scores[kept], positive[kept]
    boot = []
    for counts in count_blocks(n, n_bootstrap, seed):
        rows = max(1, len(counts) * n // max(values.size, 1))  # weights no larger than counts
        for start in range(0, len(counts), rows):
            weights = counts[start : start + rows, example]  # each entry as often as its example
            ranks = resample_midranks(values, weights)[0]
            boot.append(auc_resampled(ranks, weights * positives, weights.sum(axis=1)))
    boot = np.concatenate(boot) if boot else np.empty(0)
    if np.isnan(boot).all():
        return math.nan, math.nan
    low, high = np.nanquantile(boot, [(1 - confidence) / 2, (1 + confidence) / 2])
    return float(low), float(high)


def dp_row(
    *,
    test_correct: np.ndarray,
    memorization: np.ndarray,
    flipped: np.ndarray,
    attack: np.ndarray,
    masks: np.ndarray,
    attack_metrics: tuple[float, float],
    privacy_score: np.ndarray,
    canary: np.ndarray | None,
    is_canary: np.ndarray,
    epsilon: float | None,
    delta: float,
    seed: int = 0,
    n_bootstrap: int = 200,
    confidence: float = 0.95,
) -> dict[str, float | None]:
    """The numbers of one DP setting (the columns of :data:`DP_COLUMNS` after the setting's
    own): ``test_correct [K, n_test]``; Feldman–Zhang ``memorization [n]`` (its mean and
    quantiles over the examples, and its ROC AUC for the ``flipped`` labels); the LiRA
    ``attack [K, n]`` statistic of each (target model, example) with membership
    ``masks [K, n]`` and its ``attack_metrics`` (AUC, TPR at 0.1% FPR), whose empirical ε
    lower bound (:func:`empirical_epsilon`) sits beside the accountant's ``epsilon``
    (None: no DP, ε infinite); the mean per-example ``privacy_score``; the canaries' mean
    ``canary`` score and mean LiRA privacy score (None without canaries). The two AUCs
    come with ``confidence`` percentile bootstrap intervals over the examples
    (:func:`auc_interval`, ``n_bootstrap`` resamples)."""
    memorization = np.asarray(memorization, dtype=np.float64)
    kept = memorization[np.isfinite(memorization)]
    lower = empirical_epsilon(
        attack[np.isfinite(attack)], masks[np.isfinite(attack)], delta, seed=seed
    )
    canaries = np.asarray(is_canary, dtype=bool)
    flipped = np.asarray(flipped, dtype=bool)
    interval = {"n_bootstrap": n_bootstrap, "confidence": confidence, "seed": seed}
    fz_low, fz_high = auc_interval(memorization, flipped, **interval)
    lira_low, lira_high = auc_interval(attack, np.asarray(masks, dtype=bool), **interval)
    return {
        "epsilon": epsilon,
        "delta": delta,
        "epsilon_lower": lower.epsilon,
        "epsilon_lower_tpr": lower.tpr,
        "epsilon_lower_fpr": lower.fpr,
        "test_accuracy": float(np.mean(test_correct)),
        "fz_mean": float(kept.mean()),
        "fz_q50": float(np.quantile(kept, 0.5)),
        "fz_q90": float(np.quantile(kept, 0.9)),
        "fz_q99": float(np.quantile(kept, 0.99)),
        "fz_flipped_auc": detection_auc(memorization, flipped),
        "fz_flipped_auc_low": fz_low,
        "fz_flipped_auc_high": fz_high,
        "lira_auc": attack_metrics[0],
        "lira_auc_low": lira_low,
        "lira_auc_high": lira_high,
        "lira_tpr_at_0_1pct_fpr": attack_metrics[1],
        "privacy_score_mean": float(np.nanmean(privacy_score)),
        "canary_exposure": None if canary is None else float(np.nanmean(canary[canaries])),
        "canary_lira": float(np.nanmean(privacy_score[canaries])) if canaries.any() else None,
    }
