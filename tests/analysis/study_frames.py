"""Small scores / examples frames for the study tables' tests."""

from __future__ import annotations

import numpy as np
import pandas as pd

MEMORIZATION = "memorization"
INFLUENCE = "influence"


def scores_frame(cells: dict[tuple[str, str], dict[str, tuple[str, np.ndarray]]]) -> pd.DataFrame:
    """``{(dataset, arch): {method: (family, [n] scores of example ids 0..n-1)}}`` as a scores
    table with one seed."""
    parts = []
    for (dataset, arch), methods in cells.items():
        for method, (family, values) in methods.items():
            parts.append(
                pd.DataFrame(
                    {
                        "dataset": dataset,
                        "arch": arch,
                        "seed": 0,
                        "family": family,
                        "method": method,
                        "example_id": np.arange(len(values), dtype=np.int64),
                        "score": np.asarray(values, dtype=np.float64),
                        "stderr": np.nan,
                    }
                )
            )
    return pd.concat(parts, ignore_index=True)


def examples_frame(dataset: str, n: int, **columns: np.ndarray) -> pd.DataFrame:
    """Training examples 0..n-1 of ``dataset`` with extra ``columns``, plus one test row."""
    train = pd.DataFrame(
        {
            "dataset": dataset,
            "example_id": np.arange(n, dtype=np.int64),
            "split": "train",
            "label": 0,
            "original_label": 0,
            **columns,
        }
    )
    test = train.iloc[:1].assign(example_id=n, split="test")
    return pd.concat([train, test], ignore_index=True)


def not_fit(dataset: str, arch: str) -> pd.DataFrame:
    return pd.DataFrame(
        {"dataset": [dataset], "arch": [arch], "fit": [False], "fit_reason": ["train acc 0.4"]}
    )
