"""The influence family: attributors of a trained model's behaviour to training examples.

Each attributor works on the model trained on the whole training set (an
ensemble of one, with its checkpoints) and gives

- :meth:`self_influence`: ``[n]`` influence of each training example on its own
  loss, computed directly in O(n) gradient passes (never as an n×n diagonal);
- :meth:`influence`: ``[n_test, n_train]`` influence of each training example on
  each target (train×test), targets first, in blocks.

Sign: higher = more influential (for a target: removing the example would raise
the target's loss).
"""

from __future__ import annotations

from abc import abstractmethod
from typing import ClassVar

import torch

from mnemoscope.data import Dataset
from mnemoscope.estimator import Estimator, Family, Scores
from mnemoscope.train import TrainedEnsemble


class InfluenceEstimator(Estimator):
    family: ClassVar[Family] = "influence"

    def checkpoint_epochs(self, epochs: int) -> list[int]:
        """1-based epochs after which the trainer must keep parameters for this method."""
        return []

    @abstractmethod
    def self_influence(
        self, model: TrainedEnsemble, dataset: Dataset, device: str | torch.device = "cpu"
    ) -> Scores:
        """``[n_train]`` self-influence of each training example."""

    @abstractmethod
    def influence(
        self,
        model: TrainedEnsemble,
        dataset: Dataset,
        x_target: torch.Tensor,
        y_target: torch.Tensor,
        device: str | torch.device = "cpu",
    ) -> torch.Tensor:
        """``[n_target, n_train]`` influence of training example i on target t."""
