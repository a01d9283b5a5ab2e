"""Every study table has exactly its schema's columns, also when there is nothing to report."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mnemoscope.analysis import (
    accuracy_curve_rows,
    cross_arch_table,
    detection_by_kind,
    group_means,
    leakage_table,
    overlap_table,
    removal_table,
)
from mnemoscope.analysis.removal import RESULT_COLUMNS
from mnemoscope.store import TABLES
from mnemoscope.store.tables import SCORES, to_arrow

from .study_frames import MEMORIZATION, examples_frame, scores_frame

EMPTY_SCORES = pd.DataFrame({name: [] for name in SCORES.names})
EXAMPLES = examples_frame("d", 3, is_canary=np.zeros(3, dtype=bool), source=["a", "b", "a"])
CURVE = pd.DataFrame(
    {c: [] for c in ("dataset", "arch", "method", "direction", "fraction", "seed", "accuracy")}
)

CASES = {
    "overlap": lambda s: overlap_table(s, None),
    "cross_arch": lambda s: cross_arch_table(s, None),
    "leakage": lambda s: leakage_table(s, None, None),
    "applications": lambda s: detection_by_kind(s, EXAMPLES, None, ["is_canary"]),
}


@pytest.mark.parametrize("name", list(CASES))
def test_empty_scores_give_an_empty_table_of_the_schema(name: str) -> None:
    table = CASES[name](EMPTY_SCORES)
    assert table.empty and list(table.columns) == TABLES[name].names
    assert to_arrow(table, TABLES[name]).schema == TABLES[name]


def test_empty_applications_and_removal() -> None:
    for table, name in (
        (group_means(EMPTY_SCORES, EXAMPLES, None, "source"), "applications"),
        (accuracy_curve_rows(CURVE), "applications"),
        (removal_table(pd.DataFrame({c: [] for c in RESULT_COLUMNS})), "removal"),
    ):
        assert table.empty and list(table.columns) == TABLES[name].names
        to_arrow(table, TABLES[name])


def test_a_method_needs_one_family() -> None:
    scores = scores_frame({("d", "mlp"): {"loss": (MEMORIZATION, np.arange(4.0))}})
    scores.loc[0, "family"] = "influence"
    for build in CASES.values():
        with pytest.raises(ValueError, match="family"):
            build(scores)
