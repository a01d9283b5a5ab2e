"""Counterfactual memorization: the formula, the shared ensemble, planted flipped labels."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from mnemoscope.estimator import PlanContext
from mnemoscope.memorization import (
    Counterfactual,
    CounterfactualConfig,
    FeldmanZhang,
    FeldmanZhangConfig,
)
from mnemoscope.runner.plan import ensemble_specs
from mnemoscope.task import Task
from mnemoscope.train import TrainConfig, TrainedEnsemble, train_ensemble


class _Pool:
    def __init__(self, n: int) -> None:
        self.y_train = torch.zeros(n, dtype=torch.long)
        self.train_ids = torch.arange(n)


def _ensemble(prob: list[list[float]], masks: list[list[int]]) -> TrainedEnsemble:
    """Two-class logits whose softmax gives class 0 (the label) probability ``prob``."""
    p = torch.tensor(prob, dtype=torch.float64)
    logits = torch.stack([torch.log(p), torch.log1p(-p)], dim=-1).float()
    k, n = p.shape
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


def _score(ensemble, pool, **config):
    estimator = Counterfactual(CounterfactualConfig(**config))
    return estimator.fit({"subsets": ensemble}, pool, Task()).score()


def test_formula_and_welch_stderr():
    masks = [[1, 1], [1, 0], [0, 1], [0, 0]]
    prob = [[0.9, 0.6], [0.7, 0.2], [0.3, 0.5], [0.1, 0.4]]
    scores = _score(_ensemble(prob, masks), _Pool(2))
    # example 0: in {0.9, 0.7}, out {0.3, 0.1}; example 1: in {0.6, 0.5}, out {0.2, 0.4}
    np.testing.assert_allclose(scores.score, [0.8 - 0.2, 0.55 - 0.3], rtol=1e-6)
    welch = [
        np.sqrt(np.var([0.9, 0.7], ddof=1) / 2 + np.var([0.3, 0.1], ddof=1) / 2),
        np.sqrt(np.var([0.6, 0.5], ddof=1) / 2 + np.var([0.2, 0.4], ddof=1) / 2),
    ]
    np.testing.assert_allclose(scores.stderr, welch, rtol=1e-5)
    neg_loss = _score(_ensemble(prob, masks), _Pool(2), measure="neg_loss")
    expected = np.mean(np.log([0.9, 0.7])) - np.mean(np.log([0.3, 0.1]))
    np.testing.assert_allclose(neg_loss.score[0], expected, rtol=1e-5)


def test_shares_the_feldman_zhang_ensemble_when_fractions_agree():
    context = PlanContext(n_train=100, epochs=3, seed=5)
    same = [
        FeldmanZhang(FeldmanZhangConfig(n_models=8, subset_fraction=0.5)),
        Counterfactual(CounterfactualConfig(n_models=8, subset_fraction=0.5)),
    ]
    assert len(ensemble_specs(same, context)[0]) == 1
    other = [
        FeldmanZhang(FeldmanZhangConfig(n_models=8)),
        Counterfactual(CounterfactualConfig(n_models=8)),
    ]
    assert len(ensemble_specs(other, context)[0]) == 2  # 0.7 vs 0.5: another ensemble


def test_flipped_labels_are_memorized(digits_small):
    config = CounterfactualConfig(n_models=12)
    (spec,) = Counterfactual(config).ensembles(PlanContext(digits_small.n_train, 40, 1)).values()
    train = TrainConfig(epochs=40, batch_size=32, lr=0.05)
    trained = train_ensemble("mlp", digits_small, spec.masks, train, seed=2)
    scores = Counterfactual(config).fit({"subsets": trained}, digits_small, Task()).score()
    finite = np.isfinite(scores.score)
    flipped = digits_small.is_mislabeled.numpy()[finite]
    assert roc_auc_score(flipped, scores.score[finite]) >= 0.9
