"""Do the most influential training examples coincide with the most memorized ones?

For an influence method (top-k set A) and a memorization method (top-k set B) of the same
models, with ``n_top = max(1, round(k · n))`` examples in each set:

* **top-k Jaccard** ``|A ∩ B| / |A ∪ B|``: 1 when the sets are equal, ``≈ k / (2 − k)`` for
  unrelated scores;
* **precision@k** ``|A ∩ B| / |A|``: the fraction of the influence method's top-k that the
  memorization method also ranks top-k; ``≈ k`` for unrelated scores.

Ranks put the highest score first and break ties by ascending example id, so the sets are
a deterministic function of the scores. The CIs are percentile bootstrap intervals over
training examples (Efron & Tibshirani 1993, ch. 13): each resample of the ``n`` examples
re-takes both top-``n_top`` sets among its ``n`` draws.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np
import pandas as pd

from mnemoscope.analysis.correlations import _validate, percentile_interval
from mnemoscope.analysis.resampling import (
    Resamples,
    best_first,
    draws_before,
    fit_lookup,
    kept_in_top,
    mean_scores,
    method_families,
    n_top_of,
    schema_frame,
    validate_ks,
    wide_cells,
)
from mnemoscope.store.tables import OVERLAP


def top_overlap_resampled(
    example_ids: np.ndarray,
    values: dict[str, np.ndarray],
    pairs: Sequence[tuple[str, str]],
    ks: Sequence[float],
    resamples: Resamples,
) -> tuple[np.ndarray, np.ndarray]:
    """``|A ∩ B|`` of every pair's top sets, on all examples and on each resample.

    Args:
        example_ids: ``[n]`` ids (the tie-break).
        values: ``{method: [n] finite scores}``.
        pairs: ``(a, b)`` method names.
        ks: fractions; ``n_top = max(1, round(k · n))``.
        resamples: the bootstrap resamples (:class:`~mnemoscope.analysis.resampling.Resamples`).

    Returns:
        ``(point, boot)``: ``point`` ``[pairs, ks]`` and ``boot`` ``[pairs, ks, n_bootstrap]``
        intersection sizes.
    """
    n = example_ids.size
    tops = [n_top_of(k, n) for k in ks]
    limit = max(tops)
    methods = list(dict.fromkeys(m for pair in pairs for m in pair))
    orders = {m: best_first(values[m], example_ids) for m in methods}
    point = _intersections(np.ones((1, n), dtype=np.int32), orders, pairs, tops, limit)[..., 0]
    boot = np.concatenate(
        [_intersections(counts, orders, pairs, tops, limit) for counts in resamples.blocks(n)],
        axis=2,
    )
    return point, boot


def _intersections(
    counts: np.ndarray,
    orders: dict[Hashable, np.ndarray],
    pairs: Sequence[tuple[Hashable, Hashable]],
    tops: Sequence[int],
    limit: int,
) -> np.ndarray:
    """``[pairs, ks, rows]`` top-set intersections for one block of resamples."""
    before = {method: draws_before(counts, order, limit) for method, order in orders.items()}
    out = np.empty((len(pairs), len(tops), counts.shape[0]))
    for p, (a, b) in enumerate(pairs):
        # Only examples that can be in both top sets matter. Copies of an example are taken
        # in the same order by both methods, so the intersection keeps min(a_e, b_e) of
        # them: the copies ahead of both cut-offs.
        (columns_a, ahead_a), (columns_b, ahead_b) = before[a], before[b]
        columns, in_a, in_b = np.intersect1d(
            columns_a, columns_b, assume_unique=True, return_indices=True
        )
        ahead = np.maximum(ahead_a[:, in_a], ahead_b[:, in_b])
        drawn = counts[:, columns]
        for j, n_top in enumerate(tops):
            out[p, j] = kept_in_top(drawn, ahead, n_top).sum(axis=1)
    return out


def overlap_table(
    scores: pd.DataFrame,
    fits: pd.DataFrame | None = None,
    ks: Sequence[float] = (0.01, 0.05, 0.1),
    *,
    n_bootstrap: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> pd.DataFrame:
    """Top-k Jaccard and precision@k of every (influence, memorization) pair, per cell.

    Args:
        scores: the scores table (``store.tables.SCORES``); several seeds of a method are
            averaged per example first (ignoring NaN).
        fits: (dataset, arch, fit, fit_reason) rows of the cells whose models do not fit
            their data (None: all fit); copied into the ``fit`` column.
        ks: fractions of the training set, each in (0, 1).
        n_bootstrap, confidence, seed: the percentile bootstrap over examples; every pair
            uses the same ``seed``.

    Returns:
        A frame with exactly the columns of ``store.tables.OVERLAP``: per (dataset, arch),
        every influence × memorization pair (table order), each k. A pair is computed on the
        examples both methods scored finitely (``n``); ``n_dropped`` counts the cell's other
        examples. Pairs with no shared example get no row.

    Raises:
        ValueError: bad ``ks`` / ``n_bootstrap`` / ``confidence``, missing columns, or a
            method without exactly one family.
    """
    _validate(n_bootstrap, confidence)
    ks = validate_ks(ks)
    fit = fit_lookup(fits)
    per_example = mean_scores(scores)
    resamples = Resamples(n_bootstrap, seed)
    family = method_families(per_example)
    rows: list[dict[str, object]] = []
    for dataset, arch, wide in wide_cells(per_example):
        influence = [m for m in wide.columns if family[m] == "influence"]
        memorization = [m for m in wide.columns if family[m] == "memorization"]
        finite = wide.notna()
        # Pairs that keep the same examples share their resamples and rankings.
        by_kept: dict[bytes, list[tuple[str, str]]] = {}
        for i in influence:
            for m in memorization:
                kept = (finite[i] & finite[m]).to_numpy()
                if kept.any():
                    by_kept.setdefault(kept.tobytes(), []).append((i, m))
        results: dict[tuple[str, str], tuple[np.ndarray, np.ndarray, int]] = {}
        for key, pairs in by_kept.items():
            kept = np.frombuffer(key, dtype=bool)
            ids = wide.index.to_numpy()[kept]
            values = {m: wide[m].to_numpy(dtype=np.float64)[kept] for p in pairs for m in p}
            point, boot = top_overlap_resampled(ids, values, pairs, ks, resamples)
            for p, pair in enumerate(pairs):
                results[pair] = (point[p], boot[p], int(kept.sum()))
        for i in influence:
            for m in memorization:
                if (i, m) not in results:
                    continue
                point, boot, n = results[(i, m)]
                for j, k in enumerate(ks):
                    n_top = n_top_of(k, n)
                    rows.append(
                        {
                            "dataset": dataset,
                            "arch": arch,
                            "influence": i,
                            "memorization": m,
                            "k": k,
                            "n_top": n_top,
                            **_overlap_stats(point[j], boot[j], n_top, confidence),
                            "n": n,
                            "fit": fit(dataset, arch),
                            "n_dropped": len(wide) - n,
                        }
                    )
    return schema_frame(rows, OVERLAP)


def _overlap_stats(
    point: float, boot: np.ndarray, n_top: int, confidence: float
) -> dict[str, float]:
    """Jaccard and precision (with intervals) from intersection sizes of two n_top-sets."""
    out: dict[str, float] = {}
    for name, transform in (
        ("jaccard", lambda inter: inter / (2 * n_top - inter)),
        ("precision", lambda inter: inter / n_top),
    ):
        low, high = percentile_interval(transform(boot), confidence)
        out.update({name: float(transform(point)), f"{name}_low": low, f"{name}_high": high})
    return out
