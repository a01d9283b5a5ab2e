"""The influence family: attributors of a trained model's behaviour to training examples.

Every attributor has one interface, with the same argument order everywhere
(training examples first, then targets):

- :meth:`~mnemoscope.estimator.Estimator.ensembles` declares what it reads (most
  read one model trained on the whole set, with checkpoints);
- :meth:`~mnemoscope.estimator.Estimator.fit` takes the trained ensembles, the
  dataset and the task, and keeps what scoring needs;
- :meth:`InfluenceEstimator.self_influence` (also :meth:`score`): ``[n_train]``
  influence of each training example on its own loss, computed directly in O(n)
  gradient passes, never as the diagonal of an n×n matrix;
- :meth:`InfluenceEstimator.influence`: the ``[n_train, n_targets]`` influence of
  training example i on target t, yielded in :class:`InfluenceBlock` s whose size is
  bounded by a memory budget, so the whole matrix never has to be in memory.

Sign: higher = more influential; for a target, a positive score means removing
the training example would raise the target's loss (hurt it).
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from mnemoscope.estimator import Estimator, Family, PlanContext, Scores
from mnemoscope.influence.gradients import per_example_grads
from mnemoscope.meter import count
from mnemoscope.params import select_params
from mnemoscope.task import Measurement
from mnemoscope.train import EnsembleSpec

FEATURE_BATCH = 1024
"""Inputs per forward pass when penultimate features are computed."""
DEFAULT_MEMORY_BUDGET = 256 * 2**20
"""Bytes an attributor may hold for one block of train×target influence and its inputs."""


@dataclass(frozen=True)
class InfluenceBlock:
    """Influence of the training rows ``train`` on the target columns ``targets``.

    Attributes:
        train: slice of training-example positions (rows of ``dataset.x_train``).
        targets: slice of target positions (rows of the target inputs).
        values: ``[len(train), len(targets)]`` float64.
    """

    train: slice
    targets: slice
    values: torch.Tensor


class InfluenceEstimator(Estimator):
    family: ClassVar[Family] = "influence"
    attributes_targets: ClassVar[bool] = True

    def score(self) -> Scores:
        """The per-example score of an attributor is its self-influence."""
        return self.self_influence()

    def ensembles(self, context: PlanContext) -> dict[str, EnsembleSpec]:
        """One model trained on the whole set (what most attributors read)."""
        return {"model": EnsembleSpec.single(context.n_train)}

    def check_model(self, module: nn.Module) -> None:
        """Unknown names in a ``params`` setting: a ConfigError, before training."""
        if "params" in type(self.config).model_fields:
            select_params(module, self.config.params)  # type: ignore[attr-defined]

    def _scores(self, values: np.ndarray | torch.Tensor, stderr=None) -> Scores:
        """``values`` in the order of the fitted dataset's training examples as Scores."""
        values = values.cpu().numpy() if isinstance(values, torch.Tensor) else values
        return Scores(self.name, self.family, self.dataset_.train_ids.numpy(), values, stderr)

    def streamed_blocks(
        self,
        x_target: torch.Tensor,
        y_target: torch.Tensor,
        memory_budget: int,
        bytes_per_target: int,
        held: Callable[[torch.Tensor, torch.Tensor], Any],
        train: Callable[[], Iterable[Any]],
        pair: Callable[[Any, Any, int], torch.Tensor],
    ) -> Iterator[InfluenceBlock]:
        """The train×target loop of the attributors that stream the training set: for each
        block of targets (:meth:`target_slices`), ``held(x, y)`` is their representation
        after the method's transform (e.g. ``A⁻¹∇ℓ``), kept while ``train()`` yields the
        training representation batch after batch, and ``pair(batch, held, first_row)``
        gives the ``[len(batch), len(block)]`` values."""
        for targets in self.target_slices(len(y_target), bytes_per_target, memory_budget):
            kept = held(x_target[targets], y_target[targets])
            rows = slice(0, 0)
            for batch in train():
                values = pair(batch, kept, rows.stop)
                rows = slice(rows.stop, rows.stop + values.shape[0])
                yield InfluenceBlock(rows, targets, values.cpu())

    @staticmethod
    def target_slices(n_targets: int, bytes_per_target: int, memory_budget: int) -> list[slice]:
        """Consecutive slices of the targets, each of as many as ``memory_budget`` holds at
        ``bytes_per_target`` each (at least one): the column blocks of :meth:`influence`."""
        width = max(1, min(n_targets, memory_budget // max(bytes_per_target, 1)))
        return [slice(s, min(s + width, n_targets)) for s in range(0, n_targets, width)]

    @abstractmethod
    def self_influence(self) -> Scores:
        """``[n_train]`` influence of each training example on its own loss."""

    @abstractmethod
    def influence(
        self,
        x_target: torch.Tensor,
        y_target: torch.Tensor,
        memory_budget: int = DEFAULT_MEMORY_BUDGET,
    ) -> Iterator[InfluenceBlock]:
        """Blocks of the ``[n_train, n_targets]`` influence on targets ``(x, y)``."""

    def influence_matrix(
        self,
        x_target: torch.Tensor,
        y_target: torch.Tensor,
        memory_budget: int = DEFAULT_MEMORY_BUDGET,
    ) -> torch.Tensor:
        """The whole ``[n_train, n_targets]`` matrix, assembled from :meth:`influence`."""
        matrix = torch.zeros(self.n_train_, len(y_target), dtype=torch.float64)
        for block in self.influence(x_target, y_target, memory_budget):
            matrix[block.train, block.targets] = block.values
        return matrix

    _cached: ClassVar[tuple[str, ...]] = ()
    """Fitted tensors (attributes ``<name>_``) that :meth:`fitted_state` keeps and
    :meth:`load_fitted` restores after :meth:`_prepare` (``cache_fit`` attributors)."""

    def _prepare(self, ensembles, dataset, task, device) -> None:
        """What the fit and its restoration both start from: the final model, by default."""
        self._hold_final_model(ensembles, dataset, task, device)

    def fitted_state(self) -> dict[str, torch.Tensor]:
        return {key: getattr(self, f"{key}_").cpu().contiguous() for key in self._cached}

    def load_fitted(self, state, ensembles, dataset, task, device="cpu"):
        self._prepare(ensembles, dataset, task, device)
        for key in self._cached:
            setattr(self, f"{key}_", state[key].to(self.device_))
        return self

    def _hold_final_model(self, ensembles, dataset, task, device) -> None:
        """Keep the data, the task and the final model of ``ensembles['model']`` (its
        module and single-model parameters, on ``device``) and the names of the selected
        parameters (``names_``, where the config has ``params``): the fit prologue of the
        attributors that read one trained model."""
        model = ensembles["model"]
        self.device_ = torch.device(device)
        self.task_, self.dataset_ = task, dataset
        self.module_ = model.module().to(self.device_)
        self.params_ = {k: v[0].to(self.device_) for k, v in model.params.items()}
        if "params" in type(self.config).model_fields:
            self.names_ = select_params(self.module_, self.config.params)  # type: ignore[attr-defined]

    @torch.no_grad()
    def _penultimate(self, x: torch.Tensor) -> torch.Tensor:
        """``[b, ...]`` → ``[b, d]`` float64 penultimate features of the held model, computed
        ``FEATURE_BATCH`` inputs at a time."""
        features = []
        for xb in x.split(FEATURE_BATCH):
            features.append(self.task_.features(self.module_, self.params_, xb.to(self.device_)))
            count(len(xb))
        return torch.cat(features).double()

    def _example_grads(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        names: list[str] | None = None,
        measurement: Measurement = "loss",
        dtype: torch.dtype | None = None,
    ) -> Iterator[torch.Tensor]:
        """``[b, P]`` per-example gradients of the task's ``measurement`` at the held model,
        ``config.batch_size`` examples at a time, over ``names`` (default ``names_``)."""
        return per_example_grads(
            self.module_,
            self.params_,
            x.to(self.device_, dtype),
            y.to(self.device_),
            self.names_ if names is None else names,
            self.config.batch_size,  # type: ignore[attr-defined]
            self.task_,
            measurement,
        )

    @property
    def n_train_(self) -> int:
        """Training examples of the fitted dataset."""
        return int(self.dataset_.n_train)
