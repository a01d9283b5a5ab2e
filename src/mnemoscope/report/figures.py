"""The report's figures: each function draws one figure and returns it as PNG bytes.

Figures are built as ``matplotlib.figure.Figure`` objects rendered by the Agg backend,
never through pyplot's global figure registry, so nothing can leak between figures or
interfere with a caller's interactive backend. The functions only draw what they are
given; the selection of what to draw lives in :mod:`mnemoscope.report.html`.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

import matplotlib

matplotlib.use("Agg")  # headless: the report is rendered on servers without a display

import numpy as np  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402
from matplotlib.ticker import NullLocator  # noqa: E402
from PIL import Image  # noqa: E402  (matplotlib's own dependency)

DPI = 100
CLEAN_COLOR = "#1f77b4"
MISLABELED_COLOR = "#d62728"


@dataclass(frozen=True)
class Panel:
    """One subplot's data: paired scores per example and which examples are mislabeled."""

    title: str
    x: np.ndarray
    y: np.ndarray
    mislabeled: np.ndarray  # bool, same length as x and y


@dataclass(frozen=True)
class GalleryItem:
    """One example of a gallery: its input and the text of its title."""

    x: np.ndarray  # one example, shape input_shape
    label: int
    original_label: int
    score: float
    mislabeled: bool
    example_id: int | None = None


PALETTE = 128
"""Colours of a figure's PNG: a palette image is about a third of the size of the
antialiased RGBA one and looks the same, which keeps the report within a few MB."""


