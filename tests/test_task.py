"""The task contract: loss, measurements, features, and the objective the trainer follows."""

from __future__ import annotations

import pytest
import torch
from torch.func import functional_call, grad
from torch.nn import functional as F

from mnemoscope.task import Task
from mnemoscope.train import TrainConfig, full_masks, init_module, train_ensemble


def test_loss_and_measurements_against_their_definitions():
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.0, 3.0, 1.0]])
    y = torch.tensor([0, 2])
    torch.testing.assert_close(Task.loss(logits, y), F.cross_entropy(logits, y, reduction="none"))
    torch.testing.assert_close(Task.measure(logits, y, "margin"), torch.tensor([1.5, -2.0]))
    p = torch.softmax(logits, -1)
    torch.testing.assert_close(Task.measure(logits, y, "probability"), p[[0, 1], [0, 2]])
    # batched over models: [K, B, C] logits and [K, B] labels
    stacked = torch.stack([logits, logits.flip(0)])
    labels = torch.stack([y, y.flip(0)])
    assert Task.loss(stacked, labels).shape == (2, 2)
    with pytest.raises(ValueError, match="margin"):
        Task.measure(logits, y, "accuracy")


@pytest.mark.parametrize("arch", ["mlp", "cnn"])
def test_features_are_the_input_of_the_classifier(digits_small, arch):
    module = init_module(arch, digits_small.input_shape, digits_small.n_classes, 0, 0)
    params = dict(module.named_parameters())
    x = digits_small.x_train[:7]
    features = Task.features(module, params, x)
    body = module[:-1]  # Sequential: everything before the last Linear
    torch.testing.assert_close(features, body(x).flatten(1))
    torch.testing.assert_close(module[-1](features), functional_call(module, params, (x,)))


def test_the_trainer_descends_the_task_objective_weight_decay_included(digits_small):
    """One full-batch SGD step without momentum is θ − lr·∇(mean loss + (λ/2)‖θ‖²)."""
    n = digits_small.n_train
    config = TrainConfig(
        epochs=1, batch_size=n, lr=0.1, momentum=0.0, weight_decay=0.05, optimizer="sgd"
    )
    trained = train_ensemble(
        "mlp", digits_small, full_masks(1, n), config, seed=3, keep_initial=True
    )
    task = Task.from_train(config)
    assert task.l2 == 0.05
    module = trained.module()
    start = {k: v[0] for k, v in trained.initial.items()}
    step = grad(lambda p: task.objective(module, p, digits_small.x_train, digits_small.y_train))(
        start
    )
    for name, value in start.items():
        expected = value - config.lr * step[name]
        torch.testing.assert_close(trained.params[name][0], expected, atol=1e-6, rtol=1e-5)
    adamw = config.model_copy(update={"optimizer": "adamw"})
    assert Task.from_train(adamw).l2 == 0.0  # decoupled decay is no part of the objective
