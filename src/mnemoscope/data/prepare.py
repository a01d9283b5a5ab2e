"""From a dataset spec (built-in or files) to a :class:`Dataset`: split, label noise, scaling."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.model_selection import train_test_split

from mnemoscope.data.builtin import BUILTIN
from mnemoscope.data.dataset import Dataset, Kind
from mnemoscope.data.files import FilePool, FileSource, load_pool, normalise
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


def _check_split(
    name: str, y: np.ndarray, test_fraction: float, hint: str = "raise n_samples"
) -> None:
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
            f"{test_fraction:g} cannot leave it both a test and a training example; {hint}"
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


@dataclass(frozen=True)
class Layout:
    """What :func:`prepare` will make of a dataset spec, known before it is built."""

    kind: Kind
    input_shape: tuple[int, ...]
    n_classes: int
    n_train: int
    n_test: int


def _subsample(where: str, y: np.ndarray, n: int, seed: int, n_classes: int) -> np.ndarray:
    """Sorted positions of ``n`` of the labels ``y``, drawn stratified and seeded."""
    if n >= len(y):
        return np.arange(len(y))
    try:
        keep, _ = train_test_split(np.arange(len(y)), train_size=n, stratify=y, random_state=seed)
    except ValueError as error:
        raise DataError(
            f"{where}: n_samples {n} cannot be drawn stratified from "
            f"{len(y)} examples of {n_classes} classes ({_first_line(error)})"
        ) from None
    return np.sort(keep)


def _given_split_sizes(n_train: int, n_test: int, n_samples: int | None) -> tuple[int, int]:
    """Examples kept of a training file and a test file: ``n_samples`` in all, shared in
    the files' proportion (all of both without ``n_samples``)."""
    if n_samples is None or n_samples >= n_train + n_test:
        return n_train, n_test
    kept_train = round(n_samples * n_train / (n_train + n_test))
    return kept_train, n_samples - kept_train


def layout(
    name: str,
    *,
    test_fraction: float = 0.2,
    n_samples: int | None = None,
    source: FileSource | None = None,
) -> Layout:
    """Kind, input shape, classes and split sizes of the dataset :func:`prepare` would
    build; a built-in one is not generated, a file source is read and checked (so a bad
    file fails here, before a run writes anything)."""
    if source is None:
        if name not in BUILTIN:
            raise DataError(f"unknown dataset '{name}'; built-in datasets: {sorted(BUILTIN)}")
        spec = BUILTIN[name]
        n = spec.pool_size(n_samples)
        n_test = math.ceil(test_fraction * n)
        return Layout(spec.kind, spec.input_shape, spec.n_classes, n - n_test, n_test)
    return _file_layout(load_pool(source), source.path, test_fraction, n_samples)


def _file_layout(pool: FilePool, where: str, test_fraction: float, n_samples: int | None) -> Layout:
    """The layout of a file pool, after the checks that need no seed."""
    shape = tuple(pool.x.shape[1:])
    if pool.y_test is not None:
        sizes = _given_split_sizes(len(pool.y), len(pool.y_test), n_samples)
        for size, split in zip(sizes, ("training", "test"), strict=True):
            if size < pool.n_classes:
                raise DataError(
                    f"{where}: n_samples {n_samples} leaves {size} {split} examples for "
                    f"{pool.n_classes} classes (at least one each is needed)"
                )
        return Layout(pool.kind, shape, pool.n_classes, *sizes)
    n = min(n_samples or len(pool.y), len(pool.y))
    if n < pool.n_classes:
        raise DataError(f"{where}: n_samples {n} is fewer than the {pool.n_classes} classes")
    _check_split(where, pool.y, test_fraction, hint="give that class more examples")
    n_test = math.ceil(test_fraction * n)
    return Layout(pool.kind, shape, pool.n_classes, n - n_test, n_test)


