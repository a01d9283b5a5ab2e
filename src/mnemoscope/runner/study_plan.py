"""The stages a config's ``study:`` section adds to a plan (``mnemoscope study``):
``removal/<ds>/<arch>``, ``summarization/<ds>/<arch>`` and ``dp/<ds>/<arch>`` (retraining
experiments that train inside the stage, :mod:`mnemoscope.runner.retraining`) and ``study`` (the study's
tables, :func:`mnemoscope.runner.study_stages.study_tables`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mnemoscope.models import arch_options, arch_source
from mnemoscope.runner import dp_sweep
from mnemoscope.runner import study_stages as study_work
from mnemoscope.runner.dependencies import code_units
from mnemoscope.train.ensemble import DP_CODE

if TYPE_CHECKING:
    from mnemoscope.runner.plan import Planner, Stage
# Stage and estimator_code are imported where they are used: plan.py imports this module


def study_stages(planner: Planner) -> Stage:
    """Plan the retraining experiments of the config's ``study:`` section and the stage
    writing the study's tables (returned), after ``planner``'s per-arch stages."""
    from mnemoscope.runner.plan import Stage

    cfg, study = planner.config, planner.config.study
    assert study is not None
    entries = {e.method: e.model_dump(mode="json") for e in [*cfg.memorization, *cfg.influence]}
    removal, summarization, private = [], [], []
    for cell in planner.cells:
        dataset, arch = cell["dataset"]["name"], cell["arch"]
        common = {
            "dataset": cell["dataset"],
            "arch": arch,
            "arch_options": arch_options(arch, cfg.arch_options.get(arch, {})),
            "arch_source": arch_source(arch),
            "train": cfg.train_for(arch).model_dump(),
            "seed": cfg.seed,
            "device": planner.device,
        }
        code = ("mnemoscope.runner.retraining", "mnemoscope.train", "mnemoscope.models")
        if cfg.train_for(arch).dp is not None:
            code = (*code, DP_CODE)
        if study.removal is not None and arch in (study.removal.archs or cfg.archs):
            methods = study.removal.methods
            args = {
                **common,
                "scores": {m: cell["scores"][m] for m in methods},
                "methods": [entries[m] for m in methods],
                "ks": study.removal.ks,
                "seeds": study.removal.seeds,
                "conditions": study.removal.conditions,
            }
            after = tuple(f"scores/{dataset}/{arch}/{m}" for m in methods)
            code_of = (*code, *_codes(planner, methods))
            removal.append(
                _part(planner, "removal", cell, study_work.removal_stage, args, after, code_of)
            )
        part = study.summarization
        if part is not None and arch in (part.archs or cfg.archs):
            args = {
                **common,
                "summarization": {**part.model_dump(), "method": entries[part.method]},
            }
            code_of = (*code, *_codes(planner, [part.method]))
            stage = _part(
                planner, "summarization", cell, study_work.summarization_stage, args, (), code_of
            )
            summarization.append(stage)
        sweep = study.dp
        if sweep is not None and arch in (sweep.archs or cfg.archs):
            bootstrap = {
                "n_bootstrap": cfg.analysis.n_bootstrap,
                "confidence": cfg.analysis.confidence,
            }
            args = {**common, "sweep": sweep.model_dump(mode="json"), "bootstrap": bootstrap}
            code_of = ("mnemoscope.runner.dp_sweep", *code)
            private.append(_part(planner, "dp", cell, dp_sweep.dp_stage, args, (), code_of))
    outputs = [
        f"{name}.parquet"
        for name in ("overlap", "cross_arch", "leakage")
        if getattr(study, name) is not None
    ]
    if study.applications is not None or summarization:
        outputs.append("applications.parquet")
    if removal:
        outputs.append("removal.parquet")
    if private:
        outputs.append("dp.parquet")
    return planner.plan.add(
        Stage(
            name="study",
            function=study_work.study_tables,
            args={
                "study": study.model_dump(mode="json", exclude={"quick"}),
                "seed": cfg.seed,
                "bootstrap": {
                    "n_bootstrap": cfg.analysis.n_bootstrap,
                    "confidence": cfg.analysis.confidence,
                },
                "costs": [cost for cell in planner.cells for cost in cell["costs"]],
                "removal": [file for _, file in removal],
                "summarization": [file for _, file in summarization],
                "dp": [file for _, file in private],
            },
            outputs=tuple(outputs),
            after=(
                "tables",
                "fits",
                *(name for name, _ in removal + summarization + private),
            ),
            code=code_units(("mnemoscope.analysis", "mnemoscope.runner.study_stages")),
        )
    )


def _part(planner: Planner, kind: str, cell: dict, function, args: dict, after: tuple, code: tuple):
    """Add the experiment stage ``<kind>/<dataset>/<arch>`` of ``cell``, writing its part
    file (``args`` plus that ``output``) after the dataset's stage and ``after``, keyed by
    the modules ``code``; returns its name and file."""
    from mnemoscope.runner.plan import Stage

    dataset, arch = cell["dataset"]["name"], cell["arch"]
    file = planner.run.part_file(kind, dataset, arch)
    stage = planner.plan.add(
        Stage(
            name=f"{kind}/{dataset}/{arch}",
            function=function,
            args={**args, "output": file},
            outputs=(file,),
            after=(f"data/{dataset}", *after),
            code=code_units(code),
        )
    )
    return stage.name, file


def _codes(planner: Planner, methods: list[str]) -> tuple[str, ...]:
    """Modules the named estimators of the plan run."""
    from mnemoscope.runner.plan import estimator_code

    return tuple(
        sorted({m for e in planner.estimators if e.name in methods for m in estimator_code(e)})
    )