def to_png(fig: Figure) -> bytes:
    """Render ``fig`` as PNG bytes with a ``PALETTE``-colour palette (median cut, no
    dithering: deterministic); no software tag, so output is reproducible.

    Layouts are fixed in inches (see :func:`_panel_axes`) rather than computed with
    ``bbox_inches="tight"``, which would draw every figure twice.
    """
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, metadata={"Software": None})
    fig.clear()  # release the artists now rather than when the figure is collected
    image = Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")
    small = image.quantize(PALETTE, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    out = io.BytesIO()
    small.save(out, format="PNG", optimize=True)
    return out.getvalue()


# Margins of the panel figures, in inches: room for tick labels, axis labels and titles.
_LEFT, _RIGHT, _BOTTOM, _TOP, _HGAP, _VGAP = 0.75, 0.2, 0.55, 0.6, 0.85, 0.75


def _panel_axes(fig: Figure, n_panels: int, width: float, height: float) -> list[Axes]:
    """``n_panels`` axes of ``width`` × ``height`` inches in rows of at most three.

    Titles are placed at a fixed height (``set_title(..., y=...)``) by the callers: left to
    itself matplotlib lays out every tick label once more to avoid them.
    """
    ncols = max(1, min(n_panels, 3))
    nrows = (n_panels + ncols - 1) // ncols
    fig_w = _LEFT + _RIGHT + ncols * width + (ncols - 1) * _HGAP
    fig_h = _BOTTOM + _TOP + nrows * height + (nrows - 1) * _VGAP
    fig.set_size_inches(fig_w, fig_h)
    axes = fig.subplots(
        nrows,
        ncols,
        squeeze=False,
        gridspec_kw={
            "left": _LEFT / fig_w,
            "right": 1 - _RIGHT / fig_w,
            "bottom": _BOTTOM / fig_h,
            "top": 1 - _TOP / fig_h,
            "wspace": _HGAP / width,  # gaps are given as fractions of a panel
            "hspace": _VGAP / height,
        },
    ).ravel()
    for ax in axes[n_panels:]:
        ax.set_axis_off()
    return list(axes[:n_panels])


def _set_heavy_tailed_yscale(ax: Axes, values: np.ndarray) -> str:
    """Log scale for the heavy-tailed self-influence; symlog where some values are <= 0.

    Symlog is linear below a threshold (the 5th percentile of the nonzero magnitudes, so
    the bulk of the scores still spreads over the logarithmic part). Returns the scale name.
    """
    finite = values[np.isfinite(values)]
    if finite.size and (finite > 0).all():
        scale = "log"
        ax.set_yscale(scale)
    else:
        scale = "symlog"
        nonzero = np.abs(finite[finite != 0])
        threshold = float(np.percentile(nonzero, 5)) if nonzero.size else 1.0
        ax.set_yscale(scale, linthresh=threshold)
    # minor ticks over many decades dominate the drawing time and add little in print
    ax.yaxis.set_minor_locator(NullLocator())
    return scale


def scatter_grid(panels: Sequence[Panel], xlabel: str, ylabel: str, suptitle: str) -> bytes:
    """Memorization (x) against self-influence (y), one subplot per panel (architecture).

    Mislabeled examples are drawn on top in a distinct colour and marker.
    """
    fig = Figure()
    for ax, panel in zip(_panel_axes(fig, len(panels), 3.4, 2.6), panels, strict=True):
        clean = ~panel.mislabeled
        ax.scatter(
            panel.x[clean],
            panel.y[clean],
            s=8,
            c=CLEAN_COLOR,
            marker="o",
            alpha=0.5,
            linewidths=0,
            label=f"clean (n={int(clean.sum())})",
            rasterized=True,
        )
        ax.scatter(
            panel.x[panel.mislabeled],
            panel.y[panel.mislabeled],
            s=18,
            c=MISLABELED_COLOR,
            marker="x",
            linewidths=1.0,
            alpha=0.85,
            label=f"mislabeled (n={int(panel.mislabeled.sum())})",
        )
        scale = _set_heavy_tailed_yscale(ax, panel.y)
        ax.set_title(panel.title, fontsize=10, y=1.01)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(f"{ylabel} self-influence ({scale})")
        ax.legend(fontsize=7, loc="upper left")
        ax.grid(alpha=0.3)
    fig.suptitle(suptitle, fontsize=11, y=1 - 0.12 / fig.get_figheight(), va="top")
    return to_png(fig)


def histogram_grid(panels: Sequence[Panel], xlabel: str, suptitle: str) -> bytes:
    """Histograms of the x values of each panel, clean and mislabeled overlaid.

    The two groups share bins so their shapes can be compared by eye; ``y`` is unused.
    """
    fig = Figure()
    for ax, panel in zip(_panel_axes(fig, len(panels), 3.4, 2.3), panels, strict=True):
        finite = panel.x[np.isfinite(panel.x)]
        bins = np.histogram_bin_edges(finite, bins=30) if finite.size else 10
        clean = panel.x[~panel.mislabeled & np.isfinite(panel.x)]
        flipped = panel.x[panel.mislabeled & np.isfinite(panel.x)]
        ax.hist(clean, bins=bins, color=CLEAN_COLOR, alpha=0.6, label=f"clean (n={clean.size})")
        ax.hist(
            flipped,
            bins=bins,
            color=MISLABELED_COLOR,
            alpha=0.8,
            histtype="stepfilled",
            label=f"mislabeled (n={flipped.size})",
        )
        ax.set_title(panel.title, fontsize=10, y=1.01)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("examples")
        ax.legend(fontsize=7, loc="upper left")
    fig.suptitle(suptitle, fontsize=11, y=1 - 0.12 / fig.get_figheight(), va="top")
    return to_png(fig)


def _draw_tile(ax: Axes, x: np.ndarray, kind: str, box: tuple[float, float, float, float]) -> None:
    """Draw one example inside ``box`` = (left, top, right, bottom) of the gallery axes.

    All tiles share one axes (y grows downwards) because sixteen separate axes, each with
    its own tick machinery, take several times longer to draw than the tiles themselves.
    """
    left, top, right, bottom = box
    ax.add_patch(Rectangle((left, top), right - left, bottom - top, fill=False, lw=0.5, ec="#999"))
    if kind == "image":
        image = x[0] if x.ndim == 3 else x  # first channel: inputs are [C, H, W]
        ax.imshow(
            image,
            cmap="gray",
            interpolation="nearest",
            aspect="auto",
            extent=(left, right, bottom, top),
        )
        return
    values = x.reshape(-1, x.shape[-1]) if kind == "sequence" else x.reshape(1, -1)
    low, high = min(float(values.min()), 0.0), max(float(values.max()), 0.0)
    span = high - low or 1.0

    def to_y(v: np.ndarray | float) -> np.ndarray | float:  # value → gallery y, inverted
        return bottom - (np.asarray(v) - low) / span * (bottom - top) * 0.9 - (bottom - top) * 0.05

    positions = left + (np.arange(values.shape[1]) + 0.5) / values.shape[1] * (right - left)
    ax.plot([left, right], [to_y(0.0)] * 2, color="#bbbbbb", lw=0.5)  # zero line for scale
    if kind == "sequence":
        for c, channel in enumerate(values):  # one line per channel of [C, L]
            ax.plot(positions, to_y(channel), lw=1.0, color=f"C{c % 10}")
    else:  # tabular: one bar per feature
        width = 0.8 * (right - left) / values.shape[1]
        ax.vlines(positions, to_y(0.0), to_y(values[0]), colors="#555555", lw=max(width * 72, 0.5))


def gallery(items: Sequence[GalleryItem], kind: str, suptitle: str, ncols: int = 4) -> bytes:
    """A grid (4×4 for 16 items) of examples drawn according to the dataset ``kind``.

    Images show their first channel in gray, sequences one curve per channel, tabular
    rows one bar per feature. Each tile is titled with the given label, the original label
    and the score; titles of mislabeled examples are red and say "flipped".
    """
    nrows = max(1, (len(items) + ncols - 1) // ncols)
    cell_w, cell_h, head = 2.0, 2.35, 0.45  # inches: a square tile under a two-line title
    fig = Figure(figsize=(cell_w * ncols, cell_h * nrows + head))
    ax = fig.add_axes((0.0, 0.0, 1.0, 1.0 - head / fig.get_figheight()))
    ax.set_axis_off()
    ax.set_xlim(0, ncols * cell_w)
    ax.set_ylim(nrows * cell_h, 0)  # inches as data units, top row first
    for i, item in enumerate(items):
        row, col = divmod(i, ncols)
        left, top = col * cell_w + 0.1, row * cell_h + 0.45
        _draw_tile(ax, item.x, kind, (left, top, left + cell_w - 0.2, top + cell_w - 0.2))
        mark = " flipped" if item.mislabeled else ""
        ident = "" if item.example_id is None else f"#{item.example_id} "
        ax.text(
            col * cell_w + cell_w / 2,
            top - 0.05,
            f"{ident}y={item.label} (true {item.original_label}){mark}\nscore={item.score:.3g}",
            ha="center",
            va="bottom",
            fontsize=8,
            color=MISLABELED_COLOR if item.mislabeled else "black",
        )
    fig.suptitle(suptitle, fontsize=11, y=1 - 0.1 / fig.get_figheight(), va="top")
    return to_png(fig)
