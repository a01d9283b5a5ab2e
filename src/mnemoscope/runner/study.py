"""Execute a study in-process: stages in order, each skipped when already finished.

Stages (DESIGN.md's flow): ``data/<ds>`` → ``train/<ds>/<arch>/<ensemble>`` →
``scores/<ds>/<arch>/<method>`` → ``tables`` → ``analysis`` → ``report``. Each
stage's cache key hashes its config slice, its inputs' keys (hence the data
fingerprint) and the code version of the modules it runs, so running the same
config again redoes nothing and a killed run resumes after its last finished stage.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch
from safetensors.torch import load_file

from mnemoscope.analysis import correlation_table, detection_table
from mnemoscope.config import DatasetConfig, StudyConfig
from mnemoscope.data import Dataset, prepare
from mnemoscope.errors import ConfigError
from mnemoscope.estimator import REGISTRY, Estimator
from mnemoscope.influence import InfluenceEstimator
from mnemoscope.memorization import MemorizationEstimator
from mnemoscope.report import render_report
from mnemoscope.runner.progress import Reporter
from mnemoscope.store import (
    CORRELATIONS,
    DETECTION,
    EXAMPLES,
    SCORES,
    RunDir,
    code_version,
    content_hash,
    write_parquet,
    write_safetensors,
)
from mnemoscope.train import TrainedEnsemble, derive_seed, full_masks, train_ensemble

# Seed streams, so the full model, the subset ensembles and their masks never share draws.
_FULL, _SUBSETS, _MASKS = 1, 2, 3


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


def _mask_digest(masks: torch.Tensor) -> str:
    """SHA-256 of ``[K, n]`` subset masks: names the ensemble and keys its training."""
    return hashlib.sha256(masks.to(torch.uint8).numpy().tobytes()).hexdigest()


def _estimator_code(estimator: Estimator) -> str:
    modules = {type(estimator).__module__, "mnemoscope.estimator"}
    modules |= {
        base.__module__
        for base in type(estimator).__mro__
        if base.__module__.startswith("mnemoscope")
    }
    if isinstance(estimator, InfluenceEstimator):
        modules.add("mnemoscope.influence.gradients")
    return code_version(*sorted(modules))


class Study:
    """One study's execution against one run directory."""

    def __init__(self, config: StudyConfig, out: Path, reporter: Reporter | None = None) -> None:
        self.config = config
        self.device = resolve_device(config.device)
        self.run = RunDir(out)
        self.reporter = reporter or Reporter(quiet=True)
        self.outcomes: list[StageOutcome] = []
        self.memorization: list[MemorizationEstimator] = [
            REGISTRY[c.method](c)
            for c in config.memorization  # type: ignore[misc]
        ]
        self.influence: list[InfluenceEstimator] = [
            REGISTRY[c.method](c)
            for c in config.influence  # type: ignore[misc]
        ]

    def _stage(
        self, name: str, key_parts: dict, outputs: list[str], work: Callable[[], None]
    ) -> str:
        key = content_hash({"stage": name, **key_parts})
        if self.run.is_finished(name, key):
            self.outcomes.append(StageOutcome(name, False, 0.0))
            self.reporter.say(f"[dim]cached[/dim]  {name}")
            return key
        started = time.perf_counter()
        work()
        seconds = time.perf_counter() - started
        self.run.finish(name, key, seconds, outputs)
        self.outcomes.append(StageOutcome(name, True, seconds))
        self.reporter.say(f"[green]done[/green]    {name} ({seconds:.1f} s)")
        return key

    def execute(self) -> StudyResult:
        cfg = self.config
        self.run.start(cfg.name, cfg.model_dump(mode="json"))
        upstream: list[str] = []
        score_files: list[str] = []
        datasets: list[Dataset] = []
        for ds_cfg in cfg.datasets:
            dataset, data_key = self._data(ds_cfg)
            datasets.append(dataset)
            upstream.append(data_key)
            for arch in cfg.archs:
                for key, file in self._arch(dataset, data_key, arch):
                    upstream.append(key)
                    score_files.append(file)
        tables_key = self._tables(datasets, score_files, upstream)
        self.run.keep_only(
            [o.name for o in self.outcomes] + ["tables", "analysis", "report"],
            [d.name for d in cfg.datasets],
        )
        analysis_key = self._stage(
            "analysis",
            {
                "tables": tables_key,
                "analysis": cfg.analysis.model_dump(),
                "seed": cfg.seed,
                "code": code_version("mnemoscope.analysis"),
            },
            ["correlations.parquet", "detection.parquet"],
            self._analyse,
        )
        self._stage(
            "report",
            {"analysis": analysis_key, "name": cfg.name, "code": code_version("mnemoscope.report")},
            ["report.html"],
            lambda: render_report(self.run.root),
        )
        return StudyResult(self.run.root, self.run.path("report.html"), self.outcomes)

    # -- data ---------------------------------------------------------------------------

    def _data(self, ds_cfg: DatasetConfig) -> tuple[Dataset, str]:
        file = self.run.data_file(ds_cfg.name)
        built: list[Dataset] = []

        def work() -> None:
            dataset = prepare(
                ds_cfg.name,
                seed=self.config.seed,
                label_noise=ds_cfg.label_noise,
                test_fraction=ds_cfg.test_fraction,
                n_samples=ds_cfg.n_samples,
            )
            write_safetensors(self.run.path(file), dataset.tensors())
            self.run.manifest["datasets"][dataset.name] = {
                "kind": dataset.kind,
                "input_shape": list(dataset.input_shape),
                "n_classes": dataset.n_classes,
                "n_train": dataset.n_train,
                "n_test": dataset.n_test,
                "n_mislabeled": int(dataset.is_mislabeled.sum()),
                "label_noise": ds_cfg.label_noise,
                "fingerprint": dataset.fingerprint,
            }
            built.append(dataset)

        key = self._stage(
            f"data/{ds_cfg.name}",
            {
                "dataset": ds_cfg.model_dump(),
                "seed": self.config.seed,
                "code": code_version("mnemoscope.data"),
            },
            [file],
            work,
        )
        if built:
            return built[0], key
        info = self.run.manifest["datasets"][ds_cfg.name]
        tensors = load_file(str(self.run.path(file)))
        return Dataset.from_tensors(ds_cfg.name, info["kind"], info["n_classes"], tensors), key

    # -- training and scoring -----------------------------------------------------------

    def _train(
        self,
        dataset: Dataset,
        data_key: str,
        arch: str,
        ensemble: str,
        masks: torch.Tensor,
        seed: int,
        checkpoint_epochs: list[int],
    ) -> tuple[str, str]:
        file = self.run.model_file(dataset.name, arch, ensemble)
        epochs = self.config.train.epochs

        def work() -> None:
            total = masks.shape[0] * epochs
            label = f"train {dataset.name}/{arch}/{ensemble} ({masks.shape[0]} models)"
            with self.reporter.task(label, total) as advance:
                trained = train_ensemble(
                    arch,
                    dataset,
                    masks,
                    self.config.train,
                    seed=seed,
                    checkpoint_epochs=checkpoint_epochs,
                    device=self.device,
                    progress=advance,
                )
            trained.save(self.run.path(file))

        key = self._stage(
            f"train/{dataset.name}/{arch}/{ensemble}",
            {
                "data": data_key,
                "arch": arch,
                "seed": seed,
                "device": str(self.device),
                "train": self.config.train.model_dump(exclude={"chunk_size"}),
                "masks": _mask_digest(masks),
                "checkpoints": checkpoint_epochs,
                "code": code_version("mnemoscope.train", "mnemoscope.models"),
            },
            [file],
            work,
        )
        return key, file

    def _arch(self, dataset: Dataset, data_key: str, arch: str) -> list[tuple[str, str]]:
        """Train what ``arch`` needs on ``dataset`` and score it; ``(key, score file)`` pairs."""
        seed = self.config.seed
        loaded: dict[str, TrainedEnsemble] = {}

        def ensemble(file: str) -> TrainedEnsemble:
            if file not in loaded:
                loaded[file] = TrainedEnsemble.load(self.run.path(file))
            return loaded[file]

        results = []
        epochs = sorted(
            {e for est in self.influence for e in est.checkpoint_epochs(self.config.train.epochs)}
        )
        if self.influence:
            full_key, full_file = self._train(
                dataset,
                data_key,
                arch,
                "full",
                full_masks(1, dataset.n_train),
                derive_seed(seed, _FULL),
                epochs,
            )
            for est in self.influence:
                results.append(
                    self._score(
                        dataset,
                        arch,
                        est,
                        full_key,
                        lambda e=est: e.self_influence(ensemble(full_file), dataset, self.device),
                    )
                )
        for est in self.memorization:
            masks = est.masks(dataset.n_train, derive_seed(seed, _MASKS))
            name = "subsets-" + _mask_digest(masks)[:12]
            train_key, file = self._train(
                dataset, data_key, arch, name, masks, derive_seed(seed, _SUBSETS), []
            )
            results.append(
                self._score(
                    dataset,
                    arch,
                    est,
                    train_key,
                    lambda e=est, f=file: e.score(ensemble(f), dataset),
                )
            )
        return results

    def _score(
        self, dataset: Dataset, arch: str, est: Estimator, train_key: str, compute
    ) -> tuple[str, str]:
        file = self.run.score_file(dataset.name, arch, est.name)

        def work() -> None:
            with self.reporter.task(f"score {dataset.name}/{arch}/{est.name}", None):
                scores = compute()
            frame = scores.frame(dataset.name, arch, self.config.seed)
            write_parquet(self.run.path(file), frame, SCORES)

        key = self._stage(
            f"scores/{dataset.name}/{arch}/{est.name}",
            {
                "train": train_key,
                "method": est.config.model_dump(mode="json"),
                "code": _estimator_code(est),
            },
            [file],
            work,
        )
        return key, file

    # -- tables, analysis ---------------------------------------------------------------

    def _tables(self, datasets: list[Dataset], score_files: list[str], upstream: list[str]) -> str:
        def work() -> None:
            examples = pd.concat([d.examples_frame() for d in datasets], ignore_index=True)
            write_parquet(self.run.path("examples.parquet"), examples, EXAMPLES)
            parts = [pd.read_parquet(self.run.path(f)) for f in score_files]
            scores = (
                pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=SCORES.names)
            )
            write_parquet(self.run.path("scores.parquet"), scores, SCORES)

        return self._stage(
            "tables",
            {"upstream": upstream, "code": code_version("mnemoscope.store")},
            ["examples.parquet", "scores.parquet"],
            work,
        )

    def _analyse(self) -> None:
        cfg = self.config.analysis
        scores = pd.read_parquet(self.run.path("scores.parquet"))
        examples = pd.read_parquet(self.run.path("examples.parquet"))
        with self.reporter.task("analysis: bootstrap CIs", None):
            correlations = correlation_table(
                scores,
                n_bootstrap=cfg.n_bootstrap,
                confidence=cfg.confidence,
                seed=self.config.seed,
            )
            detection = detection_table(scores, examples)
        write_parquet(self.run.path("correlations.parquet"), correlations, CORRELATIONS)
        write_parquet(self.run.path("detection.parquet"), detection, DETECTION)


def run_study(config: StudyConfig, out: Path, reporter: Reporter | None = None) -> StudyResult:
    """Run (or resume, or confirm finished) ``config`` into the directory ``out``."""
    return Study(config, out, reporter).execute()
