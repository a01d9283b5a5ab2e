"""How per-example memorization and influence scores agree, with bootstrap confidence intervals.

Three statistics are reported for every pair of methods:

* **Spearman's rho**: Pearson correlation of the ranks; measures whether the two
  methods order the examples the same way (any monotone relation scores 1).
* **Pearson's r**: linear correlation of the raw scores; sensitive to the scale
  and to a few extreme examples.
* **Kendall's tau-b**: probability that a random pair of examples is ordered
  alike minus the probability it is ordered oppositely, corrected for ties.

Confidence intervals are percentile bootstrap intervals over examples (Efron &
Tibshirani, *An Introduction to the Bootstrap*, 1993, ch. 13): examples are
resampled with replacement, the statistic is recomputed on each resample, and
the interval is the ``(1 - confidence) / 2`` and ``(1 + confidence) / 2``
percentiles of the resampled statistics. A percentile interval is not forced to
contain the point estimate, though with more than a handful of examples it does.
"""

from __future__ import annotations

import warnings
from itertools import combinations

import numpy as np
import pandas as pd
from scipy import stats

from mnemoscope.analysis.resampling import resample_midranks, score_families
from mnemoscope.store.tables import CORRELATIONS, without_fit

STATISTICS: tuple[str, ...] = ("spearman", "pearson", "kendall")

# Resamples are processed in blocks of about this many elements so that a
# 60k-example dataset with 1000 resamples does not need gigabytes at once.
_BLOCK_ELEMENTS = 1 << 22


def _validate(n_bootstrap: int, confidence: float) -> None:
    if isinstance(n_bootstrap, bool) or not isinstance(n_bootstrap, (int, np.integer)):
        raise ValueError(f"n_bootstrap must be an integer >= 1, got {n_bootstrap!r}")
    if n_bootstrap < 1:
        raise ValueError(f"n_bootstrap must be >= 1, got {n_bootstrap}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie strictly between 0 and 1, got {confidence!r}")


