"""Every influence method on digits + mlp: seconds, LDS and mislabel-detection AUC.

One MLP (two hidden layers of 128) is trained on sklearn digits with 10% of the training
labels flipped (symmetric noise); each method then declares the ensembles it reads
(:meth:`~mnemoscope.estimator.Estimator.ensembles`), which are trained once per distinct
trajectory with the ensemble engine, as the runner would. Per method:

- **seconds**: fit + self-influence of every training example + the train×target influence
  on the targets (the first ``--targets`` test examples); the training of the models it
  reads is shared between methods and reported separately;
- **LDS** (Park et al. 2023, eq. 5; :func:`~mnemoscope.analysis.influence_eval.lds`): J
  random half subsets (:func:`~mnemoscope.analysis.influence_eval.lds_masks`), R models
  trained on each with the same training config, the targets' margins averaged over the R;
  mean over targets of the Spearman correlation, CI by resampling targets;
- **mislabel AUC**: ROC AUC of the self-influence for the flipped labels, bootstrap CI.

``if_exact``, ``relatif`` and ``classification_influence`` need a dense P×P curvature,
refused above 10⁴ parameters (the MLP has 26,122), so they read the last layer (1,290);
``if_cg`` and ``if_lissa`` also read the last layer: over all parameters they took 156 s
and 570 s for the self-influence of only 240 training examples on this machine; LiSSA
runs 100 steps of 128 sampled examples (its default, 1000 steps of 256, is ~20× slower),
CG stops at a relative residual of 1e-3 (at its default 1e-6 it took 327 s here and gave
the LDS and AUC of ``if_exact`` to three decimals). ``loo`` is
restricted to ``--loo-examples`` examples left out (one replicate): its AUC is over those
examples only, and it has no LDS (the other rows of its influence are missing).

    OMP_NUM_THREADS=2 .venv/bin/python bench/influence_lds.py
"""

from __future__ import annotations

import argparse
import platform
import time
from collections.abc import Callable

import numpy as np
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

ARCH = "mlp"
N_BOOTSTRAP = 1000


def method_configs(loo_examples: int) -> dict[str, MethodConfig]:
    """The configuration of every registered attributor in this benchmark."""
    last = "last_layer"
    return {
        "tracin": inf.TracInConfig(),
        "grad_dot": inf.GradDotConfig(),
        "grad_cos": inf.GradCosConfig(),
        "trak": inf.TRAKConfig(),
        "if_exact": inf.IFExactConfig(params=last),
        "relatif": inf.RelatIFConfig(params=last),
        "classification_influence": inf.ClassificationInfluenceConfig(params=last),
        "if_cg": inf.IFConjugateGradientConfig(params=last, tolerance=1e-3),
        "if_lissa": inf.IFLissaConfig(params=last, depth=100, sample_size=128),
        "if_arnoldi": inf.IFArnoldiConfig(),
        "if_ekfac": inf.EKFACConfig(),
        "representer": inf.RepresenterConfig(),
        "knn_shapley": inf.KNNShapleyConfig(),
        "downsampling": inf.DownsamplingConfig(n_models=64, measure="margin"),
        "loo": inf.LooConfig(n_examples=loo_examples, repeats=1),
    }


def _timed(fn: Callable[[], object]) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def train_specs(
    specs: list[EnsembleSpec], data: Dataset, config: TrainConfig, seed: int, device: str
) -> tuple[dict[str, TrainedEnsemble], dict[str, float]]:
    """Each distinct trajectory trained once (checkpoints merged), with its seconds."""
    groups: dict[str, list[EnsembleSpec]] = {}
    for spec in specs:
        groups.setdefault(spec.trajectory, []).append(spec)
    trained, seconds = {}, {}
    for key, group in groups.items():
        spec = merge_specs(group)
        seconds[key], trained[key] = _timed(
            lambda spec=spec: train_ensemble(
                ARCH,
                data,
                spec.masks,
                config,
                seed=seed,
                checkpoint_epochs=spec.checkpoint_epochs,
                init=spec.init,
                order=spec.order,
                keep_initial=spec.keep_initial,
                device=device,
            )
        )
    return trained, seconds


def measured_margins(
    data: Dataset,
    config: TrainConfig,
    n_subsets: int,
    repeats: int,
    targets: int,
    seed: int,
    device: str,
) -> tuple[np.ndarray, np.ndarray, float]:
    """``([J, n] masks, [J, T] margins averaged over the R models of each subset, seconds)``."""
    masks = lds_masks(n_subsets, data.n_train, 0.5, seed=seed)
    rows = torch.from_numpy(np.repeat(masks, repeats, axis=0))
    seconds, models = _timed(
        lambda: train_ensemble(ARCH, data, rows, config, seed=seed, device=device)
    )
    x_t, y_t = data.x_test[:targets], data.y_test[:targets]
    margin = Task.measure(models.logits(x_t).cpu(), y_t.expand(len(rows), -1), "margin").double()
    return masks, margin.numpy().reshape(n_subsets, repeats, targets).mean(1), seconds