def prepare(
    name: str,
    *,
    seed: int,
    label_noise: float = 0.0,
    test_fraction: float = 0.2,
    n_samples: int | None = None,
    source: FileSource | None = None,
) -> Dataset:
    """Build a dataset: seeded stratified split, then seeded label noise on train.

    Built-in (``source`` None): example ids are positions in the generated pool, so
    they are stable for a given ``(name, seed, n_samples)``; tabular features are
    standardised with the training split's mean and standard deviation.

    From files (``source``): example ids are row numbers in the training file, and
    ``n_train_file + row`` in a test file; a test split the files provide is used as
    it is (``test_fraction`` is then unused) and ``n_samples`` is drawn from both,
    stratified, in their proportion; inputs are scaled as ``source.normalize`` says
    (:func:`~mnemoscope.data.files.normalise`).
    """
    if source is None:
        if name not in BUILTIN:
            raise DataError(f"unknown dataset '{name}'; built-in datasets: {sorted(BUILTIN)}")
        spec = BUILTIN[name]
        kind, n_classes, where = spec.kind, spec.n_classes, name
        x, y = spec.load(n_samples, seed)
        keep = _subsample(where, y, n_samples or len(y), seed, n_classes)
        x, y = x[keep], y[keep]
        ids = np.arange(len(y), dtype=np.int64)
        normalize, pixels = ("standard" if kind == "tabular" else "none"), False
    else:
        pool = load_pool(source)
        _file_layout(pool, source.path, test_fraction, n_samples)
        kind, n_classes, where = pool.kind, pool.n_classes, source.path
        normalize, pixels = source.normalize, pool.pixels
        x, y = pool.x, pool.y
        if pool.x_test is None:
            ids = _subsample(where, y, n_samples or len(y), seed, n_classes)
            x, y = x[ids], y[ids]
    if source is None or pool.x_test is None:
        _check_split(where, y, test_fraction)
        try:
            train_pos, test_pos = train_test_split(
                np.arange(len(y)), test_size=test_fraction, stratify=y, random_state=seed
            )
        except ValueError as error:
            raise DataError(
                f"{where}: test_fraction {test_fraction:g} of {len(y)} examples cannot be "
                f"split stratified ({_first_line(error)}); change test_fraction or n_samples"
            ) from None
        train_pos, test_pos = np.sort(train_pos), np.sort(test_pos)
        _check_classes(where, y, y[train_pos], y[test_pos], test_fraction)
        x_train, y_train, train_ids = x[train_pos], y[train_pos], ids[train_pos]
        x_test, y_test, test_ids = x[test_pos], y[test_pos], ids[test_pos]
    else:
        n_train, n_test = _given_split_sizes(len(pool.y), len(pool.y_test), n_samples)
        train_ids = _subsample(where, pool.y, n_train, seed, n_classes)
        test_pos = _subsample(where, pool.y_test, n_test, seed, n_classes)
        x_train, y_train = pool.x[train_ids], pool.y[train_ids]
        x_test, y_test = pool.x_test[test_pos], pool.y_test[test_pos]
        test_ids = len(pool.y) + test_pos
    x_train, x_test = normalise(x_train, x_test, normalize, pixels)
    rng = np.random.default_rng([seed, 0x4E015E])
    noisy = flip_labels(y_train, n_classes, label_noise, rng)
    return Dataset(
        name=name,
        kind=kind,
        n_classes=n_classes,
        x_train=torch.from_numpy(np.ascontiguousarray(x_train, dtype=np.float32)),
        y_train=torch.from_numpy(noisy),
        y_train_original=torch.from_numpy(np.ascontiguousarray(y_train, dtype=np.int64)),
        train_ids=torch.from_numpy(np.ascontiguousarray(train_ids, dtype=np.int64)),
        x_test=torch.from_numpy(np.ascontiguousarray(x_test, dtype=np.float32)),
        y_test=torch.from_numpy(np.ascontiguousarray(y_test, dtype=np.int64)),
        test_ids=torch.from_numpy(np.ascontiguousarray(test_ids, dtype=np.int64)),
    )
