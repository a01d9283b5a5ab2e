"""The report's evidence: the study's figures selected from the run's tables, in reading
order (headline forest plot, heatmaps, cross-architecture agreement, leakage frontier,
ROC curves, removal and summarization curves, sample-information applications, LDS,
detection AUCs). Nothing here estimates anything: values and CIs come from the tables;
the one curve drawn from raw scores is the mislabel-detection ROC, whose AUC the
detection table holds.
"""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np
import pandas as pd
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


def _cell_name(run: Run, dataset: str, arch: str) -> str:
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
                panels.append((_cell_name(run, dataset, arch), matrix, infs, mems))
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
                f"{_cell_name(run, dataset, arch)}\ntop {HEADLINE_K:.0%} of {reference}",
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
            panels.append(CurvePanel(_cell_name(run, dataset, arch), series))
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
    """Membership attacks on log–log ROC axes, through the operating points the attacks
    table stores (TPR at 0.1% and 1% FPR) up to (1, 1)."""
    frame = run.attacks
    if frame is None or frame.empty:
        return []
    panels = []
    for (dataset, arch), cell in frame.groupby(["dataset", "arch"], sort=True):
        series = [
            Series(
                f"{r.method} {r.variant} (AUC {r.auc:.2f})",
                np.array([1e-3, 1e-2, 1.0]),
                np.maximum([r.tpr_at_0_1pct_fpr, r.tpr_at_1pct_fpr, 1.0], FPR_FLOOR),
            )
            for r in cell.itertuples()
            if math.isfinite(r.tpr_at_0_1pct_fpr) and math.isfinite(r.tpr_at_1pct_fpr)
        ]
        if series:
            panels.append(CurvePanel(_cell_name(run, dataset, arch), series))
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
        "them): each line joins the stored operating points, the true-positive rate at 0.1% "
        "and at 1% false-positive rate (pooled over models), to (1, 1); dashed: chance."
    )
    return [sink.add("roc_attacks", png, caption)]


def removal_curves(run: Run, sink: Any) -> list[dict[str, str]]:
    """Test accuracy against the removed fraction, top / random / bottom, with CI bands."""
    frame = run.tables.get("removal")
    if frame is None or frame.empty:
        return []
    panels = []
    for (dataset, arch, method, condition), cell in frame.groupby(
        ["dataset", "arch", "method", "condition"], sort=True
    ):
        series = []
        for direction in ("top", "random", "bottom"):
            rows = cell[cell["direction"] == direction].sort_values("k")
            if len(rows):
                series.append(
                    Series(
                        f"remove {direction}",
                        rows["k"].to_numpy(),
                        rows["accuracy"].to_numpy(),
                        rows["ci_low"].to_numpy(),
                        rows["ci_high"].to_numpy(),
                    )
                )
        panels.append(
            CurvePanel(f"{_cell_name(run, dataset, arch)}\n{method}, {condition}", series)
        )
    png = draw.curve_grid(
        panels,
        "fraction of training set removed",
        "test accuracy",
        "Removing examples by score, retrained",
    )
    caption = (
        "Test accuracy after retraining without the top / a random / the bottom fraction of "
        "the training set by the score named, mean over seeds with 95% CI bands "
        "(Feldman & Zhang 2020, §4)."
    )
    return [sink.add("removal", png, caption)]


_AT = re.compile(r"^(?P<name>.+)@(?P<frac>[0-9.eE+-]+)$")


def summarization_curves(run: Run, sink: Any) -> list[dict[str, str]]:
    """Accuracy after dropping the least informative examples against a random subset."""
    frame = run.tables.get("applications")
    if frame is None or frame.empty:
        return []
    frame = frame[(frame["application"] == "summarization") & (frame["metric"] == "accuracy")]
    panels = []
    for (dataset, arch, method), cell in frame.groupby(["dataset", "arch", "method"], sort=True):
        parsed = cell["group"].str.extract(_AT).assign(frac=lambda f: pd.to_numeric(f["frac"]))
        cell = cell.assign(name=parsed["name"], frac=parsed["frac"]).dropna(subset=["frac"])
        series = [
            Series(
                name,
                rows["frac"].to_numpy(),
                rows["value"].to_numpy(),
                rows["ci_low"].to_numpy(),
                rows["ci_high"].to_numpy(),
            )
            for name, rows in cell.sort_values("frac").groupby("name", sort=True)
        ]
        panels.append(CurvePanel(f"{_cell_name(run, dataset, arch)}\n{method}", series))
    if not panels:
        return []
    png = draw.curve_grid(
        panels,
        "fraction of training set dropped",
        "test accuracy",
        "Summarization: dropping the least informative",
    )
    caption = (
        "Test accuracy after dropping a fraction of the training set, least informative first "
        "by sample information or at random, with 95% CI bands over seeds "
        "(Harutyunyan et al. 2021, §5)."
    )
    return [sink.add("summarization", png, caption)]


