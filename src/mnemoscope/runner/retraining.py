"""The study's retraining experiments: remove examples by a score, retrain, measure.

- **Removal** (Feldman & Zhang 2020, §4 and Fig. 3): remove the top-k training examples
  by a memorization (or influence) score, a random k, or the bottom-k; retrain R models
  on each remaining set; compare test accuracy. Removing highly memorized examples
  costs more accuracy than removing random ones when they are useful atypical examples
  (the long tail), and less – or helps – when they are mislabeled.
- **Summarization** (Harutyunyan et al. 2021, "Estimating informativeness of samples
  with smooth unique information", §5): remove the least informative fraction,
  recompute the score on what is left, repeat; compare with random removal of the
  same numbers.

Every model of one seed starts from the same initial weights and sees the examples it
keeps in the same order (``init`` and ``order`` ``'shared'``), so the directions are
compared paired, seed by seed; seed r of another direction differs only in the
examples removed. Scores computed inside an experiment (the clean condition, every
summarization step) train the ensembles their estimator declares, as a run would.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import fields, replace
from typing import Any

import numpy as np
import pandas as pd
import torch

from mnemoscope.data import Dataset
from mnemoscope.estimator import REGISTRY, PlanContext
from mnemoscope.task import Task
from mnemoscope.train import TrainConfig, derive_seed, train_ensemble

_RANDOM, _SEEDS, _ESTIMATOR = 11, 12, 13  # seed streams of the experiments


def clean_labels(dataset: Dataset) -> Dataset:
    """The same examples with their original labels: no flipped label left."""
    return replace(dataset, y_train=dataset.y_train_original.clone())


def keep_examples(dataset: Dataset, keep: np.ndarray) -> Dataset:
    """``dataset`` with only the training rows ``keep`` (sorted indices), ids kept: every
    per-training-example tensor is restricted; the canaries' metadata is dropped (the
    kept canaries stay in the data, as inputs and labels)."""
    index = torch.as_tensor(np.sort(keep), dtype=torch.long)
    n = dataset.n_train
    rows = {
        f.name: getattr(dataset, f.name)[index]
        for f in fields(dataset)
        if "test" not in f.name
        and isinstance(getattr(dataset, f.name), torch.Tensor)
        and getattr(dataset, f.name).shape[:1] == (n,)
    }
    return replace(dataset, canaries=None, **rows)


def score_by(
    method: dict[str, Any],
    dataset: Dataset,
    arch: str,
    train: TrainConfig,
    arch_options: dict[str, Any],
    seed: int,
    device: str,
) -> np.ndarray:
    """``[n]`` scores of the registered method ``method`` (a config entry) on
    ``dataset``, training the ensembles it declares; NaN where it gives none."""
    cls = REGISTRY[method["method"]]
    estimator = cls(cls.config_class.model_validate(method))
    context = PlanContext(dataset.n_train, train.epochs, derive_seed(seed, _ESTIMATOR))
    ensembles = {}
    for i, (role, spec) in enumerate(sorted(estimator.ensembles(context).items())):
        ensembles[role] = train_ensemble(
            arch,
            dataset,
            spec.masks,
            train,
            seed=derive_seed(seed, _ESTIMATOR, i),
            checkpoint_epochs=spec.checkpoint_epochs,
            init=spec.init,
            order=spec.order,
            keep_initial=spec.keep_initial,
            device=device,
            arch_options=arch_options,
        )
    estimator.fit(ensembles, dataset, Task.from_train(train), device)
    scores = estimator.score()
    by_id = pd.Series(scores.score, index=scores.example_ids)
    return by_id.reindex(dataset.train_ids.numpy()).to_numpy(dtype=np.float64)


def ranked(score: np.ndarray) -> np.ndarray:
    """Indices of the finite scores from the highest to the lowest (ties: lower index
    first); examples without a score are never chosen."""
    finite = np.flatnonzero(np.isfinite(score))
    return finite[np.lexsort((finite, -score[finite]))]


def test_accuracy(
    dataset: Dataset,
    arch: str,
    masks: torch.Tensor,
    train: TrainConfig,
    arch_options: dict[str, Any],
    seed: int,
    device: str,
    progress: Callable[[int], None] | None = None,
) -> np.ndarray:
    """``[M]`` test accuracy of M models, model m trained on ``masks[m]``, all from the
    same initial weights and data order (those of ``seed``)."""
    trained = train_ensemble(
        arch,
        dataset,
        masks,
        train,
        seed=seed,
        init="shared",
        order="shared",
        device=device,
        progress=progress,
        arch_options=arch_options,
    )
    right = trained.test_logits.argmax(-1) == dataset.y_test  # [M, n_test]
    return right.double().mean(1).numpy()


def removal(
    dataset: Dataset,
    rankings: dict[str, np.ndarray],
    ks: list[float],
    seeds: int,
    train: TrainConfig,
    arch: str,
    arch_options: dict[str, Any],
    seed: int,
    device: str,
    progress: Callable[[int], None] | None = None,
) -> pd.DataFrame:
    """Test accuracy after removing the top-k, bottom-k (by each ranking: indices from
    the highest score down, :func:`ranked`) and a random k, for each k of ``ks``
    (fractions of the training set), ``seeds`` models each.

    Returns rows ``method, direction ('top' | 'random' | 'bottom'), k, n_removed, seed,
    accuracy``; the random rows (one draw per k and seed, shared by the methods) appear
    under every method.
    """
    n = dataset.n_train
    rows, masks = [], []
    for r in range(seeds):
        rng = np.random.default_rng(derive_seed(seed, _RANDOM, r))
        for k in ks:
            m = max(1, int(round(k * n)))
            removed = {"random": rng.permutation(n)[:m]}
            for method, order in rankings.items():
                removed[f"top:{method}"] = order[:m]
                removed[f"bottom:{method}"] = order[::-1][:m]
            for name, index in removed.items():
                mask = torch.ones(n, dtype=torch.bool)
                mask[torch.as_tensor(np.ascontiguousarray(index), dtype=torch.long)] = False
                masks.append(mask)
                rows.append({"name": name, "k": k, "n_removed": len(index), "seed": r})
    per_seed = len(rows) // seeds
    accuracy = np.concatenate(
        [
            test_accuracy(
                dataset,
                arch,
                torch.stack(masks[r * per_seed : (r + 1) * per_seed]),
                train,
                arch_options,
                derive_seed(seed, _SEEDS, r),
                device,
                progress,
            )
            for r in range(seeds)
        ]
    )
    frame = pd.DataFrame(rows).assign(accuracy=accuracy)
    out = []
    for method in rankings:
        for direction in ("top", "random", "bottom"):
            name = "random" if direction == "random" else f"{direction}:{method}"
            part = frame[frame["name"] == name].drop(columns="name")
            out.append(part.assign(method=method, direction=direction))
    columns = ["method", "direction", "k", "n_removed", "seed", "accuracy"]
    return pd.concat(out, ignore_index=True)[columns]


def summarization(
    dataset: Dataset,
    method: dict[str, Any],
    fraction: float,
    steps: int,
    seeds: int,
    train: TrainConfig,
    arch: str,
    arch_options: dict[str, Any],
    seed: int,
    device: str,
    progress: Callable[[int], None] | None = None,
) -> pd.DataFrame:
    """Test accuracy as the least informative ``fraction`` of the training set is
    removed ``steps`` times (the score recomputed on the examples left before each
    step), against random removal of the same numbers (nested random subsets).

    Returns rows ``method, direction ('least_informative' | 'random'), fraction (removed
    so far), n_removed, seed, accuracy``; fraction 0 (the full set) under both.
    """
    n = dataset.n_train
    chunk = max(1, int(round(fraction * n)))
    kept = np.arange(n)
    sets = {("least_informative", 0): kept, ("random", 0): kept}
    shuffled = np.random.default_rng(derive_seed(seed, _RANDOM, 0x5E)).permutation(n)
    for step in range(1, steps + 1):
        if len(kept) - chunk < dataset.n_classes:
            break
        score = score_by(
            method, keep_examples(dataset, kept), arch, train, arch_options, seed, device
        )
        order = ranked(score)  # highest first; NaN never removed
        least = np.ascontiguousarray(order[::-1][:chunk])
        kept = np.delete(kept, least)
        sets[("least_informative", step)] = kept
        sets[("random", step)] = np.sort(shuffled[chunk * step :])
    names = list(sets)
    masks = torch.zeros(len(names), n, dtype=torch.bool)
    for row, name in enumerate(names):
        masks[row, torch.as_tensor(sets[name], dtype=torch.long)] = True
    rows = []
    for r in range(seeds):
        accuracy = test_accuracy(
            dataset,
            arch,
            masks,
            train,
            arch_options,
            derive_seed(seed, _SEEDS, r),
            device,
            progress,
        )
        for (direction, step), acc in zip(names, accuracy, strict=True):
            rows.append(
                {
                    "method": method["method"],
                    "direction": direction,
                    "fraction": step * chunk / n,
                    "n_removed": n - len(sets[(direction, step)]),
                    "seed": r,
                    "accuracy": float(acc),
                }
            )
    return pd.DataFrame(rows)
