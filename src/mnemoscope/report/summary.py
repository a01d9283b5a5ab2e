"""The terminal summary printed after a run: read from the tables, nothing computed."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from rich.table import Table


def summary_table(run_dir: Path) -> Table:
    """Per dataset × arch: Spearman (95% CI) of each memorization–influence pair, and the
    mislabel-detection AUC of each score."""
    correlations = pd.read_parquet(Path(run_dir) / "correlations.parquet")
    detection = pd.read_parquet(Path(run_dir) / "detection.parquet")
    scores = pd.read_parquet(Path(run_dir) / "scores.parquet", columns=["method", "family"])
    families = dict(zip(scores["method"], scores["family"]))
    cross = correlations[
        (correlations["statistic"] == "spearman")
        & (correlations["method_a"].map(families) != correlations["method_b"].map(families))
    ]
    pairs = list(dict.fromkeys(zip(cross["method_a"], cross["method_b"])))
    methods = list(dict.fromkeys(detection["method"]))
    table = Table(title="memorization vs influence (Spearman, 95% CI) · mislabel detection AUC")
    table.add_column("dataset")
    table.add_column("arch")
    for a, b in pairs:
        table.add_column(f"ρ {a}~{b}", justify="right")
    for method in methods:
        table.add_column(f"AUC {method}", justify="right")
    for dataset, arch in scores_index(correlations, detection):
        row = [dataset, arch]
        for a, b in pairs:
            hit = cross[
                (cross["dataset"] == dataset)
                & (cross["arch"] == arch)
                & (cross["method_a"] == a)
                & (cross["method_b"] == b)
            ]
            row.append(
                f"{hit['value'].iloc[0]:.2f} [{hit['ci_low'].iloc[0]:.2f}, {hit['ci_high'].iloc[0]:.2f}]"
                if len(hit)
                else "–"
            )
        for method in methods:
            hit = detection[
                (detection["dataset"] == dataset)
                & (detection["arch"] == arch)
                & (detection["method"] == method)
            ]
            row.append(f"{hit['auc'].iloc[0]:.3f}" if len(hit) else "–")
        table.add_row(*row)
    return table


def scores_index(*frames: pd.DataFrame) -> list[tuple[str, str]]:
    """(dataset, arch) pairs in order of first appearance across the frames."""
    keys: dict[tuple[str, str], None] = {}
    for frame in frames:
        keys.update(dict.fromkeys(zip(frame["dataset"], frame["arch"])))
    return list(keys)
