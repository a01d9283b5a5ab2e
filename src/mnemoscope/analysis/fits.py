"""Whether each (dataset, arch)'s models fit their own training labels: the ``fits`` table
and the ``fit`` column every per-architecture table carries.

Memorization is the gap between fitting an example and predicting it when it is held
out; models that do not fit their training labels cannot show it, so their rows are
flagged (``fit`` False, with the reason in ``fits.parquet``) and left out of the
study's headline comparison.
"""

from __future__ import annotations

import pandas as pd

FITS_COLUMNS = (
    "dataset",
    "arch",
    "in_subset_accuracy",
    "in_subset_accuracy_flipped",
    "fit",
    "fit_reason",
)


def with_fit(frame: pd.DataFrame, fits: pd.DataFrame | None) -> pd.DataFrame:
    """``frame`` with a ``fit`` column: False on the rows of a (dataset, arch) ``fits``
    flags; True elsewhere (and on every row when ``fits`` is None or empty)."""
    frame = frame.copy()
    if fits is None or fits.empty or frame.empty:
        frame["fit"] = True
        return frame
    bad = set(map(tuple, fits.loc[~fits["fit"], ["dataset", "arch"]].to_numpy()))
    keys = zip(frame["dataset"], frame["arch"], strict=True)
    frame["fit"] = [key not in bad for key in keys]
    return frame
