"""The memorization family: estimators that turn a trained ensemble into per-example scores.

An estimator says which subset masks it needs trained (:meth:`masks`); the runner
asks ``train`` for that ensemble (estimators never train models themselves) and
hands it to :meth:`score`. Estimators asking for identical masks share one ensemble.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import ClassVar

import torch

from mnemoscope.data import Dataset
from mnemoscope.estimator import Estimator, Family, Scores
from mnemoscope.train import TrainedEnsemble


class MemorizationEstimator(Estimator):
    family: ClassVar[Family] = "memorization"

    @abstractmethod
    def masks(self, n_train: int, seed: int) -> torch.Tensor:
        """``[K, n_train]`` bool subset masks of the ensemble this estimator needs."""

    @abstractmethod
    def score(self, ensemble: TrainedEnsemble, dataset: Dataset) -> Scores:
        """Per-training-example memorization; higher = more memorized."""
