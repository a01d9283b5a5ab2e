"""grad_cos against explicit per-example autograd loops; its per-example score is the mean
same-class entry of its own train×train matrix."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score
from torch.nn import functional as F

from mnemoscope.config import parse_config
from mnemoscope.errors import ConfigError
from mnemoscope.influence import GradCos, GradCosConfig
from mnemoscope.models import last_layer_names
from mnemoscope.task import Task
from mnemoscope.train import TrainConfig, full_masks, train_ensemble


def _loop_grad(module, params, x, y, names):
    module.load_state_dict(params, strict=True)
    module.zero_grad()
    F.cross_entropy(module(x[None]), y[None]).backward()
    named = dict(module.named_parameters())
    return torch.cat([named[n].grad.flatten() for n in names]).double()


@pytest.fixture(scope="module")
def model(digits_small):
    return train_ensemble(
        "mlp",
        digits_small,
        full_masks(1, digits_small.n_train),
        TrainConfig(epochs=8, batch_size=32, lr=0.05),
        seed=0,
    )


@pytest.mark.parametrize("selection", ["all", "last_layer"])
def test_influence_is_the_cosine_of_autograd_gradients(model, digits_small, selection):
    data = digits_small
    estimator = GradCos(GradCosConfig(params=selection, batch_size=64))
    matrix = estimator.fit({"model": model}, data, Task()).influence_matrix(
        data.x_test[:3], data.y_test[:3]
    )
    assert matrix.shape == (data.n_train, 3)
    module = model.module()
    names = [n for n, _ in module.named_parameters()] if selection == "all" else None
    names = names or last_layer_names(module)
    final = {k: v[0] for k, v in model.params.items()}
    for t in range(3):
        g_t = _loop_grad(module, final, data.x_test[t], data.y_test[t], names)
        for i in (0, 100, data.n_train - 1):
            g_i = _loop_grad(module, final, data.x_train[i], data.y_train[i], names)
            cosine = float(g_t @ g_i / (g_t.norm() * g_i.norm()))
            assert float(matrix[i, t]) == pytest.approx(cosine, abs=1e-5)
    assert float(matrix.abs().max()) <= 1 + 1e-12


def test_self_score_is_mean_same_class_cosine_and_flags_flipped_labels(model, digits_small):
    data = digits_small
    estimator = GradCos(GradCosConfig()).fit({"model": model}, data, Task())
    scores = estimator.self_influence().score
    full = estimator.influence_matrix(data.x_train, data.y_train).numpy()  # [n, n]
    np.testing.assert_allclose(np.diag(full), 1.0, atol=1e-6)  # why self-cosine is useless
    labels = data.y_train.numpy()
    expected = np.empty(data.n_train)
    for i in range(data.n_train):
        others = (labels == labels[i]) & (np.arange(data.n_train) != i)
        expected[i] = 1 - full[i, others].mean()
    np.testing.assert_allclose(scores, expected, atol=1e-5)
    # a flipped label's gradient fights its (new) class: it scores high
    auc = roc_auc_score(data.is_mislabeled.numpy(), scores)
    assert auc > 0.9, auc


def test_example_alone_in_its_class_gets_nan(model, digits_small):
    data = digits_small
    y = data.y_train.clone()
    y[5] = 0 if int(y[5]) != 0 else 1
    lonely = int(y[5])
    keep = (data.y_train != lonely) | (torch.arange(data.n_train) == 5)
    subset = type(data)(
        name=data.name,
        kind=data.kind,
        x_train=data.x_train[keep],
        y_train=y[keep],
        y_train_original=data.y_train_original[keep],
        train_ids=data.train_ids[keep],
        x_test=data.x_test,
        y_test=data.y_test,
        test_ids=data.test_ids,
        n_classes=data.n_classes,
    )
    trained = {"model": type(model)(**{**model.__dict__, "masks": full_masks(1, subset.n_train)})}
    scores = GradCos(GradCosConfig()).fit(trained, subset, Task()).self_influence().score
    alone = (subset.y_train == lonely).numpy()
    assert alone.sum() == 1 and np.isnan(scores[alone]).all()
    assert np.isfinite(scores[~alone]).all()


def test_bad_inputs_are_refused(model):
    with pytest.raises(ConfigError, match=r"params: unknown parameter names \['fc.weight'\]"):
        GradCos(GradCosConfig(params=["fc.weight"])).check_model(model.module())
    base = {"datasets": [{"name": "digits"}], "archs": ["mlp"]}
    for entry, message in [
        ({"batch_size": 0}, "influence.0.grad_cos.batch_size: Input should be greater than 0"),
        ({"params": []}, "influence.0.grad_cos.params: Value error, expected"),
        ({"params": "first"}, "influence.0.grad_cos.params"),
        ({"checkpoints": 3}, "influence.0.grad_cos.checkpoints: unknown key"),
    ]:
        with pytest.raises(ConfigError) as caught:
            parse_config({**base, "influence": [{"method": "grad_cos", **entry}]})
        assert message.replace("Value error, ", "") in str(caught.value), str(caught.value)
