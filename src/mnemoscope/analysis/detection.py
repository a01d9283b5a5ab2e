"""How well each score flags mislabeled training examples (ROC AUC).

Label noise gives a ground truth for memorization: a model that fits a flipped
label has to memorize that example. The AUC is the probability that a randomly
chosen mislabeled example scores higher than a randomly chosen clean one (ties
count one half); 0.5 is chance, 1.0 perfect separation.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from mnemoscope.store.tables import DETECTION, without_fit

TARGET = "mislabeled"


def detection_auc(scores: np.ndarray, is_positive: np.ndarray) -> float:
    """ROC AUC of ``scores`` for ``is_positive`` (higher score = flagged as positive).

    Args:
        scores: ``[n]`` scores; positions with a non-finite score are dropped.
        is_positive: ``[n]`` booleans, the ground truth.

    Returns:
        The AUC, or NaN when the kept examples are all positive or all negative.
    """
    scores = np.asarray(scores, dtype=np.float64).ravel()
    is_positive = np.asarray(is_positive, dtype=bool).ravel()
    if scores.shape != is_positive.shape:
        raise ValueError(
            f"scores and is_positive must have the same length, "
            f"got {scores.size} and {is_positive.size}"
        )
    kept = np.isfinite(scores)
    scores, is_positive = scores[kept], is_positive[kept]
    if is_positive.all() or not is_positive.any():
        return float("nan")
    return float(roc_auc_score(is_positive, scores))


def detection_table(scores: pd.DataFrame, examples: pd.DataFrame) -> pd.DataFrame:
    """Mislabel-detection AUC of every method, per (dataset, arch).

    Args:
        scores: the scores table (columns of ``store.tables.SCORES``). Several seeds of
            a (dataset, arch, method) are averaged per example (ignoring NaN) first.
        examples: the examples table (columns of ``store.tables.EXAMPLES``); only its
            ``'train'`` rows are used.

    Returns:
        A frame with exactly the columns of ``store.tables.DETECTION``, one row per
        (dataset, arch, method) in order of first appearance. Scores are joined with
        the dataset's training examples on ``example_id`` and non-finite scores are
        dropped; a (dataset, arch, method) with no mislabeled or no clean examples left
        (e.g. no label noise) gets no row. ``n_positive`` counts the mislabeled
        examples used; ``n_dropped`` counts the training examples left out because their
        score is not finite (e.g. Feldman–Zhang's examples in every subset or in none), so
        an AUC over fewer examples is visible as such.
    """
    train = examples.loc[examples["split"] == "train", ["dataset", "example_id", "is_mislabeled"]]
    per_example = scores.groupby(
        ["dataset", "arch", "method", "example_id"], sort=False, as_index=False
    )["score"].mean()

    rows: list[dict[str, object]] = []
    keys = ["dataset", "arch", "method"]
    for (dataset, arch, method), group in per_example.groupby(keys, sort=False):
        joined = group.merge(train[train["dataset"] == dataset], on=["dataset", "example_id"])
        finite = np.isfinite(joined["score"].to_numpy(dtype=np.float64))
        joined = joined[finite]
        is_mislabeled = joined["is_mislabeled"].to_numpy(dtype=bool)
        n_positive = int(is_mislabeled.sum())
        if n_positive == 0 or n_positive == is_mislabeled.size:
            continue
        auc = detection_auc(joined["score"].to_numpy(), is_mislabeled)
        rows.append(
            {
                "dataset": dataset,
                "arch": arch,
                "method": method,
                "target": TARGET,
                "auc": auc,
                "n_positive": n_positive,
                "n_dropped": int((~finite).sum()),
            }
        )
    table = pd.DataFrame(rows, columns=without_fit(DETECTION).names)
    return table.astype({"auc": "float64", "n_positive": "int64", "n_dropped": "int64"})
