"""The DP panel's bands: each AUC curve carries its sweep interval, in the curve's order."""

from __future__ import annotations

import numpy as np
import pandas as pd

from mnemoscope.report.privacy import _band


def test_an_auc_curve_takes_its_interval_and_other_curves_none():
    cell = pd.DataFrame(
        {
            "lira_auc": [0.6, 0.5, 0.7],
            "lira_auc_low": [0.55, 0.45, 0.65],
            "lira_auc_high": [0.65, 0.55, 0.75],
            "test_accuracy": [0.9, 0.8, 0.95],
        }
    )
    order = np.array([1, 0, 2])
    low, high = _band(cell, "lira_auc", order)
    np.testing.assert_array_equal(low, [0.45, 0.55, 0.65])
    np.testing.assert_array_equal(high, [0.55, 0.65, 0.75])
    assert _band(cell, "test_accuracy", order) == (None, None)
    # a sweep written before the intervals existed draws its curves without bands
    assert _band(cell.drop(columns="lira_auc_high"), "lira_auc", order) == (None, None)
