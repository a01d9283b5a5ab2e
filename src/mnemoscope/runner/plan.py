"""A study as a plan: stages, what each reads, and the cache key of each.

A :class:`Stage` is a plain module-level function of the run directory and a
JSON-able ``args`` mapping (config slices and file names relative to the run
directory), so any executor can run it in this process, in another one or on
another machine that sees the run directory. Its cache key hashes its name, its
args, the keys of the stages it reads and the code version of the modules it runs.

The plan is built in two steps (:class:`Planner`): the data stages first, then,
once the datasets exist (their sizes are needed for the masks), everything else:
each estimator is asked which ensembles it needs (:meth:`Estimator.ensembles
<mnemoscope.estimator.Estimator.ensembles>`); equal ensembles are trained once;
each is split into parts of at most ``train.chunk_size`` models, one training stage
per part. The runner never asks which family an estimator belongs to.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from mnemoscope.analysis.influence_eval import lds_masks
from mnemoscope.config import StudyConfig
from mnemoscope.data import BUILTIN
from mnemoscope.estimator import REGISTRY, Estimator, PlanContext
from mnemoscope.models import arch_options, arch_source
from mnemoscope.runner import stages as work
from mnemoscope.runner import study_plan
from mnemoscope.runner import study_stages as study_work
from mnemoscope.runner.dependencies import code_units, estimator_code, estimator_source
from mnemoscope.store import DatasetInfo, RunDir, code_version, content_hash
from mnemoscope.task import Task
from mnemoscope.train import EnsembleSpec, derive_seed, merge_specs
from mnemoscope.train.ensemble import DEFAULT_CHUNK, DP_CODE

PART_TABLES = ("attacks", "attack_roc", "score_parts")
"""Tables gathered from estimators' :attr:`~mnemoscope.estimator.Estimator.extra_tables`;
always written (empty when no estimator adds rows)."""

# Seed streams, so masks and trained models never share draws.
_MASKS, _TRAIN = 3, 4

StageFunction = Callable[..., dict[str, Any]]


@dataclass(frozen=True)
class Stage:
    """One unit of work.

    Attributes:
        name: unique in the plan, e.g. ``train/digits/mlp/ensemble-1a2b3c4d5e6f``.
        function: module-level ``function(root, args, reporter) -> record``.
        args: JSON-able inputs: config slices and run-relative file names.
        outputs: run-relative files the stage writes (atomically).
        after: names of the stages whose outputs it reads.
        code: modules whose code version enters the key.
        key: content hash of all of the above and the keys of ``after``.
    """

    name: str
    function: StageFunction
    args: dict[str, Any]
    outputs: tuple[str, ...]
    after: tuple[str, ...] = ()
    code: tuple[str, ...] = ()
    key: str = ""


@dataclass
class Plan:
    """Stages in an order where each comes after the stages it reads.

    ``threads`` (torch intra-op threads per stage) enters every key: reductions may
    round differently with another thread count.
    """

    threads: int = 1
    stages: list[Stage] = field(default_factory=list)
    _by_name: dict[str, Stage] = field(default_factory=dict, repr=False)

    def key(self, name: str) -> str:
        return self[name].key

    def __getitem__(self, name: str) -> Stage:
        return self._by_name[name]

    def add(self, stage: Stage) -> Stage:
        """Append ``stage`` with its cache key computed; its inputs must be in the plan."""
        key = content_hash(
            {
                "stage": stage.name,
                "args": stage.args,
                "inputs": [self.key(name) for name in stage.after],
                "code": code_version(*stage.code),
                "threads": self.threads,
            }
        )
        if stage.name in self._by_name:
            raise ValueError(f"stage '{stage.name}' planned twice")
        keyed = replace(stage, key=key)
        self.stages.append(keyed)
        self._by_name[keyed.name] = keyed
        return keyed


def plan_context(config: StudyConfig, n_train: int, arch: str | None = None) -> PlanContext:
    """What every estimator of ``config`` is told about a dataset of ``n_train`` examples
    trained on by ``arch`` (whose epochs ``arch_train`` may set; None: the ``train``
    block's)."""
    epochs = (config.train if arch is None else config.train_for(arch)).epochs
    return PlanContext(n_train, epochs, derive_seed(config.seed, _MASKS))


def declared_ensembles(
    estimators: list[Estimator], config: StudyConfig, n_train: int
) -> dict[str, tuple[dict[str, EnsembleSpec], dict[str, dict[str, str]]]]:
    """:func:`ensemble_specs` of each arch of ``config`` on a dataset of ``n_train``
    examples. The ensembles depend on the dataset and the arch's epochs only: archs
    trained for as many epochs share one declaration (equal specs stay merged)."""
    by_epochs: dict[int, tuple[dict[str, EnsembleSpec], dict[str, dict[str, str]]]] = {}
    declared = {}
    for arch in config.archs:
        context = plan_context(config, n_train, arch)
        if context.epochs not in by_epochs:
            by_epochs[context.epochs] = ensemble_specs(estimators, context)
        declared[arch] = by_epochs[context.epochs]
    return declared


def ensemble_specs(
    estimators: list[Estimator], context: PlanContext
) -> tuple[dict[str, EnsembleSpec], dict[str, dict[str, str]]]:
    """Collect every estimator's declared ensembles and merge the equal ones.

    Returns ``(specs, roles)``: the distinct ensembles by trajectory digest (each
    with the union of the checkpoints asked for), and for each estimator its
    roles mapped to those digests.
    """
    grouped: dict[str, list[EnsembleSpec]] = {}
    roles: dict[str, dict[str, str]] = {}
    for estimator in estimators:
        declared = estimator.ensembles(context)
        if not declared:
            raise ValueError(f"{estimator.name}: ensembles() declared no ensemble")
        roles[estimator.name] = {}
        for role, spec in declared.items():
            if spec.masks.shape[1] != context.n_train:
                raise ValueError(
                    f"{estimator.name}: masks for role '{role}' have {spec.masks.shape[1]} "
                    f"columns, the dataset has {context.n_train} training examples"
                )
            bad = [e for e in spec.checkpoint_epochs if e > context.epochs]
            if bad:
                raise ValueError(
                    f"{estimator.name}: checkpoint epochs {bad} beyond {context.epochs} epochs"
                )
            grouped.setdefault(spec.trajectory, []).append(spec)
            roles[estimator.name][role] = spec.trajectory
    return {digest: merge_specs(specs) for digest, specs in grouped.items()}, roles


def _dataset_args(run: RunDir, name: str, info: DatasetInfo) -> dict[str, Any]:
    return {
        "name": name,
        "kind": info.kind,
        "n_classes": info.n_classes,
        "file": run.data_file(name),
    }


def _registered(ds) -> bool:
    return ds.path is None and ds.name in BUILTIN and bool(BUILTIN[ds.name].digest)


class Planner:
    """Turns a config (and, once they exist, its datasets) into stages."""

    def __init__(self, config: StudyConfig, run: RunDir, device: str) -> None:
        self.config = config
        self.run = run
        self.device = device
        self.plan = Plan(threads=config.executor.resolved_threads())
        self.table_parts: dict[str, list[str]] = {}
        self.lds_parts: list[dict[str, str]] = []
        self.cells: list[dict[str, Any]] = []
        """Per (dataset, arch): its ensembles' model files (for ``fits``) and what each
        method's stages and training cost (for the study's ``leakage`` seconds)."""
        self.spec_files: dict[str, torch.Tensor] = {}
        """Masks of the planned ensembles by file: the runner writes them before training."""
        self.estimators: list[Estimator] = [
            REGISTRY[entry.method](entry) for entry in [*config.memorization, *config.influence]
        ]

    def data_stages(self) -> list[Stage]:
        """One stage per dataset: build it and write its tensors."""
        return [
            self.plan.add(
                Stage(
                    name=f"data/{ds.name}",
                    function=work.build_data,
                    args={
                        "dataset": ds.model_dump(),
                        "seed": self.config.seed,
                        "file": self.run.data_file(ds.name),
                        # a registered dataset's content: new data, new key
                        **({"registered": BUILTIN[ds.name].digest} if _registered(ds) else {}),
                    },
                    outputs=(self.run.data_file(ds.name),),
                    code=("mnemoscope.data",),
                )
            )
            for ds in self.config.datasets
        ]

    def study_stages(self, datasets: dict[str, DatasetInfo]) -> list[Stage]:
        """Training, fitting, scoring, tables, analysis and report."""
        first = len(self.plan.stages)
        score_files: list[str] = []
        influence_files: list[str] = []
        for ds in self.config.datasets:
            info = datasets[ds.name]
            declared = declared_ensembles(self.estimators, self.config, info.n_train)
            for arch in self.config.archs:
                scores, influence = self._arch_stages(ds.name, info, arch, declared[arch])
                score_files += scores
                influence_files += influence
                if self.config.analysis.lds is not None:
                    self.lds_parts.append(self._lds_stage(ds.name, info, arch))
        after = tuple(
            s.name for s in self.plan.stages if s.name.startswith(("scores/", "influence/"))
        )
        self.plan.add(
            Stage(
                name="fits",
                function=study_work.measure_fits,
                args={
                    "cells": [
                        {"dataset": c["dataset"], "arch": c["arch"], "ensembles": c["ensembles"]}
                        for c in self.cells
                    ]
                },
                outputs=("fits.parquet",),
                after=tuple(s.name for s in self.plan.stages if s.name.startswith("train/")),
                code=code_units(("mnemoscope.runner.study_stages", "mnemoscope.train.fit")),
            )
        )
        self.plan.add(
            Stage(
                name="tables",
                function=work.collect_tables,
                args={
                    "datasets": [
                        _dataset_args(self.run, ds.name, datasets[ds.name])
                        for ds in self.config.datasets
                    ],
                    "scores": score_files,
                    "influence": influence_files,
                    "parts": {t: self.table_parts.get(t, []) for t in PART_TABLES},
                },
                outputs=(
                    "examples.parquet",
                    "scores.parquet",
                    "influence.parquet",
                    *(f"{t}.parquet" for t in PART_TABLES),
                ),
                after=("fits", *(f"data/{ds.name}" for ds in self.config.datasets), *after),
                code=("mnemoscope.store", "mnemoscope.data", "mnemoscope.analysis.fits"),
            )
        )
        self.plan.add(
            Stage(
                name="analysis",
                function=work.analyse,
                args={
                    "analysis": self.config.analysis.model_dump(),
                    "seed": self.config.seed,
                    "lds": self.lds_parts,
                },
                outputs=("correlations.parquet", "detection.parquet", "influence_eval.parquet"),
                after=("tables", *(f"lds/{p['dataset']}/{p['arch']}" for p in self.lds_parts)),
                code=("mnemoscope.analysis",),
            )
        )
        report_after = ["analysis"]
        if self.config.study is not None:
            report_after.append(study_plan.study_stages(self).name)
        self.plan.add(
            Stage(
                name="report",
                function=work.render,
                args={"name": self.config.name},
                outputs=("report.html",),
                after=tuple(report_after),
                code=("mnemoscope.report", "mnemoscope.store"),
            )
        )
        return self.plan.stages[first:]

    def _arch_stages(
        self,
        dataset: str,
        info: DatasetInfo,
        arch: str,
        declared: tuple[dict[str, EnsembleSpec], dict[str, dict[str, str]]],
    ) -> tuple[list[str], list[str]]:
        cfg = self.config
        specs, roles = declared
        trained: dict[str, tuple[list[str], tuple[str, ...]]] = {}
        data = _dataset_args(self.run, dataset, info)
        for digest, spec in specs.items():
            trained[digest] = self._train_stages(data, arch, spec)
        common = {
            "dataset": data,
            "arch": arch,
            "seed": cfg.seed,
            "task": Task.from_train(cfg.train_for(arch)).__dict__,
            "device": self.device,
        }
        score_files, influence_files = [], []
        readers = Counter(d for r in roles.values() for d in set(r.values()))
        cell = {
            "dataset": data,
            "arch": arch,
            "ensembles": [files for files, _ in trained.values()],
            "scores": {},
            "costs": [],
        }
        self.cells.append(cell)
        for estimator in self.estimators:
            name = estimator.name
            ensembles = {role: trained[d][0] for role, d in roles[name].items()}
            cost = {
                "dataset": dataset,
                "arch": arch,
                "method": name,
                "own": [f"scores/{dataset}/{arch}/{name}"],
                "training": [
                    [stage, readers[d]]
                    for d in set(roles[name].values())
                    for stage in trained[d][1]
                ],
            }
            if estimator.cache_fit:
                cost["own"].append(f"fit/{dataset}/{arch}/{name}")
            cell["costs"].append(cost)
            after = (f"data/{dataset}",) + tuple(
                stage for d in set(roles[name].values()) for stage in trained[d][1]
            )
            args = {
                **common,
                "method": estimator.config.model_dump(mode="json"),
                "source": estimator_source(estimator),
                "ensembles": ensembles,
            }
            code = estimator_code(estimator)
            if estimator.cache_fit:
                fit_file = self.run.fit_file(dataset, arch, name)
                fit = self.plan.add(
                    Stage(
                        name=f"fit/{dataset}/{arch}/{name}",
                        function=work.fit_estimator,
                        args={**args, "output": fit_file},
                        outputs=(fit_file,),
                        after=after,
                        code=code,
                    )
                )
                args = {**args, "fit": fit_file}
                after = (*after, fit.name)
            score_file = self.run.score_file(dataset, arch, name)
            extra = {
                t: self.run.table_part_file(t, dataset, arch, name) for t in estimator.extra_tables
            }
            self.plan.add(
                Stage(
                    name=f"scores/{dataset}/{arch}/{name}",
                    function=work.score_estimator,
                    args={**args, "output": score_file, "tables": extra},
                    outputs=(score_file, *extra.values()),
                    after=after,
                    code=code,
                )
            )
            score_files.append(score_file)
            cell["scores"][name] = score_file
            for table, file in extra.items():
                self.table_parts.setdefault(table, []).append(file)
            if cfg.targets is not None and estimator.attributes_targets:
                file = self.run.influence_file(dataset, arch, name)
                self.plan.add(
                    Stage(
                        name=f"influence/{dataset}/{arch}/{name}",
                        function=work.target_influence,
                        args={**args, "targets": cfg.targets.model_dump(), "output": file},
                        outputs=(file,),
                        after=after,
                        code=code,
                    )
                )
                influence_files.append(file)
        return score_files, influence_files

    def _lds_stage(self, dataset: str, info: DatasetInfo, arch: str) -> dict[str, str]:
        """Train the LDS subsets' models and measure the targets' margins under them."""
        cfg, lds = self.config, self.config.analysis.lds
        masks = lds_masks(lds.subsets, info.n_train, lds.fraction, derive_seed(cfg.seed, _MASKS))
        spec = EnsembleSpec(torch.from_numpy(masks).repeat_interleave(lds.repeats, dim=0))
        data = _dataset_args(self.run, dataset, info)
        files, trained = self._train_stages(data, arch, spec)
        file = self.run.lds_file(dataset, arch)
        self.plan.add(
            Stage(
                name=f"lds/{dataset}/{arch}",
                function=work.lds_margins,
                args={
                    "dataset": data,
                    "arch": arch,
                    "ensemble": files,
                    "repeats": lds.repeats,
                    "targets": cfg.targets.model_dump(),
                    "device": self.device,
                    "output": file,
                },
                outputs=(file,),
                after=(f"data/{dataset}", *trained),
                code=("mnemoscope.task", "mnemoscope.train"),
            )
        )
        return {"dataset": dataset, "arch": arch, "file": file}

    def _train_stages(
        self, data: dict[str, Any], arch: str, spec: EnsembleSpec
    ) -> tuple[list[str], tuple[str, ...]]:
        """Stages training ``spec`` in parts of ``chunk_size`` models: (files, stage names)."""
        cfg, train = self.config, self.config.train_for(arch)
        dataset = data["name"]
        spec_file = self.run.spec_file(dataset, spec.trajectory[:16])
        self.spec_files[spec_file] = spec.masks
        size = train.chunk_size or min(spec.n_models, DEFAULT_CHUNK)
        starts = list(range(0, spec.n_models, size))
        files, names = [], []
        for part, start in enumerate(starts):
            split = len(starts) > 1
            file = self.run.model_file(dataset, arch, spec.name, part if split else None)
            suffix = f"/part-{part}" if split else ""
            stage = self.plan.add(
                Stage(
                    name=f"train/{dataset}/{arch}/{spec.name}{suffix}",
                    function=work.train_part,
                    args={
                        "dataset": data,
                        "arch": arch,
                        "arch_options": arch_options(arch, cfg.arch_options.get(arch, {})),
                        "arch_source": arch_source(arch),
                        "spec": spec_file,
                        "trajectory": spec.trajectory,
                        "init": spec.init,
                        "order": spec.order,
                        "checkpoint_epochs": list(spec.checkpoint_epochs),
                        "keep_initial": spec.keep_initial,
                        "models": [start, min(start + size, spec.n_models)],
                        "train": train.model_dump(),
                        "seed": derive_seed(cfg.seed, _TRAIN, int(spec.trajectory[:15], 16)),
                        "device": self.device,
                        "output": file,
                    },
                    outputs=(file,),
                    after=(f"data/{dataset}",),
                    code=(
                        "mnemoscope.train",
                        "mnemoscope.models",
                        "mnemoscope.task",
                        *((DP_CODE,) if train.dp is not None else ()),
                    ),
                )
            )
            files.append(file)
            names.append(stage.name)
        return files, tuple(names)
