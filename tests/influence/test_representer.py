"""Representer points: the representer theorem holds at the refit's stationary point."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from mnemoscope.config import parse_config
from mnemoscope.errors import ConfigError
from mnemoscope.influence import Representer, RepresenterConfig
from mnemoscope.task import Task
from mnemoscope.train import TrainConfig, full_masks, train_ensemble


@pytest.fixture(scope="module", params=["mlp", "logreg"])
def fitted(request, digits_small):
    model = train_ensemble(
        request.param,
        digits_small,
        full_masks(1, digits_small.n_train),
        TrainConfig(epochs=8, batch_size=32, lr=0.05),
        seed=0,
    )
    estimator = Representer(RepresenterConfig(l2=0.01)).fit({"model": model}, digits_small, Task())
    return model, estimator


def test_refit_logits_are_the_sum_of_representer_values(fitted, digits_small):
    model, estimator = fitted
    data = digits_small
    assert estimator.stationarity_ < 1e-8  # measured 5e-10 (mlp), 3e-9 (logreg)
    # stationarity ∇J = 2λ(W − Σ_i α_i h̃_iᵀ) = 0: the refit weights are a sum over examples
    gap = (estimator.weight_ - estimator.alpha_.T @ estimator.features_).abs().max()
    assert float(gap) <= estimator.stationarity_ / (2 * 0.01) * (1 + 1e-6)
    # Theorem 3.1: so on any input z(x) = Σ_i α_i ⟨h̃_i, h̃(x)⟩
    for x in (data.x_test, data.x_train[:50]):
        features = estimator._features(x)
        refit_logits = features @ estimator.weight_.T
        representer_logits = (features @ estimator.features_.T) @ estimator.alpha_
        scale = float(refit_logits.abs().max())
        assert scale > 1.0  # the identity is not between two zeros
        torch.testing.assert_close(representer_logits, refit_logits, rtol=0, atol=1e-6 * scale)
    # the refit is a sensible classifier of the labels trained on
    accuracy = (estimator.features_ @ estimator.weight_.T).argmax(1).eq(data.y_train)
    assert float(accuracy.double().mean()) > 0.8


def test_influence_is_each_examples_share_of_the_true_class_logit(fitted, digits_small):
    _, estimator = fitted
    data = digits_small
    matrix = estimator.influence_matrix(data.x_test, data.y_test)
    assert matrix.shape == (data.n_train, data.n_test)
    features = estimator._features(data.x_test)
    true_logit = (features @ estimator.weight_.T).gather(1, data.y_test[:, None])[:, 0]
    torch.testing.assert_close(matrix.sum(0), true_logit, rtol=0, atol=1e-5)
    i, t = 17, 3
    expected = estimator.alpha_[i, data.y_test[t]] * (estimator.features_[i] @ features[t])
    assert float(matrix[i, t]) == pytest.approx(float(expected), rel=1e-12)
    # blocks under a budget of four targets give the same matrix
    blocks = list(estimator.influence(data.x_test, data.y_test, 2 * 8 * data.n_train * 4))
    assert {b.targets.stop - b.targets.start for b in blocks} == {4}
    assembled = torch.zeros_like(matrix)
    for block in blocks:
        assembled[block.train, block.targets] = block.values
    torch.testing.assert_close(assembled, matrix, rtol=0, atol=1e-12)
    # self-influence is the diagonal of train×train, and α_i[y_i] = (1 − p_i)/(2λn) ≥ 0
    diagonal = estimator.influence_matrix(data.x_train[:6], data.y_train[:6])[range(6), range(6)]
    self_scores = estimator.self_influence().score
    np.testing.assert_allclose(self_scores[:6], diagonal.numpy(), rtol=1e-12)
    assert (self_scores >= 0).all()


def test_self_influence_flags_flipped_labels(fitted, digits_small):
    _, estimator = fitted
    auc = roc_auc_score(digits_small.is_mislabeled.numpy(), estimator.self_influence().score)
    assert auc > 0.9, auc


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"l2": 0}, "influence.0.representer.l2: Input should be greater than 0"),
        ({"l2": -1.0}, "influence.0.representer.l2: Input should be greater than 0"),
        ({"l2": float("nan")}, "influence.0.representer.l2: Input should be a finite number"),
        ({"l2": "0.1"}, "influence.0.representer.l2: Input should be a valid number"),
        ({"max_iter": 0}, "influence.0.representer.max_iter: Input should be greater than"),
        ({"lambda": 0.1}, "influence.0.representer.lambda: unknown key"),
    ],
)
def test_bad_config_is_one_line_naming_the_field(entry, message):
    config = {
        "datasets": [{"name": "digits"}],
        "archs": ["mlp"],
        "influence": [{"method": "representer", **entry}],
    }
    with pytest.raises(ConfigError) as caught:
        parse_config(config)
    assert message in str(caught.value), str(caught.value)
    assert len(str(caught.value).splitlines()) == 1
