"""Sign-based memorization: the composition on a known attributor, a config naming any
attributor, planted flipped labels through a real attributor."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from sklearn.metrics import roc_auc_score

from mnemoscope.config import parse_config
from mnemoscope.errors import ConfigError
from mnemoscope.estimator import REGISTRY, PlanContext, Scores, register
from mnemoscope.influence import GradDotConfig, InfluenceEstimator
from mnemoscope.influence.base import InfluenceBlock
from mnemoscope.memorization import SignMemorization, SignMemorizationConfig
from mnemoscope.task import Task
from mnemoscope.train import EnsembleSpec, TrainConfig, train_ensemble


class _KnownConfig(GradDotConfig):
    method: str = "known_influence"


class _Known(InfluenceEstimator):
    """An attributor whose self-influence and train×target matrix are given."""

    name = "known_influence"
    config_class = _KnownConfig
    cost = reference = "test"
    SELF = np.array([2.0, -1.0, 4.0, 1.0])
    # 4 training examples (labels 0, 0, 1, 1) × 3 targets (labels 0, 1, 1)
    MATRIX = np.array([[-1.0, 5.0, 5.0], [2.0, 0.0, 0.0], [9.0, -1.0, 0.5], [0.0, 3.0, -1.0]])

    def ensembles(self, context):
        return {"model": EnsembleSpec.single(context.n_train, [])}

    def fit(self, ensembles, dataset, task, device="cpu"):
        self.dataset_ = dataset
        return self

    def self_influence(self):
        return Scores(self.name, self.family, self.dataset_.train_ids.numpy(), self.SELF)

    def influence(self, x_target, y_target, memory_budget=0):
        n = len(y_target)
        for start in range(0, n, 2):  # two targets a block
            cols = slice(start, min(start + 2, n))
            yield InfluenceBlock(slice(0, 4), cols, torch.tensor(self.MATRIX[:, cols]))


class _Data:
    n_train, n_test = 4, 3
    train_ids = torch.arange(4)
    y_train = torch.tensor([0, 0, 1, 1])
    x_test = torch.zeros(3, 2)
    y_test = torch.tensor([0, 1, 1])


@pytest.fixture
def known():
    register(_Known)
    yield
    REGISTRY.pop(_Known.name)


def test_score_is_normalised_self_influence_where_its_class_is_not_helped(known):
    config = SignMemorizationConfig(influence="known_influence", heldout="same_class")
    estimator = SignMemorization(config)
    estimator.fit({}, _Data(), Task())
    # same-class held-out means: [-1, 2, (-1 + 0.5)/2, (3 - 1)/2] -> indicator [1, 0, 1, 0]
    parts = estimator.parts()
    np.testing.assert_allclose(parts["heldout"], [-1.0, 2.0, -0.25, 1.0])
    np.testing.assert_array_equal(parts["indicator"], [1.0, 0.0, 1.0, 0.0])
    scale = np.mean(np.abs(_Known.SELF))  # 2.0
    np.testing.assert_allclose(estimator.score().score, [2.0 / scale, 0.0, 4.0 / scale, 0.0])
    rows = estimator.table_rows("score_parts")
    assert set(rows["part"]) == {"self_influence", "heldout", "indicator"}
    assert len(rows) == 12 and (rows["method"] == "sign_memorization").all()


def test_neighbours_are_the_nearest_heldout_inputs(known):
    data = _Data()
    data.x_train = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])
    data.x_test = torch.tensor([[0.0, 1.0], [9.0, 0.0], [1.0, 9.0]])  # near 0, 1, 2
    config = SignMemorizationConfig(influence="known_influence", k=1)
    parts = SignMemorization(config).fit({}, data, Task()).parts()
    # nearest target of each training example: 0, 1, 2, and 2 for example 3 (distance 9.06)
    np.testing.assert_allclose(parts["heldout"], [-1.0, 0.0, 0.5, -1.0])
    np.testing.assert_array_equal(parts["indicator"], [1.0, 1.0, 0.0, 1.0])


def test_config_names_any_attributor_and_refuses_others():
    config = SignMemorizationConfig(influence={"method": "tracin", "checkpoints": 2})
    assert config.influence.checkpoints == 2
    assert SignMemorizationConfig().influence.method == "tracin"
    for bad in ("feldman_zhang", "nope", {"checkpoints": 2}, 3):
        with pytest.raises(ValidationError, match="influence"):
            SignMemorizationConfig(influence=bad)
    with pytest.raises(ValidationError, match="n_heldout"):
        SignMemorizationConfig(n_heldout=0)
    with pytest.raises(ConfigError, match="sign_memorization"):
        parse_config(
            {
                "datasets": [{"name": "digits"}],
                "archs": ["mlp"],
                "memorization": [
                    {"method": "sign_memorization", "influence": {"method": "tracin", "x": 1}}
                ],
            }
        )


def test_reads_the_attributors_ensemble():
    estimator = SignMemorization(SignMemorizationConfig(influence={"method": "tracin"}))
    specs = estimator.ensembles(PlanContext(n_train=50, epochs=10, seed=0))
    assert list(specs) == ["model"] and specs["model"].checkpoint_epochs == (2, 4, 6, 8, 10)


def test_flipped_labels_score_high_through_tracin(digits_small):
    data = digits_small
    train = TrainConfig(epochs=30, batch_size=32, lr=0.05, momentum=0.9)
    estimator = SignMemorization(SignMemorizationConfig(influence="tracin", n_heldout=200))
    spec = estimator.ensembles(PlanContext(data.n_train, train.epochs, 0))["model"]
    trained = train_ensemble(
        "mlp", data, spec.masks, train, seed=0, checkpoint_epochs=spec.checkpoint_epochs
    )
    scores = estimator.fit({"model": trained}, data, Task()).score().score
    flipped = data.is_mislabeled.numpy()
    parts = estimator.parts()
    # a flipped example hurts the held-out inputs like it; a clean one helps them
    # (measured: 79% of flipped examples flagged, 10% of clean ones; AUC 0.88)
    assert parts["indicator"][flipped].mean() > parts["indicator"][~flipped].mean() + 0.4
    assert roc_auc_score(flipped, scores) >= 0.8


def test_a_study_writes_its_parts(tmp_path):
    import pandas as pd

    from mnemoscope.runner import run_study
    from mnemoscope.store import TABLES

    config = {
        "name": "sign",
        "datasets": [{"name": "digits", "label_noise": 0.1, "n_samples": 200}],
        "archs": ["logreg"],
        "train": {"epochs": 3, "batch_size": 64, "lr": 0.1},
        "memorization": [
            {"method": "sign_memorization", "influence": {"method": "grad_dot"}, "n_heldout": 20}
        ],
        "analysis": {"n_bootstrap": 20},
    }
    run_study(parse_config(config), tmp_path)
    parts = pd.read_parquet(tmp_path / "score_parts.parquet")
    assert list(parts.columns) == TABLES["score_parts"].names
    scores = pd.read_parquet(tmp_path / "scores.parquet")
    assert set(scores["method"]) == {"sign_memorization"}
    assert len(parts) == 3 * len(scores) and set(parts["arch"]) == {"logreg"}
