"""Ensembles of models trained on random subsets: the config shared by the methods that read
them (Feldman–Zhang, counterfactual, LiRA, canaries, downsampling) and statistics over each
example's member models. A neutral module, so that neither family imports the other."""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from pydantic import ConfigDict, Field, ValidationInfo, field_validator

from mnemoscope.estimator import MethodConfig


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


def member_stats(values: torch.Tensor, members: torch.Tensor) -> tuple[np.ndarray, ...]:
    """Per example: mean and sample variance of ``values`` over the models in ``members``,
    and their count (NaN mean for none, NaN variance for fewer than two)."""
    count = members.sum(0).double()
    total = (values * members).sum(0)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = (total / count).numpy()
        squares = (((values - torch.from_numpy(mean)) ** 2) * members).sum(0).numpy()
        variance = squares / (count.numpy() - 1)
    variance[count.numpy() < 2] = np.nan
    return mean, variance, count.numpy()


def agresti_caffo(successes: np.ndarray, trials: np.ndarray) -> np.ndarray:
    """Variance term ``p̃(1−p̃)/(k+2)`` with ``p̃ = (x+1)/(k+2)`` (never 0)."""
    p = (successes + 1) / (trials + 2)
    return p * (1 - p) / (trials + 2)
