"""A user's own Task (a label-smoothed cross-entropy): attribution differentiates its loss,
the trainer trains on it, and scores measured in 'loss' are its loss."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

import mnemoscope as ms
from mnemoscope.task import Task


@dataclass(frozen=True)
class Smoothed(Task):
    epsilon: float = 0.2

    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        log_p = torch.log_softmax(logits, -1)
        true = log_p.gather(-1, y.unsqueeze(-1)).squeeze(-1)
        return -(1 - self.epsilon) * true - self.epsilon * log_p.mean(-1)


def _data(n: int = 60, d: int = 4, classes: int = 3):
    g = torch.Generator().manual_seed(0)
    y = torch.arange(n) % classes
    x = torch.randn(n, d, generator=g) * 0.5
    x[torch.arange(n), y] += 3.0  # separable: a class's own feature is large
    return x, y


def test_grad_dot_differentiates_the_task_loss():
    """For a linear layer, ∇_{W,b} ℓ = (p − q)·[x, 1] with q the target distribution of the
    loss: the one-hot label for cross-entropy, (1 − ε)·onehot + ε/C when smoothed."""
    x, y = _data()
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    p = torch.softmax(model(x).detach().double(), -1)
    onehot = nn.functional.one_hot(y, 3).double()
    inputs = x.double().pow(2).sum(1) + 1
    for task, q in (
        (Task(), onehot),
        (Smoothed(0.2), 0.8 * onehot + 0.2 / 3),
    ):
        got = ms.GradDot().fit(model, (x, y), task=task).self_influence()
        torch.testing.assert_close(got, (p - q).pow(2).sum(1) * inputs, rtol=1e-4, atol=1e-7)


def test_the_trainer_trains_on_the_task():
    """Trained to convergence (convex, full batch) on a smoothed loss, the model is a
    stationary point of the smoothed objective, not of cross-entropy; and cross-entropy
    drives p_true towards 1 where smoothing stops short of it."""
    x, y = _data()
    settings = {"epochs": 300, "batch_size": 60, "lr": 1.0, "momentum": 0.9}
    gradient, confidence = {}, {}
    for name, task in (("plain", Task()), ("smoothed", Smoothed(0.3))):
        scorer = ms.Scorer("final_loss").fit("logreg", (x, y), train_config=settings, task=task)
        (trained,) = scorer.ensembles_.values()
        logits = trained.train_logits[0].double()
        confidence[name] = float(torch.softmax(logits, -1)[torch.arange(60), y].mean())
        # the score measured in 'loss' is the task's loss of the final model
        torch.testing.assert_close(scorer.score(), task.loss(logits, y), rtol=1e-5, atol=1e-6)
        if name == "smoothed":
            module = trained.module()
            params = {k: v[0].double().requires_grad_() for k, v in trained.params.items()}
            for kind, loss_of in (("smoothed", task), ("plain", Task())):
                out = torch.func.functional_call(module.double(), params, (x.double(),))
                grads = torch.autograd.grad(loss_of.loss(out, y).mean(), list(params.values()))
                gradient[kind] = float(sum(g.pow(2).sum() for g in grads).sqrt())
    assert gradient["smoothed"] < 1e-3 < 0.05 < gradient["plain"]
    assert confidence["plain"] > 0.99 and confidence["smoothed"] < 0.9


def test_class_level_calls_are_the_default_task():
    logits, y = torch.tensor([[2.0, 0.0, -1.0]]), torch.tensor([0])
    torch.testing.assert_close(Task.loss(logits, y), Task().loss(logits, y))
    assert not torch.allclose(Smoothed(0.2).measure(logits, y, "loss"), Task.loss(logits, y))
    log_odds = Task.measure(logits, y, "log_odds")
    p = torch.softmax(logits, -1)[0, 0]
    torch.testing.assert_close(log_odds, torch.log(p / (1 - p)).view(1))
