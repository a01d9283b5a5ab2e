"""The Python API: a user's module and dataset registered from Python, a study run end
to end, its tables back as DataFrames; one stage alone; bad registrations."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import mnemoscope as ms
from mnemoscope.data import BUILTIN
from mnemoscope.errors import ConfigError, DataError
from mnemoscope.models import ARCHITECTURES
from mnemoscope.store import RUN_TABLES


class TinyNet(nn.Module):
    """A user's own module: conv, GroupNorm, pool, linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.norm = nn.GroupNorm(2, 4)
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.norm(self.conv(x)))
        return self.head(h.mean(dim=(-2, -1)))


class _Images(torch.utils.data.Dataset):
    """A torch Dataset of three classes of 6×6 images (bright square in one corner)."""

    def __init__(self, n: int = 90) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 1, 6, 6, generator=g) * 0.3
        self.y = torch.arange(n) % 3
        for i, label in enumerate(self.y.tolist()):
            r, c = divmod(label, 2)
            self.x[i, 0, 3 * r : 3 * r + 3, 3 * c : 3 * c + 3] += 1.0

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        return self.x[i], int(self.y[i])


@pytest.fixture
def registered():
    ms.register_dataset("corners", _Images())
    ms.register_arch("tinynet", TinyNet())
    yield
    BUILTIN.pop("corners")
    ARCHITECTURES.pop("tinynet")


CONFIG = {
    "name": "api",
    "datasets": [{"name": "corners", "label_noise": 0.1}],
    "archs": ["tinynet"],
    "train": {"epochs": 4, "batch_size": 16, "lr": 0.1},
    "memorization": [{"method": "feldman_zhang", "n_models": 4}],
    "influence": [{"method": "tracin", "checkpoints": 2}],
    "analysis": {"n_bootstrap": 20},
}


def test_a_user_module_and_dataset_run_end_to_end(registered, tmp_path):
    results = ms.run(CONFIG, tmp_path / "run")
    assert isinstance(results.scores, pd.DataFrame)
    assert set(results.tables) == set(RUN_TABLES)
    assert set(results.scores["method"]) == {"feldman_zhang", "tracin"}
    assert (results.scores["arch"] == "tinynet").all()
    n_train = int((results.examples["split"] == "train").sum())
    assert n_train == 72 and results.examples["is_mislabeled"].sum() == 7
    assert results.report.exists() and results.ran
    # every model of an ensemble starts from its own weights (reset under its seed)
    from mnemoscope.train import init_module

    first, second = (init_module("tinynet", (1, 6, 6), 3, 0, k) for k in (0, 1))
    assert not torch.equal(first.head.weight, second.head.weight)
    assert torch.equal(first.head.weight, init_module("tinynet", (1, 6, 6), 3, 0, 0).head.weight)
    again = ms.run(CONFIG, tmp_path / "run")
    assert again.ran == [] and again.scores.equals(results.scores)
    assert ms.open_run(tmp_path / "run").scores.equals(results.scores)
    with pytest.raises(AttributeError, match="no table 'nope'"):
        _ = results.nope


def test_one_stage_alone_runs_what_it_reads(registered, tmp_path):
    stages = ms.plan(CONFIG, tmp_path / "run")
    names = [s.name for s in stages]
    assert names[0] == "data/corners" and names[-1] == "report"
    scores = next(n for n in names if n.startswith("scores/") and n.endswith("tracin"))
    partial = ms.run(CONFIG, tmp_path / "run", stages=[scores])
    assert scores in partial.ran
    assert not any(n.startswith(("scores/corners/tinynet/feldman", "tables")) for n in partial.ran)
    assert (tmp_path / "run" / "parts" / "scores").exists()
    with pytest.raises(ConfigError, match="unknown"):
        ms.run(CONFIG, tmp_path / "run", stages=["scores/nope"])


def test_new_data_under_the_same_name_rebuilds(registered, tmp_path):
    ms.run({**CONFIG, "memorization": [], "influence": [{"method": "grad_dot"}]}, tmp_path / "r")
    x, y = _Images().x.numpy(), _Images().y.numpy()
    ms.register_dataset("corners", (x * 2, y))
    rerun = ms.run(
        {**CONFIG, "memorization": [], "influence": [{"method": "grad_dot"}]}, tmp_path / "r"
    )
    assert "data/corners" in rerun.ran


def test_bad_registrations_are_one_line():
    x = np.zeros((6, 4), dtype=np.float32)
    cases = [
        (("digits", (x, np.arange(6) % 2)), ConfigError, "built in"),
        (("bad name", (x, np.arange(6) % 2)), ConfigError, "dataset name"),
        (("d", (x, np.arange(5) % 2)), DataError, "expected x"),
        # the messages of data read from files: one validation for every way data comes in
        (("d", (x, np.array([0, 0, 1, 1, 3, 3]))), DataError, "class 2 has no training"),
        (("d", (x, np.array([0, 0, 1, 1, 1, 2]))), DataError, "only one example"),
        (("d", (x, np.full(6, 0.5))), DataError, "is not an integer"),
        (("d", (np.full((6, 4), np.nan), np.arange(6) % 2)), DataError, "NaN or infinite"),
        (("d", (x, np.zeros(6, dtype=int))), DataError, "a single class"),
        (("d", (x + 1j, np.arange(6) % 2)), DataError, "dtype complex64; expected real"),
        (("d", (x, np.array([0, 0, 1, 1, 2**40, 2**40]))), DataError, "at most 100000 classes"),
        (("d", (np.full((6, 4), 1e39), np.arange(6) % 2)), DataError, "beyond float32"),
        (("d", "x.csv"), ConfigError, "expected (x, y)"),
    ]
    for (name, data), error, match in cases:
        with pytest.raises(error, match=match.replace("(", r"\(").replace(")", r"\)")) as info:
            ms.register_dataset(name, data)
        assert "\n" not in str(info.value)
    assert "d" not in BUILTIN

    class Shared(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.scale = nn.Parameter(torch.ones(1))

        def forward(self, x):
            return x.flatten(1) * self.scale

    with pytest.raises(ConfigError, match="pass a factory"):
        ms.register_arch("shared", Shared())
    from mnemoscope.models import build_model

    ms.register_arch("bn", nn.Sequential(nn.Flatten(), nn.BatchNorm1d(4), nn.Linear(4, 2)))
    try:
        with pytest.raises(ConfigError, match="BatchNorm1d .* use nn.GroupNorm or nn.LayerNorm"):
            build_model("bn", (4,), 2)
    finally:
        ARCHITECTURES.pop("bn")


def test_the_readme_example_runs(tmp_path, monkeypatch):
    from pathlib import Path

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    code = readme.split("## Python API")[1].split("```python")[1].split("```")[0]
    monkeypatch.chdir(tmp_path)
    code = code.replace('"epochs": 30', '"epochs": 3').replace('"n_models": 8', '"n_models": 3')
    try:
        exec(compile(code, "README.md", "exec", dont_inherit=True), {})
    finally:
        BUILTIN.pop("wine", None)
        ARCHITECTURES.pop("wide", None)
    results = ms.open_run(tmp_path / "runs" / "wine")
    assert set(results.scores["method"]) == {"feldman_zhang", "tracin"}
    assert (results.scores["dataset"] == "wine").all()
