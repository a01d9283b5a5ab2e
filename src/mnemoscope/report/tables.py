"""The report's tables: rows selected, sorted and formatted from the run's tables (no
statistics are computed here; they come precomputed)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from mnemoscope.report.run import Run

STATISTICS = ("spearman", "pearson", "kendall")
INFLUENCE_TOP = 5


def format_estimate(value: float, low: float | None = None, high: float | None = None) -> str:
    """``0.42 [0.38, 0.47]``; the interval is left out where it is missing."""
    if value is None or not math.isfinite(value):
        return "—"
    text = f"{value:.2f}"
    if low is not None and high is not None and math.isfinite(low) and math.isfinite(high):
        text += f" [{low:.2f}, {high:.2f}]"
    return text


def _order(values: list[str], preferred: list[str]) -> list[str]:
    return [v for v in preferred if v in values] + [v for v in values if v not in preferred]


def correlation_tables(run: Run) -> list[dict[str, Any]]:
    """One table per dataset × arch; cross-family pairs (memorization vs influence) first."""
    frame, families = run.correlations, run.families
    if frame.empty:
        return []
    statistics = _order(list(frame["statistic"].unique()), list(STATISTICS))
    tables = []
    datasets = _order(list(frame["dataset"].unique()), run.datasets)
    for dataset in datasets:
        in_dataset = frame[frame["dataset"] == dataset]
        archs = _order(list(in_dataset["arch"].unique()), run.archs(dataset))
        for arch in archs:
            rows = []
            group = in_dataset[in_dataset["arch"] == arch]
            for (method_a, method_b), pair in group.groupby(["method_a", "method_b"], sort=False):
                fam_a, fam_b = families.get(method_a, "?"), families.get(method_b, "?")
                by_stat = {r.statistic: r for r in pair.itertuples()}
                rows.append(
                    {
                        "method_a": method_a,
                        "method_b": method_b,
                        "families": f"{fam_a} × {fam_b}",
                        "cross": "?" not in (fam_a, fam_b) and fam_a != fam_b,
                        "cells": [
                            format_estimate(by_stat[s].value, by_stat[s].ci_low, by_stat[s].ci_high)
                            if s in by_stat
                            else "—"
                            for s in statistics
                        ],
                        "n": " / ".join(str(n) for n in pair["n"].unique()),
                    }
                )
            rows.sort(key=lambda row: not row["cross"])  # stable: keeps the table's order
            tables.append({"dataset": dataset, "arch": arch, "rows": rows})
    return [{"statistics": statistics, **table} for table in tables]


def detection_rows(run: Run) -> list[dict[str, Any]]:
    """AUC rows sorted by dataset, architecture, then AUC from best to worst."""
    frame = run.detection
    if frame.empty:
        return []
    frame = frame.assign(
        _d=frame["dataset"].map({d: i for i, d in enumerate(run.datasets)}).fillna(len(frame)),
        _auc=frame["auc"].fillna(-np.inf),
    ).sort_values(["_d", "dataset", "arch", "_auc"], ascending=[True, True, True, False])
    families = run.families
    return [
        {
            "dataset": r.dataset,
            "arch": r.arch,
            "method": r.method,
            "family": families.get(r.method, "?"),
            "target": r.target,
            "auc": "—" if not math.isfinite(r.auc) else f"{r.auc:.3f}",
            "n_positive": int(r.n_positive),
            "n_dropped": int(r.n_dropped) if "n_dropped" in frame.columns else 0,
        }
        for r in frame.itertuples()
    ]


def best_separators(run: Run, intervals: pd.DataFrame | None = None) -> list[str]:
    """Per dataset × arch, the score that separates flipped labels best, as sentences.

    ``intervals`` (columns dataset, arch, method, value, ci_low, ci_high) gives the AUCs
    with their CIs; a score is "ahead of" the runner-up only where the two CIs do not
    overlap, otherwise the scores whose CIs overlap the best one's are tied with it.
    Without ``intervals`` the detection table's AUCs are used and nothing is ranked
    ahead (ties cannot be told apart without CIs).
    """
    if intervals is None:
        det = run.detection
        intervals = pd.DataFrame(
            {
                "dataset": det["dataset"],
                "arch": det["arch"],
                "method": det["method"],
                "value": det["auc"],
                "ci_low": np.nan,
                "ci_high": np.nan,
            }
        )
    frame = intervals.dropna(subset=["value"])
    lines = []
    for (dataset, arch), group in frame.groupby(["dataset", "arch"], sort=False):
        group = group.sort_values(["value", "method"], ascending=[False, True])
        best, rest = group.iloc[0], group.iloc[1:]
        text = (
            f"{dataset} / {arch}: {best['method']} separates the flipped labels best "
            f"(AUC {format_estimate(best['value'], best['ci_low'], best['ci_high'])}"
        )
        if not rest.empty:
            separated = rest["ci_high"] < best["ci_low"]  # NaN compares False: a tie
            tied = rest[~separated]
            if tied.empty:
                runner = rest.iloc[0]
                text += (
                    f"), ahead of {runner['method']} "
                    f"({format_estimate(runner['value'], runner['ci_low'], runner['ci_high'])})."
                )
            else:
                names = ", ".join(tied["method"].head(5)) + (" …" if len(tied) > 5 else "")
                text += f"), tied within the CIs with {names}."
        else:
            text += ")."
        lines.append(text)
    return lines


def canary_rows(run: Run) -> list[dict[str, Any]]:
    """For every memorization score with canaries among its examples: each canary's
    percentile among the training examples of its dataset × arch (100 = the top)."""
    canaries = run.examples.loc[
        run.examples.get("is_canary", pd.Series(False, index=run.examples.index)).astype(bool)
    ]
    if canaries.empty:
        return []
    rows = []
    mem = run.scores[(run.scores["family"] == "memorization") & (run.scores["method"] != "canary")]
    per_example = mem.groupby(["dataset", "arch", "method", "example_id"], as_index=False)[
        "score"
    ].mean()
    for (dataset, arch, method), group in per_example.groupby(
        ["dataset", "arch", "method"], sort=False
    ):
        ids = set(canaries.loc[canaries["dataset"] == dataset, "example_id"])
        scores = group.dropna(subset=["score"])
        mine = scores[scores["example_id"].isin(ids)]
        if mine.empty:
            continue
        values = scores["score"].to_numpy()
        percentiles = [100.0 * float(np.mean(values <= v)) for v in mine["score"]]
        rows.append(
            {
                "dataset": dataset,
                "arch": arch,
                "method": method,
                "n": len(percentiles),
                "lowest": f"{min(percentiles):.1f}",
                "median": f"{float(np.median(percentiles)):.1f}",
            }
        )
    return rows


def attack_rows(run: Run) -> list[dict[str, Any]]:
    """Membership-inference attacks, per dataset × arch, strongest TPR at 1% FPR first."""
    frame = run.attacks
    if frame is None or frame.empty:
        return []
    frame = frame.sort_values(
        ["dataset", "arch", "tpr_at_1pct_fpr"], ascending=[True, True, False], kind="stable"
    )

    def number(value: float) -> str:
        return "—" if not math.isfinite(value) else f"{value:.3f}"

    return [
        {
            "dataset": r.dataset,
            "arch": r.arch,
            "method": r.method,
            "variant": r.variant,
            "auc": number(r.auc),
            "tpr_0_1": number(r.tpr_at_0_1pct_fpr),
            "tpr_1": number(r.tpr_at_1pct_fpr),
            "n_models": int(r.n_models),
        }
        for r in frame.itertuples()
    ]


def stderr_rows(run: Run) -> list[dict[str, Any]]:
    """Median reported stderr of each memorization score, for the caveats section."""
    rows = []
    mem = run.scores[run.scores["family"] == "memorization"]
    for (dataset, arch, method), group in mem.groupby(["dataset", "arch", "method"], sort=False):
        stderr = group["stderr"].dropna()
        rows.append(
            {
                "dataset": dataset,
                "arch": arch,
                "method": method,
                "median": f"{stderr.median():.3g}" if len(stderr) else "not reported",
                "n": len(stderr),
            }
        )
    return rows


def influence_rows(run: Run, k: int = INFLUENCE_TOP) -> list[dict[str, Any]]:
    """Per dataset × arch × method of the influence table: how many targets and training
    examples it covers and its ``k`` highest (train, target) pairs (mean over seeds)."""
    frame = run.influence
    if frame is None or frame.empty:
        return []
    frame = frame.assign(
        _d=frame["dataset"].map({d: i for i, d in enumerate(run.datasets)}).fillna(len(frame))
    ).sort_values(["_d"], kind="stable")
    rows = []
    for (dataset, arch, method), group in frame.groupby(["dataset", "arch", "method"], sort=False):
        pairs = group.groupby(["train_id", "target_id"], as_index=False, sort=True)["score"].mean()
        pairs = pairs[np.isfinite(pairs["score"])].sort_values(
            ["score", "train_id", "target_id"], ascending=[False, True, True], kind="stable"
        )
        rows.append(
            {
                "dataset": dataset,
                "arch": arch,
                "method": method,
                "n_targets": int(group["target_id"].nunique()),
                "n_train": int(group["train_id"].nunique()),
                "top": [
                    {
                        "train_id": int(p.train_id),
                        "target_id": int(p.target_id),
                        "score": f"{p.score:.3g}",
                    }
                    for p in pairs.head(k).itertuples()
                ],
            }
        )
    return rows
