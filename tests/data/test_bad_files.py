"""Bad data files: one line naming the file and the problem, when the config is read
(so before a run writes anything); generated corrupt bytes never escape as a traceback."""

from __future__ import annotations

import gzip
import os
import sys

import numpy as np
import pandas as pd
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from mnemoscope.cli import app
from mnemoscope.config import parse_config
from mnemoscope.errors import UserError
from tests.data.writers import (
    cifar_images,
    cifar_records,
    idx_bytes,
    write_cifar10_folder,
    write_idx,
    write_mnist_folder,
)


def _refused(entry: dict, *fragments: str) -> str:
    """The one-line message refusing a config with dataset ``entry``; it holds each fragment."""
    with pytest.raises(UserError) as caught:
        parse_config({"datasets": [entry], "archs": ["logreg"]})
    message = str(caught.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message
    return message


def _csv(tmp_path, frame: pd.DataFrame, name: str = "bad.csv") -> str:
    frame.to_csv(tmp_path / name, index=False)
    return str(tmp_path / name)


def _good_frame(n: int = 20) -> pd.DataFrame:
    return pd.DataFrame({"a": np.linspace(0, 1, n), "label": np.arange(n) % 2})


# --- IDX --------------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [False, True])
def test_truncated_idx(tmp_path, gz):
    write_mnist_folder(tmp_path, gz=gz)
    images = tmp_path / f"train-images-idx3-ubyte{'.gz' if gz else ''}"
    raw = idx_bytes(np.zeros((40, 6, 5), np.uint8))[:-7]
    images.write_bytes(gzip.compress(raw) if gz else raw)
    _refused({"name": "m", "path": str(tmp_path), "format": "idx"}, str(images), "truncated")


def test_truncated_gzip_stream(tmp_path):
    write_mnist_folder(tmp_path, gz=True)
    labels = tmp_path / "train-labels-idx1-ubyte.gz"
    labels.write_bytes(labels.read_bytes()[:-12])
    _refused({"name": "m", "path": str(tmp_path), "format": "idx"}, str(labels), "gzip")


def test_wrong_idx_magic_number(tmp_path):
    write_mnist_folder(tmp_path)
    # a labels file where the images should be: magic 0x00000801, not 0x00000803
    write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros(40, np.uint8))
    _refused(
        {"name": "m", "path": str(tmp_path), "format": "idx"},
        "train-images-idx3-ubyte",
        "0x00000801",
        "0x00000803",
    )


def test_idx_images_and_labels_of_different_lengths(tmp_path):
    write_mnist_folder(tmp_path)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.arange(39) % 4)
    _refused({"name": "m", "path": str(tmp_path), "format": "idx"}, "40 images but", "39 labels")


def test_idx_folder_without_training_files(tmp_path):
    write_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((4, 2, 2), np.uint8))
    _refused({"name": "m", "path": str(tmp_path), "format": "idx"}, "no IDX train images")


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.binary(max_size=200), gz=st.booleans())
def test_corrupt_idx_bytes_are_one_line_user_errors(tmp_path, data, gz):
    write_mnist_folder(tmp_path)
    (tmp_path / "train-images-idx3-ubyte").write_bytes(gzip.compress(data) if gz else data)
    _refused({"name": "m", "path": str(tmp_path), "format": "idx"}, str(tmp_path))


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(cut=st.integers(1, 6000), flip=st.integers(0, 5999))
def test_cut_or_flipped_idx_bytes_read_or_fail_in_one_line(tmp_path, cut, flip):
    """A file cut short always fails; a flipped byte either fails or reads a valid pool."""
    write_mnist_folder(tmp_path, n_train=40)
    images = tmp_path / "train-images-idx3-ubyte"
    raw = bytearray(images.read_bytes())
    flip %= len(raw)
    raw[flip] ^= 0xFF
    images.write_bytes(bytes(raw))
    entry = {"name": "m", "path": str(tmp_path), "format": "idx"}
    try:
        parse_config({"datasets": [entry], "archs": ["logreg"]})
    except UserError as error:
        assert str(images) in str(error) and "\n" not in str(error)
    else:
        assert flip >= 16  # a changed pixel, not a changed header
    images.write_bytes(bytes(raw[: len(raw) - cut]))
    _refused(entry, str(images))


