"""What every estimator shares: its config, its output (:class:`Scores`) and a registry.

Both families (memorization, influence) subclass :class:`Estimator`; registering
a subclass makes it known to the config, the CLI and the runner with no edit
elsewhere.
"""

from __future__ import annotations

from abc import ABC
from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict

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


class Estimator(ABC):
    """Base of every estimator. Subclasses set the class attributes and register.

    Attributes:
        name: registered name, as written in the config.
        family: which score family it produces.
        config_class: the pydantic model of its config entry.
        cost: what it costs (models trained, gradients, Hessian form).
        reference: paper and equation.
    """

    name: ClassVar[str]
    family: ClassVar[Family]
    config_class: ClassVar[type[MethodConfig]]
    cost: ClassVar[str]
    reference: ClassVar[str]

    def __init__(self, config: MethodConfig) -> None:
        self.config = config


REGISTRY: dict[str, type[Estimator]] = {}


def register(cls: type[Estimator]) -> type[Estimator]:
    """Class decorator: make ``cls`` known under ``cls.name``."""
    if cls.name in REGISTRY:
        raise ValueError(f"estimator '{cls.name}' registered twice")
    REGISTRY[cls.name] = cls
    return cls


def estimators(family: Family) -> dict[str, type[Estimator]]:
    return {name: cls for name, cls in REGISTRY.items() if cls.family == family}
