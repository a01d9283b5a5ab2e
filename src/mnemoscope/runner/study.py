"""Execute a study: plan its stages, skip the finished ones, run the rest on an executor.

Stages: ``data/<ds>`` → ``train/<ds>/<arch>/<ensemble>`` →
[``fit/<ds>/<arch>/<method>``] → ``scores/...`` (and ``influence/...`` when the config
names targets) → ``tables`` → ``analysis`` → ``report``. The plan
(:mod:`mnemoscope.runner.plan`) gives each stage a cache key hashing its config
slice, its inputs' keys and the code it runs, so running the same config again
redoes nothing and a killed run resumes after its last finished stage. The
manifest is written only here, by the process driving the run.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path

import torch

from mnemoscope.config import StudyConfig
from mnemoscope.errors import ConfigError
from mnemoscope.runner.estimate import Estimate, estimate_study, expected_dataset, refuse_if_too_big
from mnemoscope.runner.executors import LocalExecutor, RayExecutor, make_executor
from mnemoscope.runner.plan import Plan, Planner, Stage, declared_ensembles
from mnemoscope.runner.progress import Reporter
from mnemoscope.store import DatasetInfo, RunDir, write_safetensors
from mnemoscope.train.ensemble import BF16_EMULATED, bf16_is_emulated
from mnemoscope.train.fit import FIT_WARNING as FIT_WARNING
from mnemoscope.train.fit import fit_problem


@dataclass
class StageOutcome:
    name: str
    ran: bool
    seconds: float


@dataclass
class StudyResult:
    run_dir: Path
    report: Path
    outcomes: list[StageOutcome] = field(default_factory=list)

    @property
    def all_cached(self) -> bool:
        return not any(o.ran for o in self.outcomes)


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("config error: device: 'cuda' requested but CUDA is not available")
    return torch.device(device)


class Study:
    """One study's execution against one run directory."""

    def __init__(
        self,
        config: StudyConfig,
        out: Path,
        reporter: Reporter | None = None,
        force: bool = False,
    ) -> None:
        self.config = config
        self.device = resolve_device(config.device)
        self.root = Path(out)
        self.force = force
        self.reporter = reporter or Reporter(quiet=True)
        self.outcomes: list[StageOutcome] = []
        self.warnings: list[str] = []

    def estimate(self) -> Estimate:
        """The run's cost, from the config alone; refuses what cannot fit in memory."""
        estimate = estimate_study(self.config)
        refuse_if_too_big(estimate)
        return estimate

    def planned(self) -> list[Stage]:
        """Every stage of the study, in order, with dataset sizes as the data stages will
        make them; nothing is built or written."""
        planner = Planner(self.config, RunDir(self.root), str(self.device))
        planner.data_stages()
        datasets = {ds.name: expected_dataset(ds) for ds in self.config.datasets}
        planner.study_stages(datasets)
        return list(planner.plan.stages)

    def dry_run(self) -> list[str]:
        """The plan and the estimate, as lines; nothing is built or written."""
        estimate = self.estimate()
        stages = self.planned()
        lines = [f"plan: {len(stages)} stages", *(f"  {stage.name}" for stage in stages)]
        return [*lines, *self.ensemble_lines(), "estimate:", *estimate.lines()]

    def ensemble_lines(self) -> list[str]:
        """Each dataset's ensembles (per group of archs trained alike) with the methods
        that read them, and a note where two subset ensembles are trained for
        estimators one ensemble could serve."""
        lines = ["ensembles (trained for each arch named; the methods that read them):"]
        estimators = self.planner_estimators()
        for ds in self.config.datasets:
            n_train = expected_dataset(ds).n_train
            found: dict[str, tuple[object, list[str], list[str]]] = {}
            for arch, (specs, roles) in declared_ensembles(
                estimators, self.config, n_train
            ).items():
                for digest, spec in specs.items():
                    readers = sorted(m for m, r in roles.items() if digest in r.values())
                    found.setdefault(digest, (spec, [], readers))[1].append(arch)
            for spec, archs, readers in found.values():
                share = float(spec.masks.double().mean())
                lines.append(
                    f"  {ds.name}/{spec.name}: {spec.n_models} models on {share:.0%} of the "
                    f"data ({', '.join(archs)}), read by {', '.join(readers)}"
                )
        return [*lines, *self.sharing_notes()]

    def planner_estimators(self) -> list:
        return Planner(self.config, RunDir(self.root), str(self.device)).estimators

    def sharing_notes(self) -> list[str]:
        """One line when subset estimators (those with ``n_models`` and
        ``subset_fraction``) ask for different subset ensembles."""
        subset = [
            e
            for e in [*self.config.memorization, *self.config.influence]
            if hasattr(e, "n_models") and hasattr(e, "subset_fraction") and e.subset_fraction < 1
        ]
        kinds = {(e.n_models, e.subset_fraction) for e in subset}
        if len(kinds) <= 1:
            return []
        described = ", ".join(
            f"{e.method} ({e.n_models} models, fraction {e.subset_fraction})" for e in subset
        )
        return [
            f"note: {described} train {len(kinds)} subset ensembles; the same n_models and "
            "subset_fraction for all of them would train one"
        ]

    def execute(self, only: Collection[str] | None = None) -> StudyResult:
        """Run the study (``only``: just these stages and what they read; the datasets
        are always built)."""
        cfg = self.config
        self.estimate()  # before anything is written
        for note in self.sharing_notes():
            self.reporter.say(note)
        emulated = [
            a for a in cfg.archs if bf16_is_emulated(cfg.train_for(a).precision, self.device)
        ]
        if emulated:
            self._warn(f"{', '.join(emulated)}: {BF16_EMULATED}")
        with warnings.catch_warnings():  # said once above, not again by each training stage
            warnings.filterwarnings("ignore", re.escape(BF16_EMULATED), RuntimeWarning)
            return self._execute_all(only)

    def _execute_all(self, only: Collection[str] | None) -> StudyResult:
        cfg = self.config
        config = cfg.model_dump(mode="json")
        RunDir(self.root).claim(config, self.force)
        with RunDir(self.root).lock():
            self.run = RunDir(self.root)  # as the lock holder sees it
            self.run.claim(config, self.force)
            self.run.start(cfg.name, config)
            self.planner = Planner(cfg, self.run, str(self.device))
            with make_executor(cfg.executor, self.reporter) as executor:
                self._execute(self.planner.data_stages(), executor)
                datasets = {ds.name: self._dataset_info(ds.name) for ds in cfg.datasets}
                self.run.manifest.datasets = datasets
                stages = self.planner.study_stages(datasets)
                # the manifest (and the report drawn from it) describes this config alone
                self.run.keep_only([s.name for s in self.plan.stages], list(datasets))
                for file, masks in self.planner.spec_files.items():
                    write_safetensors(self.run.path(file), {"masks": masks})
                self._execute(_needed(stages, only) if only is not None else stages, executor)
        return StudyResult(self.run.root, self.run.path("report.html"), self.outcomes)

    @property
    def plan(self) -> Plan:
        return self.planner.plan

    def _dataset_info(self, name: str) -> DatasetInfo:
        return DatasetInfo.model_validate(
            self.run.manifest.stages[f"data/{name}"].record["dataset"]
        )

    def _execute(self, stages: list[Stage], executor: LocalExecutor | RayExecutor) -> None:
        todo = []
        for stage in stages:
            if self.run.is_finished(stage.name, stage.key):
                self.outcomes.append(StageOutcome(stage.name, False, 0.0))
                self.reporter.say(f"[dim]cached[/dim]  {stage.name}")
                self._warn_if_unfit(stage.name, self.run.manifest.stages[stage.name].record)
            else:
                todo.append(stage)
        for stage, record, seconds in executor.run(todo, self.run.root):
            self.run.finish(stage.name, stage.key, seconds, list(stage.outputs), record)
            self.outcomes.append(StageOutcome(stage.name, True, seconds))
            self.reporter.say(f"[green]done[/green]    {stage.name} ({seconds:.1f} s)")
            self._warn_if_unfit(stage.name, record)

    def _warn_if_unfit(self, name: str, record: dict) -> None:
        """Say so when models fit less than ``FIT_WARNING`` of their own training labels,
        or less than ``FLIPPED_FIT_WARNING`` of the flipped ones (:func:`fit_problem`)."""
        fit = record.get("fit")
        problem = fit_problem(fit) if fit else None
        if problem is None:
            return
        message = (
            f"{name}: the ensemble {problem}; memorization cannot be seen when models do "
            "not fit their data (train longer or with a higher lr: arch_train)"
        )
        self._warn(message)

    def _warn(self, message: str) -> None:
        self.warnings.append(message)
        self.reporter.say(f"[yellow]warning[/yellow] {message}")


def _needed(stages: list[Stage], names: Collection[str]) -> list[Stage]:
    """``stages`` restricted to ``names`` and, transitively, the stages they read."""
    by_name = {stage.name: stage for stage in stages}
    unknown = sorted(set(names) - set(by_name))
    if unknown:
        some = ", ".join(list(by_name)[:8])
        raise ConfigError(f"stages: unknown {unknown}; this study has e.g. {some}")
    wanted, todo = set(), list(names)
    while todo:
        name = todo.pop()
        if name in by_name and name not in wanted:
            wanted.add(name)
            todo += list(by_name[name].after)
    return [stage for stage in stages if stage.name in wanted]


def run_study(
    config: StudyConfig, out: Path, reporter: Reporter | None = None, force: bool = False
) -> StudyResult:
    """Run (or resume, or confirm finished) ``config`` into the directory ``out``.

    ``out`` must be missing, empty, or a run of the same config (resumed); a run of
    another config is replaced only with ``force``.
    """
    return Study(config, out, reporter, force).execute()
