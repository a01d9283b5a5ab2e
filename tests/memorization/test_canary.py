"""Canaries: insertion, storage, bad requests, and that memorization scores find them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mnemoscope.data import Dataset, insert_canaries, prepare
from mnemoscope.errors import ConfigError, DataError
from mnemoscope.memorization import (
    Canary,
    CanaryConfig,
    Counterfactual,
    CounterfactualConfig,
    FeldmanZhang,
    FeldmanZhangConfig,
)
from mnemoscope.task import Task
from mnemoscope.train import TrainConfig, subset_masks, train_ensemble


def test_canaries_are_stamped_relabelled_and_stored(digits_small):
    data = insert_canaries(digits_small, n=3, source_class=2, seed=0)
    index = data.canaries.index
    assert (digits_small.y_train[index] == 2).all() and (data.y_train[index] != 2).all()
    assert (data.y_train_original[index] == 2).all()  # the true class is kept
    changed = (data.x_train != digits_small.x_train).flatten(1).any(1)
    assert changed.sum() == 3 and changed[index].all()  # nothing else touched
    for c, i in enumerate(index.tolist()):
        mask = data.canaries.mask[c]
        assert mask.sum() == round(0.1 * 64)
        assert torch.equal(data.x_train[i][mask], data.canaries.value[c][mask])
        assert data.canaries.value[c][mask].abs().eq(3.0).all()
    assert len({tuple(m.flatten().tolist()) for m in data.canaries.mask}) == 3  # one each
    again = Dataset.from_tensors(data.name, data.kind, data.n_classes, data.tensors())
    assert torch.equal(again.is_canary, data.is_canary) and again.fingerprint == data.fingerprint
    frame = data.examples_frame()
    assert frame["is_canary"].sum() == 3 and not frame.loc[frame.split == "test", "is_canary"].any()
    assert insert_canaries(digits_small, 3, 2, seed=0).fingerprint == data.fingerprint
    assert insert_canaries(digits_small, 3, 2, seed=1).fingerprint != data.fingerprint


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 10_000), source_class=st.integers(-3, 14))
def test_impossible_canaries_are_refused_in_one_line(digits_small, n, source_class):
    clean = int(((digits_small.y_train == source_class) & ~digits_small.is_mislabeled).sum())
    if 0 <= source_class < 10 and n <= clean:
        return
    with pytest.raises(DataError) as error:
        insert_canaries(digits_small, n, source_class, seed=0)
    assert "\n" not in str(error.value) and "canaries" in str(error.value)


def test_canary_method_needs_canaries(digits_small):
    estimator = Canary(CanaryConfig(n_models=4))
    with pytest.raises(ConfigError, match="no canaries"):
        estimator.fit({"subsets": None}, digits_small, Task())


def test_canaries_land_at_the_top_of_memorization():
    """CI-sized: 5 canaries among 480 digits (10% flipped labels), K = 16 halves: FZ and
    counterfactual score every canary above 85% of the training examples (the flipped
    labels share the top: FZ gives 10% of the examples its maximum, 1, and a canary at
    0.89 is measured above 88% of them), and the models that trained on a canary react
    to its pattern more than those that did not."""
    data = insert_canaries(prepare("digits", seed=0, label_noise=0.1, n_samples=600), 5, 0, 1)
    k = 16
    masks = subset_masks(k, data.n_train, 0.5, 1)
    train = TrainConfig(epochs=60, batch_size=64, lr=0.1, momentum=0.9, weight_decay=5e-4)
    trained = train_ensemble("mlp", data, masks, train, seed=2)
    index = data.canaries.index.numpy()
    for estimator in (
        FeldmanZhang(FeldmanZhangConfig(n_models=k, subset_fraction=0.5)),
        Counterfactual(CounterfactualConfig(n_models=k)),
    ):
        scores = estimator.fit({"subsets": trained}, data, Task()).score().score
        finite = scores[np.isfinite(scores)]
        above = [(finite < value).mean() for value in scores[index]]
        assert min(above) > 0.85, (estimator.name, above)
    for reaction in ("label_shift", "probability_shift", "kl"):
        config = CanaryConfig(n_models=k, subset_fraction=0.5, reaction=reaction, n_ood=100)
        scores = Canary(config).fit({"subsets": trained}, data, Task()).score()
        np.testing.assert_array_equal(scores.example_ids, data.train_ids[index].numpy())
        assert np.isfinite(scores.stderr).all()
        if reaction == "probability_shift":
            _check_probability_shift(data, trained, scores, n_ood=100)
        if reaction != "kl":
            assert (scores.score > 2 * scores.stderr).all()
        else:
            assert np.median(scores.score) > 0


def _check_probability_shift(data, trained, scores, n_ood):
    """The bounded reaction recomputed with numpy from the ensemble's logits: the mean
    rise of the canary label's softmax probability, members' mean minus the others'."""
    x = data.x_test[:n_ood]
    plain = trained.logits(x).double().numpy()

    def softmax(z):
        e = np.exp(z - z.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)

    masks = trained.masks.numpy()
    for c, i in enumerate(data.canaries.index.tolist()):
        stamped = trained.logits(data.canaries.stamp(x, c)).double().numpy()
        label = int(data.y_train[i])
        r = (softmax(stamped)[..., label] - softmax(plain)[..., label]).mean(-1)  # [K]
        assert np.all(np.abs(r) <= 1)
        member = masks[:, i]
        np.testing.assert_allclose(scores.score[c], r[member].mean() - r[~member].mean(), 1e-9)


