"""mnemoscope.testing.check_estimator over every registered estimator (the contract the
runner and the public classes rely on), and on estimators broken on purpose: it must
catch them."""

from __future__ import annotations

import pytest

import mnemoscope.attributors  # noqa: F401  (registers every method)
from mnemoscope.estimator import REGISTRY, MethodConfig, Scores
from mnemoscope.influence import GradDot, GradDotConfig
from mnemoscope.testing import check_bad_settings, check_estimator

SMALL = {  # settings that keep each check to about a second
    "canary": {"n_models": 8, "n_ood": 20},
    "counterfactual": {"n_models": 8},
    "downsampling": {"n_models": 8},
    "feldman_zhang": {"n_models": 8},
    "lira": {"n_models": 8},
    "loss_attack": {"n_models": 8},
    "loo": {"n_examples": 20, "repeats": 1},
    "trak": {"n_models": 2, "proj_dim": 64},
    "tracin": {"checkpoints": 3},
    "if_lissa": {"depth": 30, "sample_size": 64},
    "if_cg": {"max_iterations": 50, "damping": 0.01},
    "sample_info_function": {"n_eval": 20, "proj_dim": 64},
    "sample_info_weights": {"proj_dim": 64},
    "sign_memorization": {"n_heldout": 20},
}
SKIP = {
    # the attack's statistic, −loss of the members: flipped labels score lower by definition
    "loss_attack": ("sign",),
    # the diagonal is cos(g, g) = 1; the self-influence is 1 − mean cosine with its class
    "grad_cos": ("diagonal",),
}


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_every_registered_estimator_conforms(name):
    check_estimator(REGISTRY[name], SMALL.get(name), skip=SKIP.get(name, ()))


class _NegatedConfig(GradDotConfig):
    method: str = "negated_grad_dot"


class _Negated(GradDot):
    """grad_dot with the sign flipped in both outputs: diagonal still matches, sign not."""

    name, config_class = "negated_grad_dot", _NegatedConfig

    def self_influence(self) -> Scores:
        s = super().self_influence()
        return Scores(self.name, self.family, s.example_ids, -s.score)

    def influence(self, x_target, y_target, memory_budget=1 << 28):
        for block in super().influence(x_target, y_target, memory_budget):
            yield type(block)(block.train, block.targets, -block.values)


class _OffDiagonalConfig(GradDotConfig):
    method: str = "off_diagonal"


class _OffDiagonal(GradDot):
    """Self-influence twice the diagonal of its own influence matrix."""

    name, config_class = "off_diagonal", _OffDiagonalConfig

    def self_influence(self) -> Scores:
        s = super().self_influence()
        return Scores(self.name, self.family, s.example_ids, 2 * s.score)


class _BudgetConfig(GradDotConfig):
    method: str = "budget_bound"


class _BudgetBound(GradDot):
    """Influence that changes with the memory budget (a block-bookkeeping bug)."""

    name, config_class = "budget_bound", _BudgetConfig

    def influence(self, x_target, y_target, memory_budget=1 << 28):
        for block in super().influence(x_target, y_target, memory_budget):
            scale = 1.0 if memory_budget > 1 else 1.5
            yield type(block)(block.train, block.targets, scale * block.values)


@pytest.mark.parametrize(
    ("cls", "words"),
    [
        (_Negated, "higher must mean"),
        (_OffDiagonal, "diagonal is not the self-influence"),
        (_BudgetBound, "memory budget"),
    ],
)
def test_broken_estimators_are_caught(cls, words):
    try:
        with pytest.raises(AssertionError, match=words):
            check_estimator(cls)
    finally:
        REGISTRY.pop(cls.name, None)


class _LaxConfig(MethodConfig):
    method: str = "lax"
    n_models: object = 8  # takes anything: a bad value is never refused


def test_a_setting_that_accepts_anything_is_caught():
    class Lax(GradDot):
        name, config_class = "lax", _LaxConfig

    REGISTRY["lax"] = Lax
    try:
        with pytest.raises(AssertionError, match="lax: n_models=.* was accepted"):
            check_bad_settings(Lax, {})
    finally:
        REGISTRY.pop("lax")


def test_the_readme_s_own_method_passes_the_suite():
    """The README's "Adding a method" example, as a user writes it, run through the suite."""
    from typing import Literal

    from mnemoscope.memorization import MemorizationEstimator
    from mnemoscope.train import EnsembleSpec, subset_masks

    class MeanLossConfig(MethodConfig):
        method: Literal["mean_loss"] = "mean_loss"
        n_models: int = 8

    class MeanLoss(MemorizationEstimator):
        """Mean final loss of each example over models trained on random halves."""

        name, config_class, cost, reference = "mean_loss", MeanLossConfig, "K trainings", "-"

        def ensembles(self, context):
            masks = subset_masks(self.config.n_models, context.n_train, 0.5, context.seed)
            return {"halves": EnsembleSpec(masks)}

        def fit(self, ensembles, dataset, task, device="cpu"):
            logits = ensembles["halves"].train_logits
            self.loss_ = task.loss(logits, dataset.y_train.expand(len(logits), -1)).mean(0)
            self.ids_ = dataset.train_ids
            return self

        def score(self):
            return Scores(self.name, self.family, self.ids_.numpy(), self.loss_.double().numpy())

    try:
        check_estimator(MeanLoss, {"n_models": 4})
    finally:
        REGISTRY.pop("mean_loss", None)
