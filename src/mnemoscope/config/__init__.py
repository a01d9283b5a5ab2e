"""The study config (YAML or Python), validated by pydantic.

Shape (a contract; later work adds methods to the lists, never changes the shape)::

    name: example
    seed: 0
    device: cpu
    datasets:
      - {name: digits, label_noise: 0.1}
    archs: [logreg, mlp, cnn]
    arch_options: {mlp: {width: 64}}        # optional: per-arch options
    train: {epochs: 20, batch_size: 128, optimizer: sgd, lr: 0.1, momentum: 0.9,
            weight_decay: 0.0005, schedule: constant}
    arch_train: {transformer: {optimizer: adamw, lr: 0.001}}  # optional: per-arch train
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

Validation is strict: a number written as a string (``lr: "0.1"``), a boolean where a
number is meant (``epochs: true``), a fraction where an integer is meant
(``epochs: 2.5``) and ``.inf``/``.nan`` are refused; every size has an upper bound
(documented with its field) so that a typo cannot ask a laptop for absurd work. The
YAML file itself must be UTF-8 text of at most 1 MiB without duplicate keys.
"""

from __future__ import annotations

import unicodedata
from pathlib import Path
from typing import Any, Literal

import torch
import yaml
from pydantic import (
    BaseModel,
    Field,
    SerializeAsAny,
    SerializerFunctionWrapHandler,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_serializer,
    model_validator,
)
from pydantic_core import PydanticCustomError

from mnemoscope import influence as _influence  # noqa: F401  (registers the estimators)
from mnemoscope import memorization as _memorization  # noqa: F401
from mnemoscope.config.common import _STRICT, _field_error
from mnemoscope.config.datasets import CanariesConfig as CanariesConfig
from mnemoscope.config.datasets import DatasetConfig
from mnemoscope.config.provenance import CorruptionsConfig as CorruptionsConfig
from mnemoscope.config.provenance import SourcesConfig as SourcesConfig
from mnemoscope.config.provenance import UndersampleConfig as UndersampleConfig
from mnemoscope.config.study import StudySection, study_problem
from mnemoscope.errors import ConfigError, DataError
from mnemoscope.estimator import MethodConfig, estimators
from mnemoscope.models import ARCHITECTURES, ArchOptionError, arch_options
from mnemoscope.train import TrainConfig

Family = Literal["memorization", "influence"]

MAX_CONFIG_BYTES = 1 << 20
"""A config file larger than this (1 MiB) is refused before it is read."""
MAX_SEED = 2**32 - 1
"""The largest study seed: numpy's legacy ``np.random.seed`` takes ``[0, 2**32 − 1]``
(``SeedSequence`` would take larger ones); a seed outside it is refused as a likely typo."""
MAX_THREADS = 1024
"""The most torch threads a stage may ask for."""


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
        if not isinstance(method, str) or method not in known:
            problem = (
                f"unknown {family} method '{method}'"
                if isinstance(method, str)
                else "expected a mapping with a 'method' key"
                if method is None
                else "'method' should be a string"
            )
            raise PydanticCustomError(
                "method_entry",
                "{loc}: {message}",
                {"loc": str(i), "message": f"{problem}; known: {', '.join(sorted(known))}"},
            )
        try:
            validated.append(known[method].config_class.model_validate(entry))
        except ValidationError as error:
            first = error.errors(include_url=False, include_input=False)[0]
            field = ".".join(str(part) for part in (i, method, *first["loc"]))
            message = "unknown key" if first["type"] == "extra_forbidden" else first["msg"]
            raise PydanticCustomError(
                "method_entry",
                "{loc}: {message}",
                {"loc": field, "message": message.removeprefix("Value error, ")},
            ) from None
    methods = [e.method for e in validated]
    if len(set(methods)) != len(methods):
        raise ValueError("a method is listed twice")
    return validated


