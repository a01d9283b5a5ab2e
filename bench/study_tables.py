"""Time of the study's analysis tables on a synthetic scores table the size of the default
study: 2 datasets × 5 architectures, 8 memorization + 7 influence methods, n = 1,500
training examples, 1,000 bootstrap resamples. Every score is a shared latent plus noise;
Feldman–Zhang misses 2% of the examples at random, so pairs drop different examples.

    OMP_NUM_THREADS=1 .venv/bin/python bench/study_tables.py [--n 1500] [--n-bootstrap 1000]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd

from mnemoscope.analysis import (
    cross_arch_table,
    detection_by_kind,
    group_means,
    leakage_table,
    overlap_table,
    removal_table,
)

MEMORIZATION = (
    "feldman_zhang",
    "lira",
    "loss",
    "margin",
    "forgetting",
    "cscore",
    "sign_memorization",
    "sample_info",
)
INFLUENCE = ("tracin", "trak", "grad_dot", "grad_cos", "influence_fn", "representer", "loo")
DATASETS = ("mnist1d", "digits")
ARCHS = ("mlp", "cnn", "resnet", "vit", "linear")


def synthetic(n: int, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(scores, examples, removal results) of the default study's shape."""
    rng = np.random.default_rng(seed)
    parts, examples, results = [], [], []
    for dataset in DATASETS:
        latent = rng.normal(size=n)
        for arch in ARCHS:
            for family, methods in (("memorization", MEMORIZATION), ("influence", INFLUENCE)):
                for method in methods:
                    score = latent + rng.normal(size=n)
                    if method == "feldman_zhang":
                        score[rng.random(n) < 0.02] = np.nan
                    parts.append(
                        pd.DataFrame(
                            {
                                "dataset": dataset,
                                "arch": arch,
                                "seed": 0,
                                "family": family,
                                "method": method,
                                "example_id": np.arange(n),
                                "score": score,
                                "stderr": np.nan,
                            }
                        )
                    )
            for method in MEMORIZATION:
                for direction in ("top", "random", "bottom"):
                    for seed in range(3):
                        results.append(
                            (dataset, arch, method, direction, 0.1, n // 10, seed, rng.random())
                        )
        examples.append(
            pd.DataFrame(
                {
                    "dataset": dataset,
                    "example_id": np.arange(n),
                    "split": "train",
                    "is_mislabeled": rng.random(n) < 0.1,
                    "is_canary": rng.random(n) < 0.02,
                    "source": np.where(rng.random(n) < 0.3, "noisy", "clean"),
                }
            )
        )
    columns = ["dataset", "arch", "method", "direction", "k", "n_removed", "seed", "accuracy"]
    return (
        pd.concat(parts, ignore_index=True),
        pd.concat(examples, ignore_index=True),
        pd.DataFrame(results, columns=columns),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1500)
    parser.add_argument("--n-bootstrap", type=int, default=1000)
    args = parser.parse_args()
    scores, examples, results = synthetic(args.n)
    boot = {"n_bootstrap": args.n_bootstrap}
    tables = {
        "overlap": lambda: overlap_table(scores, None, **boot),
        "cross_arch": lambda: cross_arch_table(scores, None, **boot),
        "leakage": lambda: leakage_table(scores, None, None, **boot),
        "detection_by_kind": lambda: detection_by_kind(
            scores, examples, None, ["is_mislabeled", "is_canary"], **boot
        ),
        "group_means": lambda: group_means(scores, examples, None, "source", **boot),
        "removal": lambda: removal_table(results, None),
    }
    total = 0.0
    for name, build in tables.items():
        start = time.perf_counter()
        rows = len(build())
        elapsed = time.perf_counter() - start
        total += elapsed
        print(f"{name:18s} {elapsed:6.1f} s  {rows:5d} rows", flush=True)
    print(f"{'total':18s} {total:6.1f} s")


if __name__ == "__main__":
    main()
