"""The plan/estimator contract: estimators declare what they need; the runner trains it once."""

from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
import pandas as pd
import pytest
import torch

from mnemoscope.config import parse_config
from mnemoscope.estimator import REGISTRY, MethodConfig, PlanContext, Scores, register
from mnemoscope.memorization import MemorizationEstimator
from mnemoscope.runner import run_study
from mnemoscope.runner import stages as stages_module
from mnemoscope.runner.plan import Planner, plan_context
from mnemoscope.store import DatasetInfo, RunDir
from mnemoscope.train import EnsembleSpec, TrainedEnsemble, merge_specs, subset_masks

BASE = {
    "name": "plan",
    "seed": 0,
    "datasets": [{"name": "digits", "label_noise": 0.1, "n_samples": 200}],
    "archs": ["logreg"],
    "train": {"epochs": 2, "batch_size": 64, "lr": 0.05},
    "analysis": {"n_bootstrap": 20},
}


class SeenCountConfig(MethodConfig):
    method: Literal["seen_count"] = "seen_count"
    n_models: int = 3


class SeenCount(MemorizationEstimator):
    """A test-only estimator: how many subset models saw each example, plus the
    final training loss under a full model it also asks for. Its fit is cached."""

    name = "seen_count"
    config_class = SeenCountConfig
    cost = "none"
    reference = "a test"
    cache_fit = True
    fits: ClassVar[int] = 0
    config: SeenCountConfig

    def ensembles(self, context: PlanContext) -> dict[str, EnsembleSpec]:
        masks = subset_masks(self.config.n_models, context.n_train, 0.7, context.seed)
        return {
            "subsets": EnsembleSpec(masks),
            "model": EnsembleSpec.single(context.n_train, [1]),
        }

    def fit(self, ensembles, dataset, task, device="cpu"):
        SeenCount.fits += 1
        self.count_ = ensembles["subsets"].masks.sum(0).double()
        self.ids_ = dataset.train_ids
        assert [c.epoch for c in ensembles["model"].checkpoints] == [1]
        return self

    def fitted_state(self):
        return {"count": self.count_}

    def load_fitted(self, state, ensembles, dataset, task, device="cpu"):
        self.count_, self.ids_ = state["count"], dataset.train_ids
        return self

    def score(self) -> Scores:
        return Scores(self.name, self.family, self.ids_.numpy(), self.count_.numpy())


@pytest.fixture
def seen_count():
    register(SeenCount)
    SeenCount.fits = 0
    yield SeenCount
    REGISTRY.pop(SeenCount.name)


def _counting_trainings(monkeypatch) -> list[str]:
    trained: list[str] = []
    original = stages_module.train_part

    def counting(root, args, reporter):
        trained.append(args["output"])
        return original(root, args, reporter)

    monkeypatch.setattr(stages_module, "train_part", counting)
    return trained


def test_an_estimator_defined_here_runs_with_no_runner_edit(seen_count, tmp_path, monkeypatch):
    trained = _counting_trainings(monkeypatch)
    config = parse_config(
        {
            **BASE,
            "memorization": [{"method": "seen_count", "n_models": 3}],
            "influence": [{"method": "grad_dot"}],
        }
    )
    run_study(config, tmp_path)
    scores = pd.read_parquet(tmp_path / "scores.parquet")
    mine = scores[scores["method"] == "seen_count"].set_index("example_id")["score"]
    context = plan_context(config, RunDir(tmp_path).manifest.datasets["digits"].n_train)
    expected = SeenCount(SeenCountConfig()).ensembles(context)["subsets"].masks.sum(0)
    np.testing.assert_array_equal(mine.to_numpy(), expected.numpy())
    # grad_dot's full model and seen_count's full model are one training (checkpoints merged)
    assert len(trained) == 2
    assert SeenCount.fits == 1  # the fit is its own stage, read back by the score stage
    stages = json.loads((tmp_path / "manifest.json").read_text())["stages"]
    assert "fit/digits/logreg/seen_count" in stages


def test_estimators_asking_for_the_same_ensemble_share_one_training(tmp_path, monkeypatch):
    trained = _counting_trainings(monkeypatch)
    config = parse_config(
        {
            **BASE,
            "archs": ["logreg", "mlp"],
            "memorization": [{"method": "feldman_zhang", "n_models": 3}],
            "influence": [
                {"method": "tracin", "checkpoints": 2},
                {"method": "grad_dot"},
                {"method": "trak", "n_models": 1, "checkpoints": 2, "proj_dim": 16},
            ],
        }
    )
    run_study(config, tmp_path)
    # per arch: the subsets of feldman_zhang, and one full model for tracin, grad_dot and
    # trak (one model, its checkpoints)
    assert len(trained) == 4
    scores = pd.read_parquet(tmp_path / "scores.parquet")
    assert (
        scores.groupby("method").size()["trak"]
        == 2 * RunDir(tmp_path).manifest.datasets["digits"].n_train
    )
    full = [f for f in trained if "__full-" in f]
    assert len(full) == 2
    model = TrainedEnsemble.load(tmp_path / full[0])
    assert [c.epoch for c in model.checkpoints] == [1, 2]  # tracin's checkpoints


