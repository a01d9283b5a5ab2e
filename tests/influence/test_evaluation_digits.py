"""Influence estimators judged on digits as the issue's "How we will know" says: the linear
datamodeling score (LDS) of ``if_exact`` on a converged logistic regression against models
really retrained on random half subsets, a random attributor as the null, and the
mislabel-detection AUC of every registered attributor on an MLP with 10% flipped labels.

Default tests use a few hundred examples; ``-m slow`` runs the same checks on all of digits.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch

import mnemoscope.influence as inf
from mnemoscope.analysis.influence_eval import lds, lds_masks, mislabel_auc
from mnemoscope.data import Dataset, prepare
from mnemoscope.estimator import REGISTRY, MethodConfig, PlanContext, estimators
from mnemoscope.task import Task
from mnemoscope.train import (
    EnsembleSpec,
    TrainConfig,
    TrainedEnsemble,
    full_masks,
    merge_specs,
    train_ensemble,
)

# Full-batch SGD with momentum on the L2-regularised objective: strongly convex for logreg,
# so every subset model reaches its own optimum (the regime influence functions describe)
# whatever its initialisation, and one model per subset suffices (R = 1).
LOGREG_L2 = 0.01


def _logreg_config(n_train: int, epochs: int) -> TrainConfig:
    return TrainConfig(
        epochs=epochs, batch_size=n_train, lr=0.5, momentum=0.9, weight_decay=LOGREG_L2
    )


@dataclass
class LdsSetup:
    data: Dataset
    task: Task
    model: TrainedEnsemble
    masks: np.ndarray
    """``[J, n]`` the LDS subsets."""
    margins: np.ndarray
    """``[J, T]`` each target's margin under the model trained on subset j."""

    @property
    def targets(self) -> tuple[torch.Tensor, torch.Tensor]:
        n_targets = self.margins.shape[1]
        return self.data.x_test[:n_targets], self.data.y_test[:n_targets]


def _lds_setup(n_samples: int | None, epochs: int, n_subsets: int, n_targets: int) -> LdsSetup:
    data = prepare("digits", seed=0, label_noise=0.0, n_samples=n_samples)
    config = _logreg_config(data.n_train, epochs)
    model = train_ensemble("logreg", data, full_masks(1, data.n_train), config, seed=0)
    masks = lds_masks(n_subsets, data.n_train, 0.5, seed=0)
    subsets = train_ensemble("logreg", data, torch.from_numpy(masks), config, seed=1)
    x_t, y_t = data.x_test[:n_targets], data.y_test[:n_targets]
    margins = Task.measure(subsets.logits(x_t), y_t.expand(n_subsets, -1), "margin")
    return LdsSetup(data, Task.from_train(config), model, masks, margins.double().numpy())


def _objective_gradient_norm(setup: LdsSetup) -> float:
    module = setup.model.module()
    params = {k: v[0].clone().requires_grad_(True) for k, v in setup.model.params.items()}
    objective = setup.task.objective(module, params, setup.data.x_train, setup.data.y_train)
    grads = torch.autograd.grad(objective, list(params.values()))
    return float(torch.cat([g.flatten() for g in grads]).norm())


def _check_lds(setup: LdsSetup) -> tuple[float, float]:
    """LDS of ``if_exact`` and of a seeded random attribution on the same subsets."""
    # influence functions linearise around the optimum: the full model must be at it
    assert _objective_gradient_norm(setup) < 1e-3
    estimator = inf.IFExact(inf.IFExactConfig(damping=0.0))
    estimator.fit({"model": setup.model}, setup.data, setup.task)
    attribution = estimator.influence_matrix(*setup.targets).numpy()
    per_target, exact = lds(attribution, setup.masks, setup.margins)
    assert np.isfinite(per_target).all()
    random = np.random.default_rng(0).normal(size=attribution.shape)
    _, null = lds(random, setup.masks, setup.margins)
    print(f"\nif_exact LDS {exact:.3f}, random attribution LDS {null:.3f}")
    return exact, null


def test_lds_of_exact_influence_on_logreg_and_random_null():
    """Digits (400 training examples), logreg trained to convergence; J = 40 half subsets,
    100 targets. Measured: if_exact LDS 0.89 (damping 0 and 1e-3 alike; 0.87 with weight
    decay 1e-3), random attribution -0.008; ~6 s on one thread."""
    setup = _lds_setup(n_samples=500, epochs=200, n_subsets=40, n_targets=100)
    exact, null = _check_lds(setup)
    assert exact >= 0.6
    assert abs(null) < 0.05


@pytest.mark.slow
def test_lds_of_exact_influence_on_logreg_all_digits():
    """All of digits (1,437 training examples), J = 100 half subsets, 200 targets.
    Measured: if_exact LDS 0.892, random attribution -0.007; ~27 s on one thread."""
    setup = _lds_setup(n_samples=None, epochs=300, n_subsets=100, n_targets=200)
    exact, null = _check_lds(setup)
    assert exact >= 0.6
    assert abs(null) < 0.05


# --- mislabel detection on an MLP with 10% flipped labels -------------------------------

