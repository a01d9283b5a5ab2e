"""`train: {precision: bfloat16}`: bf16 compute on fp32 master weights, against fp32 on
the same masks and seeds (parameters, records, Feldman–Zhang scores, flipped-label AUCs)."""

from __future__ import annotations

import warnings

import numpy as np
import pydantic
import pytest
import torch
from scipy import stats

from mnemoscope.analysis.detection import detection_auc
from mnemoscope.data import prepare
from mnemoscope.memorization.feldman_zhang import FeldmanZhang
from mnemoscope.subsets import FeldmanZhangConfig
from mnemoscope.task import Task
from mnemoscope.train import TrainConfig, subset_masks, train_ensemble

# on a CPU without bf16 units every bf16 run warns (the last test checks that warning)
pytestmark = pytest.mark.filterwarnings("ignore:train.precision. bfloat16:RuntimeWarning")


def _pair(dataset, masks, config: TrainConfig, arch: str = "mlp"):
    fp32 = train_ensemble(arch, dataset, masks, config, seed=1, keep_initial=True)
    bf16 = train_ensemble(
        arch,
        dataset,
        masks,
        config.model_copy(update={"precision": "bfloat16"}),
        seed=1,
        keep_initial=True,
    )
    return fp32, bf16


def test_precision_is_validated_and_keys_only_when_not_float32():
    assert "precision" not in TrainConfig().model_dump()  # cache keys of older configs stay
    assert TrainConfig(precision="bfloat16").model_dump()["precision"] == "bfloat16"
    with pytest.raises(pydantic.ValidationError):
        TrainConfig(precision="float16")
    with pytest.raises(pydantic.ValidationError, match="DP-SGD trains in float32"):
        TrainConfig(precision="bfloat16", dp={"noise_multiplier": 1.0})


@pytest.mark.parametrize("arch", ["mlp", "cnn"])
def test_bfloat16_trains_with_fp32_masters_close_to_fp32(digits_small, arch):
    config = TrainConfig(epochs=4, batch_size=32, lr=0.05)
    masks = subset_masks(3, digits_small.n_train, 0.7, 0)
    fp32, bf16 = _pair(digits_small, masks, config, arch)
    assert all(value.dtype == torch.float32 for value in bf16.params.values())  # masters

    # bf16 rounds each product to 8 bits of mantissa: the weights differ, by little next
    # to how far training moved them (the same start: epoch 0 is fp32 in both)
    def flat(params):
        return torch.cat([v.flatten() for v in params.values()])

    start = flat(fp32.checkpoints[0].params)
    assert torch.equal(start, flat(bf16.checkpoints[0].params))
    gap = float((flat(bf16.params) - flat(fp32.params)).norm())
    travel = float((flat(fp32.params) - start).norm())
    assert 0 < gap < 0.25 * travel, (gap, travel)
    assert bf16.train_logits.dtype == torch.float32
    seen = masks[:, None, :].expand_as(bf16.train_loss)
    assert not bf16.train_loss[seen].isnan().any()
    # it trains, as much as fp32 does
    drop = {
        name: float((e.train_loss[:, 0][masks] - e.train_loss[:, -1][masks]).mean())
        for name, e in (("fp32", fp32), ("bf16", bf16))
    }
    assert drop["fp32"] > 0.1 and abs(drop["bf16"] - drop["fp32"]) < 0.2 * drop["fp32"], drop
    loss_gap = float((bf16.train_loss[seen] - fp32.train_loss[seen]).abs().mean())
    assert loss_gap < 0.05, loss_gap  # per presentation, mean over all of them
    # the final predictions mostly agree with fp32's (the small cnn is still near its
    # decision boundaries after 4 epochs: ~0.9; unrelated models agree ~0.1–0.5)
    agree = (bf16.train_logits.argmax(-1) == fp32.train_logits.argmax(-1)).double().mean()
    assert agree > 0.85, float(agree)


def _auc_interval(scores: np.ndarray, flipped: np.ndarray, seed: int = 0) -> tuple[float, float]:
    """95% percentile bootstrap interval of the flipped-label detection AUC."""
    rng = np.random.default_rng(seed)
    aucs = []
    for _ in range(400):
        i = rng.integers(0, len(scores), len(scores))
        aucs.append(detection_auc(scores[i], flipped[i]))
    return tuple(np.nanpercentile(aucs, [2.5, 97.5]))


