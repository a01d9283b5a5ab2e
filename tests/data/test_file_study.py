"""A study on the user's CSV file, end to end through the runner (a few seconds)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from mnemoscope.config import parse_config
from mnemoscope.runner import run_study


def _csv(path, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    labels = np.arange(60) % 3
    features = rng.normal(size=(60, 4)) + 2.0 * labels[:, None]
    frame = pd.DataFrame(features, columns=["f1", "f2", "f3", "f4"]).assign(label=labels)
    frame.to_csv(path, index=False)
    return frame


def test_a_study_on_a_csv_file_runs_and_caches(tmp_path):
    frame = _csv(tmp_path / "train.csv")
    config = {
        "name": "mine",
        "datasets": [{"name": "mine", "path": "train.csv", "label_noise": 0.1}],
        "archs": ["logreg"],
        "train": {"epochs": 2, "batch_size": 16, "lr": 0.1},
        "memorization": [{"method": "feldman_zhang", "n_models": 3}],
        "influence": [{"method": "grad_dot"}],
        "analysis": {"n_bootstrap": 5},
    }
    out = tmp_path / "run"
    result = run_study(parse_config(config, tmp_path), out)
    assert all(o.ran for o in result.outcomes)
    examples = pd.read_parquet(out / "examples.parquet")
    assert set(examples["dataset"]) == {"mine"} and len(examples) == 60
    train = examples[examples["split"] == "train"]
    # ids are rows of the file: the original labels are the file's labels
    np.testing.assert_array_equal(
        train["original_label"].to_numpy(), frame["label"].to_numpy()[train["example_id"]]
    )
    assert int(train["is_mislabeled"].sum()) == round(0.1 * len(train))
    scores = pd.read_parquet(out / "scores.parquet")
    assert set(scores["method"]) == {"feldman_zhang", "grad_dot"}
    assert np.isfinite(scores.loc[scores["method"] == "grad_dot", "score"]).all()
    info = json.loads((out / "manifest.json").read_text())["datasets"]["mine"]
    assert info["kind"] == "tabular" and info["input_shape"] == [4] and info["n_classes"] == 3

    assert run_study(parse_config(config, tmp_path), out).all_cached
