"""The conformance suite every estimator passes: :func:`check_estimator`.

    from mnemoscope.testing import check_estimator
    check_estimator(MyMethod, {"n_models": 8})   # raises AssertionError naming the check

It fits the estimator with the ensemble engine on a planted case (digits with flipped
labels and canaries, a logistic regression) and checks the contract the runner and the
public classes rely on:

- **bad settings**: an unknown key, and a value of the wrong kind for each setting, is a
  one-line :class:`~mnemoscope.errors.ConfigError` naming the method and the setting;
- **scores**: one per training example, finite but for the NaN fraction it allows;
- **sign**: higher = more memorized / more influential, so the flipped labels score
  higher on average than the clean ones (canaries above zero, for a method that scores
  only canaries);
- **diagonal** (influence methods): the influence matrix on the training set as targets has
  the self-influence on its diagonal;
- **memory budget**: a one-byte budget gives blocks of one target each, which assemble the
  same matrix as the default budget;
- **fit cache** (``cache_fit`` methods): the fitted state, written to a safetensors file
  and read back into a fresh estimator, gives the same scores and influences.
"""

from __future__ import annotations

import tempfile
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file

from mnemoscope.attributors import Attributor, Scorer
from mnemoscope.data import Dataset, insert_canaries, prepare
from mnemoscope.errors import ConfigError
from mnemoscope.estimator import REGISTRY, Estimator, register
from mnemoscope.influence.base import InfluenceEstimator
from mnemoscope.store import write_safetensors

PLANTED_TRAIN = {"epochs": 30, "batch_size": 32, "lr": 0.5, "momentum": 0.9}
"""Training of the planted case: long enough for the logistic regression to fit most
flipped labels."""
_BAD = "§not-a-valid-value§"


def planted_dataset(n_samples: int = 200, seed: int = 0) -> Dataset:
    """Digits with 10% of the training labels flipped and 3 canaries of class 0."""
    dataset = prepare("digits", seed=seed, label_noise=0.1, n_samples=n_samples)
    return insert_canaries(dataset, 3, 0, seed)


def check_estimator(
    cls: type[Estimator],
    settings: Mapping[str, Any] | None = None,
    *,
    dataset: Dataset | None = None,
    arch: str = "logreg",
    train_config: Mapping[str, Any] | None = None,
    seed: int = 0,
    skip: Collection[str] = (),
) -> None:
    """Run the conformance checks on ``cls`` with ``settings`` (its config keys; keep them
    small: this trains what the method declares). ``cls`` is registered if it is not.
    ``skip``: checks a method is exempt from by its definition (``"sign"`` for a score
    that is not a memorization or influence score, ``"diagonal"`` for a self-influence
    defined otherwise than the matrix's diagonal). Raises ``AssertionError`` naming the
    first check that fails."""
    unknown = set(skip) - {"sign", "diagonal"}
    if unknown:
        raise ValueError(f"skip: unknown checks {sorted(unknown)}; known: diagonal, sign")
    if REGISTRY.get(cls.name) is not cls:
        register(cls)
    settings = dict(settings or {})
    check_bad_settings(cls, settings)
    data = dataset if dataset is not None else planted_dataset()
    kind = Attributor if cls.family == "influence" else Scorer
    scorer = kind(cls.name, **settings).fit(
        arch, data, train_config=dict(train_config or PLANTED_TRAIN), seed=seed
    )
    scores = _scores_by_row(cls.name, scorer, data)
    name = cls.name
    assert not np.isinf(scores).any(), f"{name}: infinite scores"
    given = scorer.scores_.score  # the rows the method scores (a run writes these)
    assert np.isnan(given).mean() <= cls.max_nan_fraction, f"{name}: too many NaN scores"
    if "sign" not in skip:
        _check_sign(name, scores, data)
    estimator = scorer.estimator_
    if isinstance(estimator, InfluenceEstimator):
        matrix = _check_influence(name, estimator, scores, data, "diagonal" not in skip)
    else:
        matrix = None
    if cls.cache_fit:
        _check_fit_cache(scorer, matrix, data)


def check_bad_settings(cls: type[Estimator], settings: Mapping[str, Any]) -> None:
    """An unknown key and each setting set to a value of no type it takes fail in one line
    naming the setting."""
    for key, value in [("no_such_setting", 1)] + [
        (field, _BAD) for field in cls.config_class.model_fields if field != "method"
    ]:
        try:
            Scorer(cls.name, **{**settings, key: value})
        except ConfigError as error:
            message = str(error)
            assert f"{cls.name}.{key}" in message and "\n" not in message, (
                f"{cls.name}: the error for a bad '{key}' does not name it in one line: {message}"
            )
        else:
            raise AssertionError(f"{cls.name}: {key}={value!r} was accepted")


