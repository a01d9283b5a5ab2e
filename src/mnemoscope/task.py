"""The task: the one place that says what a model is trained on and what is measured.

Every module that needs a loss, a measurement or a model's features asks a
:class:`Task`; none writes cross-entropy itself. Functions take one model's
parameters (no leading model dimension) so that ``vmap(grad(...))`` over examples
and ``vmap`` over models both apply.

- **Loss** ``ℓ(z; θ)``: cross-entropy of the logits, one value per example
  (:meth:`Task.per_example_loss`). The training objective is the *mean* over a
  batch plus, for ``sgd`` and ``adam``, the L2 term ``(λ/2)·‖θ‖²`` with ``λ`` the
  config's ``weight_decay`` (PyTorch adds ``λθ`` to the gradient, the gradient of that
  term). ``adamw`` decays weights outside the objective (decoupled), so its objective
  has no L2 term: :attr:`Task.l2` is 0 then. Curvature-based methods add ``l2`` to
  the Hessian of the mean loss.
- **Measurement** ``m(z; θ)`` of a target: ``'loss'`` (the per-example loss),
  ``'margin'`` (true-class logit minus the largest other logit), ``'log_odds'``
  (``log(p / (1 − p))`` of the true class: TRAK's measurement) or
  ``'probability'`` (softmax probability of the true class).
- **Features** ``h(x; θ)``: the penultimate representation, the input of the last
  module with parameters (the classifier); representer points and KNN methods use it.

**Your own task.** Subclass :class:`Task` and override :meth:`Task.loss` (e.g. a
label-smoothed cross-entropy, below); every measurement ``'loss'``, the training objective,
the trainer (through the Python classes, :mod:`mnemoscope.attributors`) and every
estimator then use it::

    @dataclass(frozen=True)
    class Smoothed(Task):
        epsilon: float = 0.1

        def loss(self, logits, y):
            log_p = torch.log_softmax(logits, -1)
            true = log_p.gather(-1, y.unsqueeze(-1)).squeeze(-1)
            return -(1 - self.epsilon) * true - self.epsilon * log_p.mean(-1)

``Task.loss(logits, y)`` and ``Task.measure(...)`` called on the class use the default
task (cross-entropy), as before.
"""

from __future__ import annotations

import math
import types
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn
from torch.func import functional_call
from torch.nn import functional as F

from mnemoscope.layers import last_layer_module

Measurement = Literal["loss", "margin", "log_odds", "probability"]
Params = dict[str, torch.Tensor]


class _task_method:
    """A method that runs on the instance it is read from, or, read from the class, on a
    default instance: ``Task.loss(z, y)`` is the default task's loss, ``task.loss(z, y)``
    that of the task at hand (a subclass's override)."""

    def __init__(self, function: Callable[..., Any]) -> None:
        self.function = function
        self.__doc__ = function.__doc__
        self.__name__ = function.__name__

    def __get__(self, task: Task | None, owner: type[Task]) -> Callable[..., Any]:
        return types.MethodType(self.function, task if task is not None else owner())


def log_odds(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``[..., C]`` logits → ``[...]`` ``log(p / (1 − p))`` of class ``y``, computed stably
    as the true logit minus the log-sum-exp of the others."""
    true = torch.arange(logits.shape[-1], device=logits.device) == y.unsqueeze(-1)  # vmap-safe
    return (logits * true).sum(-1) - torch.logsumexp(logits.masked_fill(true, -math.inf), -1)


@dataclass(frozen=True)
class Task:
    """Classification with cross-entropy.

    Attributes:
        l2: coefficient λ of the objective's L2 term ``(λ/2)·‖θ‖²`` (0 for adamw, whose
            weight decay is decoupled).
    """

    l2: float = 0.0

    @classmethod
    def from_train(cls, train) -> Task:
        """The task a :class:`~mnemoscope.train.TrainConfig` trains on."""
        return cls(l2=0.0 if train.optimizer == "adamw" else float(train.weight_decay))

    @_task_method
    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``[..., C]`` logits and ``[...]`` labels → ``[...]`` per-example cross-entropy
        (a subclass overrides this to train and measure on another loss)."""
        return F.cross_entropy(logits.flatten(0, -2), y.flatten(), reduction="none").view(y.shape)

    @_task_method
    def measure(self, logits: torch.Tensor, y: torch.Tensor, kind: Measurement) -> torch.Tensor:
        """``[..., C]`` logits → ``[...]`` measurement of the true class ``y``."""
        if kind == "loss":
            return self.loss(logits, y)
        if kind == "log_odds":
            return log_odds(logits, y)
        true = logits.gather(-1, y.unsqueeze(-1)).squeeze(-1)
        if kind == "probability":
            return torch.softmax(logits, -1).gather(-1, y.unsqueeze(-1)).squeeze(-1)
        if kind == "margin":
            # a comparison, not F.one_hot: one_hot has no vmap rule (per-example gradients)
            true_class = torch.arange(logits.shape[-1], device=logits.device) == y.unsqueeze(-1)
            others = logits.masked_fill(true_class, float("-inf"))
            return true - others.amax(-1)
        raise ValueError(
            f"unknown measurement '{kind}'; known: loss, margin, log_odds, probability"
        )

    def per_example_loss(
        self, module: nn.Module, params: Params, x: torch.Tensor, y: torch.Tensor
    ) -> torch.Tensor:
        """``ℓ(z_i; θ)`` for a batch ``x [b, ...]``, ``y [b]`` → ``[b]``."""
        return self.loss(functional_call(module, params, (x,)), y)

    def example_loss(
        self, module: nn.Module, params: Params, x: torch.Tensor, y: torch.Tensor
    ) -> torch.Tensor:
        """``ℓ(z; θ)`` of one example ``x [...]``, ``y []`` → scalar (for ``vmap(grad)``)."""
        return self.per_example_loss(module, params, x[None], y[None])[0]

    def example_measurement(
        self, module: nn.Module, params: Params, x: torch.Tensor, y: torch.Tensor, kind: Measurement
    ) -> torch.Tensor:
        """``m(z; θ)`` of one example → scalar (for ``vmap(grad)``)."""
        return self.measure(functional_call(module, params, (x[None],)), y[None], kind)[0]

    def objective(
        self, module: nn.Module, params: Params, x: torch.Tensor, y: torch.Tensor
    ) -> torch.Tensor:
        """The training objective on a batch: mean loss + ``(λ/2)·‖θ‖²`` over ``params``."""
        penalty = sum((p**2).sum() for p in params.values())
        return self.per_example_loss(module, params, x, y).mean() + 0.5 * self.l2 * penalty

    @staticmethod
    def features(module: nn.Module, params: Params, x: torch.Tensor) -> torch.Tensor:
        """``x [b, ...]`` → ``[b, d]`` penultimate features: the last layer's input."""
        captured: list[torch.Tensor] = []
        handle = last_layer_module(module).register_forward_pre_hook(
            lambda _, args: captured.append(args[0])
        )
        try:
            functional_call(module, params, (x,))
        finally:
            handle.remove()
        return captured[-1].flatten(1)