def _fz(ensemble, dataset) -> np.ndarray:
    estimator = FeldmanZhang(FeldmanZhangConfig(n_models=ensemble.n_models))
    return estimator.fit({"subsets": ensemble}, dataset, Task()).score().score


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    kept = np.isfinite(a) & np.isfinite(b)
    return float(stats.spearmanr(a[kept], b[kept]).statistic)


@pytest.mark.slow
def test_bfloat16_feldman_zhang_scores_match_fp32():
    """64 mlps on 70% subsets of all of digits (10% flipped labels), trained until they
    fit the flipped labels (Adam, 40 epochs): the bf16 run's FZ scores rank the examples
    as the fp32 run's do, no worse than a second fp32 run with another training seed
    (another init and data order: the noise of the estimate itself), and detect the
    flipped labels as well (each AUC in the other's 95% bootstrap interval)."""
    dataset = prepare("digits", seed=0, label_noise=0.1)
    config = TrainConfig(epochs=40, batch_size=128, optimizer="adam", lr=0.01, weight_decay=0.0)
    masks = subset_masks(64, dataset.n_train, 0.7, 0)
    fp32, bf16 = (_fz(e, dataset) for e in _pair(dataset, masks, config))
    reseeded = _fz(train_ensemble("mlp", dataset, masks, config, seed=2), dataset)
    rho, rho_seeds = _spearman(fp32, bf16), _spearman(fp32, reseeded)
    print(f"Spearman fp32~bf16 {rho:.3f}, fp32~fp32 (other seed) {rho_seeds:.3f}")
    assert rho > 0.8 and rho >= rho_seeds - 0.02, (rho, rho_seeds)
    flipped = dataset.is_mislabeled.numpy()
    auc = {name: detection_auc(s, flipped) for name, s in (("fp32", fp32), ("bf16", bf16))}
    print(f"flipped-label AUC {auc}")
    assert auc["fp32"] > 0.9  # the models memorize: the comparison means something
    low, high = _auc_interval(fp32, flipped)
    assert low <= auc["bf16"] <= high, (auc, low, high)
    low, high = _auc_interval(bf16, flipped)
    assert low <= auc["fp32"] <= high, (auc, low, high)


@pytest.mark.parametrize(
    ("avx512_bf16", "amx", "warns"),
    [(False, False, True), (True, False, False), (False, True, False)],
)
def test_bf16_on_a_cpu_without_bf16_units_warns_that_it_is_emulated(
    monkeypatch, avx512_bf16, amx, warns
):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    dataset = prepare("digits", seed=0, n_samples=60)
    masks = subset_masks(2, dataset.n_train, 0.5, seed=0)
    config = TrainConfig(epochs=1, batch_size=16, precision="bfloat16")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train_ensemble("logreg", dataset, masks, config, seed=0)
        train_ensemble("logreg", dataset, masks, TrainConfig(epochs=1, batch_size=16), seed=0)
    emulated = [w for w in caught if "emulates bf16" in str(w.message)]
    assert len(emulated) == int(warns)  # once, for the bf16 run only
    if warns:
        assert emulated[0].category is RuntimeWarning
        assert emulated[0].filename == __file__  # points at the caller's line


def test_a_run_says_once_that_bf16_is_emulated_and_its_stages_stay_quiet(monkeypatch, tmp_path):
    import mnemoscope as ms

    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    config = {
        "name": "bf16",
        "seed": 0,
        "datasets": [{"name": "digits", "n_samples": 60}],
        "archs": ["logreg", "mlp"],
        "train": {"epochs": 1, "batch_size": 16},
        "arch_train": {"mlp": {"precision": "bfloat16"}},
        "memorization": [{"method": "margin"}],
    }
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        results = ms.run(config, tmp_path / "run")
    assert not [w for w in caught if "emulates bf16" in str(w.message)]
    emulated = [w for w in results.warnings if "emulates bf16" in w]
    assert len(emulated) == 1 and emulated[0].startswith("mlp: train.precision")
