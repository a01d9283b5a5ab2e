"""Hugging Face ``save_to_disk`` folders (the optional ``hf`` extra; ``make test`` installs it)."""

from __future__ import annotations

import numpy as np
import pytest

from mnemoscope.config import parse_config
from mnemoscope.data import prepare
from mnemoscope.errors import UserError

datasets = pytest.importorskip("datasets")


def _prepared(entry: dict):
    ds = parse_config({"datasets": [entry], "archs": ["logreg"]}).datasets[0]
    return prepare(ds.name, seed=0, n_samples=ds.n_samples, source=ds.source)


def test_image_dataset_dict_with_its_test_split(tmp_path):
    rng = np.random.default_rng(0)
    images = {
        s: rng.integers(0, 256, (n, 7, 5, 3), dtype=np.uint8)
        for s, n in [("train", 12), ("test", 6)]
    }
    folder = tmp_path / "saved"
    datasets.DatasetDict(
        {
            split: datasets.Dataset.from_dict(
                {"img": list(images[split]), "lab": list(np.arange(len(images[split])) % 3)},
                features=datasets.Features(
                    {"img": datasets.Image(), "lab": datasets.Value("int64")}
                ),
            )
            for split in images
        }
    ).save_to_disk(str(folder))
    data = _prepared(
        {
            "name": "hf",
            "path": str(folder),
            "format": "hf",
            "image_column": "img",
            "label_column": "lab",
            "normalize": "none",
        }
    )
    assert data.kind == "image" and data.input_shape == (3, 7, 5)
    np.testing.assert_array_equal(data.x_train.numpy(), np.moveaxis(images["train"], -1, 1))
    np.testing.assert_array_equal(data.x_test.numpy(), np.moveaxis(images["test"], -1, 1))
    np.testing.assert_array_equal(data.y_test.numpy(), np.arange(6) % 3)


def test_tabular_dataset_and_a_missing_column(tmp_path):
    x = np.random.default_rng(1).normal(size=(30, 2))
    folder = tmp_path / "table"
    datasets.Dataset.from_dict(
        {"a": x[:, 0], "b": x[:, 1], "label": np.arange(30) % 2}
    ).save_to_disk(str(folder))
    entry = {"name": "t", "path": str(folder), "format": "hf", "normalize": "none"}
    data = _prepared(entry)
    assert data.kind == "tabular" and (data.n_train, data.n_test) == (24, 6)
    np.testing.assert_allclose(data.x_train.numpy(), x[data.train_ids.numpy()].astype(np.float32))
    with pytest.raises(UserError, match="no column 'target'"):
        _prepared(entry | {"label_column": "target"})
