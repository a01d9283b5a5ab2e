"""Feldman–Zhang label memorization estimated by subsampling."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from mnemoscope.data import Dataset
from mnemoscope.estimator import PlanContext, Scores, register
from mnemoscope.memorization.base import MemorizationEstimator
from mnemoscope.subsets import FeldmanZhangConfig, agresti_caffo
from mnemoscope.task import Task
from mnemoscope.train import EnsembleSpec, subset_masks

if TYPE_CHECKING:
    from typing import Self


@register
class FeldmanZhang(MemorizationEstimator):
    """Label memorization of each training example (Feldman & Zhang 2020, Alg. 1).

    ``mem_i = mean_{k: M_ki=1} c_ki − mean_{k: M_ki=0} c_ki`` with ``c_ki = 1[argmax
    f_θk(x_i) = y_i]`` for the final model k, ``y_i`` the label trained on (after
    noise), ``M`` the ``[K, n]`` subset masks. The score lies in ``[−1, 1]``; higher
    means the model gets the example right only when it has seen it: memorized.

    ``stderr_i`` is the Agresti–Caffo standard error of a difference of two binomial
    proportions: one success and one failure are added to each group,
    ``p̃ = (x + 1)/(k + 2)``, ``stderr = sqrt(p̃_in(1−p̃_in)/(k_in+2) + p̃_out(1−p̃_out)/(k_out+2))``.
    The plain (Wald) formula is 0 whenever both proportions are 0 or 1, most examples
    at small K, which overstates precision; ``score ± 1.96·stderr`` is the Agresti–Caffo
    95% interval (Agresti & Caffo 2000, The American Statistician 54(4)). An example
    never in (or never out of) a subset gets NaN score and stderr: with K models at
    fraction f this has probability ``f^K + (1−f)^K``.

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
        self.task_ = task
        return self

    def score(self) -> Scores:
        ensemble, dataset = self.ensemble_, self.dataset_
        labels = dataset.y_train.to(ensemble.train_logits.device)
        correct = (ensemble.train_logits.argmax(-1) == labels).double()  # [K, n], final models
        inside = ensemble.masks.double()
        k_in, k_out = inside.sum(0), (1 - inside).sum(0)
        x_in, x_out = (correct * inside).sum(0).numpy(), (correct * (1 - inside)).sum(0).numpy()
        k_in, k_out = k_in.numpy(), k_out.numpy()
        with np.errstate(divide="ignore", invalid="ignore"):
            p_in, p_out = x_in / k_in, x_out / k_out
        stderr = np.sqrt(agresti_caffo(x_in, k_in) + agresti_caffo(x_out, k_out))
        stderr[(k_in == 0) | (k_out == 0)] = np.nan
        return Scores(
            method=self.name,
            family=self.family,
            example_ids=dataset.train_ids.numpy(),
            score=p_in - p_out,
            stderr=stderr,
        )
