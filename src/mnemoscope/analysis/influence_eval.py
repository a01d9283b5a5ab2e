"""How good an influence estimate is: agreement with leave-one-out retraining, the linear
datamodeling score (LDS) and mislabel detection. Pure functions: arrays in, numbers out.

- :func:`loo_agreement`: Pearson and Spearman between an estimate and ``loo`` scores of the
  same examples (or train×target pairs), with percentile bootstrap CIs.
- :func:`lds`: Park et al. 2023 (TRAK), eq. (5): for each target, the Spearman correlation
  over J random subsets between the attribution's additive prediction
  ``Σ_{i∈S_j} τ(i, t)`` and the target's measured output (margin) of models trained on
  ``S_j``; the LDS is its mean over targets.
- :func:`mislabel_auc`: ROC AUC of self-scores for planted flipped labels, with a CI.
- :func:`influence_eval_table`: all of them for a study, as rows of ``influence_eval.parquet``.

Every CI is a percentile bootstrap (Efron & Tibshirani 1993, ch. 13), as in
:mod:`mnemoscope.analysis.correlations`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from mnemoscope.analysis.correlations import (
    _validate,
    correlation_with_ci,
    percentile_interval,
    rowwise_pearson,
)
from mnemoscope.analysis.detection import detection_auc
from mnemoscope.store.tables import INFLUENCE_EVAL, without_fit  # noqa: F401  (re-exported)
from mnemoscope.train import derive_seed, subset_masks

_LDS_MASKS = 0x1D5
"""Seed domain of the LDS subsets, so they never coincide with an estimator's own subsets."""


def loo_agreement(
    estimate: np.ndarray,
    loo: np.ndarray,
    *,
    n_bootstrap: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, tuple[float, float, float, int]]:
    """Pearson and Spearman between ``estimate`` and ``loo`` with bootstrap CIs.

    Args:
        estimate, loo: ``[n]`` (or any equal shape, flattened) scores of the same examples
            or (train, target) pairs; pairs where either is not finite (``loo`` leaves
            unchosen examples NaN) are dropped.
        n_bootstrap, confidence, seed: as in
            :func:`~mnemoscope.analysis.correlations.correlation_with_ci`.

    Returns:
        ``{'pearson' | 'spearman': (value, ci_low, ci_high, n)}``, n the pairs kept; NaN
        values with fewer than 3 pairs or a constant input.
    """
    result = correlation_with_ci(
        np.asarray(estimate, dtype=np.float64).ravel(),
        np.asarray(loo, dtype=np.float64).ravel(),
        n_bootstrap=n_bootstrap,
        confidence=confidence,
        seed=seed,
    )
    return {name: result[name] for name in ("pearson", "spearman")}


def lds_masks(n_subsets: int, n_train: int, fraction: float = 0.5, seed: int = 0) -> np.ndarray:
    """``[J, n_train]`` bool: J random subsets of exactly ``round(fraction · n_train)``
    examples each (Park et al. use α = 0.5), drawn from a seed domain of their own so that
    they differ from the subsets of ``feldman_zhang``/``downsampling`` at the same seed."""
    if n_subsets < 1 or n_train < 1:
        raise ValueError(f"need n_subsets, n_train >= 1, got {n_subsets}, {n_train}")
    return subset_masks(n_subsets, n_train, fraction, derive_seed(seed, _LDS_MASKS)).numpy()


def lds(
    attribution: np.ndarray, masks: np.ndarray, measured: np.ndarray
) -> tuple[np.ndarray, float]:
    """Linear datamodeling score (Park et al. 2023, eq. 5).

    Args:
        attribution: ``[n_train, n_t]`` τ(i, t), the influence of training example i on
            target t (any sign convention in which larger means more helpful).
        masks: ``[J, n_train]`` bool, ``masks[j, i]``: example i is in subset ``S_j``.
        measured: ``[J, n_t]`` the target's measured output (e.g. the margin, averaged
            over the models trained on ``S_j``).

    Returns:
        ``(per_target [n_t], mean)``: per target, Spearman's rho over the J subsets
        between ``Σ_{i∈S_j} τ(i, t)`` and ``measured[j, t]`` (NaN where either is constant
        or not finite); ``mean`` the mean over targets with a value (NaN if none).
    """
    attribution = np.asarray(attribution, dtype=np.float64)
    masks = np.asarray(masks, dtype=bool)
    measured = np.asarray(measured, dtype=np.float64)
    if attribution.ndim != 2 or masks.ndim != 2 or measured.ndim != 2:
        raise ValueError("attribution, masks and measured must be 2-D")
    (n_train, n_targets), (n_subsets, n_masked) = attribution.shape, masks.shape
    if n_masked != n_train or measured.shape != (n_subsets, n_targets):
        raise ValueError(
            f"shapes disagree: attribution {attribution.shape}, masks {masks.shape}, "
            f"measured {measured.shape}; expected [n, T], [J, n], [J, T]"
        )
    predicted = (masks.astype(np.float64) @ attribution).T  # [T, J]
    observed = measured.T
    broken = ~(np.isfinite(predicted).all(1) & np.isfinite(observed).all(1))
    rho = rowwise_pearson(
        stats.rankdata(np.nan_to_num(predicted), axis=1),
        stats.rankdata(np.nan_to_num(observed), axis=1),
    )
    rho[broken] = np.nan
    mean = float(np.nanmean(rho)) if np.isfinite(rho).any() else float("nan")
    return rho, mean


