"""The report's evidence: the study's figures selected from the run's tables, in reading
order (headline forest plot, heatmaps, cross-architecture agreement, leakage frontier,
ROC curves; the measured outcomes follow in :mod:`mnemoscope.report.outcomes`). Nothing
here estimates anything: values and CIs come from the tables; the one curve drawn from
raw scores is the mislabel-detection ROC, whose AUC the detection table holds.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from sklearn.metrics import roc_curve

from mnemoscope.report import study_figures as draw
from mnemoscope.report.answer import HEADLINE_K, headline_pairs
from mnemoscope.report.run import Run
from mnemoscope.report.study_figures import CurvePanel, Interval, Series

ROC_CURVES = 6
"""Mislabel-detection ROC curves drawn per architecture: the scores with the best AUCs."""
FPR_FLOOR = 1e-3


def fitted(run: Run, dataset: str, arch: str) -> bool:
    """Whether the (dataset, arch) models fit their data (``fits.parquet``; True without it)."""
    fits = run.tables.get("fits")
    if fits is None:
        return True
    row = fits[(fits["dataset"] == dataset) & (fits["arch"] == arch)]
    return bool(row["fit"].all()) if len(row) else True


def cell_name(run: Run, dataset: str, arch: str) -> str:
    """``dataset / arch``, marked ``(not fit)`` where its models do not fit their data."""
    return f"{dataset} / {arch}" + ("" if fitted(run, dataset, arch) else " (not fit)")


def headline_memorization(run: Run) -> str | None:
    """The memorization score the answer compares influence with (Feldman–Zhang if stored)."""
    mems = list(run.scores.loc[run.scores["family"] == "memorization", "method"].unique())
    if not mems:
        return None
    return "feldman_zhang" if "feldman_zhang" in mems else mems[0]


def forest_rows(run: Run) -> list[Interval]:
    """Spearman ρ [CI] of every influence score with the headline memorization score,
    one group per dataset / architecture (fitting ones first, highest ρ first within);
    the rows of architectures that do not fit are muted."""
    memorization = headline_memorization(run)
    frame = run.correlations
    if memorization is None or frame.empty:
        return []
    family = run.families
    rho = frame[frame["statistic"] == "spearman"]
    rows = []
    for (dataset, arch), cell in rho.groupby(["dataset", "arch"], sort=True):
        for r in cell.itertuples():
            pair = {r.method_a, r.method_b}
            if memorization not in pair or len(pair) != 2:
                continue
            (other,) = pair - {memorization}
            if family.get(other) != "influence" or not math.isfinite(r.value):
                continue
            muted = not fitted(run, dataset, arch)
            name = f"{dataset} / {arch}" + (" (not fit)" if muted else "")
            # a score of a chosen few examples (loo) says so: its CI is that of a few
            label = other + (f" (n={r.n})" if r.n < 0.5 * cell["n"].max() else "")
            rows.append(Interval(name, label, r.value, r.ci_low, r.ci_high, muted))
    return sorted(rows, key=lambda r: (r.muted, r.group, -r.value, r.label))


def headline(run: Run, sink: Any) -> dict[str, str] | None:
    """The forest plot beside the answer: one panel per dataset, grouped by architecture."""
    rows = forest_rows(run)
    if not rows:
        return None
    memorization = headline_memorization(run)
    datasets = sorted({r.group.split(" / ")[0] for r in rows})
    panels = [(d, [r for r in rows if r.group.split(" / ")[0] == d]) for d in datasets]
    png = draw.forest(panels, "Spearman ρ [95% CI]", f"Influence vs {memorization}", 0.0)
    caption = (
        f"Spearman ρ between each influence score and {memorization} memorization, with "
        "95% bootstrap CIs, per dataset (panels) and architecture (groups); grey: "
        "architectures left out because their models do not fit their training labels."
    )
    return sink.add("forest", png, caption)


def heatmaps(run: Run, sink: Any) -> list[dict[str, str]]:
    """Per dataset, one influence × memorization Spearman heatmap per architecture."""
    family = run.families
    rho = run.correlations[run.correlations["statistic"] == "spearman"]
    out = []
    for dataset in run.datasets:
        panels = []
        for arch in run.archs(dataset):
            cell = rho[(rho["dataset"] == dataset) & (rho["arch"] == arch)]
            infs = run.methods(dataset, "influence")
            mems = run.methods(dataset, "memorization")
            matrix = np.full((len(infs), len(mems)), np.nan)
            for r in cell.itertuples():
                a, b = (r.method_a, r.method_b)
                if family.get(a) == "memorization":
                    a, b = b, a
                if a in infs and b in mems:
                    matrix[infs.index(a), mems.index(b)] = r.value
            if np.isfinite(matrix).any():
                panels.append((cell_name(run, dataset, arch), matrix, infs, mems))
        if panels:
            png = draw.heatmap_grid(panels, f"{dataset}: Spearman ρ, influence × memorization")
            caption = (
                f"Spearman ρ between each influence score (rows) and each memorization score "
                f"(columns) of the training examples of {dataset}, one panel per architecture."
            )
            out.append(sink.add(f"heatmap_{dataset}", png, caption))
    return out


def cross_architecture(run: Run, sink: Any) -> list[dict[str, str]]:
    """Per dataset: each score's Spearman ρ across two architectures, and each memorization
    proxy's ρ with its reference (from ``cross_arch.parquet``)."""
    frame = run.tables.get("cross_arch")
    if frame is None or frame.empty:
        return []
    out = []
    for dataset, rows in frame.groupby("dataset", sort=True):
        intervals = []
        for r in rows.sort_values(["comparison", "arch_a", "arch_b", "value"]).itertuples():
            if not math.isfinite(r.value):
                continue
            group = (
                f"{r.arch_a} ↔ {r.arch_b}"
                if r.comparison == "architectures"
                else f"proxies of {r.reference} on {r.arch_a}"
            )
            label = r.method + (" (closest)" if r.comparison == "proxy" and r.best else "")
            intervals.append(Interval(group, label, r.value, r.ci_low, r.ci_high, not r.fit))
        if intervals:
            png = draw.interval_plot(
                intervals, "Spearman ρ [95% CI]", f"{dataset}: agreement across architectures", 0.0
            )
            caption = (
                f"{dataset}: Spearman ρ of each score between two architectures (how much a "
                "score is a property of the example rather than the model), and of each cheap "
                "memorization proxy with its reference on the same architecture."
            )
            out.append(sink.add(f"cross_arch_{dataset}", png, caption))
    return out


