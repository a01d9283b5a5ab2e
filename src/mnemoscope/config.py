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

An unknown key or a bad value raises :class:`ConfigError` with one line naming it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, ValidationError, field_validator

from mnemoscope import influence as _influence  # noqa: F401  (registers the estimators)
from mnemoscope import memorization as _memorization  # noqa: F401
from mnemoscope.data import BUILTIN
from mnemoscope.errors import ConfigError
from mnemoscope.estimator import estimators
from mnemoscope.models import ARCHITECTURES
from mnemoscope.train import TrainConfig


def _method_union(family: Literal["memorization", "influence"]) -> Any:
    classes = tuple(cls.config_class for cls in estimators(family).values())
    union = classes[0] if len(classes) == 1 else Union[classes]  # noqa: UP007
    return Annotated[union, Field(discriminator="method")]


MemorizationEntry = _method_union("memorization")
InfluenceEntry = _method_union("influence")


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
    memorization: list[MemorizationEntry] = Field(default_factory=list)  # type: ignore[valid-type]
    influence: list[InfluenceEntry] = Field(default_factory=list)  # type: ignore[valid-type]
    analysis: AnalysisConfig = AnalysisConfig()

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

    @field_validator("memorization", "influence")
    @classmethod
    def _unique_methods(cls, entries: list[Any]) -> list[Any]:
        methods = [e.method for e in entries]
        if len(set(methods)) != len(methods):
            raise ValueError("a method is listed twice")
        return entries


def _describe(error: ValidationError) -> str:
    first = error.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or "config"
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        message = "unknown key"
    more = f" (and {error.error_count() - 1} more)" if error.error_count() > 1 else ""
    return f"{where}: {message}{more}"


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
