"""The applications of per-example scores of Harutyunyan et al. 2021, "Estimating
informativeness of samples with smooth unique information" (ICLR), §5, as rows of
``applications.parquet`` (long: one value with its CI per row):

* :func:`detection_by_kind`: detecting examples of a known provenance (mislabeled, planted
  canaries, noisy or occluded inputs, adversarial examples) by their score: ROC AUC, the
  probability that a random flagged example scores higher than a random other one (ties
  one half); 0.5 is chance. Percentile bootstrap CI over training examples.
* :func:`group_means`: the mean score per group of examples (e.g. clean vs noisy source,
  an undersampled class vs the rest) and the difference of two groups, with percentile
  bootstrap CIs over training examples (resampled together, so group sizes vary).
* :func:`accuracy_curve_rows`: test accuracy of models retrained on a summary (or without a
  part) of the training set chosen by a score, mean over seeds with a Student-t interval.

All CIs are percentile bootstrap intervals (Efron & Tibshirani 1993, ch. 13) except the
accuracy curve's, which resamples nothing: its seeds are the replicates.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from mnemoscope.analysis.correlations import _validate, percentile_interval
from mnemoscope.analysis.resampling import (
    Resamples,
    auc_resampled,
    fit_lookup,
    mean_scores,
    resample_midranks,
    schema_frame,
    t_interval,
    wide_cells,
)
from mnemoscope.store.tables import APPLICATIONS

CURVE_COLUMNS: tuple[str, ...] = (
    "dataset",
    "arch",
    "method",
    "direction",
    "fraction",
    "seed",
    "accuracy",
)


def _train_column(examples: pd.DataFrame, dataset: str, column: str) -> pd.Series:
    """The dataset's training examples' ``column``, indexed by example_id."""
    train = examples[(examples["dataset"] == dataset) & (examples["split"] == "train")]
    return train.set_index("example_id")[column]


def _row(dataset, arch, application, method, group, metric, value, low, high, n, fit) -> dict:
    return {
        "dataset": dataset,
        "arch": arch,
        "application": application,
        "method": method,
        "group": group,
        "metric": metric,
        "value": float(value),
        "ci_low": low,
        "ci_high": high,
        "n": int(n),
        "fit": bool(fit),
    }


def _require(frame: pd.DataFrame, columns: Sequence[str], name: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{name} table is missing columns {missing}")


def detection_by_kind(
    scores: pd.DataFrame,
    examples: pd.DataFrame,
    fits: pd.DataFrame | None = None,
    kinds: Sequence[str] = ("is_mislabeled", "is_canary"),
    *,
    n_bootstrap: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> pd.DataFrame:
    """Detection AUC of every score for each provenance kind, per (dataset, arch).

    Args:
        scores: the scores table (``store.tables.SCORES``); seeds averaged per example.
        examples: the examples table; its ``'train'`` rows give each kind's flags.
        fits: (dataset, arch, fit, fit_reason) rows of cells whose models do not fit.
        kinds: boolean columns of ``examples`` (e.g. 'is_mislabeled', 'is_canary',
            'is_noisy_input', 'is_occluded', 'is_adversarial'). A kind absent from
            ``examples``, or without a flagged or an unflagged scored example in a cell, is
            skipped there; a missing flag counts as False.
        n_bootstrap, confidence, seed: the percentile bootstrap over training examples.

    Returns:
        Rows of ``store.tables.APPLICATIONS`` with application 'detection', group the kind,
        metric 'auc', ``n`` the scored examples (finite score, in ``examples``), per
        (dataset, arch), method (table order) and kind (order of ``kinds``).
    """
    _validate(n_bootstrap, confidence)
    _require(examples, ("dataset", "example_id", "split"), "examples")
    fit = fit_lookup(fits)
    resamples = Resamples(n_bootstrap, seed)
    present = [k for k in dict.fromkeys(kinds) if k in examples.columns]
    rows: list[dict] = []
    for dataset, arch, wide in wide_cells(mean_scores(scores)):
        ids = wide.index
        flags = {
            k: _train_column(examples, dataset, k).reindex(ids).fillna(False).astype(bool)
            for k in present
        }
        known = ids.isin(_train_column(examples, dataset, "split").index)
        for method in wide.columns:
            kept = wide[method].notna().to_numpy() & known
            values = wide[method].to_numpy(dtype=np.float64)[kept]
            positives = {k: f.to_numpy()[kept] for k, f in flags.items()}
            positives = {k: p for k, p in positives.items() if 0 < p.sum() < p.size}
            if not positives:
                continue
            point, boot = _aucs(values, positives, resamples)
            for kind in positives:
                low, high = percentile_interval(boot[kind], confidence)
                rows.append(
                    _row(
                        dataset,
                        arch,
                        "detection",
                        method,
                        kind,
                        "auc",
                        point[kind],
                        low,
                        high,
                        values.size,
                        fit(dataset, arch),
                    )
                )
    return schema_frame(rows, APPLICATIONS)


def _aucs(
    values: np.ndarray, positives: dict[str, np.ndarray], resamples: Resamples
) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """AUC of ``values`` for each boolean ``positives`` array, on all examples and resamples."""
    n = values.size

    def block(counts: np.ndarray) -> dict[str, np.ndarray]:
        ranks = resample_midranks(values, counts)[0]
        return {k: auc_resampled(ranks, counts * p, n) for k, p in positives.items()}

    point = block(np.ones((1, n), dtype=np.int32))
    blocks = [block(counts) for counts in resamples.blocks(n)]
    boot = {k: np.concatenate([b[k] for b in blocks]) for k in positives}
    return {k: float(v[0]) for k, v in point.items()}, boot


def group_means(
    scores: pd.DataFrame,
    examples: pd.DataFrame,
    fits: pd.DataFrame | None = None,
    column: str = "is_mislabeled",
    application: str | None = None,
    groups: Sequence[object] | None = None,
    *,
    n_bootstrap: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> pd.DataFrame:
    """Mean score per value of a column of ``examples``, and the difference of two groups.

    Args:
        scores: the scores table (``store.tables.SCORES``); seeds averaged per example.
        examples: the examples table; ``column`` of its ``'train'`` rows groups the examples
            (examples with a missing value are left out).
        fits: (dataset, arch, fit, fit_reason) rows of cells whose models do not fit.
        column: the grouping column, e.g. 'source' ('clean' / 'noisy') or 'is_undersampled'.
        application: the rows' ``application`` (default: ``column``).
        groups: the order of the groups; None: the values present, in descending order
            (so True before False and 'noisy' before 'clean').
        n_bootstrap, confidence, seed: the percentile bootstrap over training examples.

    Returns:
        Rows of ``store.tables.APPLICATIONS``, metric 'mean', per (dataset, arch) and method:
        one per group present (group ``str(value)``, ``n`` its examples with a finite
        score), then, when the first two groups of the order are both present, group
        'difference' = mean of the first minus mean of the second (``n`` both groups).

    Raises:
        ValueError: ``column`` not in ``examples``, or bad bootstrap arguments.
    """
    _validate(n_bootstrap, confidence)
    _require(examples, ("dataset", "example_id", "split", column), "examples")
    application = column if application is None else application
    fit = fit_lookup(fits)
    resamples = Resamples(n_bootstrap, seed)
    rows: list[dict] = []
    for dataset, arch, wide in wide_cells(mean_scores(scores)):
        labels = _train_column(examples, dataset, column).reindex(wide.index)
        present = set(labels.dropna())
        order = (
            [g for g in groups if g in present]
            if groups is not None
            else sorted(present, reverse=True)
        )
        if not order:
            continue
        pair = groups[:2] if groups is not None else order[:2]
        with_difference = len(pair) == 2 and all(g in present for g in pair)
        for method in wide.columns:
            kept = (wide[method].notna() & labels.notna()).to_numpy()
            values = wide[method].to_numpy(dtype=np.float64)[kept]
            member = np.stack([(labels[kept] == g).to_numpy() for g in order], axis=1)
            point, boot = _means(values, member.astype(np.float64), resamples)
            sizes = member.sum(axis=0)
            for j, g in enumerate(order):
                if sizes[j] == 0:
                    continue
                low, high = percentile_interval(boot[:, j], confidence)
                rows.append(
                    _row(
                        dataset,
                        arch,
                        application,
                        method,
                        str(g),
                        "mean",
                        point[j],
                        low,
                        high,
                        sizes[j],
                        fit(dataset, arch),
                    )
                )
            if with_difference:
                first, second = order.index(pair[0]), order.index(pair[1])
                if sizes[first] == 0 or sizes[second] == 0:
                    continue
                diff = boot[:, first] - boot[:, second]
                low, high = percentile_interval(diff, confidence)
                rows.append(
                    _row(
                        dataset,
                        arch,
                        application,
                        method,
                        "difference",
                        "mean",
                        point[first] - point[second],
                        low,
                        high,
                        sizes[first] + sizes[second],
                        fit(dataset, arch),
                    )
                )
    return schema_frame(rows, APPLICATIONS)


def _means(
    values: np.ndarray, member: np.ndarray, resamples: Resamples
) -> tuple[np.ndarray, np.ndarray]:
    """Per-group means ``[groups]`` and on each resample ``[n_bootstrap, groups]`` (NaN where a
    resample drew no example of a group); ``member`` ``[n, groups]`` 0/1."""
    weighted = member * values[:, None]
    with np.errstate(invalid="ignore", divide="ignore"):  # a group without members: NaN
        point = (values @ member) / member.sum(axis=0)
    blocks = []
    for counts in resamples.blocks(values.size):
        counts = counts.astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            blocks.append((counts @ weighted) / (counts @ member))
    return point, np.concatenate(blocks)


def accuracy_curve_rows(
    results: pd.DataFrame,
    fits: pd.DataFrame | None = None,
    application: str = "summarization",
    *,
    confidence: float = 0.95,
) -> pd.DataFrame:
    """Mean test accuracy over seeds of models retrained on score-chosen subsets.

    Args:
        results: one row per retrained model: dataset, arch, method, direction (e.g. 'top',
            'bottom', 'random'), fraction (of the training set kept or removed), seed,
            accuracy. Several rows of one seed are averaged; a non-finite accuracy is left out.
        fits: (dataset, arch, fit, fit_reason) rows of cells whose models do not fit.
        application: the rows' ``application``.
        confidence: of the Student-t interval over seeds
            (:func:`~mnemoscope.analysis.resampling.t_interval`; NaN with one seed).

    Returns:
        Rows of ``store.tables.APPLICATIONS``, metric 'accuracy', group
        ``'<direction>@<fraction>'`` (fraction in ``%g``), ``n`` the seeds, per (dataset,
        arch, method, direction, fraction) in order of first appearance.
    """
    _validate(1, confidence)
    _require(results, CURVE_COLUMNS, "results")
    fit = fit_lookup(fits)
    finite = results[np.isfinite(results["accuracy"].to_numpy(dtype=np.float64))]
    keys = ["dataset", "arch", "method", "direction", "fraction"]
    per_seed = finite.groupby([*keys, "seed"], sort=False, as_index=False)["accuracy"].mean()
    rows: list[dict] = []
    for (dataset, arch, method, direction, fraction), group in per_seed.groupby(keys, sort=False):
        mean, low, high = t_interval(group["accuracy"].to_numpy(), confidence)
        rows.append(
            _row(
                dataset,
                arch,
                application,
                method,
                f"{direction}@{fraction:g}",
                "accuracy",
                mean,
                low,
                high,
                len(group),
                fit(dataset, arch),
            )
        )
    return schema_frame(rows, APPLICATIONS)
