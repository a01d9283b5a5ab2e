"""cross_arch_table on planted ground truth."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from mnemoscope.analysis import cross_arch_table
from mnemoscope.store import TABLES
from mnemoscope.store.tables import to_arrow

from .study_frames import INFLUENCE, MEMORIZATION, not_fit, scores_frame

N = 300


def _scores() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    fz = rng.normal(size=N)
    unrelated = rng.normal(size=N)
    return scores_frame(
        {
            ("d", "mlp"): {
                "feldman_zhang": (MEMORIZATION, fz),
                "loss": (MEMORIZATION, fz + 0.1 * rng.normal(size=N)),
                "margin": (MEMORIZATION, fz + 2.0 * rng.normal(size=N)),
                "tracin": (INFLUENCE, fz),
            },
            ("d", "cnn"): {
                "feldman_zhang": (MEMORIZATION, np.exp(fz)),  # same order as mlp's
                "loss": (MEMORIZATION, unrelated),
                "margin": (MEMORIZATION, fz + 0.5 * rng.normal(size=N)),
            },
        }
    )


def test_architectures_rows() -> None:
    table = cross_arch_table(_scores(), None, n_bootstrap=200)
    assert list(table.columns) == TABLES["cross_arch"].names
    to_arrow(table, TABLES["cross_arch"])
    arch = table[table["comparison"] == "architectures"].set_index("method")
    assert list(arch.index) == ["feldman_zhang", "loss", "margin"]  # tracin: one arch only
    assert (arch["arch_a"] == "mlp").all() and (arch["arch_b"] == "cnn").all()
    assert arch["reference"].isna().all() and not arch["best"].any()
    fz = arch.loc["feldman_zhang"]
    assert (fz["value"], fz["ci_low"], fz["ci_high"]) == (1.0, 1.0, 1.0)
    loss = arch.loc["loss"]
    assert loss["ci_low"] <= 0.0 <= loss["ci_high"]
    scores = _scores()
    margin = [
        scores[(scores["method"] == "margin") & (scores["arch"] == a)]["score"].to_numpy()
        for a in ("mlp", "cnn")
    ]
    assert arch.loc["margin", "value"] == pytest.approx(stats.spearmanr(*margin).statistic)
    assert (arch["statistic"] == "spearman").all() and (arch["n"] == N).all()


def test_proxy_rows_and_best() -> None:
    table = cross_arch_table(_scores(), None, n_bootstrap=200)
    proxy = table[table["comparison"] == "proxy"]
    mlp = proxy[proxy["arch_a"] == "mlp"].set_index("method")
    assert list(mlp.index) == ["loss", "margin"]  # memorization methods only, not tracin
    assert (mlp["reference"] == "feldman_zhang").all() and (mlp["arch_b"] == "mlp").all()
    assert mlp.loc["loss", "best"] and not mlp.loc["margin", "best"]
    assert mlp.loc["loss", "value"] > mlp.loc["margin", "ci_high"]
    cnn = proxy[proxy["arch_a"] == "cnn"].set_index("method")
    assert cnn.loc["margin", "best"] and not cnn.loc["loss", "best"]
    assert proxy.groupby("arch_a")["best"].sum().eq(1).all()
    chosen = cross_arch_table(_scores(), None, proxies=["tracin"], n_bootstrap=20)
    chosen = chosen[(chosen["comparison"] == "proxy") & (chosen["arch_a"] == "mlp")]
    assert list(chosen["method"]) == ["tracin"] and chosen["value"].iloc[0] == 1.0


def test_fit_nan_and_determinism() -> None:
    scores = _scores()
    drop = (scores["arch"] == "cnn") & (scores["example_id"] < 5)
    scores.loc[drop, "score"] = np.nan
    fits = not_fit("d", "cnn")
    table = cross_arch_table(scores, fits, n_bootstrap=100, seed=5)
    pd.testing.assert_frame_equal(table, cross_arch_table(scores, fits, n_bootstrap=100, seed=5))
    arch = table[table["comparison"] == "architectures"]
    assert (arch["n"] == N - 5).all() and (arch["n_dropped"] == 5).all()
    assert not arch["fit"].any()
    proxy = table[table["comparison"] == "proxy"].set_index("arch_a")["fit"]
    assert proxy.loc["mlp"].all() and not proxy.loc["cnn"].any()


def test_constant_or_tiny_gives_nan() -> None:
    flat = scores_frame(
        {
            ("d", "mlp"): {"feldman_zhang": (MEMORIZATION, np.arange(5.0))},
            ("d", "cnn"): {"feldman_zhang": (MEMORIZATION, np.ones(5))},
        }
    )
    row = cross_arch_table(flat, None, n_bootstrap=10).iloc[0]
    assert np.isnan(row["value"]) and np.isnan(row["ci_low"]) and row["n"] == 5
