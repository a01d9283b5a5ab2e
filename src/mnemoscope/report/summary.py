"""The terminal summary printed after a run: read from the tables through
:class:`~mnemoscope.store.rundir.RunDir`, nothing computed."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from rich.console import Group
from rich.table import Table

from mnemoscope.store.rundir import RunDir


def summary_table(run_dir: Path) -> Group:
    """Two narrow tables: Spearman (95% CI) of each memorization–influence pair, and the
    mislabel-detection ROC AUC of each score, per dataset × arch.

    A missing run, manifest, table or column raises :class:`~mnemoscope.errors.UserError`."""
    run = RunDir.existing(Path(run_dir))
    correlations = run.table("correlations")
    detection = run.table("detection")
    scores = run.table("scores", columns=["method", "family"])
    families = dict(zip(scores["method"], scores["family"]))
    cross = correlations[
        (correlations["statistic"] == "spearman")
        & (correlations["method_a"].map(families) == "memorization")
        & (correlations["method_b"].map(families) == "influence")
    ]
    rho = Table(title="memorization vs self-influence: Spearman ρ [95% CI]")
    for column in ("dataset", "arch", "memorization", "influence"):
        rho.add_column(column)
    rho.add_column("ρ [95% CI]", justify="right")
    rho.add_column("n", justify="right")
    for row in cross.itertuples(index=False):
        rho.add_row(
            row.dataset,
            row.arch,
            row.method_a,
            row.method_b,
            f"{row.value:.2f} [{row.ci_low:.2f}, {row.ci_high:.2f}]",
            str(row.n),
        )
    methods = list(dict.fromkeys(detection["method"]))
    auc = Table(title="flipped-label detection: ROC AUC of each score")
    auc.add_column("dataset")
    auc.add_column("arch")
    for method in methods:
        auc.add_column(method, justify="right")
    wide = detection.pivot_table(
        index=["dataset", "arch"], columns="method", values="auc", sort=False
    )
    for (dataset, arch), values in wide.iterrows():
        auc.add_row(dataset, arch, *[_auc(values.get(m)) for m in methods])
    return Group(rho, auc)


def _auc(value: float | None) -> str:
    return "–" if value is None or pd.isna(value) else f"{value:.3f}"
