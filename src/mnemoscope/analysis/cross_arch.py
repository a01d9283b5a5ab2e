"""Is what one architecture memorizes what another memorizes, and which cheap proxy tracks
the expensive reference?

Two comparisons, both by Spearman's rank correlation (Pearson correlation of midranks: 1
for any increasing relation, 0 for unrelated orders) with a percentile bootstrap CI over
training examples (Efron & Tibshirani 1993, ch. 13):

* ``'architectures'``: for each (dataset, method), the scores the method gives under two
  architectures, over the example ids both scored finitely;
* ``'proxy'``: for each (dataset, arch), every memorization proxy against the reference
  (Feldman & Zhang 2020's subsampled memorization estimate by default); ``best`` marks the
  proxy with the highest correlation in its cell.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from itertools import combinations

import numpy as np
import pandas as pd

from mnemoscope.analysis.correlations import _validate, percentile_interval
from mnemoscope.analysis.resampling import (
    RankSide,
    Resamples,
    fit_lookup,
    mean_scores,
    method_families,
    schema_frame,
    spearman_sides,
)
from mnemoscope.store.tables import CROSS_ARCH


def _spearman_row(
    a: tuple[Hashable, pd.Series],
    b: tuple[Hashable, pd.Series],
    resamples: Resamples,
    confidence: float,
) -> dict[str, object]:
    """Spearman of two (key, id-indexed scores) on the ids both have finite, with its CI.

    A side's resampled ranks are kept under its key and kept ids, so a score compared with
    several others over the same examples is ranked once.
    """
    (key_a, series_a), (key_b, series_b) = a, b
    joined = pd.concat([series_a, series_b], axis=1, join="outer")
    kept = joined.notna().all(axis=1).to_numpy()
    n = int(kept.sum())
    x = joined.iloc[:, 0].to_numpy(dtype=np.float64)[kept]
    y = joined.iloc[:, 1].to_numpy(dtype=np.float64)[kept]
    if n < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        value, low, high = float("nan"), float("nan"), float("nan")
    else:
        ids = joined.index.to_numpy()[kept].tobytes()
        value, boot = spearman_sides(
            RankSide(x, resamples, (key_a, ids)), RankSide(y, resamples, (key_b, ids))
        )
        low, high = percentile_interval(boot, confidence)
    return {
        "statistic": "spearman",
        "value": value,
        "ci_low": low,
        "ci_high": high,
        "n": n,
        "n_dropped": len(joined) - n,
    }


def cross_arch_table(
    scores: pd.DataFrame,
    fits: pd.DataFrame | None = None,
    reference: str = "feldman_zhang",
    proxies: Sequence[str] | None = None,
    *,
    n_bootstrap: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> pd.DataFrame:
    """Spearman agreement across architectures and of proxies with a reference.

    Args:
        scores: the scores table (``store.tables.SCORES``); seeds averaged per example.
        fits: (dataset, arch, fit, fit_reason) rows of cells whose models do not fit (None:
            all fit). An 'architectures' row fits when both architectures do.
        reference: the memorization method the proxies are compared with.
        proxies: the methods to compare with it; None: every memorization method but the
            reference. Proxies a cell lacks are skipped there.
        n_bootstrap, confidence, seed: the percentile bootstrap over examples; every
            comparison uses the same ``seed``.

    Returns:
        A frame with exactly the columns of ``store.tables.CROSS_ARCH``. First the
        ``'architectures'`` rows: per dataset and method (table order), every pair of the
        architectures that scored it (``arch_a`` first in table order), ``reference`` null,
        ``best`` False. Then the ``'proxy'`` rows: per (dataset, arch) with the reference,
        each proxy, ``arch_a == arch_b``. ``n`` counts the examples both sides scored
        finitely, ``n_dropped`` the ones either side has but not both finitely; fewer
        than 3, or a constant side, gives NaN. Per (dataset, arch), ``best`` is True on
        every proxy whose finite value is the highest.
    """
    _validate(n_bootstrap, confidence)
    if isinstance(proxies, str):
        raise ValueError(f"proxies must be a list of method names, got the string {proxies!r}")
    fit = fit_lookup(fits)
    per_example = mean_scores(scores)
    resamples = Resamples(n_bootstrap, seed)
    family = method_families(per_example)
    series = {
        key: (key, group.set_index("example_id")["score"])
        for key, group in per_example.groupby(["dataset", "method", "arch"], sort=False)
    }
    rows: list[dict[str, object]] = []
    for (dataset, method), group in per_example.groupby(["dataset", "method"], sort=False):
        for arch_a, arch_b in combinations(group["arch"].unique().tolist(), 2):
            a, b = series[(dataset, method, arch_a)], series[(dataset, method, arch_b)]
            rows.append(
                {
                    "dataset": dataset,
                    "comparison": "architectures",
                    "method": method,
                    "reference": None,
                    "arch_a": arch_a,
                    "arch_b": arch_b,
                    **_spearman_row(a, b, resamples, confidence),
                    "best": False,
                    "fit": fit(dataset, arch_a) and fit(dataset, arch_b),
                }
            )
        resamples.forget(_counts_only)
    for (dataset, arch), group in per_example.groupby(["dataset", "arch"], sort=False):
        present = group["method"].unique().tolist()
        if reference not in present:
            continue
        chosen = (
            [m for m in present if family[m] == "memorization" and m != reference]
            if proxies is None
            else [m for m in proxies if m in present and m != reference]
        )
        cell = [
            {
                "dataset": dataset,
                "comparison": "proxy",
                "method": proxy,
                "reference": reference,
                "arch_a": arch,
                "arch_b": arch,
                **_spearman_row(
                    series[(dataset, proxy, arch)],
                    series[(dataset, reference, arch)],
                    resamples,
                    confidence,
                ),
                "fit": fit(dataset, arch),
            }
            for proxy in chosen
        ]
        values = np.array([row["value"] for row in cell], dtype=np.float64)
        top = np.nanmax(values) if np.isfinite(values).any() else np.nan
        for row, value in zip(cell, values, strict=True):
            row["best"] = bool(value == top)
        rows.extend(cell)
        resamples.forget(_counts_only)
    return schema_frame(rows, CROSS_ARCH)


def _counts_only(key: Hashable) -> bool:
    """Keep the resamples themselves; drop the ranks of a finished group of comparisons."""
    return key[0] == "counts"
