"""Mislabel detection AUC."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mnemoscope.analysis import detection_auc, detection_table
from mnemoscope.store.tables import DETECTION, without_fit


def test_detection_auc_by_hand() -> None:
    # Positives 0.35, 0.8 vs negatives 0.1, 0.4: 3 of 4 pairs ordered right.
    assert detection_auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])) == 0.75
    assert detection_auc(np.array([0.1, 0.2, 0.9, 0.8]), np.array([0, 0, 1, 1])) == 1.0
    assert detection_auc(np.array([0.5, 0.5]), np.array([0, 1])) == 0.5


def test_detection_auc_drops_non_finite_and_single_class_is_nan() -> None:
    scores = np.array([0.1, np.nan, 0.4, 0.35, 0.8, np.inf])
    labels = np.array([0, 1, 0, 1, 1, 0])
    assert detection_auc(scores, labels) == 0.75
    assert np.isnan(detection_auc(np.array([0.1, 0.2]), np.array([1, 1])))


def _examples() -> pd.DataFrame:
    rows = []
    for dataset, mislabeled in (("noisy", {2, 3}), ("clean", set())):
        for example_id in range(4):
            rows.append(
                {
                    "dataset": dataset,
                    "example_id": example_id,
                    "split": "train",
                    "label": 0,
                    "original_label": 0,
                    "is_mislabeled": example_id in mislabeled,
                }
            )
        # Test rows share nothing with training; a mislabeled flag here must be ignored.
        rows.append(
            {
                "dataset": dataset,
                "example_id": 10,
                "split": "test",
                "label": 0,
                "original_label": 1,
                "is_mislabeled": True,
            }
        )
    return pd.DataFrame(rows)


def _scores(dataset: str, arch: str, method: str, values: list[float]) -> pd.DataFrame:
    ids = [0, 1, 2, 3, 10][: len(values)]
    return pd.DataFrame(
        {
            "dataset": dataset,
            "arch": arch,
            "seed": 0,
            "family": "memorization",
            "method": method,
            "example_id": ids,
            "score": values,
            "stderr": np.nan,
        }
    )


def test_detection_table() -> None:
    scores = pd.concat(
        [
            # Example 10 is a test example with a huge score: if it leaked in as a positive
            # the AUC would not be 0.75.
            _scores("noisy", "mlp", "fz", [0.1, 0.4, 0.35, 0.8, 100.0]),
            _scores("noisy", "mlp", "tracin", [0.1, 0.2, 0.9, np.nan]),
            _scores("noisy", "cnn", "fz", [0.0, 0.1, 0.2, 0.3]),
            _scores("clean", "mlp", "fz", [0.1, 0.4, 0.35, 0.8]),
        ]
    )
    table = detection_table(scores, _examples())
    assert list(table.columns) == without_fit(DETECTION).names
    expected = pd.DataFrame(
        {
            "dataset": ["noisy"] * 3,
            "arch": ["mlp", "mlp", "cnn"],
            "method": ["fz", "tracin", "fz"],
            "target": "mislabeled",
            "auc": [0.75, 1.0, 1.0],
            "n_positive": np.array([2, 1, 2], dtype=np.int64),
            "n_dropped": np.array([0, 1, 0], dtype=np.int64),  # tracin's NaN is counted
        }
    )
    pd.testing.assert_frame_equal(table, expected)


def test_detection_table_skips_when_nothing_is_mislabeled() -> None:
    table = detection_table(_scores("clean", "mlp", "fz", [0.1, 0.4, 0.35, 0.8]), _examples())
    assert table.empty and list(table.columns) == without_fit(DETECTION).names


def test_detection_table_averages_seeds() -> None:
    one = _scores("noisy", "mlp", "fz", [0.1, 0.4, 0.35, 0.8])
    # Each seed alone gives 0.75; the per-example mean [0.1, 0.4, 0.45, 0.5] gives 1.0.
    other = one.assign(seed=1, score=[0.1, 0.4, 0.55, 0.2])
    table = detection_table(pd.concat([one, other]), _examples())
    assert table["auc"].tolist() == [pytest.approx(1.0)]
