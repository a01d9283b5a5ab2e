"""Render a finished run directory as one self-contained ``report.html``.

The report computes no statistics: correlations and AUCs come precomputed from the
run's tables. :mod:`mnemoscope.report.run` reads the run (only through
:class:`~mnemoscope.store.rundir.RunDir`: its typed manifest and schema-checked
tables), :mod:`mnemoscope.report.tables` selects, sorts and formats the rows, and this
module draws the figures (with :mod:`mnemoscope.report.figures`) and the page. The one
aggregation it does is for display: when a score was stored for several seeds, the
per-example mean is drawn.
"""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
import pandas as pd
from safetensors import SafetensorError, safe_open

from mnemoscope.errors import UserError
from mnemoscope.report import figures
from mnemoscope.report.run import Run, load_run
from mnemoscope.report.tables import (
    INFLUENCE_TOP,
    attack_rows,
    best_separators,
    canary_rows,
    correlation_tables,
    detection_rows,
    influence_rows,
    stderr_rows,
)
from mnemoscope.store.atomic import write_bytes, write_text

GALLERY_SIZE = 16
_TEMPLATES = Path(__file__).parent / "templates"


def per_example_scores(scores: pd.DataFrame, dataset: str, arch: str, method: str) -> pd.DataFrame:
    """One row per example: ``example_id, score, stderr`` (mean over seeds where several)."""
    rows = scores[
        (scores["dataset"] == dataset) & (scores["arch"] == arch) & (scores["method"] == method)
    ]
    return rows.groupby("example_id", as_index=False, sort=True).agg(
        score=("score", "mean"), stderr=("stderr", "mean")
    )


def most_memorized(
    scores: pd.DataFrame, dataset: str, arch: str, method: str, k: int = GALLERY_SIZE
) -> pd.DataFrame:
    """The ``k`` examples with the highest ``method`` score, highest first.

    Returns columns ``example_id, score, stderr``; ties are broken by example id so the
    selection is reproducible, and examples without a finite score are never selected.
    """
    frame = per_example_scores(scores, dataset, arch, method)
    frame = frame[np.isfinite(frame["score"])]
    frame = frame.sort_values(["score", "example_id"], ascending=[False, True], kind="stable")
    return frame.head(k).reset_index(drop=True)


class FigureSink:
    """Writes each figure to ``figures/<name>.png`` and returns its data URI for embedding."""

    def __init__(self, run_dir: Path) -> None:
        self.directory = run_dir / "figures"
        self.used: set[str] = set()

    def add(self, name: str, png: bytes, caption: str) -> dict[str, str]:
        stem = re.sub(r"[^A-Za-z0-9_.-]", "_", name).lstrip(".") or "figure"
        unique, i = stem, 1
        while unique in self.used:  # different user names can sanitize to the same stem
            i += 1
            unique = f"{stem}_{i}"
        self.used.add(unique)
        write_bytes(self.directory / f"{unique}.png", png)
        uri = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
        return {"file": f"figures/{unique}.png", "uri": uri, "caption": caption}


def _panels(run: Run, dataset: str, mem: str, inf: str | None) -> list[figures.Panel]:
    """Per-arch paired (memorization, influence) scores of training examples."""
    train = run.examples[(run.examples["dataset"] == dataset) & (run.examples["split"] == "train")]
    flags = train[["example_id", "is_mislabeled"]]
    panels = []
    for arch in run.archs(dataset):
        joined = per_example_scores(run.scores, dataset, arch, mem).rename(columns={"score": "x"})
        if inf is not None:
            other = per_example_scores(run.scores, dataset, arch, inf)
            joined = joined.merge(other[["example_id", "score"]], on="example_id")
            joined = joined.rename(columns={"score": "y"})
        joined = joined.merge(flags, on="example_id")
        # e.g. Feldman–Zhang leaves examples never held out NaN: nothing to draw for them
        finite = np.isfinite(joined["x"]) & (np.isfinite(joined["y"]) if inf is not None else True)
        joined = joined[finite]
        if joined.empty:
            continue
        panels.append(
            figures.Panel(
                title=arch,
                x=joined["x"].to_numpy(float),
                y=joined["y"].to_numpy(float) if inf is not None else joined["x"].to_numpy(float),
                mislabeled=joined["is_mislabeled"].to_numpy(bool),
            )
        )
    return panels