def leakage_frontier(run: Run, sink: Any) -> list[dict[str, str]]:
    """Seconds against precision@k (k = the answer's ``HEADLINE_K``) of every score with
    a known cost, one panel per dataset × architecture."""
    frame = run.tables.get("leakage")
    if frame is None or frame.empty:
        return []
    at_k = frame[np.isclose(frame["k"], HEADLINE_K) & np.isfinite(frame["seconds"])]
    panels = []
    for (dataset, arch), cell in at_k.groupby(["dataset", "arch"], sort=True):
        cell = cell[cell["n"] >= 0.5 * cell["n"].max()]  # as the answer: no chosen-few scores
        rows = [
            Interval(r.family, r.method, r.precision, r.precision_low, r.precision_high, not r.fit)
            for r in cell.itertuples()
        ]
        reference = cell["reference"].iloc[0]
        panels.append(
            (
                f"{cell_name(run, dataset, arch)}\ntop {HEADLINE_K:.0%} of {reference}",
                rows,
                cell["seconds"].tolist(),
            )
        )
    if not panels:
        return []
    caption = (
        f"Cost (seconds to compute, log scale) against precision@{HEADLINE_K:.0%}: the share "
        f"of a score's top {HEADLINE_K:.0%} among the reference's (LiRA's) top "
        f"{HEADLINE_K:.0%}, with 95% CIs; blue: memorization scores, orange: influence."
    )
    return [sink.add("leakage_frontier", draw.frontier(panels, HEADLINE_K), caption)]


