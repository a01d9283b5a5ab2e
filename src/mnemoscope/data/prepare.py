"""From a dataset spec to a :class:`Dataset`: split, label noise, standardisation."""

from __future__ import annotations

import math

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


def _first_line(error: Exception) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def _check_split(name: str, y: np.ndarray, test_fraction: float) -> None:
    """:class:`DataError` unless the stratified split can give every class a test and a
    training example: at least two of each class, and as many test (``ceil(test_fraction
    · n)``, as sklearn counts) and training examples as classes."""
    classes, counts = np.unique(y, return_counts=True)
    n = len(y)
    n_test = math.ceil(test_fraction * n)
    n_train = n - n_test
    if counts.min(initial=2) < 2:
        rare = classes[counts.argmin()]
        raise DataError(
            f"{name}: class {rare} has {counts.min()} example of {n}: test_fraction "
            f"{test_fraction:g} cannot leave it both a test and a training example; "
            "raise n_samples"
        )
    if n_test < len(classes) or n_train < len(classes):
        side, count = ("test", n_test) if n_test < len(classes) else ("training", n_train)
        raise DataError(
            f"{name}: test_fraction {test_fraction:g} of {n} examples leaves {count} {side} "
            f"examples for {len(classes)} classes (at least one each is needed); change "
            "test_fraction or n_samples"
        )


def _check_classes(
    name: str, y: np.ndarray, y_train: np.ndarray, y_test: np.ndarray, test_fraction: float
) -> None:
    """:class:`DataError` naming a class the stratified split left out of a side (sklearn
    allots test examples by largest remainder, so a rare class can get none)."""
    for side, labels in (("test", y_test), ("training", y_train)):
        missing = np.setdiff1d(np.unique(y), labels)
        if len(missing):
            raise DataError(
                f"{name}: test_fraction {test_fraction:g} leaves class {missing[0]} without "
                f"{side} examples ({int((y == missing[0]).sum())} of {len(y)} examples); "
                "change test_fraction or n_samples"
            )


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
        try:
            keep, _ = train_test_split(
                np.arange(len(y)), train_size=n_samples, stratify=y, random_state=seed
            )
        except ValueError as error:
            raise DataError(
                f"{name}: n_samples {n_samples} cannot be drawn stratified from "
                f"{len(y)} examples of {spec.n_classes} classes ({_first_line(error)})"
            ) from None
        x, y = x[np.sort(keep)], y[np.sort(keep)]
    ids = np.arange(len(y), dtype=np.int64)
    _check_split(name, y, test_fraction)
    try:
        train_idx, test_idx = train_test_split(
            ids, test_size=test_fraction, stratify=y, random_state=seed
        )
    except ValueError as error:
        raise DataError(
            f"{name}: test_fraction {test_fraction:g} of {len(y)} examples cannot be split "
            f"stratified ({_first_line(error)}); change test_fraction or n_samples"
        ) from None
    train_idx, test_idx = np.sort(train_idx), np.sort(test_idx)
    _check_classes(name, y, y[train_idx], y[test_idx], test_fraction)
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