def _scores_by_row(name: str, scorer: Scorer, data: Dataset) -> np.ndarray:
    """``[n_train]`` scores in the rows of the training split, NaN where a method that
    scores chosen examples (canaries) gives none."""
    values = scorer.score().numpy()
    ids = scorer.scores_.example_ids
    train_ids = data.train_ids.numpy()
    assert len(np.unique(ids)) == len(ids) == len(values), f"{name}: ids and scores disagree"
    assert np.isin(ids, train_ids).all(), f"{name}: scores for ids that are not training ids"
    rows = np.full(data.n_train, np.nan)
    order = np.argsort(train_ids)
    rows[order[np.searchsorted(train_ids, ids, sorter=order)]] = values
    return rows


def _check_sign(name: str, scores: np.ndarray, data: Dataset) -> None:
    finite = ~np.isnan(scores)
    canary = data.is_canary.numpy()
    if finite.sum() and not (finite & ~canary).any():  # a method scoring canaries only
        assert np.nanmean(scores[canary]) > 0, f"{name}: canaries score <= 0"
        return
    flipped = data.is_mislabeled.numpy() & ~canary & finite
    clean = ~data.is_mislabeled.numpy() & ~canary & finite
    assert flipped.any() and clean.any(), f"{name}: no score for flipped or for clean labels"
    assert scores[flipped].mean() > scores[clean].mean(), (
        f"{name}: flipped labels score {scores[flipped].mean():.4g} on average, clean ones "
        f"{scores[clean].mean():.4g}; higher must mean more memorized / influential"
    )


def _check_influence(
    name: str, estimator: InfluenceEstimator, scores: np.ndarray, data: Dataset, diagonal: bool
) -> torch.Tensor:
    matrix = estimator.influence_matrix(data.x_train, data.y_train)
    assert matrix.shape == (data.n_train, data.n_train), f"{name}: matrix {tuple(matrix.shape)}"
    if diagonal:
        values = matrix.diagonal().numpy()
        both = ~np.isnan(values) & ~np.isnan(scores)
        assert both.any(), f"{name}: neither the diagonal nor the self-influence has a value"
        np.testing.assert_allclose(
            values[both],
            scores[both],
            rtol=1e-4,
            atol=1e-6 * np.abs(scores[both]).max(),
            err_msg=f"{name}: the influence matrix's diagonal is not the self-influence",
        )
    widths = {
        b.targets.stop - b.targets.start
        for b in estimator.influence(data.x_train[:7], data.y_train[:7], memory_budget=1)
    }
    assert widths == {1}, f"{name}: a one-byte budget gave blocks of {sorted(widths)} targets"
    blocks = estimator.influence_matrix(data.x_train[:7], data.y_train[:7], memory_budget=1)
    # float32 products of 1 target and of 7 round differently on some CPUs (AVX2 without
    # AVX-512: trak's entries moved by up to 1e-6 of the largest, through its solve); a
    # block that scored the wrong targets would move entries by their own size
    np.testing.assert_allclose(
        blocks.numpy(),
        matrix[:, :7].numpy(),
        rtol=1e-5,
        atol=1e-5 * np.nanmax(np.abs(matrix.numpy())),
        err_msg=f"{name}: blocks of a small memory budget change the influence",
    )
    return matrix


def _check_fit_cache(scorer: Scorer, matrix: torch.Tensor | None, data: Dataset) -> None:
    estimator = scorer.estimator_
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "fit.safetensors"
        write_safetensors(path, estimator.fitted_state())  # as the runner writes a fit
        state = load_file(str(path))
    fresh = type(estimator)(estimator.config)
    fresh.load_fitted(state, scorer.ensembles_, data, scorer.task_, scorer.device)
    np.testing.assert_allclose(
        fresh.score().score,
        estimator.score().score,
        rtol=1e-6,
        err_msg=f"{estimator.name}: fit cache round trip",
    )
    if matrix is not None:
        assert isinstance(fresh, InfluenceEstimator)
        np.testing.assert_allclose(
            fresh.influence_matrix(data.x_train, data.y_train).numpy(),
            matrix.numpy(),
            rtol=1e-5,
            atol=1e-7 * np.nanmax(np.abs(matrix.numpy())),
            err_msg=f"{estimator.name}: influence after the fit cache round trip",
        )
