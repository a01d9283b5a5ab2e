"""The report's differential-privacy evidence: ε against accuracy and leakage, from the
study's DP sweep (``dp.parquet``, :mod:`mnemoscope.runner.dp_sweep`)."""

from __future__ import annotations

from typing import Any

import numpy as np

from mnemoscope.report import study_figures as draw
from mnemoscope.report.evidence import cell_name
from mnemoscope.report.run import Run
from mnemoscope.report.study_figures import CurvePanel, Series

NO_DP_AT = 2.0
"""Where a setting without DP (ε infinite) is drawn: this factor beyond the largest ε."""

CURVES = (
    ("test accuracy", "test_accuracy"),
    ("LiRA AUC", "lira_auc"),
    ("flipped-label FZ AUC", "fz_flipped_auc"),
    ("mean privacy score d", "privacy_score_mean"),
    ("canary exposure (probability shift)", "canary_exposure"),
)
"""The curves of the trade-off panel; one whose column is empty (no canaries) is left out."""


def _band(cell, column: str, order: np.ndarray) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The bootstrap interval of ``column`` where the sweep has one (``{column}_low`` and
    ``_high``: the two AUCs), in ``order``; (None, None) otherwise."""
    if f"{column}_low" not in cell or f"{column}_high" not in cell:
        return None, None
    low, high = (
        cell[f"{column}_{end}"].to_numpy(dtype=np.float64)[order] for end in ("low", "high")
    )
    return low, high


def dp_tradeoff(run: Run, sink: Any) -> list[dict[str, str]]:
    """Per (dataset, arch): accuracy, LiRA AUC, flipped-label FZ AUC and privacy score
    against the accountant's ε, and the empirical lower bound against ε."""
    frame = run.tables.get("dp")
    if frame is None or frame.empty:
        return []
    panels, bounds = [], []
    for (dataset, arch), cell in frame.groupby(["dataset", "arch"], sort=True):
        eps = cell["epsilon"].to_numpy(dtype=np.float64)
        finite = eps[np.isfinite(eps)]
        x = np.where(np.isfinite(eps), eps, (finite.max() if len(finite) else 1.0) * NO_DP_AT)
        order = np.argsort(x)
        name = cell_name(run, dataset, arch)
        panels.append(
            CurvePanel(
                name,
                [
                    Series(label, x[order], values[order], *_band(cell, column, order))
                    for label, column in CURVES
                    if np.isfinite(values := cell[column].to_numpy(dtype=np.float64)).any()
                ],
            )
        )
        bounds.append(
            CurvePanel(
                name,
                [
                    Series("accountant ε", x[order], eps[order]),
                    Series(
                        "empirical lower bound", x[order], cell["epsilon_lower"].to_numpy()[order]
                    ),
                ],
            )
        )
    exposure = (
        " and the canaries' exposure (the rise of their label's probability when their "
        "pattern is stamped on held-out inputs, trained with them minus without)"
        if frame["canary_exposure"].notna().any()
        else ""
    )
    rightmost = f"no DP drawn at {NO_DP_AT:g}× the largest ε"
    return [
        sink.add(
            "dp-tradeoff",
            draw.curve_grid(panels, "accountant's ε (DP-SGD)", "value", "ε vs accuracy vs leakage"),
            "Each DP setting of the sweep: the models' test accuracy, LiRA's membership AUC, the "
            "Feldman–Zhang AUC for the flipped labels (both with their bootstrap intervals "
            "over the examples, shaded), LiRA's mean per-example privacy score"
            f"{exposure}, "
            f"against the accountant's ε (Opacus; {rightmost}).",
        ),
        sink.add(
            "dp-audit",
            draw.curve_grid(bounds, "accountant's ε (DP-SGD)", "ε", "Privacy audit"),
            "The accountant's ε beside the lower bound LiRA's true and false positive rates "
            "prove (ε ≥ log((TPR − δ)/FPR), Clopper–Pearson 95%); the bound must stay below.",
        ),
    ]