class ExecutorConfig(BaseModel):
    """Where the stages run; results are identical under every executor."""

    model_config = _STRICT

    kind: Literal["local", "ray"] = "local"
    """``local``: in this process, one stage after another. ``ray``: stages as Ray tasks."""
    address: str | None = None
    """Ray only: ``None`` starts a local cluster for the run; ``auto`` or ``host:port``
    joins a running one (its workers must see the run directory's file system)."""
    num_cpus: int | None = Field(None, gt=0, le=4096)
    """Ray only: CPUs of the local cluster started for the run (None: all; at most 4096)."""
    threads: int | Literal["auto"] = "auto"
    """Torch intra-op threads of each stage; Ray reserves as many CPUs per task.
    ``auto``: torch's thread count in the process that plans the run (by default the
    machine's physical cores). Floating-point reductions may round differently with
    another thread count, so the number is part of every cache key; for one number,
    every executor gives identical tables. Under Ray, ``threads: 1`` runs as many stages
    side by side as the cluster has CPUs; on a loaded machine, 1 also avoids threads
    waiting on each other. At most 1024."""

    @field_validator("threads", mode="before")
    @classmethod
    def _threads(cls, value: Any) -> int | str:
        if isinstance(value, str) and value == "auto":
            return value
        if type(value) is int and value >= 1:
            if value > MAX_THREADS:
                raise ValueError(f"Input should be less than or equal to {MAX_THREADS}")
            return value
        raise ValueError("expected a positive integer or 'auto'")

    def resolved_threads(self) -> int:
        """``threads`` as a number."""
        return torch.get_num_threads() if self.threads == "auto" else self.threads


class TargetsConfig(BaseModel):
    """The targets of train×target influence, written to ``influence.parquet``."""

    model_config = _STRICT

    split: Literal["test", "train"] = "test"
    n: int = Field(100, gt=0, le=1_000_000)
    """The first ``n`` examples of the split (all of them if it has fewer); at most 10⁶."""
    memory_mb: int = Field(256, gt=0, le=1_048_576)
    """Memory an attributor may hold for one block of the train×target matrix (MiB; at
    most 1 048 576, i.e. 1 TiB)."""


class LdsConfig(BaseModel):
    """The linear datamodeling score of every attributor (Park et al. 2023, eq. 5): models
    trained on random subsets predict each target's margin; the attributor's sum over a
    subset should rank the subsets as the margins do. Needs ``targets``."""

    model_config = _STRICT

    subsets: int = Field(20, ge=2, le=10_000)
    """J, random subsets of the training set."""
    repeats: int = Field(1, ge=1, le=1_000)
    """Models trained on each subset (their margins are averaged)."""
    fraction: float = Field(0.5, gt=0, lt=1)
    """Fraction of the training set in each subset (α; 0.5 in the paper)."""


class AnalysisConfig(BaseModel):
    model_config = _STRICT

    n_bootstrap: int = Field(1000, gt=0, le=100_000)
    """Bootstrap resamples (over examples) for the correlation CIs (at most 100 000)."""
    confidence: float = Field(0.95, gt=0, lt=1)
    lds: LdsConfig | None = None
    """Also score every attributor by LDS, e.g. ``{subsets: 20, repeats: 1}`` (trains
    ``subsets × repeats`` extra models per dataset and architecture)."""


