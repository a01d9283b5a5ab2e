"""Retraining-based influence: ``loo`` against exact leave-one-out optima of a convex model and
planted flipped labels; ``downsampling`` against Feldman–Zhang and an explicit loop over models."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats
from sklearn.metrics import roc_auc_score
from torch.func import functional_call
from torch.nn import functional as F

from mnemoscope.analysis import lds, lds_masks
from mnemoscope.config import parse_config
from mnemoscope.data import prepare
from mnemoscope.errors import ConfigError
from mnemoscope.estimator import PlanContext
from mnemoscope.influence import Downsampling, DownsamplingConfig, Loo, LooConfig
from mnemoscope.memorization import FeldmanZhang, FeldmanZhangConfig
from mnemoscope.memorization.counterfactual import Counterfactual, CounterfactualConfig
from mnemoscope.task import Task
from mnemoscope.train import (
    EnsembleSpec,
    TrainConfig,
    derive_seed,
    merge_specs,
    subset_masks,
    train_ensemble,
)


def _train(specs: dict[str, EnsembleSpec], arch, data, config, seed=0):
    """Each spec trained as the runner does: the seed derived from its trajectory digest."""
    return {
        role: train_ensemble(
            arch,
            data,
            spec.masks,
            config,
            seed=derive_seed(seed, int(spec.trajectory[:15], 16)),
            init=spec.init,
            order=spec.order,
        )
        for role, spec in specs.items()
    }


def _losses(module, params, x, y):
    """Per-example cross-entropy of one model, by a plain (non-vmapped) forward pass."""
    return F.cross_entropy(functional_call(module, params, (x,)).double(), y, reduction="none")


# -- the stream of an ensemble spec ---------------------------------------------------------


def test_stream_enters_the_digest_only_when_nonzero():
    masks = subset_masks(3, 10, 0.5, seed=0)
    spec = EnsembleSpec(masks, init="shared", order="shared")
    before = hashlib.sha256(masks.to(torch.uint8).numpy().tobytes())
    before.update(b"(3, 10)|shared|shared")  # the digest as it was before streams existed
    assert spec.trajectory == before.hexdigest()
    other = EnsembleSpec(masks, init="shared", order="shared", stream=1)
    assert other.trajectory != spec.trajectory
    merged = merge_specs([other, EnsembleSpec(masks, (2,), "shared", "shared", stream=1)])
    assert merged.stream == 1 and merged.trajectory == other.trajectory
    assert merged.checkpoint_epochs == (2,)
    for bad in (-1, True, 1.0):
        with pytest.raises(ValueError, match="stream"):
            EnsembleSpec(masks, stream=bad)


# -- loo ------------------------------------------------------------------------------------


def test_loo_declares_one_full_row_and_one_row_per_left_out_example():
    loo = Loo(LooConfig(n_examples=5, repeats=2))
    specs = loo.ensembles(PlanContext(n_train=50, epochs=3, seed=3))
    assert list(specs) == ["repeat_0", "repeat_1"]
    masks = specs["repeat_0"].masks
    assert masks.shape == (6, 50) and bool(masks[0].all())
    left_out = (~masks[1:]).int().argmax(1)
    assert ((~masks[1:]).sum(1) == 1).all() and left_out.tolist() == sorted(set(left_out.tolist()))
    assert torch.equal(left_out, loo.chosen(50, 3))
    assert not torch.equal(loo.chosen(50, 3), loo.chosen(50, 4))  # seeded by the study seed
    assert [s.stream for s in specs.values()] == [0, 1]
    assert all(s.init == "shared" and s.order == "shared" for s in specs.values())
    assert specs["repeat_0"].trajectory != specs["repeat_1"].trajectory
    assert torch.equal(specs["repeat_1"].masks, masks)
    every = Loo(LooConfig(repeats=1)).ensembles(PlanContext(n_train=7, epochs=3, seed=0))
    assert every["repeat_0"].masks.shape == (8, 7)
    with pytest.raises(ConfigError, match=r"loo\.n_examples: 8 is more than the 7"):
        Loo(LooConfig(n_examples=8)).ensembles(PlanContext(n_train=7, epochs=3, seed=0))


def _exact_logreg(x, y, l2, keep, start=None):
    """The exact minimiser of mean cross-entropy over ``keep`` + (l2/2)‖θ‖² (L-BFGS)."""
    w = torch.zeros(x.shape[1], int(y.max()) + 1, dtype=torch.float64)
    b = torch.zeros(w.shape[1], dtype=torch.float64)
    if start is not None:
        w, b = start[0].clone(), start[1].clone()
    w.requires_grad_(True)
    b.requires_grad_(True)
    opt = torch.optim.LBFGS(
        [w, b], max_iter=500, tolerance_grad=1e-12, tolerance_change=1e-15,
        line_search_fn="strong_wolfe",
    )  # fmt: skip

    def closure():
        opt.zero_grad()
        objective = F.cross_entropy(x[keep] @ w + b, y[keep]) + 0.5 * l2 * (
            (w**2).sum() + (b**2).sum()
        )
        objective.backward()
        return objective

    opt.step(closure)
    return w.detach(), b.detach()


def test_loo_equals_exact_leave_one_out_on_a_convex_model(digits_small):
    # Full-batch gradient descent on L2-regularised logistic regression converges to the
    # unique optimum, so retraining without i must give the exact leave-one-out optimum.
    data = digits_small
    config = TrainConfig(
        epochs=60, batch_size=data.n_train, lr=2.0, momentum=0.8, weight_decay=0.01
    )
    loo = Loo(LooConfig(n_examples=8, repeats=1))
    specs = loo.ensembles(PlanContext(data.n_train, config.epochs, seed=0))
    task = Task.from_train(config)
    loo.fit(_train(specs, "logreg", data, config), data, task)
    scores = loo.self_influence()
    targets = loo.influence_matrix(data.x_test[:10], data.y_test[:10])

    x, y = data.x_train.double().flatten(1), data.y_train
    xt, yt = data.x_test[:10].double().flatten(1), data.y_test[:10]
    full = _exact_logreg(x, y, task.l2, torch.ones(len(y), dtype=torch.bool))

    def loss(wb, xs, ys):
        return F.cross_entropy(xs @ wb[0] + wb[1], ys, reduction="none")

    exact_self, exact_targets = [], []
    for i in loo.chosen_.tolist():
        keep = torch.ones(len(y), dtype=torch.bool)
        keep[i] = False
        without = _exact_logreg(x, y, task.l2, keep, start=full)
        exact_self.append(
            float(
                loss(without, x[i : i + 1], y[i : i + 1]) - loss(full, x[i : i + 1], y[i : i + 1])
            )
        )
        exact_targets.append((loss(without, xt, yt) - loss(full, xt, yt)).numpy())
    chosen = loo.chosen_.numpy()
    estimate, exact = scores.score[chosen], np.array(exact_self)
    assert stats.pearsonr(estimate, exact).statistic > 0.999
    np.testing.assert_allclose(estimate, exact, atol=0.01 * np.abs(exact).max())
    exact_matrix = np.array(exact_targets)
    assert stats.pearsonr(targets[chosen].numpy().ravel(), exact_matrix.ravel()).statistic > 0.999
    np.testing.assert_allclose(
        targets[chosen].numpy(), exact_matrix, atol=0.02 * np.abs(exact_matrix).max()
    )
    # leaving a training example out raises its own loss (positive self-influence)
    assert (exact > 0).all() and (estimate > 0).all()


def test_loo_self_influence_flags_flipped_labels(digits_small):
    data = digits_small
    config = TrainConfig(epochs=20, batch_size=32, lr=0.05)
    loo = Loo(LooConfig(n_examples=60, repeats=1))
    specs = loo.ensembles(PlanContext(data.n_train, config.epochs, seed=1))
    scores = loo.fit(_train(specs, "logreg", data, config), data, Task()).self_influence()
    chosen = np.isfinite(scores.score)
    assert chosen.sum() == 60 and scores.stderr is None  # one replicate: no stderr
    flipped = data.is_mislabeled.numpy()[chosen]
    assert flipped.sum() >= 3
    score = scores.score[chosen]
    assert roc_auc_score(flipped, score) >= 0.9
    assert score[flipped].mean() > 3 * score[~flipped].mean()


@pytest.fixture(scope="module")
def loo_two_repeats(digits_small):
    data = digits_small
    config = TrainConfig(epochs=4, batch_size=32, lr=0.05)
    loo = Loo(LooConfig(n_examples=6, repeats=2))
    specs = loo.ensembles(PlanContext(data.n_train, config.epochs, seed=2))
    trained = _train(specs, "logreg", data, config)
    return loo.fit(trained, data, Task()), trained, data


def test_loo_repeats_are_independent_replicates_with_stderr(loo_two_repeats):
    loo, trained, data = loo_two_repeats
    chosen = loo.chosen_
    first, second = trained["repeat_0"], trained["repeat_1"]
    # each replicate starts from its own weights (the streams differ)
    assert not torch.equal(first.params["1.weight"][0], second.params["1.weight"][0])
    for ensemble in (first, second):
        rows = torch.arange(1, len(chosen) + 1)
        # the left-out model never saw its example; the full model saw every one
        assert torch.isnan(ensemble.train_loss[rows, :, chosen]).all()
        assert torch.isfinite(ensemble.train_loss[0]).all()
    per_repeat = []
    for ensemble in (first, second):
        module, full = ensemble.module(), {k: v[0] for k, v in ensemble.params.items()}
        values = []
        for j, i in enumerate(chosen.tolist()):
            without = {k: v[j + 1] for k, v in ensemble.params.items()}
            x, y = data.x_train[i : i + 1], data.y_train[i : i + 1]
            values.append(float(_losses(module, without, x, y) - _losses(module, full, x, y)))
        per_repeat.append(values)
    a, b = np.array(per_repeat)
    scores = loo.self_influence()
    np.testing.assert_allclose(scores.score[chosen], (a + b) / 2, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(scores.stderr[chosen], np.abs(a - b) / 2, rtol=1e-3, atol=1e-6)
    assert (scores.stderr[chosen] > 0).all()
    others = np.ones(data.n_train, dtype=bool)
    others[chosen] = False
    assert np.isnan(scores.score[others]).all() and np.isnan(scores.stderr[others]).all()


def test_loo_influence_blocks_cover_the_chosen_rows_only(loo_two_repeats):
    loo, trained, data = loo_two_repeats
    x, y = data.x_test[:5], data.y_test[:5]
    n_models = len(loo.chosen_) + 1
    budget = 8 * (n_models * data.n_classes + n_models) * 2  # two targets at a time
    blocks = list(loo.influence(x, y, budget))
    assert {b.targets.stop - b.targets.start for b in blocks} == {2, 1}
    rows = {p for b in blocks for p in range(b.train.start, b.train.stop)}
    assert rows == set(loo.chosen_.tolist())
    matrix = loo.influence_matrix(x, y, budget)
    expected = np.zeros((len(loo.chosen_), 5))
    for ensemble in trained.values():
        module, full = ensemble.module(), {k: v[0] for k, v in ensemble.params.items()}
        for j in range(len(loo.chosen_)):
            without = {k: v[j + 1] for k, v in ensemble.params.items()}
            expected[j] += (
                _losses(module, without, x, y) - _losses(module, full, x, y)
            ).numpy() / 2
    np.testing.assert_allclose(matrix[loo.chosen_].numpy(), expected, rtol=1e-4, atol=1e-6)
    unchosen = torch.ones(data.n_train, dtype=torch.bool)
    unchosen[loo.chosen_] = False
    assert torch.isnan(matrix[unchosen]).all()
    # a chosen example as its own target: the self-influence
    own = loo.influence_matrix(data.x_train[loo.chosen_], data.y_train[loo.chosen_])
    diagonal = own[loo.chosen_, torch.arange(len(loo.chosen_))].numpy()
    np.testing.assert_allclose(
        diagonal, loo.self_influence().score[loo.chosen_], rtol=1e-4, atol=1e-6
    )


# -- downsampling ---------------------------------------------------------------------------


def test_downsampling_shares_the_feldman_zhang_ensemble():
    context = PlanContext(n_train=100, epochs=5, seed=4)
    ours = Downsampling(DownsamplingConfig(n_models=16, subset_fraction=0.6)).ensembles(context)
    theirs = FeldmanZhang(FeldmanZhangConfig(n_models=16, subset_fraction=0.6)).ensembles(context)
    assert ours["subsets"].trajectory == theirs["subsets"].trajectory


@pytest.fixture(scope="module")
def subsets(digits_small):
    data = digits_small
    config = DownsamplingConfig(n_models=8, subset_fraction=0.5)
    spec = Downsampling(config).ensembles(PlanContext(data.n_train, 5, seed=0))["subsets"]
    masks = spec.masks.clone()
    masks[:, 0] = True  # example 0 is never held out: no estimate
    trained = _train(
        {"subsets": EnsembleSpec(masks)}, "mlp", data, TrainConfig(epochs=5, batch_size=32, lr=0.05)
    )
    return trained["subsets"], data


def test_downsampling_self_influence_is_feldman_zhang_memorization(subsets):
    ensemble, data = subsets
    fit = {"subsets": ensemble}
    ours = Downsampling(DownsamplingConfig(n_models=8)).fit(fit, data, Task()).self_influence()
    fz = FeldmanZhang(FeldmanZhangConfig(n_models=8)).fit(fit, data, Task()).score()
    np.testing.assert_allclose(ours.score, fz.score, rtol=0, atol=1e-12)
    np.testing.assert_allclose(ours.stderr, fz.stderr, rtol=0, atol=1e-12)
    masks = ensemble.masks
    unscored = (masks.all(0) | (~masks).all(0)).numpy()  # in every subset or in none
    assert unscored[0] and np.array_equal(np.isnan(ours.score), unscored)
    assert ours.family == "influence" and ours.method == "downsampling"
    # with −loss it is counterfactual memorization (Welch stderr)
    ours = Downsampling(DownsamplingConfig(n_models=8, measure="neg_loss")).fit(fit, data, Task())
    cf = Counterfactual(CounterfactualConfig(n_models=8, measure="neg_loss")).fit(fit, data, Task())
    np.testing.assert_allclose(ours.self_influence().score, cf.score().score, rtol=1e-10)
    np.testing.assert_allclose(ours.self_influence().stderr, cf.score().stderr, rtol=1e-10)


@pytest.mark.parametrize("measure", ["accuracy", "margin", "neg_loss"])
def test_downsampling_influence_equals_a_loop_over_models(subsets, measure):
    ensemble, data = subsets
    estimator = Downsampling(DownsamplingConfig(n_models=8, measure=measure))
    estimator.fit({"subsets": ensemble}, data, Task())
    x, y = data.x_test[:6], data.y_test[:6]
    n_models = ensemble.n_models
    budget = 8 * (n_models * data.n_classes + n_models + data.n_train) * 4  # 4 targets a time
    blocks = list(estimator.influence(x, y, budget))
    assert {b.targets.stop - b.targets.start for b in blocks} == {4, 2}
    assert all(b.train.start >= 1 for b in blocks)  # example 0 has no estimate: no block
    matrix = estimator.influence_matrix(x, y, budget).numpy()

    module = ensemble.module()
    measured = []
    for k in range(n_models):
        logits = functional_call(module, {n: v[k] for n, v in ensemble.params.items()}, (x,))
        logits = logits.double()
        if measure == "accuracy":
            measured.append((logits.argmax(1) == y).double().numpy())
        elif measure == "margin":
            true = logits[torch.arange(len(y)), y]
            others = logits.clone()
            others[torch.arange(len(y)), y] = -torch.inf
            measured.append((true - others.max(1).values).numpy())
        else:
            measured.append(-F.cross_entropy(logits, y, reduction="none").numpy())
    measured = np.array(measured)  # [K, T]
    masks = ensemble.masks.numpy()
    unscored = masks.all(0) | (~masks).all(0)
    assert np.array_equal(np.isnan(matrix).all(1), unscored) and unscored[0]
    for i in np.flatnonzero(~unscored):
        expected = measured[masks[:, i]].mean(0) - measured[~masks[:, i]].mean(0)
        np.testing.assert_allclose(matrix[i], expected, rtol=1e-5, atol=1e-5)


# -- bad configs ----------------------------------------------------------------------------

_BASE = {
    "name": "t",
    "seed": 0,
    "datasets": [{"name": "digits", "n_samples": 300}],
    "archs": ["logreg"],
    "train": {"epochs": 2},
    "memorization": [],
}


def _influence(entry: dict) -> dict:
    return {**_BASE, "influence": [entry]}


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"method": "loo", "n_examples": 0}, "influence.0.loo.n_examples: Input should be greater"),
        ({"method": "loo", "repeats": 0}, "influence.0.loo.repeats: Input should be greater"),
        ({"method": "loo", "repeats": 1.5}, "influence.0.loo.repeats: Input should be a valid int"),
        ({"method": "loo", "n_examples": "9"}, "influence.0.loo.n_examples: Input should be"),
        ({"method": "loo", "seeds": 3}, "influence.0.loo.seeds: unknown key"),
        (
            {"method": "downsampling", "subset_fraction": 0.0},
            "influence.0.downsampling.subset_fraction: Input should be greater than 0",
        ),
        (
            {"method": "downsampling", "subset_fraction": 1.0},
            "influence.0.downsampling.subset_fraction: Input should be less than 1",
        ),
        (
            {"method": "downsampling", "measure": "loss"},
            "influence.0.downsampling.measure: Input should be",
        ),
        ({"method": "downsampling", "n_models": 1}, "downsampling.n_models: Input should be"),
    ],
)
def test_bad_configs_name_the_field(entry, message):
    with pytest.raises(ConfigError, match="^config error: ") as error:
        parse_config(_influence(entry))
    assert message in str(error.value) and "\n" not in str(error.value)


@settings(max_examples=30, deadline=None)
@given(
    key=st.sampled_from(["n_examples", "repeats"]),
    value=st.one_of(
        st.integers(max_value=0), st.booleans(), st.floats(), st.text(max_size=3), st.none()
    ),
)
def test_generated_bad_loo_counts_are_config_errors(key, value):
    if key == "n_examples" and value is None:  # None is allowed: every example
        parse_config(_influence({"method": "loo", key: value}))
        return
    with pytest.raises(ConfigError, match=rf"influence\.0\.loo\.{key}"):
        parse_config(_influence({"method": "loo", key: value}))


def test_good_configs_parse():
    study = parse_config(
        {
            **_BASE,
            "influence": [
                {"method": "loo", "n_examples": 200, "repeats": 3},
                {"method": "downsampling", "n_models": 64, "measure": "margin"},
            ],
        }
    )
    assert [type(c).__name__ for c in study.influence] == ["LooConfig", "DownsamplingConfig"]


# -- full-size checks -----------------------------------------------------------------------


@pytest.mark.slow
def test_loo_flags_flipped_labels_mlp_with_repeats():
    data = prepare("digits", seed=0, label_noise=0.1, n_samples=600)
    config = TrainConfig(epochs=30, batch_size=32, lr=0.05)
    loo = Loo(LooConfig(n_examples=150, repeats=2))
    specs = loo.ensembles(PlanContext(data.n_train, config.epochs, seed=5))
    scores = loo.fit(_train(specs, "mlp", data, config), data, Task()).self_influence()
    chosen = np.isfinite(scores.score)
    assert chosen.sum() == 150 and np.isfinite(scores.stderr[chosen]).all()
    flipped = data.is_mislabeled.numpy()[chosen]
    assert roc_auc_score(flipped, scores.score[chosen]) >= 0.9


@pytest.mark.slow
def test_loo_attribution_predicts_subset_models_on_a_convex_model(digits_small):
    # LDS (Park et al. 2023) of the exact leave-one-out attribution: models trained to
    # convergence on random halves, the target's margin against Σ_{i∈S_j} loo(i, t).
    data = digits_small
    config = TrainConfig(
        epochs=60, batch_size=data.n_train, lr=2.0, momentum=0.8, weight_decay=0.01
    )
    loo = Loo(LooConfig(repeats=1))
    specs = loo.ensembles(PlanContext(data.n_train, config.epochs, seed=0))
    loo.fit(_train(specs, "logreg", data, config), data, Task.from_train(config))
    x, y = data.x_test[:40], data.y_test[:40]
    attribution = loo.influence_matrix(x, y).numpy()
    masks = lds_masks(48, data.n_train, 0.5, seed=0)
    halves = train_ensemble(
        "logreg", data, torch.from_numpy(masks), config, seed=1, init="shared", order="shared"
    )
    measured = Task.measure(halves.logits(x).double(), y.expand(len(masks), -1), "margin")
    _, score = lds(attribution, masks, measured.numpy())
    assert score > 0.8  # measured 0.89
