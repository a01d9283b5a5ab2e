"""From a dataset spec to a :class:`Dataset`: split, label noise, standardisation."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.model_selection import train_test_split

from mnemoscope.data.builtin import BUILTIN
from mnemoscope.data.dataset import Dataset
from mnemoscope.errors import DataError


def flip_labels(
    labels: np.ndarray, n_classes: int, fraction: float, rng: np.random.Generator
) -> np.ndarray:
    """Flip ``round(fraction · n)`` labels, chosen uniformly, each to a uniformly drawn other class.

    Symmetric label noise as in the mislabel-detection benchmarks of dattri.
    Returns a new ``[n]`` int64 array; ``labels`` is not modified.
    """
    noisy = labels.copy()
    n_flip = int(round(fraction * len(labels)))
    if n_flip == 0:
        return noisy
    chosen = rng.choice(len(labels), size=n_flip, replace=False)
    shift = rng.integers(1, n_classes, size=n_flip)  # never 0: the label always changes
    noisy[chosen] = (labels[chosen] + shift) % n_classes
    return noisy


def prepare(
    name: str,
    *,
    seed: int,
    label_noise: float = 0.0,
    test_fraction: float = 0.2,
    n_samples: int | None = None,
) -> Dataset:
    """Build a built-in dataset: stratified seeded split, then seeded label noise on train.

    Example ids are positions in the generated pool, so they are stable for a
    given ``(name, seed, n_samples)``. Tabular features are standardised with the
    training split's mean and standard deviation.
    """
    if name not in BUILTIN:
        raise DataError(f"unknown dataset '{name}'; built-in datasets: {sorted(BUILTIN)}")
    spec = BUILTIN[name]
    x, y = spec.load(n_samples, seed)
    if n_samples is not None and n_samples < len(y):
        keep, _ = train_test_split(
            np.arange(len(y)), train_size=n_samples, stratify=y, random_state=seed
        )
        x, y = x[np.sort(keep)], y[np.sort(keep)]
    ids = np.arange(len(y), dtype=np.int64)
    train_idx, test_idx = train_test_split(
        ids, test_size=test_fraction, stratify=y, random_state=seed
    )
    train_idx, test_idx = np.sort(train_idx), np.sort(test_idx)
    x_train, x_test = x[train_idx], x[test_idx]
    if spec.kind == "tabular":
        mean, std = x_train.mean(0), x_train.std(0) + 1e-8
        x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
    rng = np.random.default_rng([seed, 0x4E015E])
    y_train = flip_labels(y[train_idx], spec.n_classes, label_noise, rng)
    return Dataset(
        name=name,
        kind=spec.kind,
        n_classes=spec.n_classes,
        x_train=torch.from_numpy(np.ascontiguousarray(x_train, dtype=np.float32)),
        y_train=torch.from_numpy(y_train),
        y_train_original=torch.from_numpy(y[train_idx]),
        train_ids=torch.from_numpy(train_idx),
        x_test=torch.from_numpy(np.ascontiguousarray(x_test, dtype=np.float32)),
        y_test=torch.from_numpy(y[test_idx]),
        test_ids=torch.from_numpy(test_idx),
    )
