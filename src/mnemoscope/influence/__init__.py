"""Influence attributors (registered by name): self-influence and train×test influence."""

from mnemoscope.influence.base import InfluenceEstimator
from mnemoscope.influence.ekfac import EKFAC, EKFACConfig
from mnemoscope.influence.gradient_cosine import GradCos, GradCosConfig
from mnemoscope.influence.gradient_dot import GradDot, GradDotConfig, TracIn, TracInConfig
from mnemoscope.influence.gradients import per_example_grads, select_params
from mnemoscope.influence.influence_functions import (
    IFArnoldi,
    IFArnoldiConfig,
    IFConjugateGradient,
    IFConjugateGradientConfig,
    IFExact,
    IFExactConfig,
    IFLissa,
    IFLissaConfig,
)
from mnemoscope.influence.knn_shapley import KNNShapley, KNNShapleyConfig
from mnemoscope.influence.relative_influence import (
    ClassificationInfluence,
    ClassificationInfluenceConfig,
    RelatIF,
    RelatIFConfig,
)
from mnemoscope.influence.representer import Representer, RepresenterConfig
from mnemoscope.influence.retraining import Downsampling, DownsamplingConfig, Loo, LooConfig
from mnemoscope.influence.trak import TRAK, TRAKConfig

__all__ = [
    "ClassificationInfluence",
    "ClassificationInfluenceConfig",
    "Downsampling",
    "DownsamplingConfig",
    "EKFAC",
    "EKFACConfig",
    "GradCos",
    "GradCosConfig",
    "GradDot",
    "GradDotConfig",
    "IFArnoldi",
    "IFArnoldiConfig",
    "IFConjugateGradient",
    "IFConjugateGradientConfig",
    "IFExact",
    "IFExactConfig",
    "IFLissa",
    "IFLissaConfig",
    "InfluenceEstimator",
    "KNNShapley",
    "KNNShapleyConfig",
    "Loo",
    "LooConfig",
    "RelatIF",
    "RelatIFConfig",
    "Representer",
    "RepresenterConfig",
    "TRAK",
    "TRAKConfig",
    "TracIn",
    "TracInConfig",
    "per_example_grads",
    "select_params",
]
