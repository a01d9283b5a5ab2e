"""Fit and seconds per model of one architecture's training settings, on the default
study's datasets: how much of its own training labels (overall and on the flipped ones)
a small subset ensemble fits, and what each of its models costs.

    .venv/bin/python bench/arch_fit.py ARCH [--options JSON] [--train JSON]
        [--datasets digits mnist1d] [--n-samples N] [--n-models 8] [--fraction 0.5]

``--options`` is the arch's ``arch_options`` entry, ``--train`` its ``arch_train``
entry (both JSON objects); the rest is the default study's (its ``train:`` block, its
datasets with their flipped labels, canaries and corruptions). Each dataset runs the
study's own data and train stages (the ensemble of ``--n-models`` models on random
``--fraction`` subsets, one torch thread; ``--n-samples``: the dataset at that size, e.g.
400 as the demo) in a fresh run directory; the fit is what
``train/fit.py``'s rule reads (``fit_problem``: ≥ 90% overall, ≥ 50% of the flipped
labels), printed beside the seconds per model and the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import torch
import yaml

import mnemoscope as ms
from mnemoscope.runner.default_study import default_study_text
from mnemoscope.train.fit import fit_problem


def candidate_config(
    dataset: str,
    arch: str,
    options: dict,
    train: dict,
    n_models: int,
    fraction: float,
    n_samples: int | None = None,
) -> dict:
    """The default study restricted to ``dataset`` and ``arch`` with one subset ensemble."""
    study = yaml.safe_load(default_study_text())
    arch_train = {**study.get("arch_train", {}).get(arch, {}), **train}
    arch_options = {**study.get("arch_options", {}).get(arch, {}), **options}
    return {
        "name": f"arch-fit-{arch}",
        "seed": study["seed"],
        "device": "cpu",
        "datasets": [
            {**d, "n_samples": n_samples or d["n_samples"]}
            for d in study["datasets"]
            if d["name"] == dataset
        ],
        "archs": [arch],
        "arch_options": {arch: arch_options} if arch_options else {},
        "train": study["train"],
        "arch_train": {arch: arch_train} if arch_train else {},
        "memorization": [
            {"method": "feldman_zhang", "n_models": n_models, "subset_fraction": fraction}
        ],
        "influence": [],
        "executor": {"kind": "local", "threads": 1},
    }


def measure(config: dict) -> dict:
    """Run the config's data and train stages; the train stages' seconds and fit."""
    out = Path(tempfile.mkdtemp(prefix="arch-fit-")) / "run"
    dataset, arch = config["datasets"][0]["name"], config["archs"][0]
    # the scores stage (cheap) names its ensemble's train stages, whatever their keys
    ms.run(config, out, stages=[f"scores/{dataset}/{arch}/feldman_zhang"])
    manifest = json.loads((out / "manifest.json").read_text())
    records = [r for name, r in manifest["stages"].items() if name.startswith("train/")]
    seconds = sum(r["seconds"] for r in records)
    n_models = config["memorization"][0]["n_models"]
    # the parts of one ensemble split its models; weight each part's fit by its models
    weights = [r["record"]["models"][1] - r["record"]["models"][0] for r in records]
    overall = sum(w * r["record"]["fit"]["in_subset_accuracy"] for w, r in zip(weights, records))
    flipped = [r["record"]["fit"]["in_subset_accuracy_flipped"] for r in records]
    fit = {
        "in_subset_accuracy": overall / sum(weights),
        "in_subset_accuracy_flipped": (
            None if None in flipped else sum(w * f for w, f in zip(weights, flipped)) / sum(weights)
        ),
    }
    return {"seconds_per_model": seconds / n_models, "fit": fit, "problem": fit_problem(fit)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("arch")
    parser.add_argument("--options", type=json.loads, default={})
    parser.add_argument("--train", type=json.loads, default={})
    parser.add_argument("--datasets", nargs="+", default=["digits", "mnist1d"])
    parser.add_argument("--n-samples", type=int, default=None)
    parser.add_argument("--n-models", type=int, default=8)
    parser.add_argument("--fraction", type=float, default=0.5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    for dataset in args.datasets:
        config = candidate_config(
            dataset,
            args.arch,
            args.options,
            args.train,
            args.n_models,
            args.fraction,
            args.n_samples,
        )
        load = os.getloadavg()[0]
        result = measure(config)
        fit = result["fit"]
        flipped = fit["in_subset_accuracy_flipped"]
        print(
            f"{dataset:8s} {args.arch:12s} options={json.dumps(config['arch_options'])} "
            f"train={json.dumps(config['arch_train'])} | fit {fit['in_subset_accuracy']:.3f} "
            f"flipped {'-' if flipped is None else f'{flipped:.3f}'} | "
            f"{result['seconds_per_model']:.2f} s/model ({args.n_models} models) | "
            f"load {load:.2f}→{os.getloadavg()[0]:.2f} | {result['problem'] or 'fits'}",
            flush=True,
        )


if __name__ == "__main__":
    main()