def _kind(run: Run, dataset: str, ndim: int) -> str:
    info = run.manifest.datasets.get(dataset)
    if info is not None and info.kind in ("image", "sequence", "tabular"):
        return info.kind
    return {3: "image", 2: "sequence"}.get(ndim, "tabular")  # inputs are [C,H,W], [C,L], [d]


def _read_rows(run: Run, dataset: str, ids: np.ndarray) -> np.ndarray:
    """The training inputs of ``ids``, read row by row so large datasets stay on disk."""
    path = run.store.path(run.store.data_file(dataset))
    if not path.is_file():
        raise UserError(f"run directory is missing {path.name}: expected {path}")
    try:
        with safe_open(str(path), framework="np") as tensors:
            missing = {"x_train", "train_ids"} - set(tensors.keys())
            if missing:
                raise UserError(f"{path.name} is missing tensors {sorted(missing)}")
            row_of = {int(i): r for r, i in enumerate(tensors.get_tensor("train_ids"))}
            absent = [int(i) for i in ids if int(i) not in row_of]
            if absent:
                raise UserError(f"{path.name} has no training examples with ids {absent[:5]}")
            x_train = tensors.get_slice("x_train")
            return np.stack([x_train[row_of[int(i)] : row_of[int(i)] + 1][0] for i in ids])
    except SafetensorError as error:  # truncated or corrupt file
        first = str(error).splitlines()[0] if str(error) else "unreadable"
        raise UserError(f"{path}: not a readable safetensors file ({first})") from None


def _gallery(run: Run, sink: FigureSink, dataset: str, arch: str, method: str) -> dict | None:
    top = most_memorized(run.scores, dataset, arch, method)
    if top.empty:
        return None
    labels = run.examples[
        (run.examples["dataset"] == dataset) & (run.examples["split"] == "train")
    ].set_index("example_id")
    missing = [int(i) for i in top["example_id"] if i not in labels.index]
    if missing:
        raise UserError(f"examples.parquet has no {dataset!r} training rows for ids {missing[:5]}")
    inputs = _read_rows(run, dataset, top["example_id"].to_numpy())
    kind = _kind(run, dataset, inputs.ndim - 1)
    items = [
        figures.GalleryItem(
            x=x,
            label=int(labels.at[row.example_id, "label"]),
            original_label=int(labels.at[row.example_id, "original_label"]),
            score=float(row.score),
            mislabeled=bool(labels.at[row.example_id, "is_mislabeled"]),
        )
        for x, row in zip(inputs, top.itertuples(), strict=True)
    ]
    png = figures.gallery(items, kind, f"{dataset} / {arch}: top {len(items)} by {method}")
    caption = (
        f"The {len(items)} training examples of {dataset} with the highest {method} score "
        f"under {arch}, highest first; titles give the trained label, the original label and "
        "the score; red titles mark flipped (mislabeled) examples."
    )
    fig = sink.add(f"gallery_{dataset}_{arch}_{method}", png, caption)
    return {"arch": arch, "method": method, "figure": fig}


