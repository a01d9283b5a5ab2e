"""``trak`` against traker 0.3.2 with its CPU ``BasicProjector``, digits mlp, 10 models,
k = 512, on the same checkpoints.

Both sides score the same 100 test targets against every training example of the same
ten trained mlps (loaded into an independent ``nn.Module`` for traker): fit (projected
log-odds gradients of the training set and the ``k×k`` kernels) plus the train×target
scores. traker's scale per model is arbitrary (its own projection normalisation and no
damping by default), so agreement is Spearman/Pearson, and the max relative difference
after one least-squares scale; beside it, ours against ours with another projection seed
(the noise floor of a k = 512 projection). Both are also scored by the LDS (Park et al.
2023, eq. 5) against the same retrained half subsets
(:func:`influence_lds.measured_margins`), with the factored projection of the
layer-wise gradients (``projection_structure: factored``, LoGra) beside the dense one.
"""

from __future__ import annotations

import tempfile

import numpy as np
import peerlib
import torch
from influence_lds import ARCH, measured_margins

from mnemoscope.analysis.influence_eval import lds
from mnemoscope.data import prepare
from mnemoscope.influence import TRAK, TRAKConfig
from mnemoscope.task import Task
from mnemoscope.train import TrainConfig, full_masks, train_ensemble

N_MODELS, PROJ_DIM, TARGETS, BATCH = 10, 512, 100, 256
LDS_SUBSETS, LDS_REPEATS = 64, 2


def _traker_scores(models, data, x_t, y_t, device: str) -> np.ndarray:
    """traker's ``[n_train, T]`` scores over the M models, in a fresh save directory."""
    from trak import TRAKer
    from trak.projectors import BasicProjector, ProjectionType

    module = models.module().to(device)
    grad_dim = sum(p.numel() for p in module.parameters())
    states = [{k: v[m].to(device) for k, v in models.params.items()} for m in range(N_MODELS)]
    with tempfile.TemporaryDirectory() as save_dir:
        projector = BasicProjector(
            grad_dim, PROJ_DIM, 0, ProjectionType.rademacher, device, dtype=torch.float32
        )
        traker = TRAKer(
            model=module,
            task="image_classification",
            train_set_size=data.n_train,
            save_dir=save_dir,
            device=device,
            projector=projector,
            proj_dim=PROJ_DIM,
            use_half_precision=False,
            logging_level=40,
        )
        for m, state in enumerate(states):
            traker.load_checkpoint(state, model_id=m)
            for xb, yb in zip(data.x_train.split(BATCH), data.y_train.split(BATCH)):
                traker.featurize(batch=(xb.to(device), yb.to(device)), num_samples=len(yb))
        traker.finalize_features()
        for m, state in enumerate(states):
            traker.start_scoring_checkpoint("targets", state, model_id=m, num_targets=len(y_t))
            for xb, yb in zip(x_t.split(BATCH), y_t.split(BATCH)):
                traker.score(batch=(xb.to(device), yb.to(device)), num_samples=len(yb))
        return np.array(traker.finalize_scores("targets"), dtype=np.float64)


def _agreement(ours: np.ndarray, peer: np.ndarray) -> dict[str, float]:
    """Correlations, and the max relative difference after one least-squares scale."""
    scale = float((ours * peer).sum() / (ours * ours).sum())
    return peerlib.agreement(ours * scale, peer)


def run(repeats: int, device: str) -> list[dict]:
    data = prepare("digits", seed=0, label_noise=0.1)
    config = TrainConfig(epochs=20, batch_size=32, lr=0.05, chunk_size=128)
    task = Task.from_train(config)
    models = train_ensemble(
        ARCH, data, full_masks(N_MODELS, data.n_train), config, seed=0, device=device
    )
    masks, measured, _ = measured_margins(
        data, config, LDS_SUBSETS, LDS_REPEATS, TARGETS, 1, device
    )
    x_t, y_t = data.x_test[:TARGETS], data.y_test[:TARGETS]

    def ours(structure: str = "dense", seed: int = 0):
        method = TRAK(TRAKConfig(projection_structure=structure, seed=seed, batch_size=BATCH))
        method.fit({"models": models}, data, task, device)
        return method.influence_matrix(x_t, y_t).numpy()

    out: dict[str, np.ndarray] = {}
    sides = {
        "traker": lambda: out.__setitem__("traker", _traker_scores(models, data, x_t, y_t, device)),
        "dense": lambda: out.__setitem__("dense", ours()),
        "factored": lambda: out.__setitem__("factored", ours("factored")),
    }
    times = peerlib.interleaved(sides, repeats)
    floor = _agreement(ours(seed=1), out["dense"])
    scores = {name: lds(matrix, masks, measured)[1] for name, matrix in out.items()}
    rows = []
    for structure in ("dense", "factored"):
        agree = _agreement(out[structure], out["traker"])
        rows.append(
            {
                "peer": "traker 0.3.2 (BasicProjector)",
                "method": f"trak, {ARCH}, {N_MODELS} models, k {PROJ_DIM}, {structure} projection",
                "agreement": (
                    f"Spearman {agree['spearman']:.2f} / Pearson {agree['pearson']:.2f} "
                    f"(ours seed 0 vs 1: {floor['spearman']:.2f} / {floor['pearson']:.2f}); "
                    f"LDS ours {scores[structure]:.3f} vs traker {scores['traker']:.3f}"
                ),
                "target": 2.0,
                "notes": (
                    f"fit + {TARGETS} targets, n_train {data.n_train}; LDS {LDS_SUBSETS} "
                    f"half subsets × {LDS_REPEATS} models; traker lambda_reg 0, ours damping "
                    "0.01 (its default)"
                ),
                "lds_ours": float(scores[structure]),
                "lds_peer": float(scores["traker"]),
                **peerlib.ratio(times["traker"], times[structure]),
                **agree,
            }
        )
    return rows
