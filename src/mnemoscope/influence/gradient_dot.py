"""Gradient dot products over checkpoints: TracIn and its one-checkpoint baseline."""

from __future__ import annotations

from abc import abstractmethod
from typing import Literal

import torch
from pydantic import Field, PositiveInt

from mnemoscope.data import Dataset
from mnemoscope.estimator import MethodConfig, Scores, register
from mnemoscope.influence.base import InfluenceEstimator
from mnemoscope.influence.gradients import ParamSelection, per_example_grads, select_params
from mnemoscope.train import TrainedEnsemble


class GradDotConfig(MethodConfig):
    method: Literal["grad_dot"] = "grad_dot"
    params: ParamSelection = "all"
    """Parameters to differentiate: 'all', 'last_layer' or a list of names."""
    batch_size: PositiveInt = 256
    """Examples per vmapped gradient batch (bounds memory)."""


class TracInConfig(GradDotConfig):
    method: Literal["tracin"] = "tracin"  # type: ignore[assignment]
    checkpoints: int = Field(5, ge=1)
    """Checkpoints, evenly spaced over training, the last one the final model."""


class GradientDot(InfluenceEstimator):
    """``τ(z_i, z) = Σ_c w_c ∇ℓ(z; θ_c) · ∇ℓ(z_i; θ_c)`` over parameter sets ``θ_c``.

    Self-influence is ``Σ_c w_c ‖∇ℓ(z_i; θ_c)‖²`` (≥ 0), one gradient per example
    and checkpoint. Not divided by n. Subclasses choose the ``(w_c, θ_c)``.
    """

    config: GradDotConfig

    @abstractmethod
    def _weighted_params(self, model: TrainedEnsemble) -> list[tuple[float, dict]]:
        """The ``(w_c, θ_c)`` pairs: weights and single-model parameters."""

    def _gradient_blocks(self, model: TrainedEnsemble, x, y, device):
        module = model.module().to(device)
        names = select_params(module, self.config.params)
        for weight, params in self._weighted_params(model):
            params = {k: v.to(device) for k, v in params.items()}
            yield (
                weight,
                per_example_grads(
                    module, params, x.to(device), y.to(device), names, self.config.batch_size
                ),
            )

    def self_influence(self, model, dataset: Dataset, device="cpu") -> Scores:
        total = torch.zeros(dataset.n_train, dtype=torch.float64)
        for weight, blocks in self._gradient_blocks(
            model, dataset.x_train, dataset.y_train, device
        ):
            norms = torch.cat([(g.double() ** 2).sum(1).cpu() for g in blocks])
            total += weight * norms
        return Scores(self.name, self.family, dataset.train_ids.numpy(), total.numpy())

    def influence(self, model, dataset: Dataset, x_target, y_target, device="cpu"):
        total = torch.zeros(len(y_target), dataset.n_train, dtype=torch.float64)
        targets = self._gradient_blocks(model, x_target, y_target, device)
        trains = self._gradient_blocks(model, dataset.x_train, dataset.y_train, device)
        for (weight, target_blocks), (_, train_blocks) in zip(targets, trains):
            g_target = torch.cat(list(target_blocks)).double()  # [n_target, P]
            column = 0
            for g_train in train_blocks:
                block = g_target @ g_train.double().T
                total[:, column : column + block.shape[1]] += weight * block.cpu()
                column += block.shape[1]
        return total


@register
class GradDot(GradientDot):
    """Dot product of final-model loss gradients (the baseline used by dattri).

    ``τ(z_i, z) = ∇ℓ(z; θ_T) · ∇ℓ(z_i; θ_T)``; self-influence ``‖∇ℓ(z_i; θ_T)‖²``.

    Cost: one per-example gradient pass over the training set.
    """

    name = "grad_dot"
    config_class = GradDotConfig
    cost = "n per-example gradients at the final model"
    reference = "gradient-similarity baseline (dattri; Hammoudeh & Lowd 2024 survey)"

    def _weighted_params(self, model):
        return [(1.0, {k: v[0] for k, v in model.params.items()})]


@register
class TracIn(GradientDot):
    """TracIn-CP (Pruthi et al. 2020, eq. 3 with checkpoints):

    ``τ(z_i, z) = Σ_c η_c ∇ℓ(z; θ_c) · ∇ℓ(z_i; θ_c)`` over saved checkpoints c with
    the learning rate ``η_c`` in force at each; self-influence
    ``Σ_c η_c ‖∇ℓ(z_i; θ_c)‖²`` (Pruthi et al. §4: high self-influence flags
    mislabeled and atypical examples). Not divided by n.

    Cost: n per-example gradients per checkpoint.
    """

    name = "tracin"
    config_class = TracInConfig
    cost = "n per-example gradients × checkpoints"
    reference = "Pruthi et al. 2020, 'Estimating Training Data Influence by Tracing Gradient Descent', eq. 3"
    config: TracInConfig

    def checkpoint_epochs(self, epochs: int) -> list[int]:
        count = min(self.config.checkpoints, epochs)
        return sorted({int(round(epochs * (j + 1) / count)) for j in range(count)})

    def _weighted_params(self, model):
        wanted = set(self.checkpoint_epochs(max(c.epoch for c in model.checkpoints)))
        chosen = [c for c in model.checkpoints if c.epoch in wanted]
        if len(chosen) != len(wanted):
            raise ValueError(
                f"tracin needs checkpoints at epochs {sorted(wanted)}, the model has "
                f"{[c.epoch for c in model.checkpoints]}"
            )
        return [(c.lr, {k: v[0] for k, v in c.params.items()}) for c in chosen]
