"""Gradient dot products over checkpoints: TracIn and its one-checkpoint baseline."""

from __future__ import annotations

from abc import abstractmethod
from typing import TYPE_CHECKING, Literal

import torch
from pydantic import ConfigDict, Field

from mnemoscope.data import Dataset
from mnemoscope.errors import ConfigError
from mnemoscope.estimator import MethodConfig, PlanContext, Scores, register
from mnemoscope.influence.base import DEFAULT_MEMORY_BUDGET, InfluenceEstimator
from mnemoscope.influence.gradients import Params
from mnemoscope.influence.layerwise import GradientFactors, LayerwiseGradients
from mnemoscope.params import ParamsSetting
from mnemoscope.task import Task
from mnemoscope.train import EnsembleSpec, TrainedEnsemble

if TYPE_CHECKING:
    from typing import Self


class GradDotConfig(MethodConfig):
    """Strict: a string or a boolean where a number is meant is refused."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    method: Literal["grad_dot"] = "grad_dot"
    params: ParamsSetting = "all"
    """Parameters to differentiate: 'all', 'last_layer' or a non-empty list of names."""

    batch_size: int = Field(512, gt=0, le=1_000_000)
    """Examples per batched forward and backward pass (bounds memory; at most 10⁶). The
    layer-wise path holds layer inputs and output gradients, not per-example gradients,
    so a batch can be large; 512 was the fastest of 128–1024 for the mlp and cnn on
    digits (1 thread, CPU)."""


class DenseGradientsConfig(GradDotConfig):
    """Base of the methods that hold dense per-example gradients (``grad_cos``, ``trak``):
    a smaller default batch."""

    batch_size: int = Field(256, gt=0, le=1_000_000)
    """Examples per per-example-gradient batch: ``batch_size × P`` dense gradients are
    held at once (bounds memory; at most 10⁶)."""


class TracInConfig(GradDotConfig):
    method: Literal["tracin"] = "tracin"  # type: ignore[assignment]
    checkpoints: int = Field(5, ge=1, le=1_000)
    """Checkpoints, evenly spaced over training, the last one the final model (at most 1000)."""


def evenly_spaced_epochs(count: int, epochs: int) -> list[int]:
    """``min(count, epochs)`` epochs evenly spaced over ``epochs``, the last one ``epochs``:
    ``round(epochs·j/C)`` for j = 1..C."""
    count = min(count, epochs)
    return sorted({int(round(epochs * (j + 1) / count)) for j in range(count)})


def checkpoints_or_error(model: TrainedEnsemble, wanted: list[int], method: str) -> list:
    """The checkpoints of ``model`` at epochs ``wanted``, or a one-line ConfigError naming
    what it kept."""
    kept = sorted(c.epoch for c in model.checkpoints)
    missing = [e for e in wanted if e not in kept]
    if missing:
        raise ConfigError(
            f"{method}: the model kept no checkpoint at epochs {missing} (it kept "
            f"{kept or 'none'}); train it with checkpoint_epochs={wanted}, as "
            f"{method}'s ensembles() declares"
        )
    return [model.checkpoint(e) for e in wanted]


class GradientDot(InfluenceEstimator):
    """``τ(z_i, z) = Σ_c w_c ∇ℓ(z; θ_c) · ∇ℓ(z_i; θ_c)`` over parameter sets ``θ_c``.

    Self-influence is ``Σ_c w_c ‖∇ℓ(z_i; θ_c)‖²`` (≥ 0), one gradient per example
    and checkpoint. Not divided by n. Subclasses choose the ``(w_c, θ_c)``.

    Norms and dot products come from layer-wise identities (one batched backward per
    batch, :mod:`~mnemoscope.influence.layerwise`) for Linear, Conv1d/2d, GroupNorm and
    LayerNorm parameters, and from ``vmap(grad)`` for every other one: the scores always
    cover all the selected parameters.
    """

    config: GradDotConfig

    def ensembles(self, context: PlanContext) -> dict[str, EnsembleSpec]:
        return {"model": EnsembleSpec.single(context.n_train, self._epochs(context.epochs))}

    def _epochs(self, epochs: int) -> list[int]:
        """Checkpoint epochs to read; the final model is read from its parameters."""
        return []

    @abstractmethod
    def _weighted_params(self, model: TrainedEnsemble) -> list[tuple[float, Params]]:
        """The ``(w_c, θ_c)`` pairs: weights and single-model parameters."""

    def fit(self, ensembles, dataset: Dataset, task: Task, device="cpu") -> Self:
        self._hold_final_model(ensembles, dataset, task, device)
        self.layerwise_ = LayerwiseGradients(self.module_, self.names_, task)
        self.weighted_ = [
            (weight, {k: v.to(self.device_) for k, v in params.items()})
            for weight, params in self._weighted_params(ensembles["model"])
        ]
        return self

    def _factors(self, params: Params, x: torch.Tensor, y: torch.Tensor):
        """Per-example gradients of ``batch_size`` examples at a time (layer-wise identities
        where a layer allows them, ``vmap(grad)`` for the other parameters)."""
        for xb, yb in zip(x.split(self.config.batch_size), y.split(self.config.batch_size)):
            yield self.layerwise_(params, xb.to(self.device_), yb.to(self.device_))

    def self_influence(self) -> Scores:
        data = self.dataset_
        total = torch.zeros(data.n_train, dtype=torch.float64)
        for weight, params in self.weighted_:
            norms = [f.sq_norms().cpu() for f in self._factors(params, data.x_train, data.y_train)]
            total += weight * torch.cat(norms)
        return self._scores(total)

    def influence(self, x_target, y_target, memory_budget=DEFAULT_MEMORY_BUDGET):
        """Blocks of ``[batch_size, b_t]``: training gradients one batch at a time against
        target gradients held ``b_t`` at a time for every parameter set, with ``b_t`` the
        most whose dense gradients fit half of ``memory_budget`` (at least one target)."""
        data = self.dataset_
        n_params = sum(self.module_.get_parameter(k).numel() for k in self.names_)
        per_target = 4 * n_params * len(self.weighted_)
        return self.streamed_blocks(
            x_target,
            y_target,
            memory_budget,
            2 * per_target,
            held=lambda x, y: [
                GradientFactors.cat(list(self._factors(p, x, y))) for _, p in self.weighted_
            ],
            train=lambda: zip(
                *[self._factors(p, data.x_train, data.y_train) for _, p in self.weighted_]
            ),
            pair=lambda trains, held, _: sum(
                w * f.dots(t) for (w, _), f, t in zip(self.weighted_, trains, held)
            ),
        )


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

    summary = "gradient dot product at the final model"

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

    summary = "learning-rate-weighted gradient dot products over training checkpoints"

    def checkpoint_epochs(self, epochs: int) -> list[int]:
        """``checkpoints`` epochs evenly spaced over training, the last one the final model."""
        return evenly_spaced_epochs(self.config.checkpoints, epochs)

    def _epochs(self, epochs: int) -> list[int]:
        return self.checkpoint_epochs(epochs)

    def _weighted_params(self, model):
        chosen = checkpoints_or_error(model, self.checkpoint_epochs(model.epochs), "tracin")
        return [(c.lr, {k: v[0] for k, v in c.params.items()}) for c in chosen]
