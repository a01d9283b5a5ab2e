"""Which cheap score finds the training examples that leak?

The positives of a (dataset, arch) are the top ``n_top = max(1, round(k · n))`` examples by
a reference privacy score: by default LiRA's per-example score (Carlini et al. 2022,
"Membership Inference Attacks From First Principles", the per-example likelihood-ratio
test of §IV), the examples a membership-inference attacker identifies best. Every other
score (influence methods, memorization methods and proxies) is judged by

* **precision@k**: the fraction of its own top ``n_top`` that are positives (``≈ k`` for a
  score unrelated to the reference, 1 for one that orders the top like it);
* **ROC AUC** of the score for the positives: the probability that a random positive
  scores higher than a random other example, ties counting one half (0.5: chance, 1: all
  positives first, 0: all positives last); in a resample, copies of the one example a
  top-k cut may split between the classes are not compared with each other;

and by what it cost (``seconds``) against the reference (``reference_seconds``). Ranks put
the highest score first, ties by ascending example id. CIs are percentile bootstrap
intervals over training examples (Efron & Tibshirani 1993, ch. 13): each resample re-takes
the positives and the score's top set among its ``n`` draws.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from mnemoscope.analysis.correlations import _validate, percentile_interval
from mnemoscope.analysis.overlap import _intersections
from mnemoscope.analysis.resampling import (
    Resamples,
    auc_resampled,
    best_first,
    draws_before,
    fit_lookup,
    kept_in_top,
    mean_scores,
    method_families,
    n_top_of,
    resample_midranks,
    schema_frame,
    validate_ks,
    wide_cells,
)
from mnemoscope.store.tables import LEAKAGE

COST_COLUMNS: tuple[str, ...] = ("dataset", "arch", "method", "seconds")


def leakage_resampled(
    example_ids: np.ndarray,
    reference: np.ndarray,
    values: dict[str, np.ndarray],
    ks: Sequence[float],
    resamples: Resamples,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Precision@k and AUC of each score for the reference's top-k, on all examples and resamples.

    Args:
        example_ids: ``[n]`` ids (the tie-break).
        reference: ``[n]`` finite reference scores.
        values: ``{method: [n] finite scores}``.
        ks, resamples: as in :func:`~mnemoscope.analysis.overlap.top_overlap_resampled`.

    Returns:
        ``{'precision' | 'auc': (point [methods, ks], boot [methods, ks, n_bootstrap])}``,
        methods in the order of ``values``.
    """
    n = example_ids.size
    tops = [n_top_of(k, n) for k in ks]
    reference_order = best_first(reference, example_ids)
    orders = {m: best_first(v, example_ids) for m, v in values.items()} | {None: reference_order}

    def block(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        pairs = [(m, None) for m in values]
        inter = _intersections(counts, orders, pairs, tops, max(tops))
        precision = inter / np.asarray(tops, dtype=np.float64)[None, :, None]
        columns, ahead = draws_before(counts, reference_order, max(tops))
        drawn = counts[:, columns]
        positives = [kept_in_top(drawn, ahead, t) for t in tops]
        auc = np.empty_like(precision)
        for p, v in enumerate(values.values()):
            ranks = resample_midranks(v, counts)[0][:, columns]
            for j, positive in enumerate(positives):
                auc[p, j] = auc_resampled(ranks, positive, n, drawn)
        return precision, auc

    point = block(np.ones((1, n), dtype=np.int32))
    blocks = [block(counts) for counts in resamples.blocks(n)]
    return {
        name: (point[i][..., 0], np.concatenate([b[i] for b in blocks], axis=2))
        for i, name in enumerate(("precision", "auc"))
    }


def _costs(costs: pd.DataFrame | None) -> dict[tuple[str, str, str], float]:
    if costs is None:
        return {}
    missing = [c for c in COST_COLUMNS if c not in costs.columns]
    if missing:
        raise ValueError(f"costs table is missing columns {missing}")
    return {
        (str(d), str(a), str(m)): float(s)
        for d, a, m, s in zip(*(costs[c] for c in COST_COLUMNS), strict=True)
    }


def leakage_table(
    scores: pd.DataFrame,
    fits: pd.DataFrame | None = None,
    costs: pd.DataFrame | None = None,
    reference: str = "lira",
    ks: Sequence[float] = (0.01, 0.05, 0.1),
    *,
    n_bootstrap: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> pd.DataFrame:
    """How well every score recovers the reference's top-k examples, per (dataset, arch).

    Args:
        scores: the scores table (``store.tables.SCORES``); seeds averaged per example.
        fits: (dataset, arch, fit, fit_reason) rows of cells whose models do not fit (None:
            all fit).
        costs: (dataset, arch, method, seconds): what each score cost, its stages plus its
            share of training; None or a missing row gives NaN seconds.
        reference: the method whose top-k are the positives.
        ks: fractions of the training set, each in (0, 1).
        n_bootstrap, confidence, seed: the percentile bootstrap over examples.

    Returns:
        A frame with exactly the columns of ``store.tables.LEAKAGE``: per (dataset, arch)
        that has the reference, every other method (table order), each k. A method is
        judged on the examples it and the reference both scored finitely (``n``;
        ``n_positive = max(1, round(k · n))``); ``n_dropped`` counts the cell's others.
        Cells without the reference get no rows.
    """
    _validate(n_bootstrap, confidence)
    ks = validate_ks(ks)
    fit = fit_lookup(fits)
    seconds = _costs(costs)
    per_example = mean_scores(scores)
    resamples = Resamples(n_bootstrap, seed)
    family = method_families(per_example)
    rows: list[dict[str, object]] = []
    for dataset, arch, wide in wide_cells(per_example):
        if reference not in wide.columns:
            continue
        finite = wide.notna()
        methods = [m for m in wide.columns if m != reference]
        by_kept: dict[bytes, list[str]] = {}
        for m in methods:
            kept = (finite[reference] & finite[m]).to_numpy()
            if kept.any():
                by_kept.setdefault(kept.tobytes(), []).append(m)
        results: dict[str, tuple[dict[str, tuple[np.ndarray, np.ndarray]], int, int]] = {}
        for key, group in by_kept.items():
            kept = np.frombuffer(key, dtype=bool)
            out = leakage_resampled(
                wide.index.to_numpy()[kept],
                wide[reference].to_numpy(dtype=np.float64)[kept],
                {m: wide[m].to_numpy(dtype=np.float64)[kept] for m in group},
                ks,
                resamples,
            )
            for p, m in enumerate(group):
                results[m] = (out, p, int(kept.sum()))
        reference_seconds = seconds.get((dataset, arch, reference), float("nan"))
        for m in methods:
            if m not in results:
                continue
            out, p, n = results[m]
            for j, k in enumerate(ks):
                row: dict[str, object] = {
                    "dataset": dataset,
                    "arch": arch,
                    "method": m,
                    "family": family[m],
                    "reference": reference,
                    "k": k,
                    "n_positive": n_top_of(k, n),
                }
                for name, (point, boot) in out.items():
                    low, high = percentile_interval(boot[p, j], confidence)
                    row.update({name: float(point[p, j]), f"{name}_low": low, f"{name}_high": high})
                row.update(
                    {
                        "seconds": seconds.get((dataset, arch, m), float("nan")),
                        "reference_seconds": reference_seconds,
                        "fit": fit(dataset, arch),
                        "n": n,
                        "n_dropped": len(wide) - n,
                    }
                )
                rows.append(row)
    return schema_frame(rows, LEAKAGE)