# --- CIFAR ------------------------------------------------------------------------------


def test_truncated_cifar_batch(tmp_path):
    write_cifar10_folder(tmp_path / "c")
    batch = tmp_path / "c" / "data_batch_2.bin"
    batch.write_bytes(batch.read_bytes()[:-100])
    _refused(
        {"name": "c", "path": str(tmp_path / "c"), "format": "cifar10"},
        str(batch),
        "3073-byte",
    )


def test_cifar10_label_out_of_range(tmp_path):
    write_cifar10_folder(tmp_path / "c")
    x = cifar_images(3, np.random.default_rng(0))
    (tmp_path / "c" / "test_batch.bin").write_bytes(cifar_records(x, np.array([1, 10, 2])))
    _refused(
        {"name": "c", "path": str(tmp_path / "c"), "format": "cifar10"},
        "test_batch.bin",
        "record 1: label 10 outside [0, 10)",
    )


def test_empty_cifar_batch(tmp_path):
    write_cifar10_folder(tmp_path / "c")
    (tmp_path / "c" / "data_batch_1.bin").write_bytes(b"")
    _refused({"name": "c", "path": str(tmp_path / "c"), "format": "cifar10"}, "empty file")


def test_cifar_python_version_is_refused_pointing_at_the_binary_one(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name in ("data_batch_1", "test_batch", "batches.meta"):
        (folder / name).write_bytes(b"\x80\x04 not unpickled")
    _refused(
        {"name": "c", "path": str(folder), "format": "cifar10"},
        "python version",
        "never unpickles",
        "cifar-10-batches-bin",
    )


# --- tables -----------------------------------------------------------------------------


def test_empty_csv(tmp_path):
    (tmp_path / "empty.csv").write_text("")
    _refused({"name": "t", "path": str(tmp_path / "empty.csv")}, "empty.csv", "empty file")


def test_csv_missing_label_column(tmp_path):
    path = _csv(tmp_path, _good_frame().rename(columns={"label": "target"}))
    _refused({"name": "t", "path": path}, path, "no label column 'label'", "target")


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_csv_nan_or_inf_feature(tmp_path, value):
    frame = _good_frame()
    frame.loc[13, "a"] = value
    _refused({"name": "t", "path": _csv(tmp_path, frame)}, "bad.csv", "row 13", "NaN or infinite")


def test_parquet_non_integer_label(tmp_path):
    frame = _good_frame().astype({"label": float})
    frame.loc[4, "label"] = 1.5
    frame.to_parquet(tmp_path / "bad.parquet")
    _refused(
        {"name": "t", "path": str(tmp_path / "bad.parquet")},
        "bad.parquet",
        "1.5 at row 4 is not an integer",
    )


def test_string_labels_are_refused(tmp_path):
    frame = _good_frame().astype({"label": str})
    frame["label"] = np.where(frame["label"] == "0", "cat", "dog")
    _refused({"name": "t", "path": _csv(tmp_path, frame)}, "labels must be integers", "'cat'")


def test_negative_label(tmp_path):
    frame = _good_frame()
    frame.loc[3, "label"] = -1
    _refused({"name": "t", "path": _csv(tmp_path, frame)}, "label -1 at row 3 is negative")


def test_a_class_without_examples_between_labels(tmp_path):
    frame = _good_frame()
    frame["label"] = frame["label"] * 2  # 0 and 2: class 1 has no examples
    _refused({"name": "t", "path": _csv(tmp_path, frame)}, "class 1 has no training examples")


def test_a_class_with_one_example(tmp_path):
    frame = _good_frame()
    frame.loc[5, "label"] = 2
    _refused({"name": "t", "path": _csv(tmp_path, frame)}, "bad.csv", "class 2 has 1 example")


def test_non_numeric_feature_column(tmp_path):
    frame = _good_frame()
    frame["colour"] = "red"
    _refused({"name": "t", "path": _csv(tmp_path, frame)}, "column 'colour' is not numeric")


def test_test_file_with_other_features(tmp_path):
    train = _csv(tmp_path, _good_frame(), "train.csv")
    test = _good_frame(10).assign(b=1.0)
    entry = {"name": "t", "path": train, "test_path": _csv(tmp_path, test, "test.csv")}
    _refused(entry, "test.csv", "test inputs have shape (2,)")


# --- npz --------------------------------------------------------------------------------


def test_npz_mismatched_lengths(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.zeros((10, 3)), y=np.arange(9) % 2)
    _refused({"name": "d", "path": str(tmp_path / "d.npz")}, "d.npz", "10 inputs but 9 labels")


def test_npz_wrong_shapes(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.zeros((10,)), y=np.arange(10) % 2)
    _refused({"name": "d", "path": str(tmp_path / "d.npz")}, "inputs of shape (10,)")
    np.savez(tmp_path / "e.npz", x=np.zeros((10, 32, 32, 3)), y=np.arange(10) % 2)
    _refused({"name": "e", "path": str(tmp_path / "e.npz")}, "channels-last")


def test_npz_object_array_is_never_unpickled(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.array([{"a": 1}] * 4, dtype=object), y=np.arange(4) % 2)
    _refused({"name": "d", "path": str(tmp_path / "d.npz")}, "nothing is unpickled")


def test_npz_missing_array(tmp_path):
    np.savez(tmp_path / "d.npz", inputs=np.zeros((4, 2)), y=np.arange(4) % 2)
    _refused({"name": "d", "path": str(tmp_path / "d.npz")}, "no array 'x'", "inputs")


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.binary(max_size=300), suffix=st.sampled_from([".npz", ".csv", ".parquet"]))
def test_corrupt_files_of_every_extension_are_one_line_user_errors(tmp_path, data, suffix):
    path = tmp_path / f"junk{suffix}"
    path.write_bytes(data)
    _refused({"name": "j", "path": str(path)}, "junk")


