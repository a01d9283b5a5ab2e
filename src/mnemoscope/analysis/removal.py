"""Does removing the examples a score ranks highest hurt test accuracy more than removing
random ones? (Feldman & Zhang 2020, "What Neural Networks Memorize and Why", §3.3, Fig. 3:
removing the most memorized examples costs more test accuracy than removing as many
random ones.)

The experiment removes ``k`` of the training set, the top-k by a score, a random k or the
bottom-k, retrains ``R ≥ 3`` seeds each and measures test accuracy. Per (dataset, arch,
method, direction, k) this module reports the mean accuracy over seeds with a Student-t
interval, and ``delta_vs_random``: the mean over seeds of (accuracy − the random
direction's accuracy with the same seed and k), with the t-interval of those paired
differences — pairing by seed removes the seed-to-seed variation both share.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from mnemoscope.analysis.correlations import _validate
from mnemoscope.analysis.resampling import fit_lookup, schema_frame, t_interval
from mnemoscope.store.tables import REMOVAL

RESULT_COLUMNS: tuple[str, ...] = (
    "dataset",
    "arch",
    "method",
    "direction",
    "k",
    "n_removed",
    "seed",
    "accuracy",
)
DIRECTIONS: tuple[str, ...] = ("top", "random", "bottom")


def removal_table(
    results: pd.DataFrame,
    fits: pd.DataFrame | None = None,
    confidence: float = 0.95,
) -> pd.DataFrame:
    """Mean accuracy after removing score-chosen examples, and its gap to random removal.

    Args:
        results: one row per retrained model (columns ``RESULT_COLUMNS``): direction in
            ``DIRECTIONS``, k the fraction removed, n_removed how many examples that is,
            seed, test accuracy. Rows with a non-finite accuracy are left out; several
            rows of one seed are averaged.
        fits: (dataset, arch, fit, fit_reason) rows of cells whose models do not fit.
        confidence: of every Student-t interval (NaN bounds with one seed).

    Returns:
        A frame with exactly the columns of ``store.tables.REMOVAL``, one row per (dataset,
        arch, method, direction, k) in order of first appearance. The random baseline of a
        method at k is its own random rows, or, if it has none, the random rows at the same
        (dataset, arch, k) averaged per seed over the methods that have them. Delta columns
        are NaN without a baseline seed in common (the random rows' own delta is 0).

    Raises:
        ValueError: missing columns, an unknown direction, several n_removed for one
            (dataset, arch, method, direction, k), or a bad ``confidence``.
    """
    _validate(1, confidence)
    missing = [c for c in RESULT_COLUMNS if c not in results.columns]
    if missing:
        raise ValueError(f"results table is missing columns {missing}")
    unknown = sorted(set(results["direction"]) - set(DIRECTIONS))
    if unknown:
        raise ValueError(f"results: direction must be one of {list(DIRECTIONS)}, got {unknown}")
    fit = fit_lookup(fits)
    keys = ["dataset", "arch", "method", "direction", "k"]
    finite = results[np.isfinite(results["accuracy"].to_numpy(dtype=np.float64))]
    sizes = finite.groupby(keys, sort=False)["n_removed"].nunique()
    if (sizes > 1).any():
        bad = [tuple(i) for i in sizes[sizes > 1].index]
        raise ValueError(f"results: several n_removed for {bad}")
    per_seed = finite.groupby([*keys, "n_removed", "seed"], sort=False, as_index=False)[
        "accuracy"
    ].mean()
    random = per_seed[per_seed["direction"] == "random"]
    own = random.set_index(["dataset", "arch", "method", "k", "seed"])["accuracy"].sort_index()
    shared = random.groupby(["dataset", "arch", "k", "seed"])["accuracy"].mean().sort_index()
    methods_with_random = set(zip(random["dataset"], random["arch"], random["method"]))

    rows: list[dict[str, object]] = []
    for (dataset, arch, method, direction, k), group in per_seed.groupby(keys, sort=False):
        accuracy = group.set_index("seed")["accuracy"]
        mean, low, high = t_interval(accuracy.to_numpy(), confidence)
        if (dataset, arch, method) in methods_with_random:
            baseline = _select(own, (dataset, arch, method, k))
        else:
            baseline = _select(shared, (dataset, arch, k))
        paired = (accuracy - baseline).dropna()
        delta = t_interval(paired.to_numpy(), confidence)
        rows.append(
            {
                "dataset": dataset,
                "arch": arch,
                "method": method,
                "direction": direction,
                "k": k,
                "n_removed": int(group["n_removed"].iloc[0]),
                "accuracy": mean,
                "ci_low": low,
                "ci_high": high,
                "n_seeds": len(accuracy),
                "delta_vs_random": delta[0],
                "delta_low": delta[1],
                "delta_high": delta[2],
                "fit": fit(dataset, arch),
            }
        )
    return schema_frame(rows, REMOVAL)


def _select(baseline: pd.Series, key: tuple) -> pd.Series:
    """The per-seed baseline accuracies under ``key`` (the leading index levels), by seed."""
    try:
        return baseline.loc[key]
    except KeyError:
        return pd.Series(dtype=np.float64)
