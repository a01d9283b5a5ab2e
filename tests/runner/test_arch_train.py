"""Per-architecture training settings (``arch_train``) reach every stage that trains or
reads an arch's training settings, and nothing else."""

from __future__ import annotations

import math
from typing import Any

import pytest

from mnemoscope.config import parse_config
from mnemoscope.runner import run_study
from mnemoscope.runner.estimate import estimate_study
from mnemoscope.runner.plan import Planner, Stage
from mnemoscope.store import DatasetInfo, RunDir
from mnemoscope.train import TrainedEnsemble

BASE: dict[str, Any] = {
    "name": "arch-train",
    "datasets": [{"name": "digits", "label_noise": 0.1, "n_samples": 200}],
    "archs": ["logreg", "mlp"],
    "train": {"epochs": 4, "batch_size": 64, "lr": 0.05},
    "memorization": [{"method": "feldman_zhang", "n_models": 4}],
    "influence": [{"method": "tracin", "checkpoints": 2}],
    "targets": {"n": 10},
    "analysis": {"n_bootstrap": 20, "lds": {"subsets": 2}},
}
INFO = DatasetInfo(
    kind="image",
    input_shape=[1, 8, 8],
    n_classes=10,
    n_train=160,
    n_test=40,
    n_mislabeled=16,
    label_noise=0.1,
    fingerprint="x",
)


def _stages(tmp_path, **changes: Any) -> dict[str, Stage]:
    planner = Planner(parse_config({**BASE, **changes}), RunDir(tmp_path), "cpu")
    planner.data_stages()
    return {s.name: s for s in planner.study_stages({"digits": INFO})}


def _training(stages: dict[str, Stage], arch: str) -> dict[str, Stage]:
    return {n: s for n, s in stages.items() if n.startswith(f"train/digits/{arch}/")}


def test_one_archs_settings_retrain_only_that_arch(tmp_path):
    before = _stages(tmp_path)
    after = _stages(tmp_path, arch_train={"mlp": {"lr": 0.01, "schedule": "cosine"}})
    for name, stage in _training(after, "mlp").items():
        assert stage.args["train"]["lr"] == 0.01 and stage.args["train"]["schedule"] == "cosine"
        assert stage.key != before[name].key
    assert _training(after, "logreg")  # fz, tracin and lds ensembles
    for name, stage in _training(after, "logreg").items():
        assert stage.key == before[name].key
    # every stage of logreg is unchanged; mlp's scores and lds read the new models
    for name, stage in after.items():
        if "/logreg/" in name:
            assert stage.key == before[name].key, name
        elif "/mlp/" in name:
            assert stage.key != before[name].key, name


def test_an_archs_optimizer_sets_its_task(tmp_path):
    stages = _stages(tmp_path, arch_train={"mlp": {"optimizer": "adamw", "weight_decay": 0.1}})
    # adamw's decay is decoupled: no l2 term in the objective; sgd's weight decay is one
    assert stages["scores/digits/mlp/tracin"].args["task"]["l2"] == 0.0
    assert stages["scores/digits/logreg/tracin"].args["task"]["l2"] == 0.0005


def test_per_arch_epochs_give_per_arch_checkpoints(tmp_path):
    stages = _stages(tmp_path, arch_train={"mlp": {"epochs": 10}})
    tracin = {
        arch: stages["scores/digits/" + arch + "/tracin"].args["ensembles"]["model"][0]
        for arch in ("logreg", "mlp")
    }
    by_output = {s.args["output"]: s for s in stages.values() if s.name.startswith("train/")}
    assert by_output[tracin["logreg"]].args["checkpoint_epochs"] == [2, 4]
    assert by_output[tracin["mlp"]].args["checkpoint_epochs"] == [5, 10]
    assert by_output[tracin["mlp"]].args["train"]["epochs"] == 10
    # feldman_zhang's subsets do not depend on the epochs: one spec per arch, as before
    assert len([n for n in _training(stages, "mlp") if "ensemble-" in n]) == 2  # fz + lds


def test_the_estimate_counts_each_archs_epochs(tmp_path):
    def flop(changes: dict[str, Any]) -> dict[str, float]:
        items = estimate_study(parse_config({**BASE, **changes})).items
        return {i.what: i.flop for i in items if i.what.startswith("train ")}

    same, longer = flop({}), flop({"arch_train": {"mlp": {"epochs": 8}}})
    for what, value in longer.items():
        if "/mlp/" in what:
            assert value > 1.5 * same[what], what
        else:
            assert value == same[what], what


def test_a_config_without_arch_train_dumps_and_plans_as_before(tmp_path):
    config = parse_config(BASE)
    dumped = config.model_dump(mode="json")
    assert "arch_train" not in dumped and "schedule" not in dumped["train"]
    # the training stage args of a config without the new keys hold what they held
    for stage in _training(_stages(tmp_path), "mlp").values():
        assert set(stage.args["train"]) == {
            "epochs",
            "batch_size",
            "optimizer",
            "lr",
            "momentum",
            "betas",
            "weight_decay",
            "chunk_size",
        }
    with_train = parse_config({**BASE, "arch_train": {"mlp": {"epochs": 3}}})
    assert parse_config(with_train.model_dump(mode="json")) == with_train
    assert with_train.train_for("mlp").epochs == 3 and with_train.train_for("logreg").epochs == 4


def test_a_run_trains_each_arch_with_its_own_settings(tmp_path):
    config = parse_config(
        {
            **BASE,
            "memorization": [],
            "targets": None,
            "analysis": {"n_bootstrap": 20},
            "arch_train": {"mlp": {"epochs": 3, "schedule": "cosine", "lr": 0.02}},
        }
    )
    run_study(config, tmp_path)
    models = {f.name.split("__")[1]: f for f in (tmp_path / "models").iterdir()}
    logreg = TrainedEnsemble.load(models["logreg"])
    mlp = TrainedEnsemble.load(models["mlp"])
    assert (logreg.epochs, mlp.epochs) == (4, 3)
    assert [(c.epoch, c.lr) for c in logreg.checkpoints] == [(2, 0.05), (4, 0.05)]
    steps = math.ceil(mlp.masks.shape[1] / 64)
    expected = [0.01 * (1 + math.cos(math.pi * (e * steps - 1) / (3 * steps))) for e in (2, 3)]
    assert [c.epoch for c in mlp.checkpoints] == [2, 3]
    assert [c.lr for c in mlp.checkpoints] == [pytest.approx(lr, rel=1e-12) for lr in expected]
