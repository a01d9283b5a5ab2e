"""The study's stages (``mnemoscope study``): fits, retraining experiments, study tables.

Same contract as :mod:`mnemoscope.runner.stages`: ``function(root, args, reporter) ->
record``, files named relative to the run directory, outputs written atomically.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from safetensors import safe_open

from mnemoscope.runner.progress import Reporter
from mnemoscope.runner.retraining import clean_labels, ranked, removal, score_by, summarization
from mnemoscope.runner.stages import load_dataset
from mnemoscope.store import FITS, write_parquet
from mnemoscope.train import TrainConfig
from mnemoscope.train.fit import fit_problem

Args = dict[str, Any]


def _ensemble_fit(root: Path, files: list[str], y: np.ndarray, flipped: np.ndarray) -> dict:
    """In-subset accuracy of one ensemble (its parts' files), overall and on flipped labels."""
    right, seen = [], []
    for file in files:
        with safe_open(str(Path(root) / file), "pt") as handle:
            right.append(handle.get_tensor("train_logits").argmax(-1).numpy() == y)
            seen.append(handle.get_tensor("masks").numpy())
    right, seen = np.concatenate(right), np.concatenate(seen)
    on_flipped = seen & flipped
    return {
        "in_subset_accuracy": float(right[seen].mean()),
        "in_subset_accuracy_flipped": float(right[on_flipped].mean()) if on_flipped.any() else None,
    }


def measure_fits(root: Path, args: Args, reporter: Reporter) -> Args:
    """``fits.parquet``: for each (dataset, arch), how well its models fit their own
    training labels (the worst of its ensembles) and whether that is enough for
    memorization to be seen (:func:`~mnemoscope.train.fit.fit_problem`)."""
    rows = []
    for cell in args["cells"]:
        dataset = load_dataset(root, cell["dataset"])
        y = dataset.y_train.numpy()
        flipped = dataset.is_mislabeled.numpy()
        fits = [_ensemble_fit(root, files, y, flipped) for files in cell["ensembles"]]
        worst = min(fits, key=lambda f: f["in_subset_accuracy"])
        flipped_fits = [f["in_subset_accuracy_flipped"] for f in fits]
        worst_flipped = min((f for f in flipped_fits if f is not None), default=None)
        record = {
            "in_subset_accuracy": worst["in_subset_accuracy"],
            "in_subset_accuracy_flipped": worst_flipped,
        }
        reason = fit_problem(record)
        rows.append(
            {
                "dataset": dataset.name,
                "arch": cell["arch"],
                **record,
                "fit": reason is None,
                "fit_reason": reason or "",
            }
        )
    write_parquet(Path(root) / "fits.parquet", pd.DataFrame(rows), FITS)
    return {"unfit": [f"{r['dataset']}/{r['arch']}" for r in rows if not r["fit"]]}


def _scores_of(root: Path, file: str, dataset) -> np.ndarray:
    frame = pd.read_parquet(Path(root) / file, columns=["example_id", "score"])
    by_id = frame.set_index("example_id")["score"]
    return by_id.reindex(dataset.train_ids.numpy()).to_numpy(dtype=np.float64)


def removal_stage(root: Path, args: Args, reporter: Reporter) -> Args:
    """Feldman–Zhang's removal experiment on one (dataset, arch), per condition: the data
    as configured (ranked by the run's own scores) and, with ``clean``, the same examples
    with their original labels (each ranking score computed again on them)."""
    dataset = load_dataset(root, args["dataset"])
    train = TrainConfig.model_validate(args["train"])
    common = {
        "train": train,
        "arch": args["arch"],
        "arch_options": args["arch_options"],
        "seed": args["seed"],
        "device": args["device"],
    }
    parts = []
    for condition in args["conditions"]:
        data = dataset if condition == "as_configured" else clean_labels(dataset)
        if condition == "as_configured":
            rankings = {m: ranked(_scores_of(root, f, data)) for m, f in args["scores"].items()}
        else:
            with reporter.task(f"removal {dataset.name}/{args['arch']}: clean scores", None):
                rankings = {
                    m["method"]: ranked(
                        score_by(
                            m,
                            data,
                            common["arch"],
                            train,
                            args["arch_options"],
                            args["seed"],
                            args["device"],
                        )
                    )
                    for m in args["methods"]
                }
        n_models = args["seeds"] * len(args["ks"]) * (1 + 2 * len(rankings))
        label = f"removal {dataset.name}/{args['arch']} ({condition}, {n_models} models)"
        with reporter.task(label, n_models * train.epochs) as advance:
            frame = removal(data, rankings, args["ks"], args["seeds"], progress=advance, **common)
        parts.append(frame.assign(condition=condition))
    out = pd.concat(parts, ignore_index=True).assign(dataset=dataset.name, arch=args["arch"])
    write_parquet(Path(root) / args["output"], out)
    return {"models": int(len(out))}


def summarization_stage(root: Path, args: Args, reporter: Reporter) -> Args:
    """Dataset summarization on one (dataset, arch): remove the least informative
    fraction by the score, recomputed on what is left, step after step, against random."""
    dataset = load_dataset(root, args["dataset"])
    train = TrainConfig.model_validate(args["train"])
    cfg = args["summarization"]
    label = f"summarization {dataset.name}/{args['arch']} by {cfg['method']['method']}"
    with reporter.task(label, None):
        frame = summarization(
            dataset,
            cfg["method"],
            cfg["fraction"],
            cfg["steps"],
            cfg["seeds"],
            train,
            args["arch"],
            args["arch_options"],
            args["seed"],
            args["device"],
        )
    write_parquet(
        Path(root) / args["output"], frame.assign(dataset=dataset.name, arch=args["arch"])
    )
    return {"steps": int(frame["fraction"].nunique()) - 1}


def score_costs(root: Path, costs: list[Args]) -> pd.DataFrame:
    """Seconds each score cost, from the manifest's stage times: its own fit and score
    stages plus its share of each training stage it reads (the stage's time divided by
    the number of methods reading it). Stages finished by an earlier run of the same
    config keep the time they took then."""
    manifest = json.loads((Path(root) / "manifest.json").read_text())
    seconds = {name: record.get("seconds", np.nan) for name, record in manifest["stages"].items()}
    rows = []
    for cost in costs:
        own = sum(seconds.get(name, np.nan) for name in cost["own"])
        shared = sum(seconds.get(name, np.nan) / readers for name, readers in cost["training"])
        rows.append({k: cost[k] for k in ("dataset", "arch", "method")} | {"seconds": own + shared})
    return pd.DataFrame(rows, columns=["dataset", "arch", "method", "seconds"])


def study_tables(root: Path, args: Args, reporter: Reporter) -> Args:
    """The study's tables: overlap, cross_arch, leakage, applications, removal, dp."""
    from mnemoscope.analysis import (
        accuracy_curve_rows,
        cross_arch_table,
        detection_by_kind,
        group_means,
        leakage_table,
        overlap_table,
        removal_table,
    )
    from mnemoscope.store import APPLICATIONS, CROSS_ARCH, DP, LEAKAGE, OVERLAP, REMOVAL

    root = Path(root)
    study = args["study"]
    scores = pd.read_parquet(root / "scores.parquet")
    examples = pd.read_parquet(root / "examples.parquet")
    fits = pd.read_parquet(root / "fits.parquet")
    boot = {**args["bootstrap"], "seed": args["seed"]}
    written = {}

    def write(name: str, frame: pd.DataFrame, schema) -> None:
        write_parquet(root / f"{name}.parquet", frame, schema)
        written[name] = len(frame)

    with reporter.task("study: overlap, agreement, leakage, applications", None):
        if study["overlap"] is not None:
            write(
                "overlap", overlap_table(scores, fits, ks=study["overlap"]["ks"], **boot), OVERLAP
            )
        if study["cross_arch"] is not None:
            reference = study["cross_arch"]["reference"]
            write(
                "cross_arch",
                cross_arch_table(scores, fits, reference=reference, **boot),
                CROSS_ARCH,
            )
        if study["leakage"] is not None:
            leak = study["leakage"]
            costs = score_costs(root, args["costs"])
            frame = leakage_table(
                scores, fits, costs, reference=leak["reference"], ks=leak["ks"], **boot
            )
            write("leakage", frame, LEAKAGE)
        applications = []
        if study["applications"] is not None:
            kinds = study["applications"]["kinds"]
            applications.append(detection_by_kind(scores, examples, fits, kinds=kinds, **boot))
            for column, application in (("source", "sources"), ("is_undersampled", "undersampled")):
                if column in examples.columns:
                    applications.append(
                        group_means(
                            scores, examples, fits, column=column, application=application, **boot
                        )
                    )
        if args["summarization"]:
            runs = pd.concat([pd.read_parquet(root / f) for f in args["summarization"]])
            applications.append(
                accuracy_curve_rows(runs, fits, "summarization", confidence=boot["confidence"])
            )
        if applications:
            write("applications", pd.concat(applications, ignore_index=True), APPLICATIONS)
        if args["removal"]:
            runs = pd.concat([pd.read_parquet(root / f) for f in args["removal"]])
            frames = [
                removal_table(part.drop(columns="condition"), fits, boot["confidence"]).assign(
                    condition=condition
                )
                for condition, part in runs.groupby("condition", sort=False)
            ]
            write("removal", pd.concat(frames, ignore_index=True), REMOVAL)
        if args.get("dp"):
            runs = pd.concat([pd.read_parquet(root / f) for f in args["dp"]], ignore_index=True)
            write("dp", runs, DP)
    return {"rows": written}
