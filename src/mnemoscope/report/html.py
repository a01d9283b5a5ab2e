"""Render a finished run directory as one self-contained ``report.html``.

The page opens with the answer (:mod:`mnemoscope.report.answer`, written from the
tables) beside a forest plot of ρ [CI] by architecture, then gives the evidence
(:mod:`mnemoscope.report.evidence`, :mod:`mnemoscope.report.outcomes`), the galleries
of the most memorized, most LiRA-vulnerable and most influential examples, the caveats
with their references, and the run's details last.

The report computes no statistics: correlations, AUCs and CIs come precomputed from the
run's tables. :mod:`mnemoscope.report.run` reads the run (only through
:class:`~mnemoscope.store.rundir.RunDir`: its typed manifest and schema-checked
tables), :mod:`mnemoscope.report.tables` selects, sorts and formats the rows, and this
module draws the galleries and scatter plots (with :mod:`mnemoscope.report.figures`)
and the page. The one aggregation it does is for display: when a score was stored for
several seeds, the per-example mean is drawn.
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
from mnemoscope.report import evidence, figures, outcomes, privacy
from mnemoscope.report.answer import answer_facts, headline_pairs
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

    Returns columns ``example_id, score, stderr``; ties are broken by the smaller stderr
    (a missing one last), then by example id, so the selection is reproducible; examples
    without a finite score are never selected.
    """
    frame = per_example_scores(scores, dataset, arch, method)
    frame = frame[np.isfinite(frame["score"])]
    frame = frame.assign(_se=frame["stderr"].fillna(np.inf)).sort_values(
        ["score", "_se", "example_id"], ascending=[False, True, True], kind="stable"
    )
    return frame.drop(columns="_se").head(k).reset_index(drop=True)


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

    def remove_stale(self) -> None:
        """Delete the PNGs of ``figures/`` this rendering did not write (an earlier
        report's), so the folder holds exactly the report's figures."""
        if self.directory.is_dir():
            for path in self.directory.glob("*.png"):
                if path.stem not in self.used:
                    path.unlink()


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


GALLERIES = ("most memorized", "most vulnerable", "most influential")
"""The galleries' kinds: by the headline memorization score, by LiRA, by the arch's
headline influence score."""


def _gallery_methods(run: Run, dataset: str, arch: str) -> list[tuple[str, str]]:
    """(kind, method) of each gallery of ``dataset`` × ``arch`` whose method was stored."""
    mems = run.methods(dataset, "memorization")
    infs = run.methods(dataset, "influence")
    chosen = []
    memorization = evidence.headline_memorization(run)
    if memorization in mems:
        chosen.append((GALLERIES[0], memorization))
    if "lira" in mems:
        chosen.append((GALLERIES[1], "lira"))
    pairs = headline_pairs(run.correlations, run.scores, memorization or "")
    pairs = pairs[(pairs["dataset"] == dataset) & (pairs["arch"] == arch)]
    influence = pairs["influence"].iloc[0] if len(pairs) else (infs[0] if infs else None)
    if influence is not None:
        chosen.append((GALLERIES[2], influence))
    return chosen


def _gallery(
    run: Run, sink: FigureSink, dataset: str, arch: str, kind: str, method: str
) -> dict | None:
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
    data_kind = _kind(run, dataset, inputs.ndim - 1)
    items = [
        figures.GalleryItem(
            x=x,
            label=int(labels.at[row.example_id, "label"]),
            original_label=int(labels.at[row.example_id, "original_label"]),
            score=float(row.score),
            mislabeled=bool(labels.at[row.example_id, "is_mislabeled"]),
            example_id=int(row.example_id),
        )
        for x, row in zip(inputs, top.itertuples(), strict=True)
    ]
    caption = (
        f"The {len(items)} training examples of {dataset} with the highest {method} score "
        f"under {arch}, highest first (ties: smaller stderr, then smaller id); each gives "
        "its example id, the trained label, the original label and the score; red marks "
        "flipped (mislabeled) examples."
    )
    item = {"arch": arch, "kind": kind, "method": method, "caption": caption}
    if data_kind == "tabular":  # feature values read better as numbers than as bars
        n_features = int(np.prod(inputs.shape[1:]))
        item["features"] = [f"x{j}" for j in range(n_features)]
        item["rows"] = [
            {
                "example_id": it.example_id,
                "label": it.label,
                "original_label": it.original_label,
                "score": f"{it.score:.3g}",
                "mislabeled": it.mislabeled,
                "cells": [f"{v:.3g}" for v in it.x.reshape(-1)],
            }
            for it in items
        ]
        return item
    png = figures.gallery(items, data_kind, f"{dataset} / {arch}: {kind} ({method})")
    item["figure"] = sink.add(f"gallery_{dataset}_{arch}_{method}", png, caption)
    return item


