"""LiRA and the loss attack: the formulas, leave-one-model-out, no invented membership,
and planted flipped labels (with FZ and counterfactual on the same ensemble)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from pydantic import ValidationError
from scipy import stats
from sklearn.metrics import roc_auc_score

from mnemoscope.data import prepare
from mnemoscope.estimator import PlanContext
from mnemoscope.memorization import (
    Counterfactual,
    CounterfactualConfig,
    FeldmanZhang,
    FeldmanZhangConfig,
    Lira,
    LiraConfig,
    LossAttack,
    LossAttackConfig,
)
from mnemoscope.memorization.attacks import (
    attack_metrics,
    fit_gaussians,
    leave_one_model_out,
    lira_statistic,
    logit_confidence,
)
from mnemoscope.runner.plan import ensemble_specs
from mnemoscope.task import Task
from mnemoscope.train import TrainConfig, subset_masks, train_ensemble

TRAIN = TrainConfig(epochs=60, batch_size=64, lr=0.1, momentum=0.9, weight_decay=5e-4)


def test_logit_confidence_is_log_odds_of_the_label():
    logits = torch.randn(5, 7, 4, generator=torch.Generator().manual_seed(0)) * 5
    labels = torch.randint(0, 4, (5, 7), generator=torch.Generator().manual_seed(1))
    p = torch.softmax(logits.double(), -1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    np.testing.assert_allclose(logit_confidence(logits, labels), torch.log(p / (1 - p)), rtol=1e-9)
    # stable where p rounds to 1 in float64: no inf
    confident = torch.tensor([[[200.0, 0.0]]])
    assert logit_confidence(confident, torch.tensor([[0]])).item() == pytest.approx(200.0)


def test_leave_one_model_out_equals_refitting_without_each_model():
    g = torch.Generator().manual_seed(3)
    phi = torch.randn(9, 30, generator=g, dtype=torch.float64)
    masks = torch.rand(9, 30, generator=g) < 0.5
    for global_variance in (False, True):
        lomo = leave_one_model_out(phi, masks, global_variance)
        for k in range(9):
            keep = torch.arange(9) != k
            direct = fit_gaussians(phi[keep], masks[keep], global_variance)
            for field in ("mean_in", "std_in", "mean_out", "std_out"):
                np.testing.assert_allclose(
                    getattr(lomo, field)[k], getattr(direct, field), rtol=1e-9, atol=1e-12
                )


def test_statistics_are_the_gaussian_formulas():
    g = torch.Generator().manual_seed(4)
    phi = torch.randn(12, 20, generator=g, dtype=torch.float64)
    masks = torch.rand(12, 20, generator=g) < 0.5
    fitted = fit_gaussians(phi, masks, global_variance=False)
    i = 0
    inside, outside = phi[masks[:, i], i].numpy(), phi[~masks[:, i], i].numpy()
    assert fitted.mean_in[i] == pytest.approx(inside.mean())
    assert fitted.std_in[i] == pytest.approx(inside.std(ddof=1))
    x = phi[:, i]
    online = lira_statistic(x, _at(fitted, i), "online").numpy()
    expected = stats.norm.logpdf(x, inside.mean(), inside.std(ddof=1)) - stats.norm.logpdf(
        x, outside.mean(), outside.std(ddof=1)
    )
    np.testing.assert_allclose(online, expected, rtol=1e-9)
    offline = lira_statistic(x, _at(fitted, i), "offline").numpy()
    np.testing.assert_allclose(
        offline, -stats.norm.logsf(x, outside.mean(), outside.std(ddof=1)), rtol=1e-9
    )


def _at(fitted, i):
    return type(fitted)(*(getattr(fitted, f)[i] for f in fitted.__dataclass_fields__))


def test_tpr_at_low_fpr_on_a_hand_case():
    # 1000 non-members at 0..999, members: 5 above every non-member, 5 below
    statistic = np.r_[np.arange(1000), [2000] * 5, [-1] * 5].astype(float)
    member = np.r_[np.zeros(1000, bool), np.ones(10, bool)]
    metrics = attack_metrics(statistic, member)
    assert metrics.tpr_at_0_1pct_fpr == 0.5  # threshold above 999 keeps FPR 0
    assert metrics.tpr_at_1pct_fpr == 0.5  # 10 false positives buy no member
    assert metrics.auc == pytest.approx(roc_auc_score(member, statistic))


def test_bad_configs_are_refused():
    with pytest.raises(ValidationError, match="n_models"):
        LiraConfig(n_models=3)
    with pytest.raises(ValidationError, match="subset_fraction"):
        LiraConfig(subset_fraction=1.0)
    with pytest.raises(ValidationError, match="variant"):
        LiraConfig(variant="shadow")
    with pytest.raises(ValidationError, match="n_models"):
        LossAttackConfig(n_models=1)


def test_shares_the_ensemble_of_feldman_zhang_and_counterfactual():
    context = PlanContext(n_train=200, epochs=5, seed=0)
    same = [
        FeldmanZhang(FeldmanZhangConfig(n_models=16, subset_fraction=0.5)),
        Counterfactual(CounterfactualConfig(n_models=16)),
        Lira(LiraConfig(n_models=16)),
        LossAttack(LossAttackConfig(n_models=16)),
    ]
    assert len(ensemble_specs(same, context)[0]) == 1
    other = [same[0], Lira(LiraConfig(n_models=16, subset_fraction=0.3))]
    assert len(ensemble_specs(other, context)[0]) == 2  # another fraction: another ensemble


@pytest.fixture(scope="module")
def digits_flipped():
    return prepare("digits", seed=0, label_noise=0.1, n_samples=600)


@pytest.mark.parametrize("arch", ["mlp", "cnn"])
def test_flipped_labels_detected_and_lira_beats_the_loss_attack(digits_flipped, arch):
    """CI-sized: K = 16 halves of 480 digits, 10% flipped: FZ, counterfactual and LiRA's
    d each find the flipped labels with AUC ≥ 0.95; LiRA's TPR at 1% FPR beats the loss
    attack's."""
    data, k = digits_flipped, 16
    masks = subset_masks(k, data.n_train, 0.5, 1)
    trained = train_ensemble(arch, data, masks, TRAIN, seed=2)
    flipped = data.is_mislabeled.numpy()
    estimators = {
        "feldman_zhang": FeldmanZhang(FeldmanZhangConfig(n_models=k, subset_fraction=0.5)),
        "counterfactual": Counterfactual(CounterfactualConfig(n_models=k)),
        "lira": Lira(LiraConfig(n_models=k)),
        "loss_attack": LossAttack(LossAttackConfig(n_models=k)),
    }
    fitted = {
        name: e.fit({"subsets": trained}, data, Task(TRAIN.weight_decay))
        for name, e in estimators.items()
    }
    for name in ("feldman_zhang", "counterfactual", "lira"):
        scores = fitted[name].score().score
        finite = np.isfinite(scores)
        assert roc_auc_score(flipped[finite], scores[finite]) >= 0.95, name
    lira = fitted["lira"].table_rows("attacks").set_index("variant")
    loss = fitted["loss_attack"].table_rows("attacks").iloc[0]
    assert (lira["n_models"] == k).all() and loss["n_models"] == k
    assert lira.loc["online", "tpr_at_1pct_fpr"] > loss["tpr_at_1pct_fpr"]
    assert lira.loc["online", "auc"] > 0.6  # members are recognised


