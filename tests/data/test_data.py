"""Built-in datasets: shapes, stratified seeded splits, label noise, fingerprints, validation."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from mnemoscope.data import BUILTIN, Dataset, flip_labels, prepare
from mnemoscope.errors import DataError


@pytest.mark.parametrize(
    ("name", "shape", "kind", "classes"),
    [
        ("digits", (1, 8, 8), "image", 10),
        ("mnist1d", (1, 40), "sequence", 10),
        ("breast_cancer", (30,), "tabular", 2),
        ("blobs", (10,), "tabular", 5),
    ],
)
def test_builtin_shapes_and_split(name, shape, kind, classes):
    data = prepare(name, seed=0, label_noise=0.1, n_samples=500)
    assert data.input_shape == shape and data.kind == kind and data.n_classes == classes
    assert data.n_train + data.n_test == 500
    assert abs(data.n_test - 100) <= 1
    # stratified: class proportions agree between splits
    train_freq = np.bincount(data.y_train_original.numpy(), minlength=classes) / data.n_train
    test_freq = np.bincount(data.y_test.numpy(), minlength=classes) / data.n_test
    assert np.abs(train_freq - test_freq).max() < 0.05
    assert set(data.train_ids.tolist()).isdisjoint(data.test_ids.tolist())


def test_label_noise_flips_exactly_the_fraction_to_other_classes():
    data = prepare("digits", seed=3, label_noise=0.1)
    flipped = data.is_mislabeled
    assert int(flipped.sum()) == round(0.1 * data.n_train)
    assert (data.y_train[flipped] != data.y_train_original[flipped]).all()
    assert (data.y_train[~flipped] == data.y_train_original[~flipped]).all()
    assert prepare("digits", seed=3, label_noise=0.0).is_mislabeled.sum() == 0


def test_flip_labels_reaches_every_other_class():
    labels = np.zeros(3000, dtype=np.int64)
    noisy = flip_labels(labels, 4, 1.0, np.random.default_rng(0))
    counts = np.bincount(noisy, minlength=4)
    assert counts[0] == 0 and counts[1:].min() > 900  # uniform over the 3 other classes


def test_seeded_and_fingerprinted():
    a, b = prepare("blobs", seed=1, label_noise=0.1), prepare("blobs", seed=1, label_noise=0.1)
    assert a.fingerprint == b.fingerprint
    assert prepare("blobs", seed=2, label_noise=0.1).fingerprint != a.fingerprint
    assert prepare("blobs", seed=1, label_noise=0.2).fingerprint != a.fingerprint


def test_mnist1d_leaves_global_rngs_alone():
    np.random.seed(123)
    random.seed(123)
    expected_np, expected_py = np.random.rand(), random.random()
    np.random.seed(123)
    random.seed(123)
    prepare("mnist1d", seed=0, n_samples=100)
    assert np.random.rand() == expected_np and random.random() == expected_py


def test_blobs_have_a_long_tail_of_small_subclusters():
    x, y = BUILTIN["blobs"].load(1500, 0)
    assert len(y) == 1500 and set(np.unique(y)) == set(range(5))
    # singletons exist: some points are far from every other point of their class
    from scipy.spatial.distance import cdist

    same = y[:, None] == y[None, :]
    d = np.where(same & ~np.eye(len(y), dtype=bool), cdist(x, x), np.inf).min(1)
    assert (d > 3.0).sum() >= 5


def _tensors(data: Dataset, **changes) -> dict[str, torch.Tensor]:
    tensors = data.tensors()
    tensors.update(changes)
    return tensors


def test_validation_messages(digits_small):
    make = lambda **c: Dataset.from_tensors("d", "image", 10, _tensors(digits_small, **c))  # noqa: E731
    nan_x = digits_small.x_train.clone()
    nan_x[0, 0, 0, 0] = float("nan")
    with pytest.raises(DataError, match="NaN"):
        make(x_train=nan_x)
    bad_y = digits_small.y_train.clone()
    bad_y[0] = 10
    with pytest.raises(DataError, match=r"labels must lie in \[0, 10\)"):
        make(y_train=bad_y)
    with pytest.raises(DataError, match="test split is empty"):
        make(
            x_test=digits_small.x_test[:0],
            y_test=digits_small.y_test[:0],
            test_ids=digits_small.test_ids[:0],
        )
    with pytest.raises(DataError, match="unique"):
        make(test_ids=digits_small.train_ids[: digits_small.n_test])
    with pytest.raises(DataError, match="unknown dataset"):
        prepare("cifar10", seed=0)


def test_examples_frame(digits_small):
    frame = digits_small.examples_frame()
    assert list(frame.columns) == [
        "dataset",
        "example_id",
        "split",
        "label",
        "original_label",
        "is_mislabeled",
        "is_canary",
        "is_noisy_input",
        "is_occluded",
        "is_adversarial",
        "source",
        "is_undersampled",
    ]
    assert not frame["is_canary"].any()  # no canaries asked for
    assert len(frame) == digits_small.n_train + digits_small.n_test
    assert frame["is_mislabeled"].sum() == int(digits_small.is_mislabeled.sum())
    assert not frame.loc[frame["split"] == "test", "is_mislabeled"].any()
