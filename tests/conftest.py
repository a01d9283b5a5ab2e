"""Shared fixtures: small built-in datasets, cached per session (they are deterministic)."""

from __future__ import annotations

import pytest
import torch

from mnemoscope.data import Dataset, prepare

# One thread: the CI machine is shared and can be loaded, where extra threads wait on each
# other; runs planned here resolve `executor.threads: auto` to this number.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def digits_small() -> Dataset:
    return prepare("digits", seed=0, label_noise=0.1, n_samples=300)


@pytest.fixture(scope="session")
def mnist1d_small() -> Dataset:
    return prepare("mnist1d", seed=0, label_noise=0.1, n_samples=300)


# The longest modules first: under `make test` (`-n 2 --dist loadscope`) a long module
# handed out last keeps one worker busy while the other has nothing left to run.
_LONGEST_FIRST = (
    "tests/study/test_study_run.py",
    "tests/runner/test_executors.py",
    "tests/train/test_scale.py",
    "tests/runner/test_safety.py",
    "tests/test_hostile_runs.py",
)


def pytest_collection_modifyitems(items):
    rank = {module: i for i, module in enumerate(_LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(rank)))