def rowwise_pearson(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pearson correlation of each row of ``x`` with the same row of ``y``.

    ``x``, ``y``: ``[rows, n]``. Returns ``[rows]``; NaN where a row is constant.
    """
    # A constant row's centred values need not be exactly 0 in floating point,
    # so constancy is detected on the raw values.
    constant = (np.ptp(x, axis=1) == 0) | (np.ptp(y, axis=1) == 0)
    xc = x - x.mean(axis=1, keepdims=True)
    yc = y - y.mean(axis=1, keepdims=True)
    num = np.einsum("ij,ij->i", xc, yc)
    den = np.sqrt(np.einsum("ij,ij->i", xc, xc) * np.einsum("ij,ij->i", yc, yc))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.clip(num / den, -1.0, 1.0)
    r[constant] = np.nan
    return r


def _bootstrap(a: np.ndarray, b: np.ndarray, n_bootstrap: int, seed: int) -> dict[str, np.ndarray]:
    """The three statistics on ``n_bootstrap`` resamples of ``(a, b)``; ``a``, ``b``: ``[n]``.

    Returns ``{statistic: [n_bootstrap]}``, NaN for resamples where ``a`` or ``b`` is constant.
    """
    n = a.size
    rng = np.random.default_rng(seed)
    rows_per_block = max(1, _BLOCK_ELEMENTS // n)
    out = {name: np.empty(n_bootstrap) for name in STATISTICS}
    for start in range(0, n_bootstrap, rows_per_block):
        stop = min(start + rows_per_block, n_bootstrap)
        idx = rng.integers(0, n, size=(stop - start, n))  # [rows, n]
        ra, rb = a[idx], b[idx]
        out["pearson"][start:stop] = rowwise_pearson(ra, rb)
        kendall = out["kendall"]
        if n <= _KENDALL_MATRIX_MAX:
            counts = _counts(idx, n)
            out["spearman"][start:stop] = _spearman_resampled(a, b, counts)
            kendall[start:stop] = _kendall_resampled(a, b, counts)
            continue
        out["spearman"][start:stop] = rowwise_pearson(
            stats.rankdata(ra, axis=1), stats.rankdata(rb, axis=1)
        )
        for row in range(stop - start):
            if np.ptp(ra[row]) == 0 or np.ptp(rb[row]) == 0:
                kendall[start + row] = np.nan
            else:
                kendall[start + row] = stats.kendalltau(ra[row], rb[row], variant="b").statistic
    return out


_KENDALL_MATRIX_MAX = 4096
"""Up to this many examples, the rank statistics of every resample come from its counts
of each example (Kendall's τ_b from one ``[n, n]`` sign matrix); beyond, one ``scipy``
call per resample for Kendall and ranks of the resampled arrays for Spearman."""


def _counts(idx: np.ndarray, n: int) -> np.ndarray:
    """``[rows, n]`` int: how often each example is drawn in each row of ``idx``."""
    rows = idx.shape[0]
    flat = (np.arange(rows)[:, None] * n + idx).ravel()
    return np.bincount(flat, minlength=rows * n).reshape(rows, n)


def _spearman_resampled(a: np.ndarray, b: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Spearman's ρ of every resample (rows of ``counts``): the Pearson correlation of the
    resample's midranks, each example weighted by its count (equal to ranking the
    resampled arrays); NaN where one side is constant."""
    ranks_a, constant_a = resample_midranks(a, counts)
    ranks_b, constant_b = resample_midranks(b, counts)
    counts = counts.astype(np.float64)
    total = counts.sum(1, keepdims=True)
    da = ranks_a - (counts * ranks_a).sum(1, keepdims=True) / total
    db = ranks_b - (counts * ranks_b).sum(1, keepdims=True) / total
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = (counts * da * db).sum(1) / np.sqrt(
            (counts * da * da).sum(1) * (counts * db * db).sum(1)
        )
    rho[constant_a | constant_b] = np.nan
    return np.clip(rho, -1.0, 1.0)


def _kendall_resampled(a: np.ndarray, b: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Kendall's τ_b of every resample (rows of ``counts [rows, n]``, each example's
    draws), equal to ``scipy.stats.kendalltau`` on the resampled arrays (NaN where one
    side is constant).

    A resample is a count ``w_i`` of each example. Copies of one example tie on both
    sides, so the concordant-minus-discordant count is ``S = ½ wᵀ M w`` with ``M_ij =
    sign(a_i − a_j)·sign(b_i − b_j)``, and the tie corrections are ``Σ_g t_g(t_g − 1)/2``
    over the groups of equal values, ``t_g`` the resample's count in group g:
    ``τ_b = S / sqrt((N₀ − T_a)(N₀ − T_b))``, ``N₀ = n(n − 1)/2``."""
    n = a.size
    counts = counts.astype(np.float64)
    signs = np.sign(a[:, None] - a[None, :]) * np.sign(b[:, None] - b[None, :])
    concordance = 0.5 * np.einsum("ri,ri->r", counts @ signs, counts)
    pairs = n * (n - 1) / 2

    def tied(values: np.ndarray) -> np.ndarray:
        order = np.argsort(values, kind="stable")
        starts = np.flatnonzero(np.r_[True, np.diff(values[order]) != 0])
        per_group = np.add.reduceat(counts[:, order], starts, axis=1)  # [rows, groups]
        return (per_group * (per_group - 1) / 2).sum(1)

    with np.errstate(invalid="ignore", divide="ignore"):
        tau = concordance / np.sqrt((pairs - tied(a)) * (pairs - tied(b)))
    return np.clip(tau, -1.0, 1.0)


def correlation_with_ci(
    a: np.ndarray,
    b: np.ndarray,
    *,
    n_bootstrap: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, tuple[float, float, float, int]]:
    """Spearman, Pearson and Kendall tau-b of ``a`` vs ``b`` with percentile bootstrap CIs.

    Args:
        a, b: ``[n]`` scores of the same examples under two methods. Positions where
            either is not finite are dropped.
        n_bootstrap: number of resamples of the examples (with replacement); the same
            resamples are used for all three statistics.
        confidence: coverage of the interval, in ``(0, 1)``.
        seed: seed of the ``numpy`` generator drawing the resamples; the result is a
            deterministic function of the inputs and the seed.

    Returns:
        ``{'spearman' | 'pearson' | 'kendall': (value, ci_low, ci_high, n)}`` where
        ``value`` is the statistic on all kept pairs and ``n`` the number kept. With
        fewer than 3 kept pairs, or when ``a`` or ``b`` is constant, value and bounds
        are NaN. Resamples in which ``a`` or ``b`` is constant are left out of the
        percentiles.

    Raises:
        ValueError: ``n_bootstrap < 1``, ``confidence`` outside ``(0, 1)``, or ``a`` and
            ``b`` of different shapes.
    """
    _validate(n_bootstrap, confidence)
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"a and b must have the same length, got {a.size} and {b.size}")
    kept = np.isfinite(a) & np.isfinite(b)
    a, b = a[kept], b[kept]
    n = int(a.size)
    if n < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return {name: (np.nan, np.nan, np.nan, n) for name in STATISTICS}

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", stats.ConstantInputWarning)
        values = {
            "spearman": float(stats.spearmanr(a, b).statistic),
            "pearson": float(stats.pearsonr(a, b).statistic),
            "kendall": float(stats.kendalltau(a, b, variant="b").statistic),
        }
        resampled = _bootstrap(a, b, n_bootstrap, seed)

    # NaN bounds where every resample is degenerate (tiny n with heavy ties)
    return {
        name: (values[name], *percentile_interval(resampled[name], confidence), n)
        for name in STATISTICS
    }


def percentile_interval(boot: np.ndarray, confidence: float) -> tuple[float, float]:
    """Percentile interval of the finite bootstrap values (NaN if there are none)."""
    boot = boot[np.isfinite(boot)]
    if boot.size == 0:
        return float("nan"), float("nan")
    tail = 100.0 * (1.0 - confidence) / 2.0
    low, high = np.percentile(boot, [tail, 100.0 - tail])
    return float(low), float(high)


def _mean_over_seeds(scores: pd.DataFrame) -> pd.DataFrame:
    """One score per (dataset, arch, family, method, example_id): the mean over seeds.

    NaN scores are skipped by the mean, so an example keeps a score if any seed scored it.
    """
    keys = ["dataset", "arch", "family", "method", "example_id"]
    return scores.groupby(keys, sort=False, as_index=False)["score"].mean()


def _method_pairs(methods: list[str], family: dict[str, str]) -> list[tuple[str, str]]:
    """Memorization x influence pairs, then same-family pairs; ``methods`` in table order."""
    memorization = [m for m in methods if family[m] == "memorization"]
    influence = [m for m in methods if family[m] == "influence"]
    cross = [(m, i) for m in memorization for i in influence]
    return cross + list(combinations(memorization, 2)) + list(combinations(influence, 2))


def correlation_table(
    scores: pd.DataFrame,
    *,
    n_bootstrap: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> pd.DataFrame:
    """Correlations between every pair of score methods, per (dataset, arch).

    Args:
        scores: the scores table (columns of ``store.tables.SCORES``). If a (dataset,
            arch) has several seeds, each method's score is first averaged over seeds
            per example (ignoring NaN), so the correlation is between seed-averaged scores.
        n_bootstrap, confidence, seed: as in :func:`correlation_with_ci`; every pair
            uses the same ``seed``.

    Returns:
        A frame with exactly the columns of ``store.tables.CORRELATIONS``. Per (dataset,
        arch), in order of first appearance: every (memorization method, influence
        method) pair with ``method_a`` the memorization method, then every pair of
        distinct methods within a family, ``method_a`` first in table order. Each pair
        is computed on the examples both methods scored (finite scores only) and has
        three rows: spearman, pearson, kendall.

    Raises:
        ValueError: bad ``n_bootstrap`` / ``confidence``, missing columns, or a method
            whose family is not exactly one of 'memorization' / 'influence'.
    """
    _validate(n_bootstrap, confidence)
    family = score_families(scores)
    method_order = list(family)

    rows: list[dict[str, object]] = []
    for (dataset, arch), group in _mean_over_seeds(scores).groupby(["dataset", "arch"], sort=False):
        wide = group.pivot(index="example_id", columns="method", values="score")
        present = [m for m in method_order if m in wide.columns]
        for method_a, method_b in _method_pairs(present, family):
            # Examples one method did not score are NaN after the pivot and are dropped
            # by correlation_with_ci: an inner join on example_id.
            result = correlation_with_ci(
                wide[method_a].to_numpy(),
                wide[method_b].to_numpy(),
                n_bootstrap=n_bootstrap,
                confidence=confidence,
                seed=seed,
            )
            for statistic in STATISTICS:
                value, low, high, n = result[statistic]
                rows.append(
                    {
                        "dataset": dataset,
                        "arch": arch,
                        "method_a": method_a,
                        "method_b": method_b,
                        "statistic": statistic,
                        "value": value,
                        "ci_low": low,
                        "ci_high": high,
                        "n": n,
                    }
                )
    table = pd.DataFrame(rows, columns=without_fit(CORRELATIONS).names)
    return table.astype(
        {"value": "float64", "ci_low": "float64", "ci_high": "float64", "n": "int64"}
    )
