"""The study config (YAML or Python), validated by pydantic.

Shape (a contract; later work adds methods to the lists, never changes the shape)::

    name: example
    seed: 0
    device: cpu
    datasets:
      - {name: digits, label_noise: 0.1}
    archs: [logreg, mlp, cnn]
    train: {epochs: 20, batch_size: 128, optimizer: sgd, lr: 0.1, momentum: 0.9,
            weight_decay: 0.0005}
    memorization:
      - {method: feldman_zhang, n_models: 64, subset_fraction: 0.7}
    influence:
      - {method: tracin, checkpoints: 5}
      - {method: grad_dot}
    targets: {split: test, n: 100}          # optional: train×target influence
    executor: {kind: local}                 # or {kind: ray, address: auto, num_cpus: 2}

An unknown key or a bad value raises :class:`ConfigError` with one line naming it.
Method entries are looked up in the estimator registry when the config is
validated, so an estimator registered by user code is accepted like a built-in one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch
import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PositiveInt,
    SerializeAsAny,
    ValidationError,
    field_validator,
)
from pydantic_core import PydanticCustomError

from mnemoscope import influence as _influence  # noqa: F401  (registers the estimators)
from mnemoscope import memorization as _memorization  # noqa: F401
from mnemoscope.data import BUILTIN
from mnemoscope.errors import ConfigError
from mnemoscope.estimator import MethodConfig, estimators
from mnemoscope.models import ARCHITECTURES
from mnemoscope.train import TrainConfig

Family = Literal["memorization", "influence"]


def _method_entries(entries: Any, family: Family) -> list[MethodConfig]:
    """Each entry validated by its estimator's own config class, found in the registry."""
    if not isinstance(entries, list):
        raise PydanticCustomError("list_type", "Input should be a list of method entries")
    known = estimators(family)
    validated = []
    for i, entry in enumerate(entries):
        if isinstance(entry, MethodConfig):
            entry = entry.model_dump()
        method = entry.get("method") if isinstance(entry, dict) else None
        if method not in known:
            problem = (
                "expected a mapping with a 'method' key"
                if method is None
                else f"unknown {family} method '{method}'"
            )
            raise PydanticCustomError(
                "method_entry",
                "{loc}: {problem}; known: {known}",
                {"loc": str(i), "problem": problem, "known": ", ".join(sorted(known))},
            )
        try:
            validated.append(known[method].config_class.model_validate(entry))
        except ValidationError as error:
            first = error.errors()[0]
            field = ".".join(str(part) for part in first["loc"])
            message = "unknown key" if first["type"] == "extra_forbidden" else first["msg"]
            raise PydanticCustomError(
                "method_entry",
                "{loc}: {message}",
                {"loc": f"{i}.{method}.{field}", "message": message.removeprefix("Value error, ")},
            ) from None
    methods = [e.method for e in validated]
    if len(set(methods)) != len(methods):
        raise ValueError("a method is listed twice")
    return validated


