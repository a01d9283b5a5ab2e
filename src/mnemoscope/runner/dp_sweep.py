"""The DP sweep of a study (``study: {dp: ...}``): for each DP setting (none included), a
subset ensemble trained with it, and what it does to accuracy, memorization and leakage
(``dp.parquet``, :data:`~mnemoscope.analysis.dp.DP_COLUMNS`).

Each setting trains ``n_models`` models on the same ``subset_fraction`` subsets (the
Feldman–Zhang / LiRA design) with the arch's training config and that setting's ``dp``;
the scores are those of the registered estimators (``feldman_zhang``, ``lira``,
``canary``, with the bounded ``probability_shift`` reaction: DP-SGD's noise leaves some
models with huge logits, whose log-probability shifts swamp the mean) on the ensemble,
and LiRA's online statistic, each model in turn the
target, is the attack whose empirical ε lower bound (:mod:`mnemoscope.analysis.dp`) is
set beside the accountant's ε of the worst model.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mnemoscope.analysis.dp import DP_COLUMNS, dp_row
from mnemoscope.data import Dataset
from mnemoscope.memorization.attacks import (
    attack_metrics,
    leave_one_model_out,
    lira_statistic,
    logit_confidence,
)
from mnemoscope.memorization.canary import Canary, CanaryConfig
from mnemoscope.memorization.feldman_zhang import FeldmanZhang, FeldmanZhangConfig
from mnemoscope.memorization.lira import GLOBAL_VARIANCE_BELOW, Lira, LiraConfig
from mnemoscope.runner.progress import Reporter
from mnemoscope.runner.stages import load_dataset
from mnemoscope.store import write_parquet
from mnemoscope.task import Task
from mnemoscope.train import TrainConfig, subset_masks, train_ensemble
from mnemoscope.train.dp import privacy_record
from mnemoscope.train.options import DPConfig

Args = dict[str, Any]


def setting_name(setting: DPConfig | None) -> str:
    """How ``dp.parquet`` names a setting: ``none``, ``sigma=1.1`` or ``eps=8``."""
    if setting is None:
        return "none"
    if setting.noise_multiplier is not None:
        return f"sigma={setting.noise_multiplier:g}"
    return f"eps={setting.target_epsilon:g}"


def dp_sweep(
    dataset: Dataset,
    settings: list[DPConfig | None],
    train: TrainConfig,
    arch: str,
    *,
    n_models: int,
    subset_fraction: float,
    seed: int,
    arch_options: dict[str, Any] | None = None,
    device: str = "cpu",
    progress: Callable[[int], None] | None = None,
    n_bootstrap: int = 200,
    confidence: float = 0.95,
) -> pd.DataFrame:
    """One row per setting (:data:`~mnemoscope.analysis.dp.DP_COLUMNS` without dataset
    and arch); the AUCs' intervals from ``n_bootstrap`` resamples of the examples at
    ``confidence``. Cost: ``len(settings) · n_models`` trainings."""
    masks = subset_masks(n_models, dataset.n_train, subset_fraction, seed)
    method = {"n_models": n_models, "subset_fraction": subset_fraction}
    rows = []
    for setting in settings:
        config = train.model_copy(update={"dp": setting})
        ensemble = train_ensemble(
            arch,
            dataset,
            masks,
            config,
            seed=seed,
            device=device,
            progress=progress,
            arch_options=arch_options,
        )
        fitted = {"subsets": ensemble}
        task = Task()
        memorization = FeldmanZhang(FeldmanZhangConfig(**method)).fit(fitted, dataset, task)
        privacy = Lira(LiraConfig(**method)).fit(fitted, dataset, task).score().score
        phi = logit_confidence(ensemble.train_logits, dataset.y_train.expand(n_models, -1))
        reference = leave_one_model_out(phi, masks, n_models - 1 < GLOBAL_VARIANCE_BELOW)
        attack = lira_statistic(phi, reference, "online").numpy()
        metrics = attack_metrics(attack, masks.numpy())
        canary = None
        if dataset.canaries is not None:
            exposure = CanaryConfig(**method, reaction="probability_shift")
            found = Canary(exposure).fit(fitted, dataset, task).score()
            canary = pd.Series(found.score, found.example_ids).reindex(dataset.train_ids.numpy())
        record = (
            None
            if setting is None
            else privacy_record(setting, masks, config.batch_size, config.epochs)
        )
        numbers = dp_row(
            test_correct=(ensemble.test_logits.argmax(-1) == dataset.y_test).numpy(),
            memorization=memorization.score().score,
            flipped=dataset.is_mislabeled.numpy(),
            attack=attack,
            masks=masks.numpy(),
            attack_metrics=(metrics.auc, metrics.tpr_at_0_1pct_fpr),
            privacy_score=privacy,
            canary=None if canary is None else canary.to_numpy(dtype=np.float64),
            is_canary=dataset.is_canary.numpy(),
            epsilon=None if record is None else record["epsilon_max"],
            delta=(setting or DPConfig(noise_multiplier=0.0)).delta,
            seed=seed,
            n_bootstrap=n_bootstrap,
            confidence=confidence,
        )
        sigma = None if record is None else max(record["noise_multiplier"])
        rows.append(
            {"setting": setting_name(setting), "noise_multiplier": sigma, "n_models": n_models}
            | numbers
        )
    return pd.DataFrame(rows)


def dp_stage(root: Path, args: Args, reporter: Reporter) -> Args:
    """The DP sweep on one (dataset, arch), written to its part file."""
    dataset = load_dataset(root, args["dataset"])
    sweep = args["sweep"]
    settings = [None if s is None else DPConfig.model_validate(s) for s in sweep["settings"]]
    train = TrainConfig.model_validate(args["train"])
    label = f"dp sweep {dataset.name}/{args['arch']} ({len(settings)} settings)"
    with reporter.task(label, len(settings) * sweep["n_models"] * train.epochs) as advance:
        frame = dp_sweep(
            dataset,
            settings,
            train,
            args["arch"],
            n_models=sweep["n_models"],
            subset_fraction=sweep["subset_fraction"],
            seed=args["seed"],
            arch_options=args["arch_options"],
            device=args["device"],
            progress=advance,
            **args["bootstrap"],
        )
    frame = frame.assign(dataset=dataset.name, arch=args["arch"])[list(DP_COLUMNS)]
    write_parquet(Path(root) / args["output"], frame)
    return {"settings": len(frame)}