def dataset_sections(run: Run, sink: FigureSink) -> list[dict[str, Any]]:
    """Per dataset: scatter plots, histograms and the galleries of the most memorized."""
    sections = []
    for dataset in run.datasets:
        mems = run.methods(dataset, "memorization")
        infs = run.methods(dataset, "influence")
        scatters, histograms, galleries = [], [], []
        for mem in mems:
            for inf in infs:
                panels = _panels(run, dataset, mem, inf)
                if not panels:
                    continue
                png = figures.scatter_grid(panels, mem, inf, f"{dataset}: {mem} vs {inf}")
                caption = (
                    f"{mem} memorization (x) against {inf} self-influence (y, log scale; "
                    f"symlog where scores reach zero) of the training examples of {dataset}, "
                    "one panel per architecture."
                )
                scatters.append(sink.add(f"scatter_{dataset}_{mem}_vs_{inf}", png, caption))
            panels = _panels(run, dataset, mem, None)
            if panels:
                png = figures.histogram_grid(panels, mem, f"{dataset}: {mem}")
                caption = f"Distribution of {mem} scores on {dataset}, clean vs mislabeled."
                histograms.append(sink.add(f"hist_{dataset}_{mem}", png, caption))
        if mems:
            for arch in run.archs(dataset):
                item = _gallery(run, sink, dataset, arch, mems[0])
                if item is not None:
                    galleries.append(item)
        sections.append(
            {
                "name": dataset,
                "scatters": scatters,
                "histograms": histograms,
                "galleries": galleries,
            }
        )
    return sections


def _flatten(value: Any, prefix: str = "") -> list[tuple[str, str]]:
    if isinstance(value, dict):
        return [
            pair for k, v in value.items() for pair in _flatten(v, f"{prefix}.{k}" if prefix else k)
        ]
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return [(prefix or "(config)", text)]


def _fit(fit: dict[str, Any] | None) -> str:
    """``97% (41% of flipped)``: a training stage's fit of its own labels, or empty."""
    if not fit:
        return ""
    text = f"{fit['in_subset_accuracy']:.0%}"
    if fit.get("in_subset_accuracy_flipped") is not None:
        text += f" ({fit['in_subset_accuracy_flipped']:.0%} of flipped)"
    return text


def header(run: Run) -> dict[str, Any]:
    """Run name, date, datasets, versions, stage timings and the config, ready to print."""
    manifest = run.manifest
    datasets = [
        {
            "name": name,
            "kind": info.kind,
            "shape": "×".join(str(s) for s in info.input_shape),
            "n_classes": info.n_classes,
            "n_train": info.n_train,
            "n_test": info.n_test,
            "mislabeled": info.n_mislabeled,
            "label_noise": info.label_noise,
            "fingerprint": info.fingerprint[:12],
        }
        for name, info in manifest.datasets.items()
    ]
    stages = [
        {
            "name": name,
            "seconds": f"{stage.seconds:.1f}",
            "key": stage.key[:12],
            "fit": _fit(stage.record.get("fit")),
        }
        for name, stage in manifest.stages.items()
    ]
    return {
        "name": manifest.name or run.path.name,
        "date": manifest.started,
        "datasets": datasets,
        "versions": list(manifest.versions.items()),
        "stages": stages,
        "config": _flatten(manifest.config),
    }


def _environment() -> jinja2.Environment:
    # autoescape everywhere: run, dataset, method and arch names are user-supplied.
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(_TEMPLATES),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def render_report(run_dir: Path) -> Path:
    """Write ``report.html`` (and ``figures/*.png``) for the run in ``run_dir``; return its path.

    Raises :class:`UserError` naming the file when a required file or column is missing
    or the manifest is not valid.
    """
    run = load_run(Path(run_dir))
    sink = FigureSink(run.path)
    html = (
        _environment()
        .get_template("report.html.j2")
        .render(
            run=header(run),
            correlations=correlation_tables(run),
            detection=detection_rows(run),
            attacks=attack_rows(run),
            best=best_separators(run),
            canaries=canary_rows(run),
            sections=dataset_sections(run, sink),
            stderr_rows=stderr_rows(run),
            influence=influence_rows(run),
            influence_top=INFLUENCE_TOP,
        )
    )
    return write_text(run.path / "report.html", html)