def mislabel_roc(run: Run, sink: Any) -> list[dict[str, str]]:
    """ROC curves (log–log) of the best mislabel-detecting scores per dataset × arch."""
    detection = run.detection.dropna(subset=["auc"])
    flags = run.examples[run.examples["split"] == "train"]
    panels = []
    for (dataset, arch), cell in detection.groupby(["dataset", "arch"], sort=True):
        truth = flags[flags["dataset"] == dataset].set_index("example_id")["is_mislabeled"]
        series = []
        for r in (
            cell.sort_values(["auc", "method"], ascending=[False, True])
            .head(ROC_CURVES)
            .itertuples()
        ):
            scores = run.scores[
                (run.scores["dataset"] == dataset)
                & (run.scores["arch"] == arch)
                & (run.scores["method"] == r.method)
            ]
            per = scores.groupby("example_id")["score"].mean()
            per = per[np.isfinite(per) & per.index.isin(truth.index)]
            y = truth.loc[per.index].to_numpy(bool)
            if y.all() or not y.any():
                continue
            fpr, tpr, _ = roc_curve(y, per.to_numpy())
            keep = fpr >= FPR_FLOOR  # the log axis starts at the floor
            series.append(
                Series(f"{r.method} (AUC {r.auc:.2f})", fpr[keep], np.maximum(tpr[keep], FPR_FLOOR))
            )
        if series:
            panels.append(CurvePanel(cell_name(run, dataset, arch), series))
    if not panels:
        return []
    png = draw.curve_grid(
        panels,
        "false-positive rate",
        "true-positive rate",
        "Mislabel detection: ROC (log–log)",
        loglog=True,
        diagonal=True,
    )
    caption = (
        f"ROC curves of the {ROC_CURVES} scores with the highest mislabel-detection AUC per "
        "dataset and architecture (higher score = more likely flipped), log–log axes so the "
        "low false-positive rates show; dashed: chance."
    )
    return [sink.add("roc_mislabel", png, caption)]


def attack_roc(run: Run, sink: Any) -> list[dict[str, str]]:
    """Membership attacks' ROC curves on log–log axes, from ``attack_roc.parquet`` (each
    attack's TPR on a grid of FPRs); a run without it draws the operating points the
    attacks table stores (TPR at 0.1% and 1% FPR) up to (1, 1)."""
    frame = run.attacks
    if frame is None or frame.empty:
        return []
    curves = run.tables.get("attack_roc")
    panels = []
    for (dataset, arch), cell in frame.groupby(["dataset", "arch"], sort=True):
        series = []
        for r in cell.itertuples():
            label = f"{r.method} {r.variant} (AUC {r.auc:.2f})"
            if curves is not None and not curves.empty:
                curve = curves[
                    (curves["dataset"] == dataset)
                    & (curves["arch"] == arch)
                    & (curves["method"] == r.method)
                    & (curves["variant"] == r.variant)
                ].sort_values("fpr")
                curve = curve[np.isfinite(curve["tpr"])]
                if not curve.empty:
                    fpr = curve["fpr"].to_numpy()
                    series.append(
                        Series(label, fpr, np.maximum(curve["tpr"].to_numpy(), FPR_FLOOR))
                    )
                    continue
            if math.isfinite(r.tpr_at_0_1pct_fpr) and math.isfinite(r.tpr_at_1pct_fpr):
                series.append(
                    Series(
                        label,
                        np.array([1e-3, 1e-2, 1.0]),
                        np.maximum([r.tpr_at_0_1pct_fpr, r.tpr_at_1pct_fpr, 1.0], FPR_FLOOR),
                    )
                )
        if series:
            panels.append(CurvePanel(cell_name(run, dataset, arch), series))
    if not panels:
        return []
    png = draw.curve_grid(
        panels,
        "false-positive rate",
        "true-positive rate",
        "Membership inference: ROC (log–log)",
        loglog=True,
        diagonal=True,
    )
    caption = (
        "Membership-inference attacks on log–log ROC axes (as Carlini et al. 2022 draw "
        "them): the true-positive rate at each false-positive rate from 10⁻⁴ to 1 "
        "(attack_roc.parquet; pooled over the (model, example) pairs); dashed: chance."
    )
    return [sink.add("roc_attacks", png, caption)]


def headline_scatter_pairs(run: Run) -> list[tuple[str, str, str]]:
    """(dataset, memorization, influence) of the answer's headline pairs, once each."""
    pairs = headline_pairs(run.correlations, run.scores, headline_memorization(run) or "")
    return list(dict.fromkeys(zip(pairs["dataset"], pairs["memorization"], pairs["influence"])))