def test_random_members_of_models_trained_on_everything_are_not_recognised():
    """Models trained on all of a clean set, with 'members' drawn at random afterwards:
    every attack must score AUC 0.5 ± 0.05 (it must not invent membership)."""
    data = prepare("digits", seed=1, label_noise=0.0, n_samples=400)
    k = 12
    everything = torch.ones(k, data.n_train, dtype=torch.bool)
    train = TrainConfig(epochs=15, batch_size=64, lr=0.1, momentum=0.9)
    trained = train_ensemble("mlp", data, everything, train, seed=3)
    trained.masks = subset_masks(k, data.n_train, 0.5, 9)  # members by coin flips
    for estimator in (Lira(LiraConfig(n_models=k)), LossAttack(LossAttackConfig(n_models=k))):
        rows = estimator.fit({"subsets": trained}, data, Task()).table_rows("attacks")
        for auc in rows["auc"]:
            assert abs(auc - 0.5) <= 0.05, (estimator.name, auc)


def test_roc_on_the_grid_is_the_best_tpr_below_each_fpr():
    from mnemoscope.memorization.attacks import roc_on_grid

    rng = np.random.default_rng(0)
    member = rng.random(2000) < 0.5
    statistic = rng.normal(size=2000) + member
    grid = (0.001, 0.01, 0.1, 0.5, 1.0)
    tpr = roc_on_grid(statistic, member, grid)
    for alpha, value in zip(grid, tpr, strict=True):  # brute force over every threshold
        best = max(
            (statistic[member] >= t).mean()
            for t in statistic
            if (statistic[~member] >= t).mean() <= alpha
        )
        assert value == best, alpha
    assert np.isnan(roc_on_grid(statistic, np.ones(2000, bool), grid)).all()


