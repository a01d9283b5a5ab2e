"""End to end through the store: tables, caching, resuming, determinism."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from mnemoscope.config import parse_config
from mnemoscope.errors import UserError
from mnemoscope.runner import run_study
from mnemoscope.runner import stages as stages_module
from mnemoscope.store import RUN_TABLES, TABLES

TINY = {
    "name": "tiny",
    "seed": 0,
    "datasets": [{"name": "digits", "label_noise": 0.1, "n_samples": 300}],
    "archs": ["logreg", "mlp"],
    "train": {"epochs": 3, "batch_size": 64, "lr": 0.05},
    "memorization": [{"method": "feldman_zhang", "n_models": 4}],
    "influence": [{"method": "tracin", "checkpoints": 2}, {"method": "grad_dot"}],
    "analysis": {"n_bootstrap": 50},
}


def _tables(run_dir) -> dict[str, pd.DataFrame]:
    return {name: pd.read_parquet(run_dir / f"{name}.parquet") for name in RUN_TABLES}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    result = run_study(parse_config(TINY), out)
    return out, result


def test_tables_have_exact_columns_and_content(finished):
    out, result = finished
    assert all(o.ran for o in result.outcomes)
    tables = _tables(out)
    for name in RUN_TABLES:
        assert list(tables[name].columns) == TABLES[name].names, name
    assert tables["influence"].empty  # no targets in the config
    scores = tables["scores"]
    assert set(scores["method"]) == {"feldman_zhang", "tracin", "grad_dot"}
    assert set(scores["family"]) == {"memorization", "influence"}
    n_train = int((tables["examples"]["split"] == "train").sum())
    assert (scores.groupby(["arch", "method"]).size() == n_train).all()
    stats = set(tables["correlations"]["statistic"])
    assert stats == {"spearman", "pearson", "kendall"}
    assert set(tables["detection"]["target"]) == {"mislabeled"}
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["datasets"]["digits"]["fingerprint"]
    assert manifest["versions"]["torch"]
    assert all("seconds" in s for s in manifest["stages"].values())
    assert (out / "report.html").exists()
    assert len(list((out / "models").glob("*.safetensors"))) == 4  # full + subsets per arch


def test_same_config_again_redoes_nothing(finished):
    out, _ = finished
    before = _tables(out)
    again = run_study(parse_config(TINY), out)
    assert again.all_cached and len(again.outcomes) > 0
    for name, frame in _tables(out).items():
        pd.testing.assert_frame_equal(frame, before[name])


def test_changed_method_config_redoes_only_what_depends_on_it(finished, tmp_path):
    out, _ = finished
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    changed = json.loads(json.dumps(TINY))
    changed["influence"][0]["params"] = "last_layer"
    with pytest.raises(UserError, match="different config.*--force"):
        run_study(parse_config(changed), copy)
    result = run_study(parse_config(changed), copy, force=True)
    ran = {o.name for o in result.outcomes if o.ran}
    assert ran == {
        "scores/digits/logreg/tracin",
        "scores/digits/mlp/tracin",
        "tables",
        "analysis",
        "report",
    }


def test_smaller_config_forgets_what_it_no_longer_runs(finished, tmp_path):
    out, _ = finished
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    smaller = json.loads(json.dumps(TINY))
    smaller["archs"] = ["logreg"]
    result = run_study(parse_config(smaller), copy, force=True)
    assert not any(o.ran for o in result.outcomes if o.name.startswith(("train/", "scores/")))
    manifest = json.loads((copy / "manifest.json").read_text())
    assert not any("/mlp" in stage for stage in manifest["stages"])
    assert set(pd.read_parquet(copy / "scores.parquet")["arch"]) == {"logreg"}


def test_killed_run_resumes_to_the_same_tables(finished, tmp_path, monkeypatch):
    out, _ = finished
    original = stages_module.score_estimator
    calls = {"n": 0}

    def dies_on_fourth(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt("killed")
        return original(*args, **kwargs)

    monkeypatch.setattr(stages_module, "score_estimator", dies_on_fourth)
    resumed_dir = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        run_study(parse_config(TINY), resumed_dir)
    monkeypatch.setattr(stages_module, "score_estimator", original)
    assert not (resumed_dir / "scores.parquet").exists()
    result = run_study(parse_config(TINY), resumed_dir)
    cached = {o.name for o in result.outcomes if not o.ran}
    assert {"data/digits", "scores/digits/logreg/feldman_zhang"} <= cached
    assert sum(name.startswith("train/digits/logreg/full-") for name in cached) == 1
    uninterrupted = _tables(out)
    for name, frame in _tables(resumed_dir).items():
        pd.testing.assert_frame_equal(frame, uninterrupted[name])
