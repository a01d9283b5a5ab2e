"""Datasets from the user's files: each format read back equal to what was written,
splits, scaling, relative paths and the digest that keys the data stage."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import yaml

from mnemoscope.config import DatasetConfig, load_config, parse_config
from mnemoscope.data import layout, prepare
from mnemoscope.errors import DataError
from tests.data.writers import write_cifar10_folder, write_cifar100_folder, write_mnist_folder


def _config(*datasets: dict, base_dir=None):
    return parse_config({"datasets": list(datasets), "archs": ["logreg"]}, base_dir)


def _built(entry: dict, seed: int = 0):
    ds = _config(entry).datasets[0]
    return ds, prepare(
        ds.name,
        seed=seed,
        label_noise=ds.label_noise,
        test_fraction=ds.test_fraction,
        n_samples=ds.n_samples,
        source=ds.source,
    )


def _table(n: int = 60, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(rng.normal(size=(n, 3)) * [1, 10, 100] + [0, 5, -50], columns=list("abc"))
    frame.insert(1, "row_id", np.arange(n))  # not a feature: feature_columns leaves it out
    frame["label"] = np.arange(n) % 3
    return frame


@pytest.mark.parametrize("gz", [False, True])
def test_idx_folder_reads_back_what_was_written_with_its_t10k_test_split(tmp_path, gz):
    arrays = write_mnist_folder(tmp_path / "mnist", gz=gz)
    ds, data = _built(
        {"name": "mnist", "path": str(tmp_path / "mnist"), "format": "idx", "normalize": "none"}
    )
    assert ds.format == "idx" and data.kind == "image" and data.input_shape == (1, 6, 5)
    assert data.n_classes == 4 and (data.n_train, data.n_test) == (40, 20)
    np.testing.assert_array_equal(data.x_train.numpy(), arrays["x_train"][:, None])
    np.testing.assert_array_equal(data.y_train.numpy(), arrays["y_train"])
    np.testing.assert_array_equal(data.x_test.numpy(), arrays["x_test"][:, None])
    np.testing.assert_array_equal(data.y_test.numpy(), arrays["y_test"])
    assert data.train_ids.tolist() == list(range(40))
    assert data.test_ids.tolist() == list(range(40, 60))  # after the training file's rows


def test_cifar10_binary_records_become_rgb_planes_in_batch_order(tmp_path):
    arrays = write_cifar10_folder(tmp_path / "cifar-10-batches-bin")
    path = str(tmp_path / "cifar-10-batches-bin")
    _, data = _built({"name": "c10", "path": path, "format": "cifar10", "normalize": "none"})
    assert data.input_shape == (3, 32, 32) and data.n_classes == 10
    np.testing.assert_array_equal(data.x_train.numpy(), arrays["x_train"])
    np.testing.assert_array_equal(data.y_train.numpy(), arrays["y_train"])
    np.testing.assert_array_equal(data.x_test.numpy(), arrays["x_test"])
    np.testing.assert_array_equal(data.y_test.numpy(), arrays["y_test"])
    # standard: bytes to [0, 1], then each channel standardised on the training split
    _, scaled = _built({"name": "c10", "path": path, "format": "cifar10"})
    x = scaled.x_train.numpy().astype(np.float64)
    np.testing.assert_allclose(x.mean((0, 2, 3)), 0, atol=1e-5)
    np.testing.assert_allclose(x.std((0, 2, 3)), 1, atol=1e-4)
    raw = arrays["x_train"] / 255.0
    expected = (raw - raw.mean((0, 2, 3), keepdims=True)) / raw.std((0, 2, 3), keepdims=True)
    np.testing.assert_allclose(x, expected, atol=1e-4)
    _, unit = _built({"name": "c10", "path": path, "format": "cifar10", "normalize": "unit"})
    np.testing.assert_allclose(unit.x_test.numpy(), arrays["x_test"] / 255.0, rtol=1e-6)


@pytest.mark.parametrize(("label", "classes"), [(None, 100), ("fine", 100), ("coarse", 20)])
def test_cifar100_fine_or_coarse_labels(tmp_path, label, classes):
    arrays = write_cifar100_folder(tmp_path / "cifar-100-binary")
    entry = {"name": "c100", "path": str(tmp_path / "cifar-100-binary"), "format": "cifar100"}
    _, data = _built(entry | ({"label_column": label} if label else {}) | {"normalize": "none"})
    which = "coarse" if label == "coarse" else "fine"
    assert data.n_classes == classes
    np.testing.assert_array_equal(data.y_train.numpy(), arrays[f"{which}_train"])
    np.testing.assert_array_equal(data.y_test.numpy(), arrays[f"{which}_test"])
    np.testing.assert_array_equal(data.x_train.numpy(), arrays["x_train"])


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_table_rows_are_found_again_by_example_id(tmp_path, suffix):
    frame = _table()
    path = tmp_path / f"train{suffix}"
    frame.to_csv(path, index=False) if suffix == ".csv" else frame.to_parquet(path)
    entry = {
        "name": "tab",
        "path": str(path),
        "feature_columns": ["a", "b", "c"],
        "normalize": "none",
        "test_fraction": 0.25,
    }
    ds, data = _built(entry)
    assert ds.format == suffix[1:] and data.kind == "tabular" and data.input_shape == (3,)
    assert (data.n_train, data.n_test, data.n_classes) == (45, 15, 3)
    features = frame[["a", "b", "c"]].to_numpy(np.float32)
    for x, y, ids in (
        (data.x_train, data.y_train, data.train_ids),
        (data.x_test, data.y_test, data.test_ids),
    ):
        np.testing.assert_array_equal(x.numpy(), features[ids.numpy()])
        np.testing.assert_array_equal(y.numpy(), frame["label"].to_numpy()[ids.numpy()])
    # default scaling: each feature standardised with the training split's statistics
    _, standard = _built(entry | {"normalize": "standard"})
    train = features[data.train_ids.numpy()].astype(np.float64)
    expected = (features[data.test_ids.numpy()] - train.mean(0)) / train.std(0)
    np.testing.assert_allclose(standard.x_test.numpy(), expected, rtol=1e-4, atol=1e-5)


def test_npz_sequences_with_a_test_file_and_renamed_arrays(tmp_path):
    rng = np.random.default_rng(0)
    x, x_test = rng.normal(size=(30, 2, 7)), rng.normal(size=(12, 2, 7))
    y, y_test = np.arange(30) % 3, np.arange(12) % 3
    np.savez(tmp_path / "train.npz", inputs=x, labels=y)
    np.savez(tmp_path / "test.npz", inputs=x_test, labels=y_test)
    entry = {
        "name": "seq",
        "path": str(tmp_path / "train.npz"),
        "test_path": str(tmp_path / "test.npz"),
        "x_key": "inputs",
        "y_key": "labels",
        "normalize": "none",
    }
    _, data = _built(entry)
    assert data.kind == "sequence" and data.input_shape == (2, 7)
    np.testing.assert_allclose(data.x_train.numpy(), x.astype(np.float32))
    np.testing.assert_allclose(data.x_test.numpy(), x_test.astype(np.float32))
    np.testing.assert_array_equal(data.y_test.numpy(), y_test)
    # unit: min-max per channel on the training split
    _, unit = _built(entry | {"normalize": "unit"})
    xt = unit.x_train.numpy()
    np.testing.assert_allclose(xt.min((0, 2)), 0, atol=1e-6)
    np.testing.assert_allclose(xt.max((0, 2)), 1, atol=1e-6)


def test_n_samples_from_a_given_test_split_is_shared_in_proportion_and_stratified(tmp_path):
    write_mnist_folder(tmp_path / "m", n_train=80, n_test=40)
    entry = {"name": "m", "path": str(tmp_path / "m"), "format": "idx", "n_samples": 30}
    ds, data = _built(entry, seed=3)
    assert (data.n_train, data.n_test) == (20, 10)
    assert np.bincount(data.y_train_original.numpy()).tolist() == [5, 5, 5, 5]
    assert data.test_ids.min() >= 80  # drawn from the t10k file
    shape = layout(ds.name, test_fraction=0.2, n_samples=30, source=ds.source)
    assert (shape.n_train, shape.n_test, shape.input_shape) == (20, 10, (1, 6, 5))


@pytest.mark.parametrize("n_samples", [None, 31, 57])
def test_layout_predicts_what_prepare_builds(tmp_path, n_samples):
    _table(n=70).to_csv(tmp_path / "t.csv", index=False)
    entry = {"name": "t", "path": str(tmp_path / "t.csv"), "test_fraction": 0.3}
    ds, data = _built(entry | ({"n_samples": n_samples} if n_samples else {}))
    shape = layout(ds.name, test_fraction=0.3, n_samples=n_samples, source=ds.source)
    assert (shape.kind, shape.input_shape, shape.n_classes) == ("tabular", (4,), 3)
    assert (shape.n_train, shape.n_test) == (data.n_train, data.n_test)


def test_label_noise_on_file_data_flips_exactly_the_fraction(tmp_path):
    _table(n=100).to_csv(tmp_path / "t.csv", index=False)
    _, data = _built({"name": "t", "path": str(tmp_path / "t.csv"), "label_noise": 0.25})
    assert int(data.is_mislabeled.sum()) == 20
    assert (data.y_train[data.is_mislabeled] != data.y_train_original[data.is_mislabeled]).all()


def test_relative_paths_resolve_against_the_config_file_folder(tmp_path, monkeypatch):
    (tmp_path / "project" / "data").mkdir(parents=True)
    _table().to_csv(tmp_path / "project" / "data" / "train.csv", index=False)
    config = {"datasets": [{"name": "t", "path": "data/train.csv"}], "archs": ["logreg"]}
    (tmp_path / "project" / "study.yaml").write_text(yaml.safe_dump(config))
    monkeypatch.chdir(tmp_path)  # elsewhere: the config file's folder counts
    loaded = load_config(tmp_path / "project" / "study.yaml")
    assert loaded.datasets[0].path == str(tmp_path / "project" / "data" / "train.csv")
    with pytest.raises(DataError, match="no such file"):  # from Python: the working directory
        parse_config(config)
    monkeypatch.chdir(tmp_path / "project")
    assert parse_config(config).datasets[0].path == loaded.datasets[0].path
    # stored absolute: the dumped entry validates again from anywhere
    monkeypatch.chdir(tmp_path)
    again = DatasetConfig.model_validate(loaded.datasets[0].model_dump())
    assert again.source == loaded.datasets[0].source


def test_the_digest_follows_the_contents_and_keys_the_data_stage(tmp_path):
    from mnemoscope.runner.plan import Planner
    from mnemoscope.store import RunDir

    frame = _table()
    frame.to_csv(tmp_path / "t.csv", index=False)
    entry = {"name": "t", "path": str(tmp_path / "t.csv")}
    first = _config(entry)
    key = Planner(first, RunDir(tmp_path / "run"), "cpu").data_stages()[0].key
    assert Planner(_config(entry), RunDir(tmp_path / "run"), "cpu").data_stages()[0].key == key
    frame.loc[7, "a"] += 1.0  # one value of one row
    frame.to_csv(tmp_path / "t.csv", index=False)
    second = _config(entry)
    assert second.datasets[0].sha256 != first.datasets[0].sha256
    assert Planner(second, RunDir(tmp_path / "run"), "cpu").data_stages()[0].key != key
    # a stage holding the old digest refuses the changed file; a pinned digest too
    with pytest.raises(DataError, match="data changed"):
        prepare("t", seed=0, source=first.datasets[0].source)
    with pytest.raises(DataError, match="the config pins"):
        _config(entry | {"sha256": first.datasets[0].sha256})


def test_builtin_entries_dump_as_before_and_refuse_file_keys():
    dumped = _config({"name": "digits", "n_samples": 100}).datasets[0].model_dump()
    assert list(dumped) == ["name", "label_noise", "test_fraction", "n_samples"]
    with pytest.raises(Exception, match=r"datasets\.0\.normalize: only for data read from files"):
        _config({"name": "digits", "normalize": "unit"})
