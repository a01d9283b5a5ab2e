"""Row ``ekfac``: mnemoscope's ``if_ekfac`` against Kronfluence 1.0.1's EK-FAC on the same
digits mlp: fit + self-influence of every training example + train×target influence on
100 test targets, empirical Fisher (Kronfluence's ``use_empirical_fisher``), one thread.

Scale and damping: Kronfluence scores ``∇ℓ(z)ᵀ (F + λ_K)⁻¹ ∇ℓ(z_i)`` with summed losses and
no L2 term; ours divides by n and adds the objective's L2 coefficient to the damping, so
with ``λ_K = λ + l2`` Kronfluence's scores are ours × n.

    .venv/bin/python bench/peers.py --rows ekfac --repeats 5
"""

from __future__ import annotations

import tempfile
import time

import numpy as np
import peerlib
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import TensorDataset

from mnemoscope.data import prepare
from mnemoscope.influence import EKFAC, EKFACConfig
from mnemoscope.task import Task
from mnemoscope.train import TrainConfig, full_masks, train_ensemble

DAMPING = 1e-3
N_TARGETS = 100


def _digits_mlp(device: str):
    data = prepare("digits", seed=0)
    config = TrainConfig(epochs=20)
    model = train_ensemble("mlp", data, full_masks(1, data.n_train), config, seed=0, device=device)
    return data, model, Task.from_train(config)


def ours(data, model, task, device: str, sections: dict[str, float] | None = None):
    """Fit, self-influence and the ``[n, 100]`` influence matrix; ``sections`` records
    the seconds of each."""
    start = time.perf_counter()
    estimator = EKFAC(EKFACConfig(damping=DAMPING, fisher="empirical")).fit(
        {"model": model}, data, task, device
    )
    fitted = time.perf_counter()
    self_scores = estimator.self_influence().score
    scored = time.perf_counter()
    x, y = data.x_test[:N_TARGETS], data.y_test[:N_TARGETS]
    matrix = estimator.influence_matrix(x, y).numpy()
    if sections is not None:
        end = time.perf_counter()
        sections.update(fit=fitted - start, self=scored - fitted, pairwise=end - scored)
    return self_scores, matrix


class _ClassificationTask:
    """Kronfluence's task: summed cross-entropy (training labels: empirical Fisher)."""

    def __new__(cls):
        from kronfluence.task import Task as KronfluenceTask

        class Classification(KronfluenceTask):
            def compute_train_loss(self, batch, model, sample=False):
                x, y = batch
                return F.cross_entropy(model(x), y, reduction="sum")

            def compute_measurement(self, batch, model):
                x, y = batch
                return F.cross_entropy(model(x), y, reduction="sum")

        return Classification()


def theirs(data, model, task, device: str):
    from kronfluence.analyzer import Analyzer, prepare_model
    from kronfluence.arguments import FactorArguments, ScoreArguments

    module: nn.Module = model.module()
    module.load_state_dict({k: v[0] for k, v in model.params.items()})
    kron_task = _ClassificationTask()
    module = prepare_model(module.eval().to(device), kron_task)
    train = TensorDataset(data.x_train, data.y_train)
    targets = TensorDataset(data.x_test[:N_TARGETS], data.y_test[:N_TARGETS])
    with tempfile.TemporaryDirectory() as out:
        analyzer = Analyzer(
            "digits_mlp", module, kron_task, cpu=device == "cpu", disable_tqdm=True, output_dir=out
        )
        factor_args = FactorArguments(strategy="ekfac", use_empirical_fisher=True)
        analyzer.fit_all_factors("ekfac", train, per_device_batch_size=512, factor_args=factor_args)
        score_args = ScoreArguments(damping_factor=DAMPING + task.l2)
        analyzer.compute_self_scores(
            "self", "ekfac", train, per_device_train_batch_size=512, score_args=score_args
        )
        analyzer.compute_pairwise_scores(
            "pairwise",
            "ekfac",
            targets,
            train,
            per_device_query_batch_size=N_TARGETS,
            per_device_train_batch_size=512,
            score_args=score_args,
        )
        self_scores = analyzer.load_self_scores("self")["all_modules"].double().cpu().numpy()
        pairwise = analyzer.load_pairwise_scores("pairwise")["all_modules"]
    return self_scores, pairwise.double().cpu().numpy().T


def run(repeats: int, device: str) -> list[dict]:
    torch.set_num_threads(1)
    data, model, task = _digits_mlp(device)
    n = data.n_train
    agree_pairs, agreement = peerlib.influence_agreement(
        ours(data, model, task, device), theirs(data, model, task, device), n
    )
    sections: dict[str, list[float]] = {"fit": [], "self": [], "pairwise": []}

    def timed_ours():
        seconds: dict[str, float] = {}
        ours(data, model, task, device, seconds)
        for key, value in seconds.items():
            sections[key].append(value)

    times = peerlib.interleaved(
        {"peer": lambda: theirs(data, model, task, device), "ours": timed_ours}, repeats
    )
    medians = {k: float(np.median(v[1:] if len(v) > 1 else v)) for k, v in sections.items()}
    return [
        {
            "peer": "Kronfluence 1.0.1",
            "method": f"if_ekfac, digits mlp, empirical Fisher, fit + self + {N_TARGETS} targets",
            "agreement": agreement,
            "target": 2.0,
            "notes": (
                f"n {n}; damping theirs = ours + l2 ({DAMPING:g} + {task.l2:g}); ours: fit "
                f"{medians['fit']:.2f} s, self {medians['self']:.2f} s, pairwise "
                f"{medians['pairwise']:.2f} s"
            ),
            **peerlib.ratio(times["peer"], times["ours"]),
            **agree_pairs,
        }
    ]
