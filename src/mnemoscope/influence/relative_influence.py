"""Influence functions normalised or measured differently: RelatIF (Barshan et al. 2020)
and classification influence (the target's margin instead of its loss), both on the
exact damped inverse of :class:`~mnemoscope.influence.influence_functions.IFExact`."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Literal

import torch

from mnemoscope.errors import ConfigError
from mnemoscope.estimator import register
from mnemoscope.influence.curvature import (
    numerical_zero,
)
from mnemoscope.task import Measurement

if TYPE_CHECKING:
    pass

from mnemoscope.influence.influence_functions import IFExact, IFExactConfig


class RelatIFConfig(IFExactConfig):
    method: Literal["relatif"] = "relatif"  # type: ignore[assignment]
    normalisation: Literal["theta", "loss"] = "theta"
    """Divide by ‖A⁻¹∇ℓ(z_i)‖ ('theta') or by sqrt(∇ℓ(z_i)ᵀA⁻¹∇ℓ(z_i)) ('loss')."""


class ClassificationInfluenceConfig(IFExactConfig):
    method: Literal["classification_influence"] = "classification_influence"  # type: ignore[assignment]


@register
class RelatIF(IFExact):
    """RelatIF (Barshan, Brunet & Dziugaite 2020, "RelatIF: Identifying Explanatory
    Training Examples via Relative Influence", AISTATS; θ-relative and ℓ-relative
    influence; only the abstract was available to us, so no equation numbers are given):
    influence relative to how much the example moves the model, so examples with a large
    effect on everything do not dominate.

    ``normalisation: theta``: ``I(i, z) / ‖A⁻¹∇ℓ(z_i)‖`` (θ-relative);
    ``normalisation: loss``: ``I(i, z) / sqrt(∇ℓ(z_i)ᵀ A⁻¹ ∇ℓ(z_i))`` (ℓ-relative),
    with ``I`` the ``if_exact`` influence (÷ n) and A = H + l2·I + λI.
    Self-influence ``(1/n) ∇ℓ(z_i)ᵀA⁻¹∇ℓ(z_i) / ‖A⁻¹∇ℓ(z_i)‖`` (theta) or
    ``(1/n) sqrt(∇ℓ(z_i)ᵀA⁻¹∇ℓ(z_i))`` (loss). Same sign as ``if_exact``; an example
    with a zero gradient scores 0. The 'loss' normalisation needs A positive
    semi-definite (a :class:`ConfigError` otherwise).

    Cost: as ``if_exact`` plus one solve per training example in the fit (the
    divisors, cached).
    """

    name = "relatif"
    config_class = RelatIFConfig
    cost = "as if_exact, plus n solves for the divisors"
    reference = "Barshan, Brunet & Dziugaite 2020, 'RelatIF', AISTATS (θ- and ℓ-relative)"
    summary = "influence function divided by the example's own effect on θ or on its loss"
    config: RelatIFConfig
    _cached = ("eigenvalues", "eigenvectors", "divisor")

    def _fit_curvature(self) -> None:
        super()._fit_curvature()
        smallest = float(self.eigenvalues_.min())
        if self.config.normalisation == "loss" and smallest < -numerical_zero(
            self.eigenvalues_, self.curvature_.n_params
        ):
            raise ConfigError(
                f"normalisation: 'loss' needs H + l2·I + λI positive definite (smallest "
                f"eigenvalue {smallest:.3g}); raise damping or use "
                "hessian: gauss_newton"
            )
        parts = []
        for g, _ in self._train_grads():
            solved = self.solve(g)
            if self.config.normalisation == "theta":
                parts.append(solved.norm(dim=1))
            else:
                parts.append((g * solved).sum(1).sqrt())
        divisor = torch.cat(parts)
        # a zero gradient has zero influence on everything: 0, not 0/0
        self.divisor_ = torch.where(divisor > 0, divisor, torch.ones_like(divisor))

    def _normaliser(self) -> torch.Tensor:
        return self.divisor_


@register
class ClassificationInfluence(IFExact):
    """Influence of training examples on a target's classification margin (our
    operational reading of Kounavis, Dia & Ramazanli 2023, arXiv 2305.16094, of which
    only the abstract was available to us).

    ``I(i, z) = −(1/n) ∇m(z)ᵀ (H + l2·I + λI)⁻¹ ∇ℓ(z_i)`` with m the margin (true-class
    logit minus the largest other logit); ``−I ≈ m(z; θ̂_{−i}) − m(z; θ̂)``, so positive
    means removing z_i would lower the target's margin (hurt it), the sign convention of
    every attributor. Divided by n. Self-influence uses the example's own margin
    gradient: ``−(1/n) ∇m(z_i)ᵀ A⁻¹ ∇ℓ(z_i)``.

    Cost: as ``if_exact`` plus one margin gradient per example.
    """

    name = "classification_influence"
    config_class = ClassificationInfluenceConfig
    cost = "as if_exact, with margin gradients for the targets"
    reference = "Kounavis, Dia & Ramazanli 2023, arXiv 2305.16094 (operational reading)"
    summary = "influence function on the target's classification margin instead of its loss"
    measurement: ClassVar[Measurement] = "margin"
    sign: ClassVar[float] = -1.0
