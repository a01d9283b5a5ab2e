"""The evidence of measured outcomes, with their CIs from the tables: removal and
summarization curves (retrained models), sample information's applications, the linear
datamodeling score and mislabel-detection AUCs."""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np
import pandas as pd

from mnemoscope.report import study_figures as draw
from mnemoscope.report.evidence import cell_name
from mnemoscope.report.run import Run
from mnemoscope.report.study_figures import CurvePanel, Interval, Series


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
        panels.append(CurvePanel(f"{cell_name(run, dataset, arch)}\n{method}, {condition}", series))
    png = draw.curve_grid(
        panels,
        "fraction of training set removed",
        "test accuracy",
        "Removing examples by score, retrained",
    )
    caption = (
        "Test accuracy after retraining without the top / a random / the bottom fraction of "
        "the training set by the score named, mean over seeds with 95% CI bands "
        "(as in Feldman & Zhang 2020)."
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
        panels.append(CurvePanel(f"{cell_name(run, dataset, arch)}\n{method}", series))
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
        "2023, TRAK), with 95% CIs."
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
    """Every score's mislabel-detection AUC with its CI, per dataset × arch, best first."""
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