def scatter_figures(run: Run, sink: FigureSink) -> list[dict[str, str]]:
    """Memorization against self-influence for the answer's headline pairs only."""
    out = []
    for dataset, mem, inf in evidence.headline_scatter_pairs(run):
        panels = _panels(run, dataset, mem, inf)
        if not panels:
            continue
        png = figures.scatter_grid(panels, mem, inf, f"{dataset}: {mem} vs {inf}")
        caption = (
            f"{mem} memorization (x) against {inf} self-influence (y, log scale; symlog "
            f"where scores reach zero) of the training examples of {dataset}, one panel per "
            "architecture: the answer's headline pair."
        )
        out.append(sink.add(f"scatter_{dataset}_{mem}_vs_{inf}", png, caption))
    return out


def gallery_sections(run: Run, sink: FigureSink) -> list[dict[str, Any]]:
    """Per dataset: the galleries of each architecture (most memorized, most vulnerable to
    LiRA, most influential)."""
    sections = []
    for dataset in run.datasets:
        galleries = []
        for arch in run.archs(dataset):
            for kind, method in _gallery_methods(run, dataset, arch):
                item = _gallery(run, sink, dataset, arch, kind, method)
                if item is not None:
                    galleries.append(item)
        sections.append({"name": dataset, "galleries": galleries})
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
        # run order: a resumed run records its stages in the order they finished
        for name, stage in sorted(manifest.stages.items(), key=lambda item: item[1].finished)
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
    facts = answer_facts(run.path, evidence.headline_memorization(run) or "feldman_zhang")
    html = (
        _environment()
        .get_template("report.html.j2")
        .render(
            run=header(run),
            answer=_answer_groups(facts),
            forest=evidence.headline(run, sink),
            evidence=evidence_sections(run, sink),
            correlations=correlation_tables(run),
            detection=detection_rows(run),
            attacks=attack_rows(run),
            best=best_separators(run, outcomes.detection_intervals(run)),
            canaries=canary_rows(run),
            sections=gallery_sections(run, sink),
            stderr_rows=stderr_rows(run),
            influence=influence_rows(run),
            influence_top=INFLUENCE_TOP,
        )
    )
    sink.remove_stale()
    return write_text(run.path / "report.html", html)


_ANSWER_TOPICS = {
    "correlations": "Which influence scores track memorization",
    "leakage": "Which cheap score finds the examples most exposed to LiRA",
    "removal": "Removing the most memorized examples",
    "fits": "Left out for not fitting their data",
}


def _answer_groups(facts: list[Any]) -> list[dict[str, Any]]:
    """The answer's sentences grouped by the table they come from, in reading order."""
    groups: dict[str, list[str]] = {}
    for fact in facts:
        groups.setdefault(fact.table, []).append(fact.text)
    return [
        {"table": table, "topic": _ANSWER_TOPICS.get(table, table), "sentences": sentences}
        for table, sentences in groups.items()
    ]


EVIDENCE = (
    ("heatmaps", "Influence × memorization per architecture", evidence.heatmaps),
    ("cross-arch", "Agreement across architectures", evidence.cross_architecture),
    ("leakage", "Leakage frontier: cost against precision", evidence.leakage_frontier),
    ("roc-mislabel", "ROC: mislabel detection", evidence.mislabel_roc),
    ("roc-attacks", "Membership inference", evidence.attack_roc),
    ("removal", "Removal", outcomes.removal_curves),
    ("summarization", "Summarization", outcomes.summarization_curves),
    ("dp", "Differential privacy: ε, accuracy and leakage", privacy.dp_tradeoff),
    ("applications", "Sample information's applications", outcomes.applications),
    ("lds", "Linear datamodeling score", outcomes.lds),
    ("detection-auc", "Detection AUCs", outcomes.detection_aucs),
)
"""The evidence subsections in reading order: (id, heading, figure builder)."""


def evidence_sections(run: Run, sink: FigureSink) -> list[dict[str, Any]]:
    """The evidence's figures, in the order of :data:`EVIDENCE`, then the headline scatters;
    a subsection whose tables the run lacks is left out."""
    sections = [
        {"id": key, "title": title, "figures": build(run, sink)} for key, title, build in EVIDENCE
    ]
    sections.append(
        {"id": "scatter", "title": "Headline pairs", "figures": scatter_figures(run, sink)}
    )
    return [section for section in sections if section["figures"]]
