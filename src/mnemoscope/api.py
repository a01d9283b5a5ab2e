"""The Python API: everything the command line does, from a notebook or a script.

    import mnemoscope as ms

    ms.register_dataset("mine", (x, y))          # arrays, tensors or a torch Dataset
    ms.register_arch("net", my_module)           # an nn.Module, or a factory(shape, classes)
    config = ms.parse_config({"datasets": [{"name": "mine", "label_noise": 0.1}],
                              "archs": ["net"],
                              "memorization": [{"method": "feldman_zhang", "n_models": 16}],
                              "influence": [{"method": "tracin"}]})
    results = ms.run(config, "runs/mine")         # or ms.run("study.yaml", ...)
    results.scores.head()                        # every table as a pandas DataFrame

A config is a :class:`~mnemoscope.config.StudyConfig` (built in Python, from a dict with
:func:`parse_config`, or from YAML with :func:`load_config`); running it writes the same
run directory as ``mnemoscope run`` (resumable, cached) and returns its tables.
"""

from __future__ import annotations

import copy
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from torch import nn

from mnemoscope.config import StudyConfig, load_config, parse_config
from mnemoscope.data import register_dataset
from mnemoscope.errors import ConfigError
from mnemoscope.models import register_arch as _register_factory
from mnemoscope.runner import Reporter, Study
from mnemoscope.runner.plan import Stage
from mnemoscope.store import TABLES, RunDir

__all__ = [
    "Results",
    "StudyConfig",
    "load_config",
    "open_run",
    "parse_config",
    "plan",
    "register_arch",
    "register_dataset",
    "run",
    "study",
]


@dataclass
class Results:
    """A run's tables as pandas DataFrames (``results.scores``, ``results.tables["attacks"]``).

    Attributes:
        run_dir: the run directory.
        tables: every table the run wrote, by name (see ``TABLES``).
        ran: names of the stages this call executed (the others were cached).
        warnings: the run's warnings (e.g. models that cannot fit their data).
    """

    run_dir: Path
    tables: dict[str, pd.DataFrame]
    ran: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def report(self) -> Path:
        return self.run_dir / "report.html"

    def __getattr__(self, name: str) -> pd.DataFrame:
        tables = self.__dict__.get("tables", {})
        if name in tables:
            return tables[name]
        raise AttributeError(f"no table '{name}' in this run; it has {sorted(tables)}")


def open_run(run_dir: str | Path) -> Results:
    """The tables of an existing run directory (read-only)."""
    store = RunDir.existing(Path(run_dir))
    tables = {name: store.table(name) for name in TABLES if store.has_table(name)}
    return Results(Path(run_dir), tables)


def _config(config: StudyConfig | Mapping[str, Any] | str | Path) -> StudyConfig:
    if isinstance(config, StudyConfig):
        return config
    if isinstance(config, Mapping):
        return parse_config(dict(config))
    if isinstance(config, str | Path):
        return load_config(Path(config))
    raise ConfigError(
        f"config: expected a StudyConfig, a mapping or a YAML path, got {type(config)}"
    )


def run(
    config: StudyConfig | Mapping[str, Any] | str | Path,
    out: str | Path,
    *,
    force: bool = False,
    progress: bool = False,
    stages: Collection[str] | None = None,
) -> Results:
    """Run (or resume) a study into ``out`` and return its tables.

    Args:
        config: a :class:`StudyConfig`, a mapping (as the YAML would be) or a YAML path.
        out: the run directory; a run of another config there is replaced only with
            ``force``.
        progress: print progress as the command line does.
        stages: run only these stages (names as :func:`plan` lists them, e.g.
            ``"train/digits/mlp/full-…"`` or ``"scores/digits/mlp/tracin"``) and what
            they read; the datasets are always built. None: the whole study.

    Returns:
        :class:`Results` with every table the run directory has (after a partial run, the
        tables of an earlier complete run, if any).
    """
    study = Study(_config(config), Path(out), Reporter(quiet=not progress), force)
    result = study.execute(only=stages)
    found = open_run(result.run_dir) if (Path(out) / "manifest.json").exists() else None
    tables = found.tables if found is not None else {}
    ran = [o.name for o in result.outcomes if o.ran]
    return Results(Path(out), tables, ran, list(study.warnings))


def study(
    config: StudyConfig | Mapping[str, Any] | str | Path | None = None,
    out: str | Path | None = None,
    *,
    quick: bool = False,
    force: bool = False,
    progress: bool = False,
) -> Results:
    """Run (or resume) a study — by default the built-in one, as ``mnemoscope study`` —
    and return its tables (``results.overlap``, ``results.leakage``, ...).

    Args:
        config: a YAML path, a mapping or a :class:`StudyConfig` (a config without a
            ``study:`` section gets the analyses that read the score tables); None: the
            default study shipped with the package.
        out: the run directory (default ``mnemoscope-study`` or ``mnemoscope-study-quick``).
        quick: shrink the study as its ``study.quick`` section says.
    """
    from mnemoscope.runner.default_study import as_study, study_config

    cfg = study_config(quick=quick) if config is None else as_study(_config(config), quick)
    out = out or ("mnemoscope-study-quick" if quick else "mnemoscope-study")
    return run(cfg, out, force=force, progress=progress)


def plan(config: StudyConfig | Mapping[str, Any] | str | Path, out: str | Path) -> list[Stage]:
    """The stages a run of ``config`` into ``out`` consists of, in order, without running
    anything (dataset sizes as the data stages will make them). Each is a plain function
    of the run directory and its JSON arguments (``stage.function(root, stage.args,
    reporter)``); :func:`run` with ``stages=[name]`` runs one with what it needs."""
    study = Study(_config(config), Path(out))
    return study.planned()


def register_arch(name: str, model: nn.Module | Any, **kwargs: Any) -> None:
    """Make a model known as ``name`` (to the config and runs): a factory
    ``factory(input_shape, n_classes) -> nn.Module`` (see
    :func:`mnemoscope.models.register_arch` for its options), or an ``nn.Module``
    instance. An instance is copied for every model of an ensemble and its parameters are
    redrawn by each submodule's ``reset_parameters()`` under that model's seed, so an
    instance whose parameters no submodule resets is refused (pass a factory then). The
    instance's class source is part of the training cache key.
    """
    if not isinstance(model, nn.Module):
        _register_factory(name, model, **kwargs)
        return
    owners = {
        id(p)
        for sub in model.modules()
        if callable(getattr(sub, "reset_parameters", None))
        for p in sub.parameters(recurse=False)
    }
    orphans = [n for n, p in model.named_parameters() if id(p) not in owners]
    if orphans:
        raise ConfigError(
            f"arch '{name}': parameters {orphans[:3]} belong to no submodule with "
            "reset_parameters(), so every model would start from the same weights; pass "
            "a factory(input_shape, n_classes) -> nn.Module instead"
        )
    template = copy.deepcopy(model).cpu()

    def factory(input_shape: tuple[int, ...], n_classes: int) -> nn.Module:
        fresh = copy.deepcopy(template)
        for sub in fresh.modules():
            if callable(getattr(sub, "reset_parameters", None)):
                sub.reset_parameters()
        return fresh

    factory.__wrapped__ = type(model)  # its source keys the training (inspect unwraps)
    factory.__qualname__ = f"{type(model).__module__}.{type(model).__qualname__}"
    _register_factory(name, factory, **kwargs)
