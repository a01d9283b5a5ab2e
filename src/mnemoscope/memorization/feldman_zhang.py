"""Feldman–Zhang label memorization estimated by subsampling."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import numpy as np
from pydantic import ConfigDict, Field, ValidationInfo, field_validator

from mnemoscope.data import Dataset
from mnemoscope.estimator import MethodConfig, PlanContext, Scores, register
from mnemoscope.memorization.base import MemorizationEstimator
from mnemoscope.task import Task
from mnemoscope.train import EnsembleSpec, subset_masks

if TYPE_CHECKING:
    from typing import Self


class FeldmanZhangConfig(MethodConfig):
    """Strict: a string, a boolean or a non-finite number where a number is meant is refused."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    method: Literal["feldman_zhang"] = "feldman_zhang"
    n_models: int = Field(64, ge=2, le=100_000)
    """K, models trained on random subsets (≈100 for a quick look, 1000–4000 for a paper;
    at most 100 000)."""
    subset_fraction: float = Field(0.7, gt=0, lt=1, validate_default=True)
    """Fraction of the training set each model sees (Feldman & Zhang use 0.7). Refused
    when an example would more likely than not get no score: it is in no subset or in
    every one with probability ``(1 − f)^K + f^K``, which must be at most 0.5."""

    @field_validator("subset_fraction")
    @classmethod
    def _most_examples_scored(cls, fraction: float, info: ValidationInfo) -> float:
        k = info.data.get("n_models")
        if k is None:  # n_models itself was refused
            return fraction
        never, always = (1 - fraction) ** k, fraction**k
        if never + always > 0.5:
            fix = "subset_fraction" if never >= always else "lower subset_fraction"
            raise ValueError(
                f"subset_fraction {fraction:g} with n_models {k}: each example is in no subset "
                f"or in all {k} (and gets no score) with probability {never + always:.2g}; "
                f"raise n_models or {fix}"
            )
        return fraction


@register
class FeldmanZhang(MemorizationEstimator):
    """Label memorization of each training example (Feldman & Zhang 2020, Alg. 1).

    ``mem_i = mean_{k: M_ki=1} c_ki − mean_{k: M_ki=0} c_ki`` with ``c_ki = 1[argmax
    f_θk(x_i) = y_i]`` for the final model k, ``y_i`` the label trained on (after
    noise), ``M`` the ``[K, n]`` subset masks. The score lies in ``[−1, 1]``; higher
    means the model gets the example right only when it has seen it: memorized.

    ``stderr_i = sqrt(p_in(1−p_in)/k_in + p_out(1−p_out)/k_out)`` (the difference of
    two independent binomial proportions). An example never in (or never out of) a
    subset gets NaN score and stderr: with K models at fraction 0.7 this has
    probability ``0.3^K + 0.7^K``.

    Cost: K trainings on ``subset_fraction · n`` examples; the scores themselves are
    free (correctness is recorded by the trainer).

    Reference: V. Feldman and C. Zhang, "What Neural Networks Memorize and Why:
    Discovering the Long Tail via Influence Estimation", NeurIPS 2020, Alg. 1 and eq. (1).
    """

    name = "feldman_zhang"
    config_class = FeldmanZhangConfig
    cost = "K trainings on subsets (K = n_models); no gradients"
    reference = "Feldman & Zhang 2020, 'What Neural Networks Memorize and Why', Alg. 1"
    config: FeldmanZhangConfig

    summary = "accuracy on an example when trained with it minus without it (subsets)"

    def ensembles(self, context: PlanContext) -> dict[str, EnsembleSpec]:
        masks = subset_masks(
            self.config.n_models, context.n_train, self.config.subset_fraction, context.seed
        )
        return {"subsets": EnsembleSpec(masks)}

    def fit(self, ensembles, dataset: Dataset, task: Task, device="cpu") -> Self:
        self.ensemble_ = ensembles["subsets"]
        self.dataset_ = dataset
        return self

    def score(self) -> Scores:
        ensemble, dataset = self.ensemble_, self.dataset_
        labels = dataset.y_train.to(ensemble.train_logits.device)
        correct = (ensemble.train_logits.argmax(-1) == labels).double()  # [K, n], final models
        inside = ensemble.masks.double()
        k_in, k_out = inside.sum(0), (1 - inside).sum(0)
        with np.errstate(divide="ignore", invalid="ignore"):
            p_in = ((correct * inside).sum(0) / k_in).numpy()
            p_out = ((correct * (1 - inside)).sum(0) / k_out).numpy()
            stderr = np.sqrt(p_in * (1 - p_in) / k_in.numpy() + p_out * (1 - p_out) / k_out.numpy())
        return Scores(
            method=self.name,
            family=self.family,
            example_ids=dataset.train_ids.numpy(),
            score=p_in - p_out,
            stderr=stderr,
        )