class StudyConfig(BaseModel):
    model_config = _STRICT

    name: str = "study"
    seed: int = Field(0, ge=0, le=MAX_SEED)
    """The study's root seed, in ``[0, 2**32 − 1]`` (numpy's legacy seeding range)."""
    device: Literal["cpu", "cuda", "auto"] = "cpu"
    datasets: list[DatasetConfig] = Field(min_length=1)
    archs: list[str] = Field(min_length=1)
    arch_options: dict[str, dict[str, Any]] = Field(default_factory=dict)
    """Options of listed archs by name, e.g. ``{resnet: {width: 32, depth: 3}}``; each
    arch's options are checked by its own strict model (the README lists them).
    They reach every model built and enter the training cache key."""
    train: TrainConfig = TrainConfig()
    arch_train: dict[str, dict[str, Any]] = Field(default_factory=dict)
    """Training settings of listed archs by name, each any subset of ``train``'s keys
    merged over the ``train`` block, e.g. ``{transformer: {optimizer: adamw, lr: 0.001}}``;
    the merged settings are checked by the same strict rules. Read them with
    :meth:`train_for`: they reach that arch's training stages (and cache keys: changing
    one arch's settings retrains only that arch), its task and its estimators."""
    memorization: list[SerializeAsAny[MethodConfig]] = Field(default_factory=list)
    influence: list[SerializeAsAny[MethodConfig]] = Field(default_factory=list)
    analysis: AnalysisConfig = AnalysisConfig()
    targets: TargetsConfig | None = None
    """Train×target influence of every influence method on these targets (optional)."""
    executor: ExecutorConfig = ExecutorConfig()
    study: StudySection | None = None
    """The study's analyses (``mnemoscope study``; see :mod:`mnemoscope.config.study`):
    top-k overlap, cross-architecture agreement, leakage, removal and the
    sample-information applications. None: an ordinary run."""

    @field_validator("archs")
    @classmethod
    def _known_archs(cls, archs: list[str]) -> list[str]:
        unknown = [a for a in archs if a not in ARCHITECTURES]
        if unknown:
            raise ValueError(f"unknown arch {unknown}; known: {', '.join(ARCHITECTURES)}")
        if len(set(archs)) != len(archs):
            raise ValueError("an arch is listed twice")
        return archs

    @field_validator("arch_options")
    @classmethod
    def _arch_options(
        cls, options: dict[str, dict[str, Any]], info: ValidationInfo
    ) -> dict[str, dict[str, Any]]:
        archs = info.data.get("archs")
        if archs is None:  # the archs themselves were refused
            return options
        validated = {}
        for arch, given in options.items():
            try:
                if arch not in archs:
                    raise ArchOptionError(arch, f"'{arch}' is not in archs {archs}")
                validated[arch] = arch_options(arch, given)
            except ArchOptionError as error:  # one line, as a method entry's error
                raise PydanticCustomError(
                    "method_entry", "{loc}: {message}", {"loc": error.loc, "message": error.problem}
                ) from None
        return validated

    @field_validator("arch_train")
    @classmethod
    def _arch_train(
        cls, overrides: dict[str, dict[str, Any]], info: ValidationInfo
    ) -> dict[str, dict[str, Any]]:
        archs, train = info.data.get("archs"), info.data.get("train")
        if archs is None or train is None:  # refused themselves
            return overrides
        for arch, given in overrides.items():
            problem, where = None, arch
            if arch not in archs:
                problem = f"'{arch}' is not in archs {archs}"
            elif not isinstance(given, dict):
                problem = "expected a mapping of train keys to values"
            else:
                try:
                    TrainConfig.model_validate({**train.model_dump(), **given})
                except ValidationError as error:
                    first = error.errors(include_url=False, include_input=False)[0]
                    where = ".".join(str(part) for part in (arch, *first["loc"]))
                    problem = (
                        f"unknown key; known: {', '.join(TrainConfig.model_fields)}"
                        if first["type"] == "extra_forbidden"
                        else first["msg"].removeprefix("Value error, ")
                    )
            if problem is not None:  # one line, as a method entry's error
                raise PydanticCustomError(
                    "method_entry", "{loc}: {message}", {"loc": where, "message": problem}
                )
        return overrides

    def train_for(self, arch: str) -> TrainConfig:
        """How models of ``arch`` are trained: ``train`` with ``arch_train[arch]`` over it."""
        given = self.arch_train.get(arch)
        if not given:
            return self.train
        return TrainConfig.model_validate({**self.train.model_dump(), **given})

    @model_serializer(mode="wrap")
    def _without_empty_arch_train(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """A config without ``arch_train`` or ``study`` dumps as before they existed: a
        finished run of it is still recognised as the same config."""
        data = handler(self)
        if not data.get("arch_train"):
            data.pop("arch_train", None)
        if data.get("study", False) is None:
            data.pop("study")
        return data

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

    @model_validator(mode="after")
    def _lds_needs_targets(self) -> StudyConfig:
        if self.analysis.lds is not None and self.targets is None:
            raise _field_error(
                "analysis.lds", "the LDS scores influence on targets: add 'targets: {n: 100}'"
            )
        return self

    @model_validator(mode="after")
    def _study_names_known(self) -> StudyConfig:
        if self.study is not None:
            methods = [e.method for e in [*self.memorization, *self.influence]]
            problem = study_problem(self.study, self.archs, methods)
            if problem is not None:
                raise _field_error(*problem)
        return self

    @model_validator(mode="after")
    def _canaries_to_score(self) -> StudyConfig:
        methods = [entry.method for entry in self.memorization]
        if "canary" in methods:
            bare = [d.name for d in self.datasets if d.canaries is None]
            if bare:
                raise _field_error(
                    f"memorization.{methods.index('canary')}.canary",
                    f"dataset '{bare[0]}' has no canaries to score; add "
                    "'canaries: {n: 5, class: 0}' to its entry",
                )
        return self


def _one_line(text: str, limit: int = 1000) -> str:
    """``text`` with line breaks and other control characters escaped, at most ``limit`` long."""
    escaped = "".join(
        ch.encode("unicode_escape").decode("ascii")
        if unicodedata.category(ch) in ("Cc", "Zl", "Zp")
        else ch
        for ch in text
    )
    return escaped if len(escaped) <= limit else escaped[: limit - 1] + "…"


def _describe(error: ValidationError) -> str:
    first = error.errors(include_url=False, include_input=False)[0]
    if first["type"] == "method_entry":
        context = first["ctx"]
        where = ".".join(str(part) for part in (*first["loc"], context["loc"]))
        return f"{where}: {context['message']}"
    where = ".".join(str(part) for part in first["loc"]) or "config"
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        message = "unknown key"
    return f"{where}: {message}"


def parse_config(data: Any, base_dir: Path | None = None) -> StudyConfig:
    """Validate a config mapping; raise :class:`ConfigError` with one line naming the field
    (or :class:`DataError` naming a dataset's file). Relative data paths are relative to
    ``base_dir`` (default: the working directory)."""
    if not isinstance(data, dict):
        raise ConfigError("config: expected a mapping of keys to values at the top level")
    try:
        return StudyConfig.model_validate(data, context={"base_dir": base_dir})
    except ValidationError as error:
        raise ConfigError(_one_line(f"config error: {_describe(error)}")) from None
    except DataError as error:
        raise DataError(_one_line(str(error))) from None
    except RecursionError:
        raise ConfigError("config error: config: nested too deeply") from None


class _DuplicateKey(yaml.YAMLError):
    def __init__(self, key: Any, mark: yaml.Mark) -> None:
        super().__init__(f"duplicate key {key!r}")
        self.key, self.problem_mark = key, mark


class _NoDuplicateKeys:
    """Refuses a key given twice in one mapping (PyYAML keeps the last silently). Keys
    brought in by a merge (``<<: *base``) may still be overridden."""

    def construct_mapping(self, node: yaml.Node, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, yaml.MappingNode):
            seen: set[Any] = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)  # type: ignore[attr-defined]
                try:
                    duplicate = key in seen
                except TypeError:  # unhashable: the constructor reports it
                    continue
                if duplicate:
                    raise _DuplicateKey(key, key_node.start_mark)
                seen.add(key)
        return super().construct_mapping(node, deep=deep)  # type: ignore[misc]


