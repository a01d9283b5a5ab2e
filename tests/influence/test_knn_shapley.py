"""KNN-Shapley against brute-force Shapley values of the K-NN utility."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import roc_auc_score

from mnemoscope.config import parse_config
from mnemoscope.errors import ConfigError
from mnemoscope.influence import KNNShapley, KNNShapleyConfig
from mnemoscope.influence.knn_shapley import knn_shapley_values
from mnemoscope.task import Task
from mnemoscope.train import TrainConfig, full_masks, train_ensemble


def _utility(members: list[int], distance: np.ndarray, labels, target_label, k: int) -> float:
    """K-NN likelihood of the target's label from ``members`` (ties by position)."""
    nearest = sorted(members, key=lambda i: (distance[i], i))[:k]
    return sum(labels[i] == target_label for i in nearest) / k


def _brute_force_shapley(distance, labels, target_label, k) -> np.ndarray:
    """Shapley values by the subset formula: Σ_S |S|!(n−|S|−1)!/n! (U(S∪i) − U(S))."""
    n = len(distance)
    values = np.zeros(n)
    for i in range(n):
        others = [j for j in range(n) if j != i]
        for size in range(n):
            weight = math.factorial(size) * math.factorial(n - size - 1) / math.factorial(n)
            for subset in itertools.combinations(others, size):
                gain = _utility([*subset, i], distance, labels, target_label, k) - _utility(
                    list(subset), distance, labels, target_label, k
                )
                values[i] += weight * gain
    return values


def test_matches_brute_force_shapley_on_eight_points():
    rng = np.random.default_rng(0)
    distance = rng.random((8, 3))
    labels = np.array([0, 1, 0, 2, 1, 0, 0, 1])
    targets = np.array([0, 1, 2])
    for k in (1, 3, 10):
        fast = knn_shapley_values(
            torch.from_numpy(distance), torch.from_numpy(labels), torch.from_numpy(targets), k
        ).numpy()
        for t in range(3):
            exact = _brute_force_shapley(distance[:, t], labels, targets[t], k)
            np.testing.assert_allclose(fast[:, t], exact, rtol=0, atol=1e-10)


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 6),
    k=st.integers(1, 7),
    seed=st.integers(0, 2**31),
    ties=st.booleans(),
)
def test_matches_brute_force_for_generated_sets_with_ties(n, k, seed, ties):
    rng = np.random.default_rng(seed)
    # few distinct distances make ties, broken by training position in both
    distance = rng.integers(0, 3, n).astype(float) if ties else rng.random(n)
    labels = rng.integers(0, 2, n)
    fast = knn_shapley_values(
        torch.from_numpy(distance)[:, None], torch.from_numpy(labels), torch.tensor([1]), k
    ).numpy()[:, 0]
    exact = _brute_force_shapley(distance, labels, 1, k)
    np.testing.assert_allclose(fast, exact, rtol=0, atol=1e-10)
    # efficiency: the values share out exactly the utility of the whole set
    assert fast.sum() == pytest.approx(_utility(list(range(n)), distance, labels, 1, k), abs=1e-12)


@pytest.fixture(scope="module")
def model(digits_small):
    return train_ensemble(
        "mlp",
        digits_small,
        full_masks(1, digits_small.n_train),
        TrainConfig(epochs=10, batch_size=32, lr=0.05),
        seed=0,
    )


def test_estimator_blocks_self_and_test_mean_are_one_computation(model, digits_small):
    data = digits_small
    estimator = KNNShapley(KNNShapleyConfig(k=5)).fit({"model": model}, data, Task())
    features = estimator.train_features_
    assert features.shape == (data.n_train, 128)  # the MLP's last hidden layer
    whole = estimator.influence_matrix(data.x_test, data.y_test)
    # a budget of three targets per block assembles the same matrix
    budget = 5 * 8 * data.n_train * 3
    blocks = list(estimator.influence(data.x_test, data.y_test, budget))
    assert {b.targets.stop - b.targets.start for b in blocks} == {3}
    assembled = torch.zeros_like(whole)
    for block in blocks:
        assembled[block.train, block.targets] = block.values
    torch.testing.assert_close(assembled, whole, rtol=0, atol=1e-12)
    # efficiency per target: Σ_i values = fraction of the K nearest with the target's label
    distances = torch.cdist(estimator._features(data.x_test), features)
    nearest = distances.argsort(dim=1, stable=True)[:, :5]
    utility = (data.y_train[nearest] == data.y_test[:, None]).double().mean(1)
    torch.testing.assert_close(whole.sum(0), utility, rtol=0, atol=1e-10)
    # self-influence is the diagonal of train×train; the test-mean score the row means
    train_by_train = estimator.influence_matrix(data.x_train[:7], data.y_train[:7])
    self_scores = estimator.self_influence().score
    np.testing.assert_allclose(self_scores[:7], train_by_train.numpy()[range(7), range(7)])
    mean = KNNShapley(KNNShapleyConfig(k=5, score="test_mean")).fit({"model": model}, data, Task())
    np.testing.assert_allclose(mean.score().score, whole.mean(1).numpy(), atol=1e-12)


def test_flipped_labels_stand_out_in_both_scores(model, digits_small):
    flipped = digits_small.is_mislabeled.numpy()
    aucs = {}
    for features in ("penultimate", "input"):
        for score in ("self", "test_mean"):
            config = KNNShapleyConfig(k=5, features=features, score=score)
            values = KNNShapley(config).fit({"model": model}, digits_small, Task()).score().score
            # high self-value flags a flipped label; a low (negative) data value does too
            aucs[features, score] = roc_auc_score(flipped, values if score == "self" else -values)
    assert min(aucs.values()) > 0.9, aucs  # measured 0.97–0.99


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"k": 0}, "influence.0.knn_shapley.k: Input should be greater than or equal to 1"),
        ({"k": 2.5}, "influence.0.knn_shapley.k: Input should be a valid integer"),
        ({"k": "5"}, "influence.0.knn_shapley.k: Input should be a valid integer"),
        ({"features": "logits"}, "influence.0.knn_shapley.features: Input should be"),
        ({"score": "mean"}, "influence.0.knn_shapley.score: Input should be"),
        ({"neighbours": 3}, "influence.0.knn_shapley.neighbours: unknown key"),
    ],
)
def test_bad_config_is_one_line_naming_the_field(entry, message):
    config = {
        "datasets": [{"name": "digits"}],
        "archs": ["mlp"],
        "influence": [{"method": "knn_shapley", **entry}],
    }
    with pytest.raises(ConfigError) as caught:
        parse_config(config)
    assert message in str(caught.value)
    assert len(str(caught.value).splitlines()) == 1
