"""RunDir: the manifest round trip, finished stages, and checked table reads."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mnemoscope.errors import UserError
from mnemoscope.store.atomic import write_parquet
from mnemoscope.store.manifest import DatasetInfo, Manifest
from mnemoscope.store.rundir import RunDir
from mnemoscope.store.tables import SCORES


def _dataset(name: str) -> DatasetInfo:
    return DatasetInfo(
        kind="image",
        input_shape=[1, 8, 8],
        n_classes=10,
        n_train=60,
        n_test=40,
        n_mislabeled=6,
        label_noise=0.1,
        fingerprint=name * 8,
    )


def _touch(run: RunDir, relative: str) -> str:
    path = run.path(relative)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return relative


def _scores() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "dataset": ["d", "d"],
            "arch": ["mlp", "mlp"],
            "seed": [0, 0],
            "family": ["memorization", "memorization"],
            "method": ["fz", "fz"],
            "example_id": [1, 2],
            "score": [0.5, 0.25],
            "stderr": [0.1, np.nan],
        }
    )


def test_an_empty_directory_has_an_empty_manifest(tmp_path):
    run = RunDir(tmp_path)
    assert run.manifest == Manifest()
    assert not (tmp_path / "manifest.json").exists()


def test_start_and_finish_round_trip(tmp_path):
    run = RunDir(tmp_path)
    run.start("study", {"datasets": ["d"], "train": {"epochs": 2}})
    output = _touch(run, run.data_file("d"))
    run.finish("data/d", "k1", 1.23456, [output], {"n_train": 60})

    again = RunDir.existing(tmp_path)
    assert again.manifest.name == "study"
    assert again.manifest.config == {"datasets": ["d"], "train": {"epochs": 2}}
    assert again.manifest.started is not None
    assert again.manifest.versions["mnemoscope"]
    stage = again.manifest.stages["data/d"]
    assert (stage.key, stage.seconds, stage.outputs) == ("k1", 1.235, [output])
    assert stage.record == {"n_train": 60}
    assert stage.finished
    assert again.manifest == run.manifest


def test_is_finished_needs_the_key_and_the_outputs(tmp_path):
    run = RunDir(tmp_path)
    run.start("study", {})
    outputs = [_touch(run, run.data_file("d")), _touch(run, run.fit_file("d", "mlp", "fz"))]
    run.finish("fit", "key", 0.5, outputs)

    again = RunDir(tmp_path)
    assert again.is_finished("fit", "key")
    assert not again.is_finished("fit", "other key")
    assert not again.is_finished("never ran", "key")
    again.path(outputs[1]).unlink()
    assert not again.is_finished("fit", "key")
    assert not RunDir(tmp_path).is_finished("fit", "key")


def test_finish_without_outputs_or_record(tmp_path):
    run = RunDir(tmp_path)
    run.finish("report", "k", 0.0, [])
    again = RunDir(tmp_path)
    assert again.is_finished("report", "k")
    assert again.manifest.stages["report"].record == {}


def test_keep_only_forgets_other_stages_and_datasets(tmp_path):
    run = RunDir(tmp_path)
    run.start("study", {})
    run.manifest.datasets = {"a": _dataset("a"), "b": _dataset("b")}
    run.finish("data/a", "ka", 1.0, [])
    run.finish("data/b", "kb", 1.0, [])
    run.finish("report", "kr", 1.0, [])

    run.keep_only(["data/a", "report", "not run yet"], ["a", "c"])
    for manifest in (run.manifest, RunDir(tmp_path).manifest):
        assert list(manifest.stages) == ["data/a", "report"]
        assert list(manifest.datasets) == ["a"]
        assert manifest.datasets["a"] == _dataset("a")


def test_manifest_is_strict_json(tmp_path):
    def no_constants(name: str) -> None:
        raise AssertionError(f"manifest.json holds {name}")

    run = RunDir(tmp_path)
    run.start("study", {"label_noise": 0.1})
    run.manifest.datasets["a"] = _dataset("a")
    run.finish("score", "k", 2.0, [], {"loss": float("nan"), "bound": float("inf"), "n": 3})
    data = json.loads(
        (tmp_path / "manifest.json").read_text(encoding="utf-8"), parse_constant=no_constants
    )
    assert Manifest.model_validate(data) == RunDir(tmp_path).manifest
    assert data["stages"]["score"]["record"]["n"] == 3


def test_existing_needs_a_directory_with_a_manifest(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        RunDir.existing(tmp_path / "nowhere")
    with pytest.raises(UserError, match=r"no manifest\.json"):
        RunDir.existing(tmp_path)


@pytest.mark.parametrize(
    "text",
    ["{not json", '{"stages": []}', '{"datasets": {"x": {"kind": 3}}}', '{"extra": 1}'],
)
def test_invalid_manifest_is_a_one_line_user_error(tmp_path, text):
    (tmp_path / "manifest.json").write_text(text, encoding="utf-8")
    with pytest.raises(UserError, match=r"manifest\.json: not a valid manifest") as caught:
        RunDir.existing(tmp_path)
    assert "\n" not in str(caught.value)


def test_table_reads_and_checks(tmp_path):
    run = RunDir(tmp_path)
    write_parquet(run.path("scores.parquet"), _scores().assign(fit=True), SCORES)
    assert run.has_table("scores")
    assert not run.has_table("influence")
    frame = run.table("scores")
    assert list(frame.columns) == SCORES.names
    assert frame["score"].tolist() == [0.5, 0.25]
    assert list(run.table("scores", columns=["method", "score"]).columns) == ["method", "score"]


def test_table_missing_file_is_a_user_error(tmp_path):
    run = RunDir(tmp_path)
    with pytest.raises(UserError, match=r"missing influence\.parquet"):
        run.table("influence")


def test_table_missing_column_is_a_user_error(tmp_path):
    run = RunDir(tmp_path)
    _scores().drop(columns=["stderr"]).to_parquet(run.path("scores.parquet"), index=False)
    with pytest.raises(UserError, match=r"scores\.parquet is missing columns \['stderr'"):
        run.table("scores")
    assert run.table("scores", columns=["score"])["score"].tolist() == [0.5, 0.25]


def test_table_unreadable_file_is_a_user_error(tmp_path):
    run = RunDir(tmp_path)
    Path(run.path("detection.parquet")).write_bytes(b"not parquet")
    with pytest.raises(UserError, match=r"cannot read detection\.parquet"):
        run.table("detection")
