"""Training-dynamics proxies: their definitions on known records, and planted flipped labels."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score
from torch.nn import functional as F

from mnemoscope.estimator import PlanContext
from mnemoscope.influence import GradDot, GradDotConfig
from mnemoscope.memorization import CumulativeSampleLoss, FinalLoss, Forgetting, NegativeMargin
from mnemoscope.memorization.training_dynamics import (
    CSLConfig,
    FinalLossConfig,
    ForgettingConfig,
    MarginConfig,
)
from mnemoscope.runner.plan import ensemble_specs
from mnemoscope.task import Task
from mnemoscope.train import TrainConfig, TrainedEnsemble, full_masks, train_ensemble


class _Pool:
    def __init__(self, labels: list[int]) -> None:
        self.y_train = torch.tensor(labels)
        self.train_ids = torch.arange(100, 100 + len(labels))


def _records() -> TrainedEnsemble:
    """Two models, four epochs, three examples, two classes, with known records."""
    correct = torch.tensor(
        [
            [[1, 0, 0], [0, 1, 0], [1, 0, 0], [0, 1, 0]],  # model 0
            [[1, 1, 0], [1, 1, 0], [1, 0, 0], [1, 1, 0]],  # model 1
        ],
        dtype=torch.bool,
    )
    loss = torch.arange(24, dtype=torch.float32).view(2, 4, 3) / 10
    logits = torch.tensor(
        [[[2.0, 0.0], [0.0, 1.0], [1.0, 3.0]], [[1.0, 0.5], [0.0, 0.0], [2.0, 0.0]]]
    )
    return TrainedEnsemble(
        "logreg",
        (2,),
        2,
        {},
        torch.ones(2, 3, dtype=torch.bool),
        loss,
        correct,
        logits,
        torch.zeros(2, 1, 2),
    )


def _score(cls, config, ensemble=None, labels=(0, 1, 0)):
    estimator = cls(config).fit({"models": ensemble or _records()}, _Pool(list(labels)), Task())
    return estimator.score()


def test_definitions_on_known_records():
    records = _records()
    csl = _score(CumulativeSampleLoss, CSLConfig(n_models=2))
    np.testing.assert_allclose(csl.score, records.train_loss.double().sum(1).mean(0).numpy())
    assert list(csl.example_ids) == [100, 101, 102] and csl.stderr is not None
    # forgetting: model 0: ex0 1→0 twice = 2, ex1 0→1→0→1 once = 1, ex2 never right = E = 4
    #             model 1: ex0 never forgotten = 0, ex1 1,1,0,1 once = 1, ex2 never right = 4
    forgetting = _score(Forgetting, ForgettingConfig(n_models=2))
    np.testing.assert_allclose(forgetting.score, [1.0, 1.0, 4.0])
    labels = torch.tensor([0, 1, 0])
    final = _score(FinalLoss, FinalLossConfig(n_models=2))
    expected = torch.stack(
        [F.cross_entropy(z, labels, reduction="none") for z in records.train_logits]
    )
    np.testing.assert_allclose(final.score, expected.double().mean(0).numpy(), rtol=1e-6)
    margin = _score(NegativeMargin, MarginConfig(n_models=2))
    # model 0 margins: 2, 1, -2 ; model 1: 0.5, 0, 2  → minus the mean
    np.testing.assert_allclose(margin.score, [-1.25, -0.5, 0.0])


def test_with_one_model_they_share_the_attributors_training():
    context = PlanContext(n_train=50, epochs=5, seed=0)
    estimators = [
        CumulativeSampleLoss(CSLConfig()),
        Forgetting(ForgettingConfig()),
        FinalLoss(FinalLossConfig()),
        NegativeMargin(MarginConfig()),
        GradDot(GradDotConfig()),
    ]
    specs, _ = ensemble_specs(estimators, context)
    assert len(specs) == 1


@pytest.fixture(scope="module")
def full_mlp(digits_small):
    config = TrainConfig(epochs=30, batch_size=32, lr=0.05)
    masks = full_masks(1, digits_small.n_train)
    return train_ensemble("mlp", digits_small, masks, config, seed=0), digits_small


@pytest.mark.parametrize(
    ("cls", "config", "floor"),
    [
        # measured on this setup: 0.99, 0.87, 0.91, 0.91
        (CumulativeSampleLoss, CSLConfig(), 0.95),
        (Forgetting, ForgettingConfig(), 0.8),
        (FinalLoss, FinalLossConfig(), 0.8),
        (NegativeMargin, MarginConfig(), 0.8),
    ],
)
def test_flipped_labels_stand_out(full_mlp, cls, config, floor):
    model, data = full_mlp
    scores = cls(config).fit({"models": model}, data, Task()).score()
    auc = roc_auc_score(data.is_mislabeled.numpy(), scores.score)
    assert auc >= floor, (cls.name, auc)
