"""Per-example membership-inference vulnerability: LiRA and the loss attack."""

from __future__ import annotations

from typing import Literal

import numpy as np
import pandas as pd
import torch
from pydantic import Field

from mnemoscope.estimator import Scores, register
from mnemoscope.memorization.attacks import (
    ROC_FPRS,
    attack_metrics,
    fit_gaussians,
    leave_one_model_out,
    lira_statistic,
    logit_confidence,
    privacy_score,
    roc_on_grid,
)
from mnemoscope.memorization.feldman_zhang import FeldmanZhang, FeldmanZhangConfig

GLOBAL_VARIANCE_BELOW = 64
"""With fewer models than this, ``global_variance: auto`` pools one σ over examples."""


class LiraConfig(FeldmanZhangConfig):
    method: Literal["lira"] = "lira"  # type: ignore[assignment]
    n_models: int = Field(64, ge=4, le=100_000)
    """K models on random halves; each is the target once, the other K − 1 its reference
    models, so at least 4 (Carlini et al. use 64–256)."""
    subset_fraction: float = Field(0.5, gt=0, lt=1, validate_default=True)
    """Fraction each model sees (0.5 in the paper: as many IN as OUT models per example).
    With the same ``n_models`` and fraction as ``feldman_zhang`` / ``counterfactual``, the
    ensemble is shared."""
    variant: Literal["online", "offline", "both"] = "both"
    """Which attack goes to ``attacks.parquet``: ``online`` (IN and OUT Gaussians),
    ``offline`` (OUT only) or ``both`` (two rows)."""
    global_variance: Literal["auto"] | bool = "auto"
    """One σ for all examples instead of one per example; ``auto``: when K < 64."""


class LossAttackConfig(FeldmanZhangConfig):
    method: Literal["loss_attack"] = "loss_attack"  # type: ignore[assignment]
    n_models: int = Field(64, ge=2, le=100_000)
    """K models on random subsets, each attacked in turn."""
    subset_fraction: float = Field(0.5, gt=0, lt=1, validate_default=True)
    """Fraction each model sees; equal ``n_models`` and fraction share LiRA's ensemble."""


def _roc_rows(method: str, variant: str, statistic, masks) -> pd.DataFrame:
    """Rows of ``attack_roc``: the attack's TPR at each FPR of ``ROC_FPRS``."""
    tpr = roc_on_grid(statistic.numpy(), masks.numpy())
    return pd.DataFrame(
        {"method": method, "variant": variant, "fpr": np.array(ROC_FPRS), "tpr": tpr}
    )


def _attack_row(method: str, variant: str, statistic, masks, n_models: int) -> dict:
    metrics = attack_metrics(statistic.numpy(), masks.numpy())
    return {
        "method": method,
        "variant": variant,
        "auc": metrics.auc,
        "tpr_at_0_1pct_fpr": metrics.tpr_at_0_1pct_fpr,
        "tpr_at_1pct_fpr": metrics.tpr_at_1pct_fpr,
        "n_models": n_models,
    }


