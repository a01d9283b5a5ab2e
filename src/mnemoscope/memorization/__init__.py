"""Memorization and leakage estimators (registered by name)."""

from mnemoscope.memorization.base import MemorizationEstimator
from mnemoscope.memorization.canary import Canary, CanaryConfig
from mnemoscope.memorization.counterfactual import Counterfactual, CounterfactualConfig
from mnemoscope.memorization.feldman_zhang import FeldmanZhang, FeldmanZhangConfig
from mnemoscope.memorization.lira import Lira, LiraConfig, LossAttack, LossAttackConfig
from mnemoscope.memorization.sample_info import (
    SampleInfoConfig,
    SampleInfoFunction,
    SampleInfoFunctionConfig,
    SampleInfoWeights,
)
from mnemoscope.memorization.sign_memorization import SignMemorization, SignMemorizationConfig
from mnemoscope.memorization.training_dynamics import (
    CumulativeSampleLoss,
    FinalLoss,
    Forgetting,
    NegativeMargin,
)

__all__ = [
    "Canary",
    "CanaryConfig",
    "Counterfactual",
    "CounterfactualConfig",
    "CumulativeSampleLoss",
    "FeldmanZhang",
    "FeldmanZhangConfig",
    "FinalLoss",
    "Lira",
    "LiraConfig",
    "LossAttack",
    "LossAttackConfig",
    "Forgetting",
    "MemorizationEstimator",
    "NegativeMargin",
    "SignMemorization",
    "SignMemorizationConfig",
    "SampleInfoConfig",
    "SampleInfoFunction",
    "SampleInfoFunctionConfig",
    "SampleInfoWeights",
]
