"""Influence attributors (registered by name): self-influence and train×test influence."""

from mnemoscope.influence.base import InfluenceEstimator
from mnemoscope.influence.gradient_dot import GradDot, GradDotConfig, TracIn, TracInConfig
from mnemoscope.influence.gradients import per_example_grads, select_params

__all__ = [
    "GradDot",
    "GradDotConfig",
    "InfluenceEstimator",
    "TracIn",
    "TracInConfig",
    "per_example_grads",
    "select_params",
]
