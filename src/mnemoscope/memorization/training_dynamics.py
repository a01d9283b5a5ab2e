"""Training-dynamics proxies of memorization: read from what the trainer records.

No extra training: each reads models trained on the whole training set (the same
ensemble as the gradient attributors when ``n_models`` is 1), averaging over the
``n_models`` models. The trainer records, for every model k, epoch e and example i,
the loss and correctness at the example's presentation (before that step's update),
and the final logits.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
from pydantic import ConfigDict, Field

from mnemoscope.data import Dataset
from mnemoscope.estimator import MethodConfig, PlanContext, Scores, register
from mnemoscope.memorization.base import MemorizationEstimator
from mnemoscope.task import Task
from mnemoscope.train import EnsembleSpec, TrainedEnsemble, full_masks

if TYPE_CHECKING:
    from typing import Self


class DynamicsConfig(MethodConfig):
    model_config = ConfigDict(extra="forbid", strict=True)

    n_models: int = Field(1, gt=0, le=1000)
    """Models trained on the whole set, each with its own initialisation and order;
    the score is their mean (1 shares the gradient attributors' model)."""


class _Dynamics(MemorizationEstimator):
    """Shared plumbing: one ensemble of full-data models, one value per model, averaged."""

    config: DynamicsConfig
    cost = "free: read from the records of models trained on the whole set"

    def ensembles(self, context: PlanContext) -> dict[str, EnsembleSpec]:
        return {"models": EnsembleSpec(full_masks(self.config.n_models, context.n_train))}

    def fit(self, ensembles, dataset: Dataset, task: Task, device="cpu") -> Self:
        self.ensemble_, self.dataset_, self.task_ = ensembles["models"], dataset, task
        return self

    def _per_model(self, ensemble: TrainedEnsemble, labels: torch.Tensor) -> torch.Tensor:
        """``[K, n]`` value of each model for each example."""
        raise NotImplementedError

    def score(self) -> Scores:
        values = self._per_model(self.ensemble_, self.dataset_.y_train).double()
        return Scores(
            self.name,
            self.family,
            self.dataset_.train_ids.numpy(),
            values.mean(0).numpy(),
            _stderr(values),
        )


def _stderr(values: torch.Tensor) -> np.ndarray | None:
    """Standard error of the mean over models; none with a single model."""
    if values.shape[0] < 2:
        return None
    return (values.std(0, unbiased=True) / values.shape[0] ** 0.5).numpy()


class CSLConfig(DynamicsConfig):
    method: Literal["csl"] = "csl"


@register
class CumulativeSampleLoss(_Dynamics):
    """Cumulative sample loss (Ravikumar et al. 2025): ``CSL_i = Σ_e ℓ_e(z_i)``, the sum
    over epochs of example i's loss when its minibatch was presented (before that
    step's update). Examples the model fits late or never, mislabeled and atypical
    ones, accumulate more: higher = more memorized. Not divided by the number of
    epochs; averaged over ``n_models``.

    Reference: D. Ravikumar et al., "Towards Memorization Estimation: Fast, Formal and
    Free", ICML 2025 (they report CSL tracking stability-based memorization closely).
    """

    name = "csl"
    config_class = CSLConfig
    reference = "Ravikumar et al. 2025, 'Towards Memorization Estimation: Fast, Formal and Free'"
    summary = "sum over epochs of the example's training loss"

    def _per_model(self, ensemble, labels):
        return ensemble.train_loss.double().sum(1)


class ForgettingConfig(DynamicsConfig):
    method: Literal["forgetting"] = "forgetting"


@register
class Forgetting(_Dynamics):
    """Forgetting events (Toneva et al. 2019, §3): the number of epochs e at which example
    i was classified correctly at its presentation in epoch e−1 and incorrectly in
    epoch e. An example never classified correctly is "unlearned" and gets E, more
    than any count of events can reach (at most ⌊E/2⌋), as Toneva et al. rank such
    examples first. Higher = more forgotten = more memorized. Averaged over ``n_models``.

    Reference: M. Toneva et al., "An Empirical Study of Example Forgetting during Deep
    Neural Network Learning", ICLR 2019, §3 (definition of a forgetting event).
    """

    name = "forgetting"
    config_class = ForgettingConfig
    reference = "Toneva et al. 2019, 'An Empirical Study of Example Forgetting', §3"
    summary = "correct → incorrect transitions between epochs (never learned: E)"

    def _per_model(self, ensemble, labels):
        correct = ensemble.train_correct  # [K, E, n]
        events = (correct[:, :-1] & ~correct[:, 1:]).sum(1).double()
        never = ~correct.any(1)
        return torch.where(never, float(correct.shape[1]), events)


class FinalLossConfig(DynamicsConfig):
    method: Literal["final_loss"] = "final_loss"


@register
class FinalLoss(_Dynamics):
    """The loss ``ℓ(z_i; θ_T)`` of the final model on its own training example (the
    task's cross-entropy). Higher = the model fits the example less well = harder,
    more atypical; the score of the loss attack of Yeom et al. (2018), with the sign
    flipped to higher = more vulnerable. Averaged over ``n_models``.

    Reference: S. Yeom et al., "Privacy Risk in Machine Learning: Analyzing the
    Connection to Overfitting", CSF 2018 (the loss as a membership signal).
    """

    name = "final_loss"
    config_class = FinalLossConfig
    reference = "Yeom et al. 2018 (loss as a membership/memorization signal)"
    summary = "final model's loss on the example"

    def _per_model(self, ensemble, labels):
        logits = ensemble.train_logits
        return self.task_.loss(logits, labels.expand(logits.shape[0], -1))


class MarginConfig(DynamicsConfig):
    method: Literal["margin"] = "margin"


@register
class NegativeMargin(_Dynamics):
    """Minus the final model's margin on example i: ``−(f_y(x_i) − max_{c≠y} f_c(x_i))``
    with ``y`` the trained label. The natural sign is flipped (a small or negative
    margin marks an example the model barely fits or gets wrong) so that higher = more
    memorized, as for every score. Averaged over ``n_models``.

    Reference: an operational proxy (no single paper defines it as a memorization
    score) and a common example-difficulty signal. Not TRAK's measurement: TRAK attributes
    the log-odds ``log(p/(1 − p))`` (the task's ``'log_odds'``), which Park et al. call
    the margin.
    """

    name = "margin"
    config_class = MarginConfig
    reference = "operational proxy: the classification margin (measured as in Park et al. 2023)"
    summary = "minus the final model's margin on the example (sign flipped)"

    def _per_model(self, ensemble, labels):
        logits = ensemble.train_logits
        return -self.task_.measure(logits, labels.expand(logits.shape[0], -1), "margin")