class ExecutorConfig(BaseModel):
    """Where the stages run; results are identical under every executor."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["local", "ray"] = "local"
    """``local``: in this process, one stage after another. ``ray``: stages as Ray tasks."""
    address: str | None = None
    """Ray only: ``None`` starts a local cluster for the run; ``auto`` or ``host:port``
    joins a running one (its workers must see the run directory's file system)."""
    num_cpus: PositiveInt | None = None
    """Ray only: CPUs of the local cluster started for the run (None: all)."""
    threads: int | Literal["auto"] = "auto"
    """Torch intra-op threads of each stage; Ray reserves as many CPUs per task.
    ``auto``: torch's thread count in the process that plans the run (by default the
    machine's physical cores). Floating-point reductions may round differently with
    another thread count, so the number is part of every cache key; for one number,
    every executor gives identical tables. Under Ray, ``threads: 1`` runs as many stages
    side by side as the cluster has CPUs; on a loaded machine, 1 also avoids threads
    waiting on each other."""

    @field_validator("threads", mode="before")
    @classmethod
    def _threads(cls, value: Any) -> int | str:
        if value == "auto" or (type(value) is int and value >= 1):
            return value
        raise ValueError("expected a positive integer or 'auto'")

    def resolved_threads(self) -> int:
        """``threads`` as a number."""
        return torch.get_num_threads() if self.threads == "auto" else self.threads


class TargetsConfig(BaseModel):
    """The targets of train×target influence, written to ``influence.parquet``."""

    model_config = ConfigDict(extra="forbid")

    split: Literal["test", "train"] = "test"
    n: PositiveInt = 100
    """The first ``n`` examples of the split (all of them if it has fewer)."""
    memory_mb: PositiveInt = 256
    """Memory an attributor may hold for one block of the train×target matrix."""


class DatasetConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    """A built-in dataset (``mnemoscope datasets`` lists them)."""
    label_noise: float = Field(0.0, ge=0, lt=1)
    """Fraction of training labels flipped to another class (seeded, recorded per example)."""
    test_fraction: float = Field(0.2, gt=0, lt=1)
    """Held-out fraction of the stratified split."""
    n_samples: PositiveInt | None = None
    """Examples to generate (mnist1d, blobs) or to subsample, stratified (digits, breast_cancer)."""

    @field_validator("name")
    @classmethod
    def _known(cls, name: str) -> str:
        if name not in BUILTIN:
            raise ValueError(f"unknown dataset '{name}'; built-in: {', '.join(sorted(BUILTIN))}")
        return name


class AnalysisConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    n_bootstrap: PositiveInt = 1000
    """Bootstrap resamples (over examples) for the correlation CIs."""
    confidence: float = Field(0.95, gt=0, lt=1)


class StudyConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = "study"
    seed: int = 0
    device: Literal["cpu", "cuda", "auto"] = "cpu"
    datasets: list[DatasetConfig] = Field(min_length=1)
    archs: list[str] = Field(min_length=1)
    train: TrainConfig = TrainConfig()
    memorization: list[SerializeAsAny[MethodConfig]] = Field(default_factory=list)
    influence: list[SerializeAsAny[MethodConfig]] = Field(default_factory=list)
    analysis: AnalysisConfig = AnalysisConfig()
    targets: TargetsConfig | None = None
    """Train×target influence of every influence method on these targets (optional)."""
    executor: ExecutorConfig = ExecutorConfig()

    @field_validator("archs")
    @classmethod
    def _known_archs(cls, archs: list[str]) -> list[str]:
        unknown = [a for a in archs if a not in ARCHITECTURES]
        if unknown:
            raise ValueError(f"unknown arch {unknown}; known: {', '.join(ARCHITECTURES)}")
        if len(set(archs)) != len(archs):
            raise ValueError("an arch is listed twice")
        return archs

    @field_validator("datasets")
    @classmethod
    def _unique_datasets(cls, datasets: list[DatasetConfig]) -> list[DatasetConfig]:
        names = [d.name for d in datasets]
        if len(set(names)) != len(names):
            raise ValueError("a dataset is listed twice")
        return datasets

    @field_validator("memorization", mode="before")
    @classmethod
    def _memorization_entries(cls, entries: Any) -> list[MethodConfig]:
        return _method_entries(entries, "memorization")

    @field_validator("influence", mode="before")
    @classmethod
    def _influence_entries(cls, entries: Any) -> list[MethodConfig]:
        return _method_entries(entries, "influence")


def _describe(error: ValidationError) -> str:
    first = error.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or "config"
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        message = "unknown key"
    elif first["type"] == "method_entry":
        where, message = message.split(": ", 1)
        where = f"{first['loc'][0]}.{where}"
    return f"{where}: {message}"


def parse_config(data: Any) -> StudyConfig:
    """Validate a config mapping; raise :class:`ConfigError` with one line naming the field."""
    if not isinstance(data, dict):
        raise ConfigError("config: expected a mapping of keys to values at the top level")
    try:
        return StudyConfig.model_validate(data)
    except ValidationError as error:
        raise ConfigError(f"config error: {_describe(error)}") from None


def load_config(path: Path) -> StudyConfig:
    """Read and validate a YAML config file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"config error: {path}{line}: not valid YAML") from None
    return parse_config(data)