def test_chunk_size_is_part_of_the_training_key_and_splits_parts(tmp_path):
    entry = {"method": "feldman_zhang", "n_models": 5}

    def train_stages(chunk):
        cfg = parse_config(
            {**BASE, "train": {**BASE["train"], "chunk_size": chunk}, "memorization": [entry]}
        )
        run = RunDir(tmp_path)
        planner = Planner(cfg, run, "cpu")
        planner.data_stages()
        info = DatasetInfo(
            kind="image",
            input_shape=[1, 8, 8],
            n_classes=10,
            n_train=160,
            n_test=40,
            n_mislabeled=16,
            label_noise=0.1,
            fingerprint="x",
        )
        return [s for s in planner.study_stages({"digits": info}) if s.name.startswith("train/")]

    whole, parts = train_stages(None), train_stages(2)
    assert len(whole) == 1 and len(parts) == 3
    assert [s.args["models"] for s in parts] == [[0, 2], [2, 4], [4, 5]]
    assert whole[0].key not in {s.key for s in parts}


def test_editing_the_report_template_rerenders_the_report(tmp_path):
    config = parse_config({**BASE, "influence": [{"method": "grad_dot"}]})
    run_study(config, tmp_path)
    template = Path(stages_module.__file__).parent.parent / "report/templates/report.html.j2"
    original = template.read_bytes()
    try:
        template.write_bytes(original + b"{# edited by a test #}\n")
        result = run_study(config, tmp_path)
    finally:
        template.write_bytes(original)
    ran = {o.name for o in result.outcomes if o.ran}
    assert ran == {"report"}


def test_spec_merging_and_validation():
    masks = torch.ones(2, 5, dtype=torch.bool)
    a = EnsembleSpec(masks, (3,))
    b = EnsembleSpec(masks.clone(), (1, 3), keep_initial=True)
    assert a.trajectory == b.trajectory
    assert EnsembleSpec(masks, init="shared").trajectory != a.trajectory
    merged = merge_specs([a, b])
    assert merged.checkpoint_epochs == (1, 3) and merged.keep_initial
    with pytest.raises(ValueError, match="1-based"):
        EnsembleSpec(masks, (0,))
    with pytest.raises(ValueError, match=r"\[K, n\]"):
        EnsembleSpec(torch.ones(5, dtype=torch.bool))


def test_train_by_target_influence_is_written_for_the_configured_targets(tmp_path):
    from mnemoscope.influence import GradDot, GradDotConfig
    from mnemoscope.runner.stages import load_dataset
    from mnemoscope.task import Task

    config = parse_config(
        {
            **BASE,
            "influence": [{"method": "grad_dot"}],
            "targets": {"split": "test", "n": 6, "memory_mb": 1},
        }
    )
    run_study(config, tmp_path)
    table = pd.read_parquet(tmp_path / "influence.parquet")
    run = RunDir(tmp_path)
    info = run.manifest.datasets["digits"]
    dataset = load_dataset(
        tmp_path,
        {"name": "digits", "kind": info.kind, "n_classes": 10, "file": run.data_file("digits")},
    )
    assert len(table) == info.n_train * 6
    assert set(table["target_id"]) == set(dataset.test_ids[:6].tolist())
    (model_file,) = [f for f in (tmp_path / "models").iterdir() if "__full-" in f.name]
    model = TrainedEnsemble.load(model_file)
    estimator = GradDot(GradDotConfig()).fit({"model": model}, dataset, Task(l2=0.0005))
    matrix = estimator.influence_matrix(dataset.x_test[:6], dataset.y_test[:6]).numpy()
    wide = table.pivot(index="train_id", columns="target_id", values="score")
    wide = wide.loc[dataset.train_ids.tolist(), dataset.test_ids[:6].tolist()]
    np.testing.assert_allclose(wide.to_numpy(), matrix, rtol=1e-5, atol=1e-9)


def test_training_stages_record_how_well_models_fit_and_warn_when_they_cannot(tmp_path):
    from mnemoscope.runner import Study

    entry = {"method": "feldman_zhang", "n_models": 4}
    fitting = parse_config({**BASE, "archs": ["mlp"], "memorization": [entry]})
    fitting = fitting.model_copy(
        update={"train": fitting.train.model_copy(update={"epochs": 100, "lr": 0.1})}
    )
    study = Study(fitting, tmp_path / "fits")
    study.execute()
    (record,) = [
        s.record
        for n, s in RunDir(tmp_path / "fits").manifest.stages.items()
        if n.startswith("train/")
    ]
    assert record["fit"]["in_subset_accuracy"] > 0.95 and not study.warnings
    assert 0 <= record["fit"]["in_subset_accuracy_flipped"] <= 1
    html = (tmp_path / "fits" / "report.html").read_text()
    assert "of flipped)" in html
    starved = fitting.model_copy(
        update={"train": fitting.train.model_copy(update={"epochs": 1, "lr": 0.001})}
    )
    study = Study(starved, tmp_path / "starved")
    study.execute()
    assert len(study.warnings) == 1 and "fits only" in study.warnings[0]


def test_a_run_warns_when_models_fit_too_few_flipped_labels(tmp_path):
    from mnemoscope.runner import Study

    study = Study(parse_config(BASE), tmp_path / "run")
    study._warn_if_unfit("train/x", {"fit": {"in_subset_accuracy": 0.97}})
    fine = {"in_subset_accuracy": 0.97, "in_subset_accuracy_flipped": 0.8}
    study._warn_if_unfit("train/y", {"fit": fine})
    assert study.warnings == []
    unfit = {"in_subset_accuracy": 0.91, "in_subset_accuracy_flipped": 0.27}
    study._warn_if_unfit("train/z", {"fit": unfit})
    (warning,) = study.warnings
    assert warning.startswith("train/z: the ensemble fits 91% of its own training labels")
    assert "only 27% of the flipped ones (< 50%)" in warning