def mislabel_auc(
    self_scores: np.ndarray,
    is_flipped: np.ndarray,
    *,
    n_bootstrap: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float, float]:
    """ROC AUC of ``self_scores`` for flipped labels, with a percentile bootstrap CI.

    Args:
        self_scores: ``[n]`` self-scores (higher = flagged); non-finite ones are dropped.
        is_flipped: ``[n]`` bool, the planted flipped labels.

    Returns:
        ``(auc, ci_low, ci_high)``: 0.5 is chance, 1 perfect; all NaN when the kept
        examples are all flipped or all clean. Resamples of the examples (with
        replacement) that hold one class only are left out of the percentiles.
    """
    _validate(n_bootstrap, confidence)
    scores = np.asarray(self_scores, dtype=np.float64).ravel()
    flipped = np.asarray(is_flipped, dtype=bool).ravel()
    auc = detection_auc(scores, flipped)
    if np.isnan(auc):
        return (float("nan"),) * 3
    kept = np.isfinite(scores)
    scores, flipped = scores[kept], flipped[kept]
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, scores.size, size=(n_bootstrap, scores.size))
    ranks = stats.rankdata(scores[idx], axis=1)  # ties share their mean rank
    positive = flipped[idx]
    n_pos = positive.sum(1).astype(np.float64)
    n_neg = scores.size - n_pos
    with np.errstate(invalid="ignore", divide="ignore"):
        # Mann–Whitney: AUC = (rank sum of positives − n_pos(n_pos+1)/2) / (n_pos·n_neg)
        boot = ((ranks * positive).sum(1) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    return (auc, *percentile_interval(boot, confidence))


def _mean_with_ci(
    values: np.ndarray, n_bootstrap: int, confidence: float, seed: int
) -> tuple[float, float, float]:
    """Mean of the finite ``values`` with a bootstrap CI over them."""
    values = values[np.isfinite(values)]
    if values.size == 0:
        return (float("nan"),) * 3
    rng = np.random.default_rng(seed)
    boot = values[rng.integers(0, values.size, size=(n_bootstrap, values.size))].mean(1)
    return (float(values.mean()), *percentile_interval(boot, confidence))


@dataclass(frozen=True)
class LdsData:
    """What :func:`influence_eval_table` needs for the LDS of one (dataset, arch).

    Attributes:
        masks: ``[J, n_train]`` bool subsets (:func:`lds_masks`), columns in the order of
            ``train_ids``.
        measured: ``[J, n_t]`` each target's margin, averaged over the models trained on
            subset j, columns in the order of ``target_ids``.
        train_ids: ``[n_train]`` example ids of the training examples.
        target_ids: ``[n_t]`` example ids of the targets (those of ``influence.parquet``).
    """

    masks: np.ndarray
    measured: np.ndarray
    train_ids: np.ndarray
    target_ids: np.ndarray


def influence_eval_table(
    scores: pd.DataFrame,
    examples: pd.DataFrame,
    influence: pd.DataFrame | None = None,
    lds_data: dict[tuple[str, str], LdsData] | None = None,
    *,
    n_bootstrap: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> pd.DataFrame:
    """Rows of ``influence_eval.parquet``: how each influence method fares, per (dataset, arch).

    Args:
        scores: the scores table (``store.tables.SCORES``); only ``family == 'influence'``
            rows are used, averaged over seeds per example (ignoring NaN).
        examples: the examples table (``store.tables.EXAMPLES``), for ``is_mislabeled``.
        influence: the train×target table (``store.tables.INFLUENCE``) or None; averaged
            over seeds per (train, target) pair.
        lds_data: per ``(dataset, arch)``, the LDS subsets and measured margins
            (:class:`LdsData`), or None to skip the LDS.
        n_bootstrap, confidence, seed: of every bootstrap CI.

    Returns:
        A frame with exactly the columns of :data:`INFLUENCE_EVAL`. Per (dataset, arch) and
        influence method, in order of first appearance:

        - ``mislabel_auc`` of the self-scores (:func:`mislabel_auc`), when there are both
          flipped and clean scored examples;
        - ``loo_pearson``, ``loo_spearman`` of the self-scores against ``loo``'s, on the
          examples both scored (every method but ``loo``, when ``loo`` was run);
        - ``loo_target_pearson``, ``loo_target_spearman`` of the train×target influence
          against ``loo``'s, on the (train, target) pairs both have;
        - ``lds``: mean over targets of :func:`lds`, CI by resampling targets, for methods
          with train×target influence on the targets of ``lds_data``. A training example
          missing from a method's influence (e.g. ``loo`` outside its chosen examples)
          makes every target's LDS NaN, so that method gets a NaN row.
    """
    _validate(n_bootstrap, confidence)
    rows: list[dict[str, object]] = []

    def add(dataset, arch, method, metric, value, low, high) -> None:
        rows.append(
            dict(
                dataset=dataset,
                arch=arch,
                method=method,
                metric=metric,
                value=value,
                ci_low=low,
                ci_high=high,
            )
        )

    self_scores = scores[scores["family"] == "influence"]
    self_scores = self_scores.groupby(
        ["dataset", "arch", "method", "example_id"], sort=False, as_index=False
    )["score"].mean()
    train = examples[examples["split"] == "train"]
    pairs = (
        influence.groupby(
            ["dataset", "arch", "method", "train_id", "target_id"], sort=False, as_index=False
        )["score"].mean()
        if influence is not None
        else None
    )
    for (dataset, arch), group in self_scores.groupby(["dataset", "arch"], sort=False):
        wide = group.pivot(index="example_id", columns="method", values="score")
        labels = train[train["dataset"] == dataset].set_index("example_id")["is_mislabeled"]
        flipped = labels.reindex(wide.index, fill_value=False).to_numpy(dtype=bool)
        targets = None
        if pairs is not None:
            here = pairs[(pairs["dataset"] == dataset) & (pairs["arch"] == arch)]
            targets = {
                m: g.set_index(["train_id", "target_id"])["score"]
                for m, g in here.groupby("method", sort=False)
            }
        for method in group["method"].unique():
            auc = mislabel_auc(
                wide[method].to_numpy(),
                flipped,
                n_bootstrap=n_bootstrap,
                confidence=confidence,
                seed=seed,
            )
            if np.isfinite(auc[0]):
                add(dataset, arch, method, "mislabel_auc", *auc)
            if method != "loo" and "loo" in wide.columns:
                agreement = loo_agreement(
                    wide[method].to_numpy(),
                    wide["loo"].to_numpy(),
                    n_bootstrap=n_bootstrap,
                    confidence=confidence,
                    seed=seed,
                )
                for statistic in ("pearson", "spearman"):
                    add(dataset, arch, method, f"loo_{statistic}", *agreement[statistic][:3])
            if targets is None or method not in targets:
                continue
            if method != "loo" and "loo" in targets:
                joined = pd.concat([targets[method], targets["loo"]], axis=1, join="inner")
                agreement = loo_agreement(
                    joined.iloc[:, 0].to_numpy(),
                    joined.iloc[:, 1].to_numpy(),
                    n_bootstrap=n_bootstrap,
                    confidence=confidence,
                    seed=seed,
                )
                for statistic in ("pearson", "spearman"):
                    add(dataset, arch, method, f"loo_target_{statistic}", *agreement[statistic][:3])
            data = (lds_data or {}).get((dataset, arch))
            if data is not None:
                attribution = (
                    targets[method]
                    .unstack("target_id")
                    .reindex(index=data.train_ids, columns=data.target_ids)
                    .to_numpy(dtype=np.float64)
                )
                per_target, _ = lds(attribution, data.masks, data.measured)
                add(
                    dataset,
                    arch,
                    method,
                    "lds",
                    *_mean_with_ci(per_target, n_bootstrap, confidence, seed),
                )
    table = pd.DataFrame(rows, columns=without_fit(INFLUENCE_EVAL).names)
    return table.astype({"value": "float64", "ci_low": "float64", "ci_high": "float64"})
