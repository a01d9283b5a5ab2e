"""Cosine similarity of final-model loss gradients (the ``grad_cos`` baseline)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import torch
from torch.nn import functional as F

from mnemoscope.data import Dataset
from mnemoscope.estimator import Scores, register
from mnemoscope.influence.base import DEFAULT_MEMORY_BUDGET, InfluenceEstimator
from mnemoscope.influence.gradient_dot import DenseGradientsConfig
from mnemoscope.task import Task

if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import Self


class GradCosConfig(DenseGradientsConfig):
    method: Literal["grad_cos"] = "grad_cos"  # type: ignore[assignment]


@register
class GradCos(InfluenceEstimator):
    """Cosine of final-model loss gradients (a baseline of dattri; Hammoudeh & Lowd 2024).

    ``τ(z_i, z_t) = cos(∇ℓ(z_i; θ_T), ∇ℓ(z_t; θ_T))``, in ``[−1, 1]``: the direction of
    ``grad_dot`` without its magnitude. Positive: a gradient step on i lowers the
    target's loss, so removing i would hurt it (to first order). A zero gradient
    (an example fitted to machine precision) has cosine 0 with everything.

    Self-influence: the cosine of a gradient with itself is 1 for every example and
    says nothing, so the per-example score is instead one minus i's mean cosine
    influence on the *other* training examples of its own class,
    ``s_i = 1 − mean_{j ≠ i, y_j = y_i} cos(∇ℓ(z_i), ∇ℓ(z_j))`` in ``[0, 2]`` (one minus
    the mean of the same-class, off-diagonal entries of the train×train ``influence``).
    Near 0: i pulls the model the way its classmates do (typical, helpful to them);
    high: i's gradient fights its class (mislabeled or atypical examples), so higher =
    more memorized-like, as for every score of the package. NaN for an example alone
    in its class. Not divided by n beyond the mean.

    Cost: ``influence``: one per-example gradient per training example and target, as
    ``grad_dot``. Self-influence: two gradient passes over the training set (one to sum
    each class's unit gradients, one to project each example on its class sum), memory
    O(P) for one class sum at a time.
    """

    name = "grad_cos"
    config_class = GradCosConfig
    cost = "2n per-example gradients at the final model"
    reference = "gradient-similarity baseline (dattri; Hammoudeh & Lowd 2024 survey)"
    summary = "gradient cosine at the final model; per example: 1 − mean cosine with its class"
    config: GradCosConfig

    def fit(self, ensembles, dataset: Dataset, task: Task, device="cpu") -> Self:
        self._hold_final_model(ensembles, dataset, task, device)
        return self

    def _unit_grads(self, x: torch.Tensor, y: torch.Tensor) -> Iterator[torch.Tensor]:
        """``[b, P]`` float64 loss gradients scaled to unit length (zero stays zero)."""
        for g in self._example_grads(x, y):
            yield F.normalize(g.double(), dim=1)

    def influence(self, x_target, y_target, memory_budget=DEFAULT_MEMORY_BUDGET):
        """Blocks of ``[batch_size, b_t]``, with ``b_t`` targets' unit gradients filling at
        most half of ``memory_budget`` (at least one target)."""
        data = self.dataset_
        n_params = sum(self.module_.get_parameter(k).numel() for k in self.names_)
        return self.streamed_blocks(
            x_target,
            y_target,
            memory_budget,
            2 * 8 * n_params,
            held=lambda x, y: torch.cat(list(self._unit_grads(x, y))),
            train=lambda: self._unit_grads(data.x_train, data.y_train),
            pair=lambda g, g_target, _: g @ g_target.T,
        )

    def self_influence(self) -> Scores:
        """One minus the mean cosine with the other examples of the same class."""
        data = self.dataset_
        score = torch.full((data.n_train,), float("nan"), dtype=torch.float64)
        for label in data.y_train.unique():
            members = (data.y_train == label).nonzero().flatten()
            if len(members) < 2:
                continue
            x, y = data.x_train[members], data.y_train[members]
            total = sum(g.sum(0) for g in self._unit_grads(x, y))
            # ĝ_i · Σ_j ĝ_j − ĝ_i · ĝ_i: the cosines with the others only
            own = torch.cat([g @ total - (g * g).sum(1) for g in self._unit_grads(x, y)])
            score[members] = 1 - own.cpu() / (len(members) - 1)
        return self._scores(score)
