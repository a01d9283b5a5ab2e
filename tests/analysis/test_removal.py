"""removal_table on planted retraining results."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from mnemoscope.analysis import removal_table
from mnemoscope.store import TABLES
from mnemoscope.store.tables import to_arrow

from .study_frames import not_fit

SEEDS = 5


def _results(methods=("feldman_zhang",), random_for=None) -> pd.DataFrame:
    """Top removal 2 points worse than random, bottom 0.5 points better, per seed; seeds
    differ by much more than that, so only pairing by seed resolves the gap."""
    rng = np.random.default_rng(0)
    base = 0.9 + 0.05 * rng.normal(size=SEEDS)
    rows = []
    for method in methods:
        for direction, shift in (("top", -0.02), ("random", 0.0), ("bottom", 0.005)):
            if direction == "random" and random_for is not None and method not in random_for:
                continue
            accuracy = base + shift + 0.002 * rng.normal(size=SEEDS)
            for seed in range(SEEDS):
                rows.append(
                    {
                        "dataset": "d",
                        "arch": "mlp",
                        "method": method,
                        "direction": direction,
                        "k": 0.1,
                        "n_removed": 150,
                        "seed": seed,
                        "accuracy": accuracy[seed],
                    }
                )
    return pd.DataFrame(rows)


def test_planted_top_direction_is_two_points_worse() -> None:
    results = _results()
    table = removal_table(results, None, 0.95)
    assert list(table.columns) == TABLES["removal"].names
    to_arrow(table, TABLES["removal"])
    rows = table.set_index("direction")
    assert list(rows.index) == ["top", "random", "bottom"]
    top = rows.loc["top"]
    assert top["delta_vs_random"] == pytest.approx(-0.02, abs=0.003)
    assert top["delta_high"] < 0
    # unpaired, the seeds' spread swamps the gap: the accuracy intervals overlap
    assert top["ci_high"] > rows.loc["random", "ci_low"]
    assert rows.loc["bottom", "delta_low"] > 0
    random = rows.loc["random"]
    assert (random["delta_vs_random"], random["delta_low"], random["delta_high"]) == (0, 0, 0)
    accuracy = results[results["direction"] == "top"]["accuracy"].to_numpy()
    expected = stats.t.interval(0.95, SEEDS - 1, loc=accuracy.mean(), scale=stats.sem(accuracy))
    assert top["accuracy"] == pytest.approx(accuracy.mean())
    assert (top["ci_low"], top["ci_high"]) == pytest.approx(expected)
    assert (table["n_seeds"] == SEEDS).all() and (table["n_removed"] == 150).all()
    assert table["fit"].all()


def test_shared_random_baseline_and_fit() -> None:
    results = _results(methods=("feldman_zhang", "tracin"), random_for={"feldman_zhang"})
    table = removal_table(results, not_fit("d", "mlp"))
    tracin = table[table["method"] == "tracin"].set_index("direction")
    assert "random" not in tracin.index
    own = table[table["method"] == "feldman_zhang"].set_index("direction")
    assert tracin.loc["top", "delta_vs_random"] == pytest.approx(-0.02, abs=0.004)
    assert np.isfinite(own.loc["top", "delta_vs_random"])
    assert not table["fit"].any()


def test_missing_seed_pairs_and_bad_input() -> None:
    results = _results()
    results = results[~((results["direction"] == "random") & (results["seed"] == 0))]
    top = removal_table(results).set_index("direction").loc["top"]
    assert top["n_seeds"] == SEEDS  # the mean uses every seed, the delta the paired ones
    paired = results.pivot_table(index="seed", columns="direction", values="accuracy")
    assert top["delta_vs_random"] == pytest.approx((paired["top"] - paired["random"]).mean())
    with pytest.raises(ValueError, match="direction"):
        removal_table(_results().assign(direction="sideways"))
    with pytest.raises(ValueError, match="n_removed"):
        removal_table(_results().assign(n_removed=np.arange(3 * SEEDS)))
    with pytest.raises(ValueError, match="accuracy"):
        removal_table(_results().drop(columns="accuracy"))
