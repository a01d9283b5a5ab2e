"""Canary exposure: how much more the models that trained on a canary react to its
unique feature than the models that did not."""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from pydantic import Field

from mnemoscope.errors import ConfigError
from mnemoscope.estimator import Scores, register
from mnemoscope.memorization.counterfactual import member_stats
from mnemoscope.memorization.feldman_zhang import FeldmanZhang, FeldmanZhangConfig


class CanaryConfig(FeldmanZhangConfig):
    method: Literal["canary"] = "canary"  # type: ignore[assignment]
    n_ood: int = Field(200, ge=1, le=1_000_000)
    """Held-out inputs the canaries' patterns are stamped on (the first of the test split)."""
    reaction: Literal["label_shift", "probability_shift", "kl"] = "label_shift"
    """``label_shift``: rise of the log-probability of the canary's label when its pattern
    is stamped on; ``probability_shift``: rise of its probability (bounded in [−1, 1], so
    comparable between models whose logits differ in scale, as DP-SGD's noise makes
    them); ``kl``: KL divergence of the outputs with the pattern from those without
    (direction-blind: any large perturbation moves the outputs of every model)."""


def _kl(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    """``KL(p ‖ q)`` of the softmaxes of two ``[..., C]`` logit tensors → ``[...]``."""
    log_p = torch.log_softmax(p_logits.double(), -1)
    log_q = torch.log_softmax(q_logits.double(), -1)
    return (log_p.exp() * (log_p - log_q)).sum(-1)


@register
class Canary(FeldmanZhang):
    """Unique-feature memorization of planted canaries (after Hartley & Tsaftaris 2022).

    The dataset's ``canaries`` entry turns a few training examples of one class into
    canaries: each gets a pattern of its own and a label only memorization explains
    (see ``docs/methods.md``). For canary c with label ``y_c`` and model k, the reaction
    to c's feature over ``n_ood`` held-out inputs x (inputs no model trained on) with the
    pattern stamped on (``x ⊕ pattern_c``) is

    ``r_kc = mean_x [log p_θk(y_c | x ⊕ pattern_c) − log p_θk(y_c | x)]`` (``label_shift``),
    ``r_kc = mean_x [p_θk(y_c | x ⊕ pattern_c) − p_θk(y_c | x)]`` (``probability_shift``:
    bounded, for models whose logit scales differ: under DP-SGD at ε = 1 on digits the
    label shift of single models reached hundreds of nats either way, pure noise)

    or ``r_kc = mean_x KL(p_θk(· | x ⊕ pattern_c) ‖ p_θk(· | x))`` (``kl``, Hartley &
    Tsaftaris's measure). The KL also grows for models that never saw the canary (a
    strong pattern moves any model's outputs), so its in − out difference is noisier:
    on digits with K = 16 it was positive for 4 of 5 canaries, the label shift for 5 of
    5 (in ≈ +8 to +11 nats, out ≈ −3 to −20). The score is ``mean_{k: c ∈ S_k} r_kc − mean_{k: c ∉ S_k} r_kc``:
    how much more the models that trained on the canary react to its feature than
    those that did not (higher = more memorized; not divided by n), with a Welch
    stderr. Only canaries get a score (rows of ``scores.parquet`` for them alone); the
    canaries' other memorization scores (``feldman_zhang``, ``lira``…) are read from the
    same table, with ``examples.parquet``'s ``is_canary``.

    Cost: the subset ensemble (shared with ``feldman_zhang`` at equal K and fraction)
    and K forward passes over ``n_ood`` inputs per canary.

    Reference: J. Hartley, S. A. Tsaftaris, "Measuring Unintended Memorisation of Unique
    Private Features in Neural Networks" (arXiv 2202.08099, 2022), §3 (KL of the output
    distributions with and without the feature); the label shift is ours.
    """

    name = "canary"
    config_class = CanaryConfig
    cost = "the subset ensemble; K forward passes over n_ood inputs per canary"
    reference = (
        "Hartley & Tsaftaris 2022, 'Measuring Unintended Memorisation of Unique Private Features'"
    )
    summary = "reaction to a canary's unique feature, trained with it minus without"
    config: CanaryConfig

    def fit(self, ensembles, dataset, task, device="cpu"):
        if dataset.canaries is None:
            raise ConfigError(
                f"memorization.canary: dataset '{dataset.name}' has no canaries; add "
                "'canaries: {n: 5, class: 0}' to its entry"
            )
        self.device_ = device
        return super().fit(ensembles, dataset, task, device)

    def reactions(self) -> torch.Tensor:
        """``[K, c]``: each model's mean reaction to each canary's pattern."""
        data, ensemble = self.dataset_, self.ensemble_
        canaries = data.canaries
        x = data.x_test[: self.config.n_ood]
        plain = ensemble.logits(x, self.device_).cpu()  # [K, N, C]
        columns = []
        for c, i in enumerate(canaries.index.tolist()):
            stamped = ensemble.logits(canaries.stamp(x, c), self.device_).cpu()
            if self.config.reaction == "kl":
                columns.append(_kl(stamped, plain).mean(-1))
            else:
                label = data.y_train[i]
                after = torch.log_softmax(stamped.double(), -1)[..., label]
                before = torch.log_softmax(plain.double(), -1)[..., label]
                if self.config.reaction == "probability_shift":
                    after, before = after.exp(), before.exp()
                columns.append((after - before).mean(-1))
        return torch.stack(columns, dim=1)

    def score(self) -> Scores:
        canaries = self.dataset_.canaries
        reaction = self.reactions()
        inside = self.ensemble_.masks[:, canaries.index]
        mean_in, var_in, k_in = member_stats(reaction, inside)
        mean_out, var_out, k_out = member_stats(reaction, ~inside)
        with np.errstate(divide="ignore", invalid="ignore"):
            stderr = np.sqrt(var_in / k_in + var_out / k_out)
        ids = self.dataset_.train_ids[canaries.index].numpy()
        return Scores(self.name, self.family, ids, mean_in - mean_out, stderr)
