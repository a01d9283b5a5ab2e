"""TracIn and grad_dot against explicit per-example autograd loops and vmap(grad)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score
from torch.nn import functional as F

from mnemoscope.influence import GradDot, GradDotConfig, TracIn, TracInConfig
from mnemoscope.influence.gradients import per_example_grads
from mnemoscope.models import last_layer_names
from mnemoscope.task import Task
from mnemoscope.train import TrainConfig, full_masks, train_ensemble


def _loop_grad(module, params, x, y, names):
    module.load_state_dict(params, strict=True)
    module.zero_grad()
    F.cross_entropy(module(x[None]), y[None]).backward()
    named = dict(module.named_parameters())
    return torch.cat([named[n].grad.flatten() for n in names])


@pytest.fixture(scope="module", params=["mlp", "cnn"])
def trained(request, digits_small):
    config = TrainConfig(epochs=6, batch_size=64, lr=0.05)
    model = train_ensemble(
        request.param,
        digits_small,
        full_masks(1, digits_small.n_train),
        config,
        seed=0,
        checkpoint_epochs=[2, 4, 6],
    )
    return model, digits_small


@pytest.mark.parametrize("selection", ["all", "last_layer"])
def test_tracin_self_influence_equals_autograd_loop(trained, selection):
    model, data = trained
    estimator = TracIn(TracInConfig(checkpoints=3, params=selection, batch_size=50))
    scores = estimator.fit({"model": model}, data, Task()).self_influence()
    module = model.module()
    names = (
        [n for n, _ in module.named_parameters()]
        if selection == "all"
        else last_layer_names(module)
    )
    expected = np.zeros(data.n_train)
    for ckpt in model.checkpoints:
        params = {k: v[0] for k, v in ckpt.params.items()}
        for i in range(data.n_train):
            g = _loop_grad(module, params, data.x_train[i], data.y_train[i], names)
            expected[i] += ckpt.lr * float(g.double() @ g.double())
    np.testing.assert_allclose(scores.score, expected, rtol=1e-4, atol=1e-7)
    assert list(scores.example_ids) == data.train_ids.tolist()


def test_grad_dot_train_by_test_equals_loop(trained):
    model, data = trained
    estimator = GradDot(GradDotConfig(batch_size=64)).fit({"model": model}, data, Task())
    matrix = estimator.influence_matrix(data.x_test[:4], data.y_test[:4])
    assert matrix.shape == (data.n_train, 4)  # training examples first, then targets
    module = model.module()
    names = [n for n, _ in module.named_parameters()]
    final = {k: v[0] for k, v in model.params.items()}
    for t in range(4):
        g_t = _loop_grad(module, final, data.x_test[t], data.y_test[t], names).double()
        for i in (0, 17, data.n_train - 1):
            g_i = _loop_grad(module, final, data.x_train[i], data.y_train[i], names).double()
            assert float(matrix[i, t]) == pytest.approx(float(g_t @ g_i), rel=1e-4, abs=1e-8)
    # the diagonal of train×train is the self-influence
    diagonal = estimator.influence_matrix(data.x_train[:5], data.y_train[:5])[range(5), range(5)]
    np.testing.assert_allclose(diagonal.numpy(), estimator.self_influence().score[:5], rtol=1e-6)


def test_tracin_uses_checkpoints_evenly_spaced():
    assert TracIn(TracInConfig(checkpoints=5)).checkpoint_epochs(20) == [4, 8, 12, 16, 20]
    assert TracIn(TracInConfig(checkpoints=3)).checkpoint_epochs(2) == [1, 2]


def test_self_influence_flags_flipped_labels(digits_small):
    # Convex model, planted noise: flipped labels have large loss gradients.
    model = train_ensemble(
        "logreg",
        digits_small,
        full_masks(1, digits_small.n_train),
        TrainConfig(epochs=20, batch_size=32, lr=0.05),
        seed=0,
        checkpoint_epochs=[5, 10, 15, 20],
    )
    flipped = digits_small.is_mislabeled.numpy()
    for estimator in (TracIn(TracInConfig(checkpoints=4)), GradDot(GradDotConfig())):
        scores = estimator.fit({"model": model}, digits_small, Task()).self_influence()
        auc = roc_auc_score(flipped, scores.score)
        assert auc > 0.9, (estimator.name, auc)


@pytest.mark.parametrize("selection", ["last_layer", "list"])
def test_tracin_influence_equals_vmap_grad_dot_products(trained, selection):
    # train×target blocks from the layer-wise factors against dense vmap(grad) gradients
    model, data = trained
    module = model.module()
    names = [n for n, _ in module.named_parameters()]
    chosen = last_layer_names(module) if selection == "last_layer" else names[::3]
    config = TracInConfig(checkpoints=3, batch_size=40, params=chosen)
    estimator = TracIn(config).fit({"model": model}, data, Task())
    matrix = estimator.influence_matrix(data.x_test[:7], data.y_test[:7])
    expected = torch.zeros(data.n_train, 7, dtype=torch.float64)
    for ckpt in model.checkpoints:
        params = {k: v[0] for k, v in ckpt.params.items()}
        g = torch.cat(list(per_example_grads(module, params, data.x_train, data.y_train, chosen)))
        g_t = torch.cat(
            list(per_example_grads(module, params, data.x_test[:7], data.y_test[:7], chosen))
        )
        expected += ckpt.lr * (g.double() @ g_t.double().T)
    scale = float(expected.abs().max())
    torch.testing.assert_close(matrix, expected, rtol=1e-4, atol=1e-6 * scale)


def test_tracin_on_a_model_without_its_checkpoints_is_one_line(digits_small):
    from mnemoscope.errors import ConfigError
    from mnemoscope.influence import TracIn, TracInConfig
    from mnemoscope.task import Task
    from mnemoscope.train import EnsembleSpec, TrainConfig, train_ensemble

    spec = EnsembleSpec.single(digits_small.n_train, [])
    model = train_ensemble("logreg", digits_small, spec.masks, TrainConfig(epochs=2), seed=0)
    with pytest.raises(ConfigError, match=r"no checkpoint at epochs \[1, 2\].*kept none") as error:
        TracIn(TracInConfig(checkpoints=2)).fit({"model": model}, digits_small, Task())
    assert "\n" not in str(error.value)


def test_tracin_weighs_each_checkpoint_by_its_scheduled_lr(digits_small):
    """Under a cosine schedule each checkpoint's η_c is the lr of the last update before
    it (the closed form, recomputed here), not the peak lr."""
    config = TrainConfig(epochs=6, batch_size=64, lr=0.05, schedule="cosine")
    model = train_ensemble(
        "mlp",
        digits_small,
        full_masks(1, digits_small.n_train),
        config,
        seed=0,
        checkpoint_epochs=[2, 4, 6],
    )
    steps = math.ceil(digits_small.n_train / 64)
    etas = [0.025 * (1 + math.cos(math.pi * (e * steps - 1) / (6 * steps))) for e in (2, 4, 6)]
    assert [c.lr for c in model.checkpoints] == pytest.approx(etas, rel=1e-12)
    scores = TracIn(TracInConfig(checkpoints=3)).fit({"model": model}, digits_small, Task())
    module = model.module()
    names = [n for n, _ in module.named_parameters()]
    rows = range(0, digits_small.n_train, 8)
    squared = np.zeros((3, len(rows)))
    for c, ckpt in enumerate(model.checkpoints):
        params = {k: v[0] for k, v in ckpt.params.items()}
        for j, i in enumerate(rows):
            g = _loop_grad(module, params, digits_small.x_train[i], digits_small.y_train[i], names)
            squared[c, j] = float(g.double() @ g.double())
    got = scores.self_influence().score[list(rows)]
    np.testing.assert_allclose(got, np.asarray(etas) @ squared, rtol=1e-4, atol=1e-9)
    unweighted = config.lr * squared.sum(0)  # what a constant-lr reading would give
    assert not np.allclose(got, unweighted, rtol=0.05)
