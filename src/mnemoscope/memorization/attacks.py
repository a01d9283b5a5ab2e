"""Membership-inference attack statistics and their metrics, as pure functions.

Everything works on ``[K, n]`` arrays over an ensemble of K models trained on
subsets (``masks[k, i]``: example i was in model k's training set). Attack metrics
take each model in turn as the *target* and the other K − 1 as *reference* (shadow)
models (leave-one-model-out), and pool the (target model, example) pairs into one
ROC curve: members are the pairs with ``masks[k, i] = 1``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.metrics import roc_auc_score, roc_curve

LOW_FPRS = (0.001, 0.01)
ROC_FPRS = tuple(float(f) for f in np.logspace(-4, 0, 41))
"""The false-positive rates at which ``attack_roc.parquet`` samples each attack's ROC
curve: 10 per decade from 10⁻⁴ to 1, for log–log axes."""


def logit_confidence(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """LiRA's logit-scaled confidence ``φ = log p_y − log Σ_{y'≠y} p_{y'}``.

    Computed from the logits as ``z_y − logsumexp_{y'≠y} z_{y'}`` (exact and stable:
    no probability is ever rounded to 0 or 1). ``[..., C]`` logits, ``[...]`` labels →
    ``[...]`` float64.
    """
    z = logits.double()
    true = z.gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    others = z.scatter(-1, labels.unsqueeze(-1), float("-inf"))
    return true - torch.logsumexp(others, dim=-1)


@dataclass(frozen=True)
class Gaussians:
    """Per-example IN and OUT Gaussians fitted on reference models (``[..., n]`` each)."""

    mean_in: torch.Tensor
    std_in: torch.Tensor
    mean_out: torch.Tensor
    std_out: torch.Tensor


def _moments(count, total, squares, global_variance: bool):
    """Mean and std from a group's count, sum and sum of squares (``[..., n]`` each).

    Per-example sample variance (ddof 1; NaN below two models), or, with
    ``global_variance``, the mean of the per-example variances over examples: one σ for
    every example, fewer parameters to estimate from few models (Carlini et al. 2022,
    §VI-C, advise it below 64 models)."""
    mean = total / count
    variance = (squares - total * mean) / (count - 1)
    variance = torch.where(count >= 2, variance.clamp_min(0), torch.nan)
    if global_variance:
        pooled = torch.nanmean(variance, dim=-1, keepdim=True)
        variance = pooled.expand_as(variance)
    return mean, variance.sqrt()


def _sums(phi: torch.Tensor, members: torch.Tensor):
    """Per-model contributions ``(m, m·φ, m·φ²)``, each ``[K, n]``."""
    return members, members * phi, members * phi**2


def fit_gaussians(phi: torch.Tensor, masks: torch.Tensor, global_variance: bool) -> Gaussians:
    """IN/OUT Gaussians of each example's confidence over all K models (``[n]`` each)."""
    members = masks.double()
    fitted = []
    for group in (members, 1 - members):
        fitted += _moments(*(part.sum(0) for part in _sums(phi, group)), global_variance)
    return Gaussians(*fitted)


def leave_one_model_out(phi: torch.Tensor, masks: torch.Tensor, global_variance: bool) -> Gaussians:
    """For each target model k, the Gaussians fitted on the other K − 1 (``[K, n]`` each).

    The K reference sets differ from the whole ensemble by one model, whose
    contribution is subtracted from the sums: O(K·n), no K² loop."""
    members = masks.double()
    fitted = []
    for group in (members, 1 - members):
        parts = _sums(phi, group)
        fitted += _moments(*(part.sum(0) - part for part in parts), global_variance)
    return Gaussians(*fitted)


def _log_normal(x, mean, std):
    return -0.5 * ((x - mean) / std) ** 2 - torch.log(std) - 0.5 * math.log(2 * math.pi)


def lira_statistic(phi: torch.Tensor, fitted: Gaussians, variant: str) -> torch.Tensor:
    """Membership evidence of each observed confidence (higher = more likely a member).

    ``online``: the likelihood ratio ``log N(φ; μ_in, σ_in²) − log N(φ; μ_out, σ_out²)``
    (Carlini et al. 2022, Alg. 1). ``offline``: ``−log Pr[Z > φ]``, ``Z ~ N(μ_out,
    σ_out²)``, a one-sided test against the OUT models only (§VI-C)."""
    if variant == "online":
        return _log_normal(phi, fitted.mean_in, fitted.std_in) - _log_normal(
            phi, fitted.mean_out, fitted.std_out
        )
    if variant == "offline":
        z = (phi - fitted.mean_out) / fitted.std_out
        return -torch.special.log_ndtr(-z)  # −log(1 − Φ(z)), stable in the far tail
    raise ValueError(f"unknown LiRA variant {variant!r}; expected 'online' or 'offline'")


def privacy_score(fitted: Gaussians) -> torch.Tensor:
    """Per-example vulnerability ``d_i = |μ_in − μ_out| / (σ_in + σ_out)`` (Carlini et al.
    2022, §VII-B): how far apart the IN and OUT confidence distributions are."""
    return (fitted.mean_in - fitted.mean_out).abs() / (fitted.std_in + fitted.std_out)


@dataclass(frozen=True)
class AttackMetrics:
    """ROC summary of an attack: AUC and TPR at 0.1% and 1% FPR over the pooled pairs."""

    auc: float
    tpr_at_0_1pct_fpr: float
    tpr_at_1pct_fpr: float
    n_pairs: int


def roc_on_grid(
    statistic: np.ndarray, is_member: np.ndarray, fprs: tuple[float, ...] = ROC_FPRS
) -> np.ndarray:
    """``[len(fprs)]`` TPR of ``statistic`` (higher = member) at each FPR of ``fprs``: the
    highest TPR of a threshold whose FPR is at most it, as :func:`attack_metrics` reads
    its two low-FPR points; NaN when one class is absent. Non-finite statistics are
    dropped."""
    statistic = np.asarray(statistic, dtype=np.float64).ravel()
    is_member = np.asarray(is_member, dtype=bool).ravel()
    kept = np.isfinite(statistic)
    statistic, is_member = statistic[kept], is_member[kept]
    if is_member.all() or not is_member.any():
        return np.full(len(fprs), np.nan)
    fpr, tpr, _ = roc_curve(is_member, statistic)
    return np.array([float(tpr[fpr <= alpha].max()) for alpha in fprs])


def attack_metrics(statistic: np.ndarray, is_member: np.ndarray) -> AttackMetrics:
    """ROC metrics of ``statistic`` (higher = member) for ``is_member``; non-finite
    statistics are dropped. TPR at FPR α is the highest TPR of a threshold whose FPR is at
    most α (Carlini et al. 2022 report the same)."""
    statistic = np.asarray(statistic, dtype=np.float64).ravel()
    is_member = np.asarray(is_member, dtype=bool).ravel()
    kept = np.isfinite(statistic)
    statistic, is_member = statistic[kept], is_member[kept]
    if is_member.all() or not is_member.any():
        return AttackMetrics(float("nan"), float("nan"), float("nan"), int(kept.sum()))
    fpr, tpr, _ = roc_curve(is_member, statistic)
    low = [float(tpr[fpr <= alpha].max()) for alpha in LOW_FPRS]
    return AttackMetrics(float(roc_auc_score(is_member, statistic)), *low, int(kept.sum()))