def test_a_study_writes_the_attacks_table(tmp_path):
    from mnemoscope.config import parse_config
    from mnemoscope.memorization.attacks import ROC_FPRS
    from mnemoscope.runner import run_study
    from mnemoscope.store import ATTACK_ROC, ATTACKS

    config = {
        "name": "attacks",
        "datasets": [{"name": "digits", "label_noise": 0.1, "n_samples": 200}],
        "archs": ["logreg"],
        "train": {"epochs": 3, "batch_size": 64, "lr": 0.1},
        "memorization": [
            {"method": "lira", "n_models": 4, "variant": "online"},
            {"method": "loss_attack", "n_models": 4},
        ],
        "analysis": {"n_bootstrap": 20},
    }
    run_study(parse_config(config), tmp_path)
    attacks = pd.read_parquet(tmp_path / "attacks.parquet")
    assert list(attacks.columns) == ATTACKS.names
    assert sorted(zip(attacks["method"], attacks["variant"])) == [
        ("lira", "online"),
        ("loss_attack", "loss"),
    ]
    assert (attacks["n_models"] == 4).all() and attacks["auc"].between(0, 1).all()
    assert (attacks["dataset"] == "digits").all() and (attacks["arch"] == "logreg").all()
    # each attack's ROC curve on the log grid passes through the attacks table's points
    curves = pd.read_parquet(tmp_path / "attack_roc.parquet")
    assert list(curves.columns) == ATTACK_ROC.names
    for row in attacks.itertuples():
        curve = curves[(curves.method == row.method) & (curves.variant == row.variant)]
        assert len(curve) == len(ROC_FPRS) and (np.diff(curve["tpr"].to_numpy()) >= 0).all()
        at = curve.set_index("fpr")["tpr"]
        assert at[ROC_FPRS[10]] == row.tpr_at_0_1pct_fpr  # 1e-3
        assert at[ROC_FPRS[20]] == row.tpr_at_1pct_fpr  # 1e-2
        assert at[1.0] == 1.0
    assert len(list((tmp_path / "models").glob("*.safetensors"))) == 1  # one shared ensemble
    report = (tmp_path / "report.html").read_text()
    assert "Membership inference" in report and "loss_attack" in report
    assert "digits / logreg: " in report and "separates the flipped labels best" in report


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"method": "lira", "variant": "shadow"}, "memorization.0.lira.variant"),
        ({"method": "lira", "n_models": 1}, "memorization.0.lira.n_models"),
        (
            {"method": "loss_attack", "subset_fraction": 1.5},
            "memorization.0.loss_attack.subset_fraction",
        ),
        ({"method": "lira", "global_variance": "yes"}, "memorization.0.lira.global_variance"),
    ],
)
def test_bad_attack_entries_are_one_line_config_errors(entry, message):
    from mnemoscope.config import parse_config
    from mnemoscope.errors import ConfigError

    config = {"datasets": [{"name": "digits"}], "archs": ["mlp"], "memorization": [entry]}
    with pytest.raises(ConfigError, match=message) as error:
        parse_config(config)
    assert "\n" not in str(error.value)
