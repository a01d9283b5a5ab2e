"""The study's retraining experiments on planted ground truth: removal directions,
nested summarization sets, clean labels, restricted datasets."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mnemoscope.data import Dataset
from mnemoscope.runner.retraining import (
    clean_labels,
    keep_examples,
    ranked,
    removal,
    summarization,
)
from mnemoscope.train import TrainConfig

TRAIN = TrainConfig(epochs=15, batch_size=32, optimizer="sgd", lr=0.2, momentum=0.9)


def blobs(n_per_class: int = 40, n_classes: int = 4, seed: int = 0) -> Dataset:
    """Well-separated Gaussian blobs: a logistic regression classifies them perfectly
    unless a class is missing from its training set."""
    g = torch.Generator().manual_seed(seed)
    centres = 4 * torch.eye(n_classes, 6)

    def split(n: int, offset: int):
        y = torch.arange(n_classes).repeat_interleave(n)
        x = centres[y] + 0.5 * torch.randn(len(y), 6, generator=g)
        return x, y, torch.arange(offset, offset + len(y))

    x, y, ids = split(n_per_class, 0)
    xt, yt, tids = split(n_per_class // 2, 10_000)
    noisy = y.clone()
    noisy[:3] = (noisy[:3] + 1) % n_classes  # three flipped labels
    return Dataset("blobs", "tabular", x, noisy, y, ids, xt, yt, tids, n_classes)


def test_ranked_orders_high_first_breaks_ties_by_index_and_skips_nan():
    score = np.array([0.5, np.nan, 2.0, 0.5, -1.0])
    assert ranked(score).tolist() == [2, 0, 3, 4]


def test_removing_the_top_of_a_score_that_marks_one_class_removes_that_class():
    data = blobs()
    y = data.y_train_original.numpy()
    # a planted score: class 0 scores highest, class 3 lowest
    score = -y.astype(float) + 0.01 * np.arange(len(y)) / len(y)
    k = 0.25  # exactly one class of four
    frame = removal(
        data, {"planted": ranked(score)}, [k], 2, TRAIN, "logreg", {}, seed=0, device="cpu"
    )
    acc = frame.groupby("direction")["accuracy"].mean()
    # without class 0 (top) or class 3 (bottom) a quarter of the test set is lost;
    # a random quarter leaves every class represented
    assert acc["top"] == pytest.approx(0.75, abs=0.03)
    assert acc["bottom"] == pytest.approx(0.75, abs=0.03)
    assert acc["random"] > 0.95
    assert set(frame["n_removed"]) == {40} and set(frame["seed"]) == {0, 1}
    assert len(frame) == 3 * 2  # directions × seeds


def test_random_removal_is_shared_by_the_methods_and_paired_by_seed():
    data = blobs()
    rng = np.random.default_rng(0)
    rankings = {"a": ranked(rng.normal(size=data.n_train)), "b": ranked(-np.arange(160.0))}
    frame = removal(data, rankings, [0.1, 0.2], 2, TRAIN, "logreg", {}, seed=1, device="cpu")
    random = frame[frame["direction"] == "random"].set_index(["method", "k", "seed"]).sort_index()
    assert (random.loc["a", "accuracy"].to_numpy() == random.loc["b", "accuracy"].to_numpy()).all()
    assert len(frame) == 2 * 3 * 2 * 2


def test_clean_labels_restores_the_original_labels():
    data = blobs()
    assert int(data.is_mislabeled.sum()) == 3
    clean = clean_labels(data)
    assert int(clean.is_mislabeled.sum()) == 0
    assert torch.equal(clean.x_train, data.x_train)


def test_keep_examples_restricts_every_training_tensor_and_keeps_ids():
    data = blobs()
    kept = keep_examples(data, np.array([5, 1, 100]))
    assert kept.train_ids.tolist() == [1, 5, 100]
    assert torch.equal(kept.x_train, data.x_train[[1, 5, 100]])
    assert torch.equal(kept.y_train_original, data.y_train_original[[1, 5, 100]])
    assert torch.equal(kept.x_test, data.x_test)


def test_summarization_removes_the_lowest_scores_step_by_step_and_nested_random_sets():
    data = blobs(n_per_class=20)
    frame = summarization(
        data, {"method": "final_loss"}, 0.25, 2, 2, TRAIN, "logreg", {}, seed=0, device="cpu"
    )
    assert sorted(set(frame["fraction"])) == [0.0, 0.25, 0.5]
    removed = frame.groupby(["direction", "fraction"])["n_removed"].first()
    assert removed[("random", 0.5)] == removed[("least_informative", 0.5)] == 40
    assert removed[("random", 0.0)] == 0
    assert len(frame) == 2 * 3 * 2  # directions × (0 + steps) × seeds
    # the examples a model fits best carry the least information: removing them keeps
    # the classes, so accuracy stays high
    least = frame[(frame["direction"] == "least_informative") & (frame["fraction"] == 0.5)]
    assert least["accuracy"].min() > 0.9