MLP_TRAINING = TrainConfig(epochs=20, batch_size=32, lr=0.05)


def _attributor_configs(quick: bool) -> dict[str, MethodConfig]:
    """Every registered attributor but ``loo``. The dense-curvature methods read the last
    layer (the MLP's 26,122 parameters are over if_exact's 10⁴ limit), as do CG and LiSSA:
    over all parameters they took 156 s and 570 s on 240 examples. CG stops at a residual
    of 1e-3 (at 1e-6 it took 327 s on all of digits for the same AUC and LDS as
    ``if_exact``). ``quick`` (default tests) shortens LiSSA and TRAK; their AUCs moved by
    at most 0.002."""
    last = "last_layer"
    return {
        "tracin": inf.TracInConfig(),
        "grad_dot": inf.GradDotConfig(),
        "grad_cos": inf.GradCosConfig(),
        "trak": inf.TRAKConfig(n_models=5, proj_dim=256) if quick else inf.TRAKConfig(),
        "if_exact": inf.IFExactConfig(params=last),
        "relatif": inf.RelatIFConfig(params=last),
        "classification_influence": inf.ClassificationInfluenceConfig(params=last),
        "if_cg": inf.IFConjugateGradientConfig(params=last, tolerance=1e-3),
        "if_lissa": inf.IFLissaConfig(
            params=last, depth=50 if quick else 100, sample_size=64 if quick else 128
        ),
        "if_arnoldi": inf.IFArnoldiConfig(),
        "if_ekfac": inf.EKFACConfig(),
        "representer": inf.RepresenterConfig(),
        "knn_shapley": inf.KNNShapleyConfig(),
        "downsampling": inf.DownsamplingConfig(n_models=32, measure="margin"),
    }


def _mislabel_aucs(data: Dataset, quick: bool) -> dict[str, tuple[float, float, float]]:
    """Self-influence AUC of each attributor for the flipped labels, every ensemble an
    attributor declares trained once with the engine (as the runner does)."""
    configs = _attributor_configs(quick)
    # loo is left out: its few left-out examples hold too few flipped labels for an AUC
    assert set(estimators("influence")) - set(configs) == {"loo"}
    context = PlanContext(data.n_train, MLP_TRAINING.epochs, seed=0)
    methods = {name: REGISTRY[name](config) for name, config in configs.items()}
    declared = {name: m.ensembles(context) for name, m in methods.items()}
    groups: dict[str, list[EnsembleSpec]] = {}
    for specs in declared.values():
        for spec in specs.values():
            groups.setdefault(spec.trajectory, []).append(spec)
    trained = {}
    for key, group in groups.items():
        spec = merge_specs(group)
        trained[key] = train_ensemble(
            "mlp",
            data,
            spec.masks,
            MLP_TRAINING,
            seed=0,
            checkpoint_epochs=spec.checkpoint_epochs,
            init=spec.init,
            order=spec.order,
            keep_initial=spec.keep_initial,
        )
    task = Task.from_train(MLP_TRAINING)
    flipped = data.is_mislabeled.numpy()
    aucs = {}
    for name, method in methods.items():
        ensembles = {role: trained[spec.trajectory] for role, spec in declared[name].items()}
        own = method.fit(ensembles, data, task).self_influence().score
        aucs[name] = mislabel_auc(own, flipped, n_bootstrap=200)
    print("\nmislabel AUC (95% CI):")
    for name, (auc, low, high) in sorted(aucs.items(), key=lambda item: -item[1][0]):
        print(f"  {name:26s} {auc:.3f} ({low:.3f}-{high:.3f})")
    return aucs


def _check_mislabel(aucs: dict[str, tuple[float, float, float]]) -> None:
    assert aucs["trak"][0] >= 0.9
    assert aucs["tracin"][0] >= 0.9
    # every attributor ranks flipped labels above chance: a reversed sign would give < 0.4
    assert all(auc > 0.6 for auc, _, _ in aucs.values()), aucs


def test_mislabel_auc_of_every_attributor_on_mlp(digits_small):
    """Digits, 240 training examples with 24 flipped labels, one MLP (20 epochs). Measured
    AUC: trak 0.975, representer 0.974, tracin 0.971, downsampling (32 subset models,
    margin) ~0.96, knn_shapley 0.954, grad_dot 0.938, if_exact / relatif /
    classification_influence / if_cg / if_lissa (last layer) / if_arnoldi / if_ekfac
    0.93-0.94, grad_cos 0.926."""
    _check_mislabel(_mislabel_aucs(digits_small, quick=True))


@pytest.mark.slow
def test_mislabel_auc_of_every_attributor_on_mlp_all_digits():
    """All of digits, 1,437 training examples with 144 flipped labels. Measured AUC: every
    attributor 0.985-0.999 (knn_shapley 0.999, trak 0.998, tracin 0.993, grad_dot 0.985;
    the table in BENCHMARKS.md); ~145 s on one thread."""
    _check_mislabel(_mislabel_aucs(prepare("digits", seed=0, label_noise=0.1), quick=False))
