"""The study's figures: interval (forest) plots, heatmaps, curves with bands, ROC curves
and the leakage frontier. Like :mod:`mnemoscope.report.figures`, each function draws
exactly what it is given and returns PNG bytes; the selection lives in
:mod:`mnemoscope.report.evidence`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import NullLocator

from mnemoscope.report.figures import to_png

MUTED = "#9a9a9a"


@dataclass(frozen=True)
class Interval:
    """One row of an interval plot: an estimate and its CI (NaN bounds: none drawn)."""

    group: str  # rows of a group are drawn together under its name, e.g. the architecture
    label: str
    value: float
    low: float = float("nan")
    high: float = float("nan")
    muted: bool = False  # drawn grey, e.g. an architecture left out for not fitting


@dataclass(frozen=True)
class Series:
    """One curve: y over x with an optional band (``low``/``high``, same length)."""

    label: str
    x: np.ndarray
    y: np.ndarray
    low: np.ndarray | None = None
    high: np.ndarray | None = None


@dataclass(frozen=True)
class CurvePanel:
    title: str
    series: list[Series] = field(default_factory=list)


def _draw_intervals(ax: Axes, rows: Sequence[Interval], fontsize: float) -> None:
    """Draw ``rows`` top to bottom on ``ax``, each group under its bold name."""
    y, ticks, labels, weights = 0, [], [], []
    for group in dict.fromkeys(r.group for r in rows):
        ticks.append(y)
        labels.append(group)
        weights.append("bold")
        y += 1
        for row in (r for r in rows if r.group == group):
            color = MUTED if row.muted else "#1f4e79"
            if np.isfinite(row.low) and np.isfinite(row.high):
                ax.plot([row.low, row.high], [y, y], color=color, lw=1.4)
            ax.plot([row.value], [y], "o", color=color, ms=3.5)
            ticks.append(y)
            labels.append(row.label)
            weights.append("normal")
            y += 1
    ax.set_yticks(ticks, labels, fontsize=fontsize)
    for tick, weight in zip(ax.get_yticklabels(), weights, strict=True):
        tick.set_fontweight(weight)
    ax.set_ylim(y - 0.4, -0.6)
    ax.tick_params(axis="x", labelsize=fontsize)
    ax.grid(axis="x", alpha=0.3)


def interval_plot(
    rows: Sequence[Interval], xlabel: str, title: str, reference: float | None = None
) -> bytes:
    """Estimates with CIs, one line each, grouped under a bold group name (a forest plot).

    ``reference`` draws a dashed vertical line (0 for a correlation, 0.5 for an AUC).
    """
    return forest([("", list(rows))], xlabel, title, reference, line=0.22, fontsize=8)


def forest(
    panels: Sequence[tuple[str, list[Interval]]],
    xlabel: str,
    title: str,
    reference: float | None = None,
    line: float = 0.15,
    fontsize: float = 7,
) -> bytes:
    """Side-by-side interval plots (e.g. one per dataset), ``line`` inches per row, sharing
    the x axis, each with its rows grouped under bold group names."""
    n_lines = max(len(rows) + len({r.group for r in rows}) for _, rows in panels)
    longest = max(
        (len(text) for _, rows in panels for r in rows for text in (r.group, r.label)), default=10
    )
    # room for the longest tick label (about 0.6 em per character)
    label_w = max(1.2, 0.6 * longest * fontsize / 72 + 0.15)
    plot_w = 1.9 if len(panels) > 1 else 3.0
    width = len(panels) * (label_w + plot_w) + 0.2
    height = 1.0 + line * n_lines
    fig = Figure(figsize=(width, height))
    ends = [v for _, rows in panels for r in rows for v in (r.low, r.value, r.high)]
    ends = [v for v in ends if np.isfinite(v)] + ([reference] if reference is not None else [])
    span = (min(ends), max(ends)) if ends else (0.0, 1.0)
    pad = 0.05 * (span[1] - span[0] or 1.0)
    for i, (name, rows) in enumerate(panels):
        left = (i * (label_w + plot_w) + label_w) / width
        ax = fig.add_axes((left, 0.5 / height, plot_w / width, 1 - 0.95 / height))
        _draw_intervals(ax, rows, fontsize)
        ax.set_xlim(span[0] - pad, span[1] + pad)  # one scale: panels compare at a glance
        if reference is not None:
            ax.axvline(reference, color="#777", ls="--", lw=0.8)
        ax.set_xlabel(xlabel, fontsize=fontsize + 1)
        if name:
            ax.set_title(name, fontsize=fontsize + 2)
    fig.suptitle(title, fontsize=10, y=1 - 0.06 / height, va="top")
    return to_png(fig)


def heatmap_grid(
    panels: Sequence[tuple[str, np.ndarray, list[str], list[str]]], title: str
) -> bytes:
    """One heatmap per panel ``(title, matrix [rows × cols], row labels, col labels)``,
    coloured on [-1, 1] (a correlation), each cell printed; NaN cells are blank."""
    n = len(panels)
    n_rows = max(p[1].shape[0] for p in panels)
    n_cols = max(p[1].shape[1] for p in panels)
    cell = 0.42
    width = 1.6 + n * (cell * n_cols + 1.7)
    height = 1.5 + cell * n_rows
    fig = Figure(figsize=(width, height))
    image = None
    for i, (name, matrix, row_labels, col_labels) in enumerate(panels):
        left = (1.6 + i * (cell * n_cols + 1.7)) / width
        ax = fig.add_axes(
            (left, 1.05 / height, cell * matrix.shape[1] / width, cell * matrix.shape[0] / height)
        )
        image = ax.imshow(matrix, cmap="RdBu_r", vmin=-1, vmax=1, aspect="auto")
        ax.set_xticks(range(len(col_labels)), col_labels, rotation=35, ha="right", fontsize=8)
        ax.set_yticks(range(len(row_labels)), row_labels if i == 0 else [""] * len(row_labels))
        ax.tick_params(axis="y", labelsize=8)
        ax.set_title(name, fontsize=9)
        for (r, c), value in np.ndenumerate(matrix):
            if np.isfinite(value):
                ax.text(
                    c,
                    r,
                    f"{value:.2f}",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if abs(value) > 0.6 else "black",
                )
    if image is not None:
        bar = fig.add_axes((1 - 0.75 / width, 1.05 / height, 0.12 / width, cell * n_rows / height))
        fig.colorbar(image, cax=bar).ax.tick_params(labelsize=7)
    fig.suptitle(title, fontsize=10, y=1 - 0.08 / height, va="top")
    return to_png(fig)


def curve_grid(
    panels: Sequence[CurvePanel],
    xlabel: str,
    ylabel: str,
    title: str,
    loglog: bool = False,
    diagonal: bool = False,
) -> bytes:
    """Curves with CI bands, one panel each; ``loglog`` for ROC curves at low false-positive
    rates (as LiRA draws them), ``diagonal`` draws chance (y = x)."""
    n = len(panels)
    ncols = min(n, 3)
    nrows = (n + ncols - 1) // ncols
    fig = Figure(figsize=(0.6 + 3.6 * ncols, 0.8 + 3.0 * nrows))
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    fig.subplots_adjust(
        left=0.1,
        right=0.97,
        bottom=0.5 / fig.get_figheight(),
        top=1 - 0.55 / fig.get_figheight(),
        wspace=0.3,
        hspace=0.45,
    )
    for ax in axes[n:]:
        ax.set_axis_off()
    for ax, panel in zip(axes, panels, strict=False):
        for i, series in enumerate(panel.series):
            color = f"C{i % 10}"
            marker = "." if len(series.x) <= 12 else None  # few points: show where they are
            ax.plot(series.x, series.y, color=color, lw=1.3, marker=marker, label=series.label)
            if series.low is not None and series.high is not None:
                ax.fill_between(series.x, series.low, series.high, color=color, alpha=0.18, lw=0)
        if loglog:
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlim(1e-3, 1)
            ax.set_ylim(1e-3, 1)
            ax.xaxis.set_minor_locator(NullLocator())
            ax.yaxis.set_minor_locator(NullLocator())
        if diagonal:
            ax.plot([1e-3, 1], [1e-3, 1], color="#777", ls="--", lw=0.8)
        ax.set_title(panel.title, fontsize=9)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.set_ylabel(ylabel, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        if panel.series:
            ax.legend(fontsize=6.5, loc="best")
    fig.suptitle(title, fontsize=10, y=1 - 0.08 / fig.get_figheight(), va="top")
    return to_png(fig)


def frontier(panels: Sequence[tuple[str, list[Interval], list[float]]], k: float) -> bytes:
    """Cost against quality: per panel ``(title, rows, seconds)``, each score's seconds (x,
    log) against its precision@k with CI (y), labelled with the score's name."""
    n = len(panels)
    ncols = min(n, 3)
    nrows = (n + ncols - 1) // ncols
    fig = Figure(figsize=(0.6 + 3.8 * ncols, 0.8 + 3.2 * nrows))
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    fig.subplots_adjust(
        left=0.1,
        right=0.97,
        bottom=0.5 / fig.get_figheight(),
        top=1 - 0.55 / fig.get_figheight(),
        wspace=0.3,
        hspace=0.45,
    )
    for ax in axes[n:]:
        ax.set_axis_off()
    for ax, (name, rows, seconds) in zip(axes, panels, strict=False):
        for row, cost in zip(rows, seconds, strict=True):
            color = MUTED if row.muted else ("C0" if row.group == "memorization" else "C1")
            low = row.value - row.low if np.isfinite(row.low) else 0.0
            high = row.high - row.value if np.isfinite(row.high) else 0.0
            ax.errorbar(
                [cost],
                [row.value],
                yerr=[[low], [high]],
                fmt="o",
                color=color,
                ms=4,
                lw=1,
                capsize=2,
            )
            ax.annotate(
                row.label,
                (cost, row.value),
                fontsize=6.5,
                xytext=(3, 3),
                textcoords="offset points",
            )
        ax.set_xscale("log")
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("seconds to compute the score (log)", fontsize=8)
        ax.set_ylabel(f"precision@{k:.0%}", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    fig.suptitle(
        "Leakage frontier: cost against how well a score finds the most exposed",
        fontsize=10,
        y=1 - 0.08 / fig.get_figheight(),
        va="top",
    )
    return to_png(fig)
