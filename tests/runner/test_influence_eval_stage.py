"""The influence evaluation of a run: LOO agreement, LDS and mislabel detection of every
attributor, written to influence_eval.parquet."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from safetensors.torch import load_file

from mnemoscope.analysis.influence_eval import lds, lds_masks
from mnemoscope.config import parse_config
from mnemoscope.errors import ConfigError
from mnemoscope.runner import run_study
from mnemoscope.store import INFLUENCE_EVAL

CONFIG = {
    "name": "evaluation",
    "datasets": [{"name": "digits", "label_noise": 0.1, "n_samples": 200}],
    "archs": ["logreg"],
    "train": {"epochs": 8, "batch_size": 64, "lr": 0.1, "weight_decay": 0.001},
    "influence": [{"method": "grad_dot"}, {"method": "loo", "n_examples": 20, "repeats": 1}],
    "targets": {"n": 12},
    "analysis": {"n_bootstrap": 30, "lds": {"subsets": 6, "repeats": 2}},
}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("evaluation")
    run_study(parse_config(CONFIG), out)
    return out


def test_every_attributor_is_evaluated(run):
    table = pd.read_parquet(run / "influence_eval.parquet")
    assert list(table.columns) == INFLUENCE_EVAL.names
    grad_dot = table[table["method"] == "grad_dot"].set_index("metric")
    expected = {"mislabel_auc", "loo_pearson", "loo_spearman", "loo_target_pearson"}
    assert expected | {"loo_target_spearman", "lds"} == set(grad_dot.index)
    assert grad_dot["value"].notna().all()
    ok = grad_dot.dropna()
    assert ((ok["ci_low"] <= ok["value"] + 1e-12) & (ok["value"] <= ok["ci_high"] + 1e-12)).all()
    # loo scores 20 of 160 examples by design: the run accepts its NaN
    scores = pd.read_parquet(run / "scores.parquet")
    loo = scores[scores["method"] == "loo"]
    assert loo["score"].notna().sum() == 20


def test_lds_is_recomputed_from_the_run_files(run):
    """The LDS row equals the LDS recomputed from influence.parquet and the stored margins,
    and the stored subsets are lds_masks' for the study's seed."""
    part = load_file(str(next((run / "parts" / "lds").glob("*.safetensors"))))
    masks, measured = part["masks"].numpy(), part["measured"].numpy()
    assert masks.shape == (6, 160) and measured.shape == (6, 12)
    assert (masks.sum(1) == 80).all()
    influence = pd.read_parquet(run / "influence.parquet")
    grad_dot = influence[influence["method"] == "grad_dot"]
    matrix = grad_dot.pivot(index="train_id", columns="target_id", values="score")
    matrix = matrix.loc[part["train_ids"].numpy(), part["target_ids"].numpy()].to_numpy()
    _, mean = lds(matrix, masks, measured)
    table = pd.read_parquet(run / "influence_eval.parquet")
    row = table[(table["method"] == "grad_dot") & (table["metric"] == "lds")]
    assert row["value"].item() == pytest.approx(mean)
    assert not np.array_equal(masks, lds_masks(6, 160, 0.5, seed=0))  # its own seed domain


def test_lds_without_targets_is_refused():
    config = {**CONFIG}
    config.pop("targets")
    with pytest.raises(ConfigError, match="analysis.lds"):
        parse_config(config)


def test_influence_is_streamed_block_by_block(tmp_path):
    """grad_dot with batches of 32 of 160 training examples yields 5 blocks: the part file
    has one row group per block, and the table equals the attributor's whole matrix."""
    import pyarrow.parquet as pq

    from mnemoscope.influence import GradDot, GradDotConfig
    from mnemoscope.store import RunDir
    from mnemoscope.task import Task
    from mnemoscope.train import TrainedEnsemble

    config = {
        **CONFIG,
        "influence": [{"method": "grad_dot", "batch_size": 32}],
        "analysis": {"n_bootstrap": 20},
    }
    run_study(parse_config(config), tmp_path)
    part = pq.ParquetFile(next((tmp_path / "parts" / "influence").glob("*.parquet")))
    assert part.num_row_groups == 5
    table = pd.read_parquet(tmp_path / "influence.parquet")
    assert len(table) == 160 * 12
    from mnemoscope.data import Dataset

    tensors = load_file(str(tmp_path / RunDir.existing(tmp_path).data_file("digits")))
    dataset = Dataset.from_tensors("digits", "image", 10, tensors)
    model = TrainedEnsemble.load(next((tmp_path / "models").glob("*full-*.safetensors")))
    estimator = GradDot(GradDotConfig(batch_size=32)).fit({"model": model}, dataset, Task(0.001))
    matrix = estimator.influence_matrix(dataset.x_test[:12], dataset.y_test[:12]).numpy()
    wide = table.pivot(index="train_id", columns="target_id", values="score")
    wide = wide.loc[dataset.train_ids.numpy(), dataset.test_ids[:12].numpy()].to_numpy()
    np.testing.assert_allclose(wide, matrix, rtol=1e-6, atol=1e-9)