@register
class Lira(FeldmanZhang):
    """Likelihood-ratio membership inference (LiRA, Carlini et al. 2022) on the subset
    ensemble, with each example's privacy score.

    Each model's confidence in the trained label is ``φ_ki = log p_k(y_i|x_i) − log
    Σ_{y'≠y_i} p_k(y'|x_i)`` (logit scaling, §VI-A). For each example, Gaussians are
    fitted to φ over the models that trained on it (IN) and those that did not (OUT).

    **Score** (``scores.parquet``): ``d_i = |μ_in − μ_out| / (σ_in + σ_out)`` over all K
    models (§VII-B): how distinguishable membership of i is. Higher = more vulnerable;
    not divided by n; NaN for an example in no subset or in all. No stderr.

    **Attack** (``attacks.parquet``): each model k in turn is the target and the other
    K − 1 the reference models (leave-one-model-out). Online: ``log N(φ_ki; μ_in, σ_in²)
    − log N(φ_ki; μ_out, σ_out²)`` (Alg. 1); offline: ``−log Pr[Z > φ_ki]``, ``Z ~
    N(μ_out, σ_out²)``. Pooled over the K·n (model, example) pairs, members being the
    pairs with ``M_ki = 1``: ROC AUC and TPR at 0.1% and 1% FPR. With fewer than 64
    models one variance is pooled over examples (the mean of the per-example variances;
    ``global_variance``).

    Cost: the subset ensemble (shared with ``feldman_zhang`` / ``counterfactual`` at
    equal K and fraction); the scores are free.

    Reference: N. Carlini, S. Chien, M. Nasr, S. Song, A. Terzis, F. Tramèr, "Membership
    Inference Attacks From First Principles", IEEE S&P 2022, Alg. 1, §VI-A/C, §VII-B.
    """

    name = "lira"
    config_class = LiraConfig
    cost = "K trainings on halves (shared at equal K and fraction); no gradients"
    reference = "Carlini et al. 2022, 'Membership Inference Attacks From First Principles', Alg. 1"
    summary = "LiRA per-example privacy score d, and attack AUC / TPR at low FPR"
    extra_tables = ("attacks", "attack_roc")
    config: LiraConfig

    def _confidence(self) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.ensemble_.train_logits
        labels = self.dataset_.y_train.expand(logits.shape[0], -1)
        return logit_confidence(logits, labels), self.ensemble_.masks

    def _global(self, n_models: int) -> bool:
        choice = self.config.global_variance
        return n_models < GLOBAL_VARIANCE_BELOW if choice == "auto" else choice

    def score(self) -> Scores:
        phi, masks = self._confidence()
        fitted = fit_gaussians(phi, masks, self._global(phi.shape[0]))
        d = privacy_score(fitted).numpy()
        return Scores(self.name, self.family, self.dataset_.train_ids.numpy(), d)

    def _statistics(self) -> dict[str, torch.Tensor]:
        """Each variant's attack statistic ``[K, n]``, computed once per fitted ensemble
        (both tables read it)."""
        cached = getattr(self, "statistics_", None)
        if cached is None or cached[0] is not self.ensemble_:
            phi, masks = self._confidence()
            reference = leave_one_model_out(phi, masks, self._global(phi.shape[0] - 1))
            both = self.config.variant == "both"
            variants = ["online", "offline"] if both else [self.config.variant]
            cached = (self.ensemble_, {v: lira_statistic(phi, reference, v) for v in variants})
            self.statistics_ = cached
        return cached[1]

    def table_rows(self, table: str) -> pd.DataFrame:
        masks, k = self.ensemble_.masks, self.ensemble_.masks.shape[0]
        statistics = self._statistics()
        if table == "attack_roc":
            return pd.concat(
                [_roc_rows(self.name, v, s, masks) for v, s in statistics.items()],
                ignore_index=True,
            )
        return pd.DataFrame([_attack_row(self.name, v, s, masks, k) for v, s in statistics.items()])


@register
class LossAttack(FeldmanZhang):
    """The loss-threshold membership attack (Yeom et al. 2018), as a baseline for LiRA.

    The attack calls z a member of model k when ``−ℓ(z; θ_k)`` exceeds a threshold:
    members were trained on, so their loss is lower.

    **Score** (``scores.parquet``): ``mean_{k: M_ki=1} −ℓ(z_i; θ_k)``, the attack's
    statistic averaged over the models that trained on i (higher = lower training loss =
    more readily called a member). Not divided by n; no stderr.

    **Attack** (``attacks.parquet``, variant ``loss``): every threshold over the K·n
    pooled (model, example) pairs: ROC AUC and TPR at 0.1% and 1% FPR. No reference
    models are needed, so the loss of an example that is hard for every model looks
    like that of a non-member: the attack is weak at low FPR (Carlini et al. 2022, §III).

    Cost: the subset ensemble (shared with ``lira`` at equal K and fraction); free.

    Reference: S. Yeom, I. Giacomelli, M. Fredrikson, S. Jha, "Privacy Risk in Machine
    Learning: Analyzing the Connection to Overfitting", CSF 2018, §3.2 (Alg. 1).
    """

    name = "loss_attack"
    config_class = LossAttackConfig
    cost = "K trainings on subsets (shared at equal K and fraction); no gradients"
    reference = "Yeom et al. 2018, 'Privacy Risk in Machine Learning', Alg. 1"
    summary = "loss-threshold membership attack (baseline): −loss, attack AUC / TPR"
    extra_tables = ("attacks", "attack_roc")
    config: LossAttackConfig

    def _neg_loss(self) -> torch.Tensor:
        logits = self.ensemble_.train_logits.double()
        labels = self.dataset_.y_train.expand(logits.shape[0], -1)
        return -self.task_.measure(logits, labels, "loss")

    def score(self) -> Scores:
        neg_loss, members = self._neg_loss(), self.ensemble_.masks.double()
        with np.errstate(divide="ignore", invalid="ignore"):
            mean = ((neg_loss * members).sum(0) / members.sum(0)).numpy()
        return Scores(self.name, self.family, self.dataset_.train_ids.numpy(), mean)

    def table_rows(self, table: str) -> pd.DataFrame:
        neg_loss, masks = self._neg_loss(), self.ensemble_.masks
        if table == "attack_roc":
            return _roc_rows(self.name, "loss", neg_loss, masks)
        return pd.DataFrame([_attack_row(self.name, "loss", neg_loss, masks, neg_loss.shape[0])])
