"""Feldman–Zhang memorization: the formula, and planted mislabeled examples as ground truth."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from mnemoscope.data import prepare
from mnemoscope.estimator import PlanContext
from mnemoscope.memorization import FeldmanZhang, FeldmanZhangConfig
from mnemoscope.task import Task
from mnemoscope.train import TrainConfig, TrainedEnsemble, train_ensemble


def _score(ensemble, dataset, config=None):
    estimator = FeldmanZhang(config or FeldmanZhangConfig())
    return estimator.fit({"subsets": ensemble}, dataset, Task()).score()


class _Pool:
    """The two attributes of a dataset the estimator reads: labels (all 0) and ids."""

    def __init__(self, n: int) -> None:
        self.y_train = torch.zeros(n, dtype=torch.long)
        self.train_ids = torch.arange(10, 10 + n)


def _ensemble(correct: list[list[int]], masks: list[list[int]]) -> TrainedEnsemble:
    """Final logits that predict the label (0) exactly where ``correct`` is 1."""
    c = torch.tensor(correct, dtype=torch.float)
    k, n = c.shape
    logits = torch.stack([c, 1 - c], dim=-1)  # class 0 wins iff correct
    return TrainedEnsemble(
        "logreg",
        (2,),
        2,
        {},
        torch.tensor(masks, dtype=torch.bool),
        torch.zeros(k, 1, n),
        torch.zeros(k, 1, n, dtype=torch.bool),
        logits,
        torch.zeros(k, 1, 2),
    )


def test_formula_and_stderr():
    # 4 models, 3 examples. Example 0: right whenever seen, wrong otherwise → mem 1.
    # Example 1: always right → 0. Example 2: in {0,1} (1 right), out {2,3} (1 right) → 0.
    masks = [[1, 1, 1], [1, 0, 1], [0, 1, 0], [0, 0, 0]]
    correct = [[1, 1, 1], [1, 1, 0], [0, 1, 1], [0, 1, 0]]
    scores = _score(_ensemble(correct, masks), _Pool(3))
    np.testing.assert_allclose(scores.score, [1.0, 0.0, 0.0])

    # Agresti–Caffo: p̃ = (x+1)/(k+2) per group, variance p̃(1−p̃)/(k+2); never 0
    def term(x, k):
        p = (x + 1) / (k + 2)
        return p * (1 - p) / (k + 2)

    expected = [
        np.sqrt(term(2, 2) + term(0, 2)),  # example 0: in {0,1} both right, out {2,3} none
        np.sqrt(term(2, 2) + term(2, 2)),  # example 1: right everywhere
        np.sqrt(term(1, 2) + term(1, 2)),  # example 2
    ]
    np.testing.assert_allclose(scores.stderr, expected)
    assert (scores.stderr > 0.2).all()  # the Wald formula gave 0 for examples 0 and 1
    assert list(scores.example_ids) == [10, 11, 12]
    assert scores.family == "memorization"


def test_never_held_out_example_gets_nan():
    ensemble = _ensemble([[1, 1], [1, 0]], [[1, 1], [1, 0]])
    scores = _score(ensemble, _Pool(2))
    assert np.isnan(scores.score[0]) and np.isnan(scores.stderr[0])
    assert scores.score[1] == 1.0


def _detection_auc(n_models: int, n_samples: int | None) -> float:
    dataset = prepare("digits", seed=0, label_noise=0.1, n_samples=n_samples)
    config = FeldmanZhangConfig(n_models=n_models)
    (spec,) = FeldmanZhang(config).ensembles(PlanContext(dataset.n_train, 40, seed=1)).values()
    train = TrainConfig(epochs=40, batch_size=32, lr=0.05, weight_decay=5e-4)
    trained = train_ensemble("mlp", dataset, spec.masks, train, seed=2)
    scores = _score(trained, dataset, config)
    finite = np.isfinite(scores.score)  # NaN only where an example was never held out
    assert finite.mean() > 0.9 and np.array_equal(finite, np.isfinite(scores.stderr))
    score, flipped = scores.score[finite], dataset.is_mislabeled.numpy()[finite]
    # flipped labels are memorized: right when seen, wrong (true class predicted) when not
    assert score[flipped].mean() > score[~flipped].mean() + 0.2
    return roc_auc_score(flipped, score)


def test_flipped_labels_are_memorized_ci_size():
    assert _detection_auc(n_models=12, n_samples=600) >= 0.9


@pytest.mark.slow
def test_flipped_labels_are_memorized_full_digits():
    assert _detection_auc(n_models=64, n_samples=None) >= 0.9
