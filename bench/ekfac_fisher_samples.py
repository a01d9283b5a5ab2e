"""How noisy is the true-Fisher EK-FAC of ``if_ekfac`` for each ``fisher_samples``?

On the digits mlp (the peers benchmark's checkpoint), for m ∈ {1, 4, 16, 64} label draws
per example, fits with two label seeds and compares their scores: Spearman and Pearson of
the self-influences and of the train×target influence on 100 test targets, with the fit's
seconds (median of the two seeds; one torch thread) and the load average.

    .venv/bin/python bench/ekfac_fisher_samples.py [--samples 1,4,16,64]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parent))

from peers_ekfac import N_TARGETS, _digits_mlp  # noqa: E402

from mnemoscope.influence import EKFAC, EKFACConfig  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", default="1,4,16,64")
    args = parser.parse_args()
    torch.set_num_threads(1)
    data, model, task = _digits_mlp("cpu")
    x, y = data.x_test[:N_TARGETS], data.y_test[:N_TARGETS]
    print(
        "| fisher_samples | self Spearman | self Pearson | pairwise Spearman | "
        "pairwise Pearson | fit s |\n|---|---|---|---|---|---|"
    )
    for m in map(int, args.samples.split(",")):
        scores, seconds = [], []
        for seed in (0, 1):
            start = time.perf_counter()
            estimator = EKFAC(EKFACConfig(fisher_samples=m, seed=seed)).fit(
                {"model": model}, data, task
            )
            seconds.append(time.perf_counter() - start)
            matrix = estimator.influence_matrix(x, y).numpy().ravel()
            scores.append((estimator.self_influence().score, matrix))
        (self_a, pairs_a), (self_b, pairs_b) = scores
        row = [
            stats.spearmanr(self_a, self_b).statistic,
            stats.pearsonr(self_a, self_b).statistic,
            stats.spearmanr(pairs_a, pairs_b).statistic,
            stats.pearsonr(pairs_a, pairs_b).statistic,
        ]
        cells = " | ".join(f"{v:.3f}" for v in row)
        print(f"| {m} | {cells} | {statistics.median(seconds):.2f} |", flush=True)
    print(json.dumps({"load_average": os.getloadavg(), "n_train": data.n_train}))


if __name__ == "__main__":
    main()
