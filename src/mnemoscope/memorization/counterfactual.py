"""Counterfactual memorization: the Feldman–Zhang difference on a soft measurement."""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field

from mnemoscope.estimator import Scores, register
from mnemoscope.memorization.feldman_zhang import FeldmanZhang, FeldmanZhangConfig
from mnemoscope.subsets import member_stats


class CounterfactualConfig(FeldmanZhangConfig):
    method: Literal["counterfactual"] = "counterfactual"  # type: ignore[assignment]
    subset_fraction: float = Field(0.5, gt=0, lt=1, validate_default=True)
    """Fraction of the training set each model sees (Zhang et al. use 0.25–0.5). With the
    same ``n_models`` and fraction as another subset method, the ensemble is shared."""
    measure: Literal["probability", "neg_loss"] = "probability"
    """``probability``: the softmax probability of the trained label; ``neg_loss``: minus
    its cross-entropy (unbounded, more sensitive to confident mistakes)."""


@register
class Counterfactual(FeldmanZhang):
    """Counterfactual memorization (Zhang et al. 2023, eq. 1): how much better the models
    trained with example i do on it than the models trained without it,

    ``mem_i = mean_{k: M_ki=1} m_ki − mean_{k: M_ki=0} m_ki``

    with ``m_ki = p_θk(y_i | x_i)`` (``measure: probability``, the score then in [−1, 1])
    or ``−ℓ(z_i; θ_k)`` (``measure: neg_loss``), on the final models of the subset
    ensemble. It is the Feldman–Zhang estimator with a soft measurement instead of
    correctness. Higher = more memorized; not divided by n.

    ``stderr_i = sqrt(s²_in/k_in + s²_out/k_out)`` with the sample variances of the
    measurement in each group (Welch); NaN where a group has fewer than two models,
    and the score is NaN where a group is empty.

    Cost: the subset ensemble (shared with ``feldman_zhang`` / ``lira`` when
    ``n_models`` and ``subset_fraction`` agree); the score itself is free.

    Reference: C. Zhang, D. Ippolito, K. Lee, M. Jagielski, F. Tramèr, N. Carlini,
    "Counterfactual Memorization in Neural Language Models", NeurIPS 2023, eq. (1).
    """

    name = "counterfactual"
    config_class = CounterfactualConfig
    cost = "K trainings on subsets (shared with feldman_zhang at equal K and fraction)"
    reference = "Zhang et al. 2023, 'Counterfactual Memorization in Neural Language Models', eq. 1"
    summary = "true-label probability (or −loss) trained with the example minus without it"
    config: CounterfactualConfig

    def score(self) -> Scores:
        ensemble, dataset = self.ensemble_, self.dataset_
        logits = ensemble.train_logits.double()
        labels = dataset.y_train.expand(logits.shape[0], -1)
        kind = "probability" if self.config.measure == "probability" else "loss"
        measured = self.task_.measure(logits, labels, kind)  # [K, n]
        if self.config.measure == "neg_loss":
            measured = -measured
        inside = ensemble.masks
        mean_in, var_in, k_in = member_stats(measured, inside)
        mean_out, var_out, k_out = member_stats(measured, ~inside)
        with np.errstate(divide="ignore", invalid="ignore"):
            stderr = np.sqrt(var_in / k_in + var_out / k_out)
        return Scores(self.name, self.family, dataset.train_ids.numpy(), mean_in - mean_out, stderr)
