"""Feldman–Zhang memorization of the full digits training split (mlp) to a worst-case
standard error ≤ 0.05: how many models that takes, how long, and models per second.

K is the smallest number of models whose masks give every example a worst-case
Agresti–Caffo stderr (both proportions at 1/2) of at most ``--stderr``; the engine
trains them in chunks and the scores are computed as the runner does. For scale, the
same models are also trained one after another with a plain nn.Module +
torch.optim.SGD loop (defaults: what a user writes; ``bench/ensemble_training.py``),
for ``--baseline-models`` of them, interleaved with engine chunks of the same size,
and models per second are compared in the same run.

    OMP_NUM_THREADS=2 .venv/bin/python bench/memorization.py [--stderr 0.05]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).parent))
from ensemble_training import sequential  # noqa: E402

from mnemoscope.data import prepare  # noqa: E402
from mnemoscope.memorization import FeldmanZhang, FeldmanZhangConfig  # noqa: E402
from mnemoscope.task import Task  # noqa: E402
from mnemoscope.train import TrainConfig, subset_masks, train_ensemble  # noqa: E402
from mnemoscope.train.trained import concatenate_parts  # noqa: E402


def worst_stderr(masks: torch.Tensor) -> float:
    """Largest Agresti–Caffo stderr any example can get from ``masks`` (p̃ = 1/2)."""
    k_in = masks.sum(0).double()
    k_out = masks.shape[0] - k_in
    return float(torch.sqrt(0.25 / (k_in + 2) + 0.25 / (k_out + 2)).max())


def models_needed(n: int, fraction: float, target: float, seed: int) -> int:
    """The smallest K whose masks (row k depends on ``(seed, k)`` only) reach ``target``."""
    k = 16
    while worst_stderr(subset_masks(k, n, fraction, seed)) > target:
        k = int(k * 1.1) + 1
    low, high = k // 2, k
    while low + 1 < high:
        middle = (low + high) // 2
        fine = worst_stderr(subset_masks(middle, n, fraction, seed)) <= target
        low, high = (low, middle) if fine else (middle, high)
    return high


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stderr", type=float, default=0.05)
    parser.add_argument("--fraction", type=float, default=0.5)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--chunk", type=int, default=64)
    parser.add_argument("--baseline-models", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    data = prepare("digits", seed=0, label_noise=0.1)
    config = TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        momentum=0.9,
        weight_decay=5e-4,
    )
    k = models_needed(data.n_train, args.fraction, args.stderr, seed=1)
    masks = subset_masks(k, data.n_train, args.fraction, 1)
    print(
        f"digits: {data.n_train} training examples, 10% flipped labels; mlp, {args.epochs} "
        f"epochs, batch {args.batch_size}, lr {args.lr}, fraction {args.fraction}; torch threads "
        f"{torch.get_num_threads()}; K = {k} models for worst-case stderr ≤ {args.stderr}"
    )

    # Same-run comparison on a few models: engine chunk vs the plain loop, interleaved.
    few = masks[: args.baseline_models]
    engine_rates, loop_rates = [], []
    for _ in range(args.repeats):
        started = time.perf_counter()
        train_ensemble("mlp", data, few, config, seed=2)
        engine_rates.append(len(few) / (time.perf_counter() - started))
        started = time.perf_counter()
        sequential(data, few, config, 2, torch.device("cpu"), None)
        loop_rates.append(len(few) / (time.perf_counter() - started))
    ratios = [e / b for e, b in zip(engine_rates, loop_rates)]

    started = time.perf_counter()
    parts = [
        train_ensemble("mlp", data, masks, config, seed=2, models=range(s, min(s + args.chunk, k)))
        for s in range(0, k, args.chunk)
    ]
    trained = concatenate_parts(parts)  # as the runner joins the parts' files
    elapsed = time.perf_counter() - started
    estimator = FeldmanZhang(FeldmanZhangConfig(n_models=k, subset_fraction=args.fraction))
    scores = estimator.fit({"subsets": trained}, data, Task(config.weight_decay)).score()
    finite = np.isfinite(scores.score)
    auc = roc_auc_score(data.is_mislabeled.numpy()[finite], scores.score[finite])

    def spread(values: list[float]) -> str:
        return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"

    print(
        f"full run: {k} models in {elapsed:.1f} s = {k / elapsed:.2f} models/s (chunks of {args.chunk})"
    )
    print(
        f"scores: worst stderr {np.nanmax(scores.stderr):.4f} (bound {worst_stderr(masks):.4f}); "
        f"{int((~finite).sum())} examples unscored; flipped-label AUC {auc:.3f}"
    )
    print(f"{args.baseline_models} models, {args.repeats} interleaved repetitions, median (range):")
    print(f"  engine      {spread(engine_rates)} models/s")
    print(f"  plain loop  {spread(loop_rates)} models/s  (torch.optim.SGD defaults)")
    print(f"  ratio       {spread(ratios)}×")


if __name__ == "__main__":
    main()
