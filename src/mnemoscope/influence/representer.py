"""Representer point selection (Yeh et al. 2018): an L2-regularised last layer written as
a sum over training examples."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import torch
from pydantic import ConfigDict, Field

from mnemoscope.data import Dataset
from mnemoscope.estimator import MethodConfig, Scores, register
from mnemoscope.influence.base import DEFAULT_MEMORY_BUDGET, InfluenceBlock, InfluenceEstimator
from mnemoscope.task import Task

if TYPE_CHECKING:
    from typing import Self

GRADIENT_TOLERANCE = 1e-10
"""Refit stops when the objective's largest gradient entry falls below this (float64), or
earlier where the line search can no longer lower the objective in float64 (seen near
1e-9: the representer identity then holds to about that / (2λ) per weight)."""


class RepresenterConfig(MethodConfig):
    """Strict: a string, a boolean or a non-finite number where a number is meant is refused."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    method: Literal["representer"] = "representer"
    l2: float = Field(0.01, gt=0, le=1e3)
    """λ of the refit objective ``(1/n) Σ ℓ_i + λ‖W‖²`` (Yeh et al.'s, without ½); in (0, 1000]."""
    max_iter: int = Field(2000, ge=1, le=1_000_000)
    """L-BFGS iterations of the refit at most (it stops earlier at stationarity)."""


@register
class Representer(InfluenceEstimator):
    """Representer values (Yeh, Kim, Yen, Ravikumar 2018, "Representer Point Selection for
    Explaining Deep Neural Networks", NeurIPS, Theorem 3.1).

    The last layer is refitted on the final model's penultimate features
    ``h̃_i = [h(x_i), 1]`` (a constant 1 appended, so the bias is part of W and
    regularised with it) by minimising ``(1/n) Σ_i ℓ(W h̃_i, y_i) + λ‖W‖²`` (strictly
    convex: one minimiser, found with L-BFGS in float64). At its stationary point
    ``W = Σ_i α_i h̃_iᵀ`` with ``α_i = −(1/(2λn)) ∂ℓ(z_i)/∂z_i`` (``[C]``, z the refit
    logits), so every refit logit is a sum over training examples:
    ``z(x) = Σ_i α_i ⟨h̃_i, h̃(x)⟩``.

    ``τ(z_i, z_t) = α_i[y_t] ⟨h̃_i, h̃_t⟩``: training example i's share of the target's
    true-class logit (Yeh et al.'s representer value for class y_t); the shares of
    one target sum to that logit. Sign: positive when i pushes the target's true class
    up, so removing it would lower that logit (hurt the target), as everywhere. For
    cross-entropy ``α_i[y_i] = (1 − p_i)/(2λn) ≥ 0``: an example supports its own
    class, more so the worse it is fitted.

    Self-influence: ``α_i[y_i] ‖h̃_i‖²`` ≥ 0, i's share of its own true-class logit;
    large for examples the refit fits badly with large features (mislabeled ones).

    Normalisation: divided by n through α (and by 2λ). It explains the *refitted*
    last layer, not the trained one; both agree better the closer λ is to the
    training's effective regularisation.

    Cost: one forward pass over the training set for the features; an L-BFGS refit of
    ``C·(d+1)`` parameters on ``[n, d+1]`` features; then each target costs a dot
    product with every training example's features.
    """

    name = "representer"
    config_class = RepresenterConfig
    cost = "features of one model and an L-BFGS refit of its last layer"
    reference = (
        "Yeh et al. 2018, 'Representer Point Selection for Explaining Deep Neural Networks', "
        "Theorem 3.1"
    )
    summary = "share of each example in an L2-refitted last layer's logits (representer theorem)"
    cache_fit = True
    _cached = ("alpha", "features")
    config: RepresenterConfig

    def fit(self, ensembles, dataset: Dataset, task: Task, device="cpu") -> Self:
        self._hold_final_model(ensembles, dataset, task, device)
        self.features_ = self._features(dataset.x_train)
        labels = dataset.y_train.to(self.device_)
        self.weight_ = self._refit(self.features_, labels)
        logits = (self.features_ @ self.weight_.T).requires_grad_(True)
        (loss_gradient,) = torch.autograd.grad(self.task_.loss(logits, labels).sum(), logits)
        self.alpha_ = -loss_gradient / (2 * self.config.l2 * dataset.n_train)
        return self

    def load_fitted(self, state, ensembles, dataset: Dataset, task: Task, device="cpu") -> Self:
        super().load_fitted(state, ensembles, dataset, task, device)
        self.weight_ = self.alpha_.T @ self.features_
        return self

    @torch.no_grad()
    def _features(self, x: torch.Tensor) -> torch.Tensor:
        """``[b, ...]`` → ``[b, d + 1]`` float64 penultimate features with a 1 appended."""
        h = self._penultimate(x)
        return torch.cat([h, torch.ones_like(h[:, :1])], dim=1)

    def _refit(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The minimiser ``W [C, d + 1]`` of ``mean ℓ(W h̃_i, y_i) + λ‖W‖²``."""
        n_classes = self.dataset_.n_classes
        weight = torch.zeros(n_classes, features.shape[1], dtype=torch.float64)
        weight = weight.to(self.device_).requires_grad_(True)
        solver = torch.optim.LBFGS(
            [weight],
            max_iter=self.config.max_iter,
            history_size=50,
            tolerance_grad=GRADIENT_TOLERANCE,
            tolerance_change=0.0,
            line_search_fn="strong_wolfe",
        )

        def objective() -> torch.Tensor:
            solver.zero_grad()
            value = self.task_.loss(features @ weight.T, labels).mean()
            value = value + self.config.l2 * (weight**2).sum()
            value.backward()
            return value

        solver.step(objective)
        objective()
        # the representer identity holds up to this (0 at the exact minimiser)
        self.stationarity_ = float(weight.grad.abs().max())
        return weight.detach()

    def influence(self, x_target, y_target, memory_budget=DEFAULT_MEMORY_BUDGET):
        """Blocks of all training rows × as many targets as fit ``memory_budget``
        (kernel and values, 8 bytes each per training example and target)."""
        for targets in self.target_slices(len(y_target), 2 * 8 * self.n_train_, memory_budget):
            kernel = self.features_ @ self._features(x_target[targets]).T  # [n, b]
            alpha = self.alpha_[:, y_target[targets].to(self.device_)]  # [n, b]
            yield InfluenceBlock(slice(0, self.n_train_), targets, (alpha * kernel).cpu())

    def self_influence(self) -> Scores:
        own = self.alpha_.gather(1, self.dataset_.y_train.to(self.device_)[:, None])[:, 0]
        score = own * (self.features_**2).sum(1)
        return self._scores(score)
