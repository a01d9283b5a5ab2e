"""What every estimator shares: its config, the ensembles it declares, fit then score,
its output (:class:`Scores`) and a registry.

Both families (memorization, influence) subclass :class:`Estimator`; registering
a subclass makes it known to the config, the CLI and the runner with no edit
elsewhere: the runner asks each estimator what to train, never the other way round.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Literal

import numpy as np
import pandas as pd
import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

from mnemoscope.task import Task
from mnemoscope.train import EnsembleSpec, TrainedEnsemble

if TYPE_CHECKING:
    from typing import Self

    from mnemoscope.data import Dataset

Family = Literal["memorization", "influence"]


class MethodConfig(BaseModel):
    """One entry of the config's ``memorization:`` or ``influence:`` list.

    Subclasses narrow ``method`` to a ``Literal`` of their name, which lets the
    config tell methods apart and reject keys a method does not have.
    """

    model_config = ConfigDict(extra="forbid")
    method: str


@dataclass(frozen=True)
class Scores:
    """One score per training example.

    Attributes:
        method: the estimator's registered name.
        family: ``'memorization'`` or ``'influence'``.
        example_ids: ``[n]`` int64 ids of the training examples.
        score: ``[n]`` float64; higher = more memorized / more influential.
        stderr: ``[n]`` float64 standard errors, or None when the method has none.
    """

    method: str
    family: Family
    example_ids: np.ndarray
    score: np.ndarray
    stderr: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = len(self.example_ids)
        if self.score.shape != (n,) or (self.stderr is not None and self.stderr.shape != (n,)):
            raise ValueError(f"{self.method}: score/stderr must have shape ({n},)")

    def frame(self, dataset: str, arch: str, seed: int) -> pd.DataFrame:
        """Rows of the ``scores`` table."""
        return pd.DataFrame(
            {
                "dataset": dataset,
                "arch": arch,
                "seed": seed,
                "family": self.family,
                "method": self.method,
                "example_id": self.example_ids.astype(np.int64),
                "score": self.score.astype(np.float64),
                "stderr": (self.stderr.astype(np.float64) if self.stderr is not None else np.nan),
            }
        )


@dataclass(frozen=True)
class PlanContext:
    """What an estimator may know when it declares its ensembles.

    Attributes:
        n_train: training examples of the dataset.
        epochs: epochs each model of the arch is trained for (``train.epochs``, or the
            arch's ``arch_train`` epochs).
        seed: a seed for the estimator's masks, the same for every estimator of the
            study, so estimators asking for the same kind of masks get identical ones.
    """

    n_train: int
    epochs: int
    seed: int


class Estimator(ABC):
    """Base of every estimator of either family: declare, fit, score.

    1. :meth:`ensembles` declares, by role, the ensembles to train
       (:class:`~mnemoscope.train.EnsembleSpec`); the runner trains each distinct one once.
    2. :meth:`fit` receives them (same roles), the dataset, the task and a device, and
       keeps what later calls need in attributes ending in ``_``; it returns ``self``.
       Where that state is expensive, the class sets ``cache_fit = True`` and
       implements :meth:`fitted_state` / :meth:`load_fitted`: the fit is then its own
       stage, written once and read by every later stage.
    3. :meth:`score` gives one score per training example (:class:`Scores`).

    Subclasses set the class attributes and are registered with :func:`register`.

    Attributes:
        name: registered name, as written in the config.
        family: which score family it produces.
        config_class: the pydantic model of its config entry.
        cost: what it costs (models trained, gradients, Hessian form).
        reference: paper and equation.
        summary: one line for ``mnemoscope methods``.
        cache_fit: whether the fitted state is kept as its own stage.
    """

    name: ClassVar[str]
    family: ClassVar[Family]
    config_class: ClassVar[type[MethodConfig]]
    cost: ClassVar[str]
    reference: ClassVar[str]
    summary: ClassVar[str] = ""
    cache_fit: ClassVar[bool] = False
    attributes_targets: ClassVar[bool] = False
    """True for attributors with ``influence(x_target, y_target, memory_budget)``: the
    runner then writes their train×target influence when the config names targets."""

    def __init__(self, config: MethodConfig) -> None:
        self.config = config

    @abstractmethod
    def ensembles(self, context: PlanContext) -> dict[str, EnsembleSpec]:
        """The ensembles this estimator reads, by role (e.g. ``{"model": spec}``)."""

    @abstractmethod
    def fit(
        self,
        ensembles: dict[str, TrainedEnsemble],
        dataset: Dataset,
        task: Task,
        device: str | torch.device = "cpu",
    ) -> Self:
        """Take the trained ``ensembles`` (by the roles :meth:`ensembles` named); return self."""

    @abstractmethod
    def score(self) -> Scores:
        """One score per training example; higher = more memorized / more influential."""

    max_nan_fraction: ClassVar[float] = 0.5
    """The largest fraction of NaN scores a run accepts from this estimator before it stops
    (an estimator that scores a chosen subset by design, like ``loo``, sets 1)."""
    extra_tables: ClassVar[tuple[str, ...]] = ()
    """Tables besides ``scores`` this estimator adds rows to (e.g. ``('attacks',)``); the
    runner writes :meth:`table_rows` of each next to its scores."""

    def table_rows(self, table: str) -> pd.DataFrame:
        """Rows for ``table`` (one of :attr:`extra_tables`), after :meth:`fit`: the table's
        columns except ``dataset`` and ``arch``, which the runner adds."""
        raise NotImplementedError(f"{self.name} adds no rows to '{table}'")

    def check_model(self, module: nn.Module) -> None:
        """Raise :class:`~mnemoscope.errors.ConfigError` if this estimator's config cannot
        be used on ``module`` (e.g. unknown parameter names); called before training."""
        return None

    def fit_bytes(self, module: nn.Module, n_train: int, n_classes: int) -> int:
        """Bytes of the largest matrices the fit builds, known from the config before any
        training (the run's memory estimate reads it); 0 for a fit that holds gradients a
        batch at a time."""
        return 0

    def fitted_state(self) -> dict[str, torch.Tensor]:
        """Tensors that restore the fit with :meth:`load_fitted` (``cache_fit`` classes)."""
        raise NotImplementedError(f"{self.name} does not cache its fit")

    def load_fitted(
        self,
        state: dict[str, torch.Tensor],
        ensembles: dict[str, TrainedEnsemble],
        dataset: Dataset,
        task: Task,
        device: str | torch.device = "cpu",
    ) -> Self:
        """Restore a fit from :meth:`fitted_state` without recomputing it; return self."""
        raise NotImplementedError(f"{self.name} does not cache its fit")


REGISTRY: dict[str, type[Estimator]] = {}


def register(cls: type[Estimator]) -> type[Estimator]:
    """Class decorator: make ``cls`` known under ``cls.name`` (and to the config)."""
    if cls.name in REGISTRY and REGISTRY[cls.name] is not cls:
        raise ValueError(f"estimator '{cls.name}' registered twice")
    REGISTRY[cls.name] = cls
    return cls


def estimators(family: Family) -> dict[str, type[Estimator]]:
    return {name: cls for name, cls in REGISTRY.items() if cls.family == family}
