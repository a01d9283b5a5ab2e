"""The study's answer in sentences, written from a run's tables (never from fixed text):
which influence scores track which memorization scores and how strongly, which cheap
score best finds the examples most exposed to membership inference and at what cost,
what removing the most memorized examples does, and which architectures were left out
for not fitting their data. The command line prints it; the report opens with it.

Every number is read from a table row, so each sentence can be checked against the
table it names (:func:`answer_facts` returns those rows).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from mnemoscope.store import RunDir

HEADLINE_K = 0.05
"""The top-k fraction the answer quotes for leakage (precision@5%), or the nearest one
the run has."""
REMOVAL_K = 0.1
"""The removed fraction the answer quotes for the removal experiment, or the nearest."""
CHEAP = 0.5
"""A score is *cheap* when it cost less than this fraction of the reference's seconds."""


def _nearest(values: pd.Series, target: float) -> float:
    """The value of ``values`` nearest ``target`` (the lower one on a tie)."""
    unique = np.unique(values.to_numpy(float))
    return float(unique[np.lexsort((unique, np.abs(unique - target)))[0]])


@dataclass(frozen=True)
class Fact:
    """One sentence of the answer and the table row it was written from."""

    text: str
    table: str
    row: dict


def _ci(value: float, low: float, high: float, digits: int = 2) -> str:
    if not np.isfinite(low) or not np.isfinite(high):
        return f"{value:.{digits}f}"
    return f"{value:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def _tables(run_dir: Path) -> dict[str, pd.DataFrame]:
    run = RunDir.existing(Path(run_dir))
    names = ("scores", "correlations", "fits", "leakage", "removal")
    return {name: run.table(name) for name in names if run.has_table(name)}


def headline_pairs(
    correlations: pd.DataFrame, scores: pd.DataFrame, memorization: str = "feldman_zhang"
) -> pd.DataFrame:
    """Per (dataset, arch) whose models fit: the influence method whose Spearman ρ with
    the ``memorization`` score is highest (rows of ``correlations``, with ``influence`` and
    ``memorization`` columns naming the two methods). Without that method, every
    memorization method competes."""
    family = scores.drop_duplicates("method").set_index("method")["family"]
    spearman = correlations[correlations["statistic"] == "spearman"].copy()
    if "fit" in spearman.columns:
        spearman = spearman[spearman["fit"]]
    fam_a = spearman["method_a"].map(family)
    fam_b = spearman["method_b"].map(family)
    cross = spearman[(fam_a != fam_b) & fam_a.notna() & fam_b.notna()].copy()
    if cross.empty:
        return cross.assign(influence=[], memorization=[])
    a_is_influence = cross["method_a"].map(family) == "influence"
    cross["influence"] = np.where(a_is_influence, cross["method_a"], cross["method_b"])
    cross["memorization"] = np.where(a_is_influence, cross["method_b"], cross["method_a"])
    cross = cross.dropna(subset=["value"])
    if (cross["memorization"] == memorization).any():
        cross = cross[cross["memorization"] == memorization]
    # a score of a chosen few examples (loo) is no headline for the whole set
    widest = cross.groupby(["dataset", "arch"])["n"].transform("max")
    cross = cross[cross["n"] >= 0.5 * widest]
    best = cross.sort_values(["value", "influence", "memorization"], ascending=[False, True, True])
    return best.groupby(["dataset", "arch"], sort=True).head(1).sort_values(["dataset", "arch"])


def _synthesis(pairs: pd.DataFrame) -> Fact:
    """One sentence over every cell's headline pair: the range of ρ and which influence
    score wins how many cells (most first, then by name)."""
    wins = pairs["influence"].value_counts()
    order = sorted(wins.index, key=lambda method: (-wins[method], method))
    winners = ", ".join(f"{method} in {wins[method]}" for method in order)
    low, high = pairs["value"].min(), pairs["value"].max()
    memorization = pairs["memorization"].iloc[0]
    text = (
        f"Across the {len(pairs)} (dataset, arch) cells whose models fit, the influence "
        f"score closest to {memorization} reaches Spearman ρ from {low:.2f} to {high:.2f}: "
        f"{winners}."
    )
    row = {"cells": len(pairs), "low": float(low), "high": float(high), "wins": dict(wins)}
    return Fact(text, "correlations", row)