def _ci_rows(frame: pd.DataFrame, group_of: Any, label_of: Any, fit: Any) -> list[Interval]:
    return [
        Interval(group_of(r), label_of(r), r.value, r.ci_low, r.ci_high, not fit(r))
        for r in frame.itertuples()
        if math.isfinite(r.value)
    ]


def applications(run: Run, sink: Any) -> list[dict[str, str]]:
    """Sample information's applications: detection AUC per planted kind and mean score
    differences between groups, with CIs (sample-information scores only)."""
    frame = run.tables.get("applications")
    if frame is None or frame.empty:
        return []
    mine = frame[frame["method"].str.startswith("sample_info")]
    out = []
    auc = mine[(mine["application"] == "detection") & (mine["metric"] == "auc")]
    if len(auc):
        rows = _ci_rows(
            auc.sort_values(["dataset", "arch", "method", "group"]),
            lambda r: f"{r.dataset} / {r.arch}: {r.method}",
            lambda r: r.group,
            lambda r: r.fit,
        )
        png = draw.interval_plot(rows, "ROC AUC [95% CI]", "Finding planted examples", 0.5)
        caption = (
            "ROC AUC of sample information for separating each kind of planted training "
            "example (flipped labels, canaries, noisy or occluded inputs, adversarial "
            "examples) from the rest, with 95% CIs; 0.5 is chance."
        )
        out.append(sink.add("applications_detection", png, caption))
    diff = mine[(mine["group"] == "difference") & (mine["metric"] == "mean")]
    if len(diff):
        rows = _ci_rows(
            diff.sort_values(["dataset", "arch", "application"]),
            lambda r: f"{r.dataset} / {r.arch}",
            lambda r: f"{r.application}: {r.method}",
            lambda r: r.fit,
        )
        png = draw.interval_plot(
            rows, "difference of mean score [95% CI]", "Group differences", 0.0
        )
        caption = (
            "Difference of the mean sample-information score between the groups of each "
            "grouping (noisy minus clean source; under-sampled minus other classes), 95% CIs."
        )
        out.append(sink.add("applications_groups", png, caption))
    return out


def lds(run: Run, sink: Any) -> list[dict[str, str]]:
    """The linear datamodeling score of each attributor, with CIs (``influence_eval``)."""
    frame = run.tables.get("influence_eval")
    if frame is None:
        return []
    frame = frame[frame["metric"] == "lds"]
    rows = _ci_rows(
        frame.sort_values(["dataset", "arch", "value"], ascending=[True, True, False]),
        lambda r: f"{r.dataset} / {r.arch}",
        lambda r: r.method,
        lambda r: r.fit,
    )
    if not rows:
        return []
    png = draw.interval_plot(rows, "LDS (Spearman) [95% CI]", "Linear datamodeling score", 0.0)
    caption = (
        "Linear datamodeling score of each influence method: Spearman correlation between "
        "predicted and actual outputs of models retrained on random subsets (Park et al. "
        "2023, TRAK, eq. 5), with 95% CIs."
    )
    return [sink.add("lds", png, caption)]


def detection_intervals(run: Run) -> pd.DataFrame:
    """Mislabel-detection AUCs with CIs: ``applications`` rows for ``is_mislabeled`` where
    the study wrote them; otherwise the detection table's AUCs without intervals."""
    frame = run.tables.get("applications")
    if frame is not None and len(frame):
        rows = frame[(frame["application"] == "detection") & (frame["group"] == "is_mislabeled")]
        if len(rows):
            return rows[["dataset", "arch", "method", "value", "ci_low", "ci_high", "fit"]]
    det = run.detection
    return pd.DataFrame(
        {
            "dataset": det["dataset"],
            "arch": det["arch"],
            "method": det["method"],
            "value": det["auc"],
            "ci_low": np.nan,
            "ci_high": np.nan,
            "fit": det.get("fit", True),
        }
    )


def detection_aucs(run: Run, sink: Any) -> list[dict[str, str]]:
    frame = detection_intervals(run)
    rows = _ci_rows(
        frame.sort_values(["dataset", "arch", "value"], ascending=[True, True, False]),
        lambda r: f"{r.dataset} / {r.arch}",
        lambda r: r.method,
        lambda r: r.fit,
    )
    if not rows:
        return []
    png = draw.interval_plot(rows, "ROC AUC [95% CI]", "Detecting flipped labels", 0.5)
    caption = (
        "ROC AUC of each score for separating the label-flipped training examples from the "
        "clean ones, best first, with 95% CIs; 0.5 is chance."
    )
    return [sink.add("detection_auc", png, caption)]


def headline_scatter_pairs(run: Run) -> list[tuple[str, str, str]]:
    """(dataset, memorization, influence) of the answer's headline pairs, once each."""
    pairs = headline_pairs(run.correlations, run.scores, headline_memorization(run) or "")
    return list(dict.fromkeys(zip(pairs["dataset"], pairs["memorization"], pairs["influence"])))