_SafeLoader: type = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _Loader(_NoDuplicateKeys, _SafeLoader):
    """PyYAML's safe loader, libyaml's when PyYAML was built with it (several times faster
    on a large file; it refuses nesting deeper than 1000 levels), refusing duplicate keys."""


def _read_text(path: Path) -> str:
    """The file's text; :class:`ConfigError` if it is missing, too large or not UTF-8."""
    try:
        if path.is_dir():
            raise ConfigError(f"config error: {path}: config file is a directory")
        if not path.exists():
            raise ConfigError(f"config file not found: {path}")
        if not path.is_file():
            raise ConfigError(f"config error: {path}: config file is not a regular file")
        size = path.stat().st_size
        if size > MAX_CONFIG_BYTES:
            raise ConfigError(
                f"config error: {path}: config file too large ({size} bytes; at most "
                f"{MAX_CONFIG_BYTES})"
            )
        with path.open("rb") as file:
            raw = file.read(MAX_CONFIG_BYTES + 1)
    except OSError as error:
        raise ConfigError(f"config error: {path}: cannot read ({error.strerror})") from None
    if len(raw) > MAX_CONFIG_BYTES:  # grew since stat
        raise ConfigError(f"config error: {path}: config file too large")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"config error: {path}: not UTF-8 text") from None


def load_config(path: Path) -> StudyConfig:
    """Read and validate a YAML config file (UTF-8, at most 1 MiB, no duplicate keys)."""
    path = Path(path)
    try:
        text = _read_text(path)
        try:
            data = yaml.load(text, Loader=_Loader)  # noqa: S506  (a safe loader)
        except _DuplicateKey as error:
            line = error.problem_mark.line + 1
            message = f"config error: {path} line {line}: duplicate key {error.key!r}"
            raise ConfigError(message) from None
        except yaml.YAMLError as error:
            if getattr(error, "problem", None) == "exceeded maximum nesting depth":  # libyaml
                raise ConfigError(f"config error: {path}: nested too deeply") from None
            mark = getattr(error, "problem_mark", None)
            line = f" line {mark.line + 1}" if mark is not None else ""
            raise ConfigError(f"config error: {path}{line}: not valid YAML") from None
        except RecursionError:
            raise ConfigError(f"config error: {path}: nested too deeply") from None
    except ConfigError as error:
        raise ConfigError(_one_line(str(error))) from None
    return parse_config(data, path.parent)