def _ci(values: tuple[float, float, float]) -> str:
    value, low, high = values
    return "—" if not np.isfinite(value) else f"{value:.3f} ({low:.3f}–{high:.3f})"


def _mean_ci(values: np.ndarray, seed: int = 0) -> tuple[float, float, float]:
    values = values[np.isfinite(values)]
    if values.size == 0:
        return (float("nan"),) * 3
    rng = np.random.default_rng(seed)
    boot = values[rng.integers(0, values.size, (N_BOOTSTRAP, values.size))].mean(1)
    low, high = np.percentile(boot, [2.5, 97.5])
    return float(values.mean()), float(low), float(high)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n-samples", type=int, default=None, help="digits pool (all: 1797)")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--subsets", type=int, default=64, help="J, LDS subsets")
    parser.add_argument("--repeats", type=int, default=2, help="R, models per LDS subset")
    parser.add_argument("--targets", type=int, default=100, help="test examples scored")
    parser.add_argument("--loo-examples", type=int, default=100)
    parser.add_argument("--methods", default="", help="comma-separated subset (default: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    data = prepare("digits", seed=args.seed, label_noise=0.1, n_samples=args.n_samples)
    # one chunk per ensemble: on a loaded CPU a step's cost hardly depends on the models in it
    config = TrainConfig(epochs=args.epochs, batch_size=32, lr=0.05, chunk_size=128)
    task = Task.from_train(config)
    configs = method_configs(args.loo_examples)
    missing = set(estimators("influence")) - set(configs)
    if missing:
        raise SystemExit(f"registered attributors without a benchmark config: {sorted(missing)}")
    chosen = [m for m in args.methods.split(",") if m] or list(configs)
    methods = {name: REGISTRY[name](configs[name]) for name in chosen}
    context = PlanContext(data.n_train, config.epochs, args.seed)
    declared = {name: m.ensembles(context) for name, m in methods.items()}

    # warm-up: the first training pays one-off costs (allocator, kernel selection)
    warm = config.model_copy(update={"epochs": 1})
    train_ensemble(ARCH, data, full_masks(1, data.n_train), warm, seed=0, device=args.device)
    trained, train_seconds = train_specs(
        [s for specs in declared.values() for s in specs.values()],
        data,
        config,
        args.seed,
        args.device,
    )
    masks, measured, lds_seconds = measured_margins(
        data, config, args.subsets, args.repeats, args.targets, args.seed + 1, args.device
    )
    x_t, y_t = data.x_test[: args.targets], data.y_test[: args.targets]
    flipped = data.is_mislabeled.numpy()

    rows = []
    for name, method in methods.items():
        ensembles = {role: trained[s.trajectory] for role, s in declared[name].items()}

        def run(method=method, ensembles=ensembles):
            method.fit(ensembles, data, task, args.device)
            return method.self_influence().score, method.influence_matrix(x_t, y_t).numpy()

        seconds, (own, matrix) = _timed(run)
        auc = mislabel_auc(own, flipped, n_bootstrap=N_BOOTSTRAP)
        per_target, _ = lds(matrix, masks, measured)
        models = sum(trained[s.trajectory].n_models for s in declared[name].values())
        shared = sum(train_seconds[s.trajectory] for s in declared[name].values())
        params = getattr(method.config, "params", "—")
        scored = np.isfinite(own)
        counts = f"{int(scored.sum())} ({int(flipped[scored].sum())})"
        rows.append((name, params, models, shared, seconds, _mean_ci(per_target), auc, counts))
        print(f"{name}: {seconds:.1f} s", flush=True)

    print()
    print(
        f"digits, {data.n_train} training examples ({int(flipped.sum())} flipped), "
        f"{len(y_t)} targets; {ARCH}, {config.epochs} epochs, batch {config.batch_size}, "
        f"lr {config.lr}, momentum {config.momentum}, weight decay {config.weight_decay}; "
        f"LDS: J = {args.subsets} subsets × R = {args.repeats} models, trained in "
        f"{lds_seconds:.1f} s; torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"device {args.device}, {platform.processor() or platform.machine()}"
    )
    print()
    print(
        "| method | params | models read | their training (s) | seconds | LDS | "
        "mislabel AUC | scored (flipped) |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for name, params, models, shared, seconds, lds_ci, auc, counts in rows:
        print(
            f"| `{name}` | {params} | {models} | {shared:.1f} | {seconds:.1f} | "
            f"{_ci(lds_ci)} | {_ci(auc)} | {counts} |"
        )


if __name__ == "__main__":
    main()