# --- paths and keys ---------------------------------------------------------------------


def test_missing_path(tmp_path):
    _refused({"name": "t", "path": str(tmp_path / "nope.csv")}, "nope.csv", "no such file")


def test_folder_needs_a_format_and_unknown_extension(tmp_path):
    _refused({"name": "t", "path": str(tmp_path)}, "datasets.0.format", "a folder needs a format")
    (tmp_path / "x.xlsx").write_bytes(b"")
    _refused({"name": "t", "path": str(tmp_path / "x.xlsx")}, "extension '.xlsx'")


def test_keys_the_format_does_not_read(tmp_path):
    path = _csv(tmp_path, _good_frame())
    _refused({"name": "t", "path": path, "x_key": "a"}, "datasets.0.x_key: not read by format csv")


def test_file_dataset_names(tmp_path):
    path = _csv(tmp_path, _good_frame())
    _refused({"name": "digits", "path": path}, "datasets.0.name", "is a built-in dataset")
    _refused({"name": "../up", "path": path}, "datasets.0.name", "letters, digits")


def test_hf_without_the_datasets_package_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # `import datasets` fails, as uninstalled
    _refused({"name": "h", "path": str(tmp_path), "format": "hf"}, "pip install 'mnemoscope[hf]'")


# --- end to end through the command line -----------------------------------------------


def test_cli_run_with_a_bad_file_exits_2_with_one_line_and_writes_nothing(tmp_path):
    frame = _good_frame(40)
    frame.loc[17, "a"] = np.nan
    (tmp_path / "data").mkdir()
    frame.to_csv(tmp_path / "data" / "train.csv", index=False)
    config = {
        "datasets": [{"name": "mine", "path": "data/train.csv"}],
        "archs": ["logreg"],
        "train": {"epochs": 1},
        "memorization": [{"method": "feldman_zhang", "n_models": 2}],
    }
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(config))
    out = tmp_path / "out"
    before = sorted(os.listdir(tmp_path))
    result = CliRunner().invoke(app, ["run", str(tmp_path / "study.yaml"), "--out", str(out)])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert "train.csv" in lines[0] and "row 17" in lines[0] and "Traceback" not in result.output
    assert not out.exists() and sorted(os.listdir(tmp_path)) == before