def test_a_study_plants_marks_and_scores_canaries(tmp_path):
    import pandas as pd

    from mnemoscope.config import parse_config
    from mnemoscope.runner import run_study

    config = {
        "name": "canaries",
        "datasets": [{"name": "digits", "n_samples": 200, "canaries": {"n": 3, "class": 1}}],
        "archs": ["logreg"],
        "train": {"epochs": 3, "batch_size": 64, "lr": 0.1},
        "memorization": [
            {"method": "feldman_zhang", "n_models": 4, "subset_fraction": 0.5},
            {"method": "canary", "n_models": 4, "subset_fraction": 0.5, "n_ood": 10},
        ],
        "analysis": {"n_bootstrap": 20},
    }
    parsed = parse_config(config)
    dumped = parsed.model_dump(mode="json")["datasets"][0]["canaries"]
    assert dumped == {"n": 3, "class": 1, "fraction": 0.1, "strength": 3.0}
    assert (
        parse_config(
            {**config, "datasets": [{"name": "digits", "n_samples": 200, "canaries": dumped}]}
        )
        == parsed
    )
    run_study(parsed, tmp_path)
    examples = pd.read_parquet(tmp_path / "examples.parquet")
    canaries = examples.loc[examples["is_canary"], "example_id"]
    assert len(canaries) == 3 and (examples.loc[examples["is_canary"], "original_label"] == 1).all()
    scores = pd.read_parquet(tmp_path / "scores.parquet")
    assert set(scores.loc[scores["method"] == "canary", "example_id"]) == set(canaries)
    assert len(list((tmp_path / "models").glob("*.safetensors"))) == 1  # shared with FZ
    report = (tmp_path / "report.html").read_text()
    assert "<summary>Canaries</summary>" in report


def test_canaries_beyond_the_class_fail_the_run_in_one_line(tmp_path):
    from typer.testing import CliRunner

    from mnemoscope.cli import app

    config = tmp_path / "c.yaml"
    config.write_text(
        "datasets: [{name: digits, n_samples: 100, canaries: {n: 50, class: 3}}]\n"
        "archs: [logreg]\nmemorization: [{method: feldman_zhang, n_models: 4}]\n"
    )
    result = CliRunner().invoke(app, ["run", str(config), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    last = result.output.strip().splitlines()[-1]
    assert "canaries: n = 50 is larger than class 3" in last
    config.write_text(
        "datasets: [{name: digits}]\narchs: [logreg]\nmemorization: [{method: canary}]\n"
    )
    result = CliRunner().invoke(app, ["run", str(config), "--out", str(tmp_path / "o2")])
    assert result.exit_code == 2 and "has no canaries to score" in result.output
    for bad in ("{n: 0}", "{n: 2, class: -1}", "{n: 2, fraction: 0}", "{n: 2, colour: 1}"):
        config.write_text(
            f"datasets: [{{name: digits, canaries: {bad}}}]\narchs: [logreg]\n"
            "memorization: [{method: feldman_zhang}]\n"
        )
        result = CliRunner().invoke(app, ["run", str(config), "--out", str(tmp_path / "o2")])
        assert result.exit_code == 2 and "canaries" in result.output, bad
        assert not (tmp_path / "o2").exists()