def answer_facts(run_dir: Path, memorization: str = "feldman_zhang") -> list[Fact]:
    """The answer's sentences with the rows behind them, in reading order;
    ``memorization``: the memorization score the influence scores are compared with."""
    tables = _tables(run_dir)
    facts: list[Fact] = []
    if "correlations" in tables and "scores" in tables:
        pairs = headline_pairs(tables["correlations"], tables["scores"], memorization)
        if len(pairs) > 1:
            facts.append(_synthesis(pairs))
        for row in pairs.to_dict("records"):
            facts.append(
                Fact(
                    f"{row['dataset']}/{row['arch']}: {row['influence']} tracks "
                    f"{row['memorization']} most closely, Spearman ρ = "
                    f"{_ci(row['value'], row['ci_low'], row['ci_high'])} (n = {row['n']}).",
                    "correlations",
                    row,
                )
            )
    leakage = tables.get("leakage")
    if leakage is not None and not leakage.empty:
        k = _nearest(leakage["k"], HEADLINE_K)
        at_k = leakage[np.isclose(leakage["k"], k) & leakage["fit"]]
        for _, cell in at_k.groupby(["dataset", "arch"], sort=True):
            # a score of a chosen few examples (loo) cannot rank the whole set
            cell = cell[cell["n"] >= 0.5 * cell["n"].max()]
            cheap = cell[cell["seconds"] < CHEAP * cell["reference_seconds"]]
            cell = cheap if not cheap.empty else cell
            row = cell.sort_values(["precision", "method"], ascending=[False, True]).iloc[0]
            row = row.to_dict()
            cost = ""
            if np.isfinite(row["seconds"]) and np.isfinite(row["reference_seconds"]):
                cost = (
                    f", in {row['seconds']:.1f} s against {row['reference_seconds']:.1f} s "
                    f"for {row['reference']}"
                )
            facts.append(
                Fact(
                    f"{row['dataset']}/{row['arch']}: of the {row['n_positive']} examples "
                    f"most exposed to {row['reference']} (top {k:.0%}), {row['method']} "
                    f"finds a share of {_ci(row['precision'], row['precision_low'], row['precision_high'])}"
                    f" among its own top {k:.0%} (ROC AUC "
                    f"{_ci(row['auc'], row['auc_low'], row['auc_high'])}){cost}.",
                    "leakage",
                    row,
                )
            )
    removal = tables.get("removal")
    if removal is not None and not removal.empty:
        k = _nearest(removal["k"], REMOVAL_K)
        top = removal[
            (removal["direction"] == "top") & np.isclose(removal["k"], k) & removal["fit"]
        ]
        for row in top.sort_values(["dataset", "arch", "method", "condition"]).to_dict("records"):
            delta = row["delta_vs_random"]
            gap = _ci(100 * delta, 100 * row["delta_low"], 100 * row["delta_high"], 1)
            removed = f"removing the top {k:.0%} by {row['method']}"
            if row["delta_high"] < 0:
                verdict = f"{removed} costs more test accuracy than a random {k:.0%}"
            elif row["delta_low"] > 0:
                verdict = f"{removed} costs less test accuracy than a random {k:.0%}"
            else:
                verdict = f"{removed} and a random {k:.0%} cost the same within the CI"
            facts.append(
                Fact(
                    f"{row['dataset']}/{row['arch']} ({row['condition']}): {verdict} "
                    f"(accuracy gap {gap} points).",
                    "removal",
                    row,
                )
            )
    fits = tables.get("fits")
    if fits is not None:
        for row in fits[~fits["fit"]].to_dict("records"):
            facts.append(
                Fact(
                    f"Left out of the comparison: {row['dataset']}/{row['arch']}, whose ensemble "
                    f"{row['fit_reason']}.",
                    "fits",
                    row,
                )
            )
    return facts


def answer(run_dir: Path) -> list[str]:
    """The answer's sentences (:func:`answer_facts` without the rows)."""
    return [fact.text for fact in answer_facts(run_dir)]
