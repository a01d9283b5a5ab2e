"""Row ``dattri``: mnemoscope's ``if_exact`` against dattri 0.3.0's ``IFAttributorExplicit``
on the same digits logistic regression: fit + self-influence of every training example +
train×target influence on every test example, one thread.

dattri differentiates the Hessian of its ``loss_func`` (the mean cross-entropy here) and
adds ``regularization · I``; ours adds the objective's L2 coefficient and the damping, so
``regularization = l2 + λ``. For logistic regression the Gauss–Newton matrix (our default)
is the Hessian. dattri's scores ``∇ℓ(z_i)ᵀ A⁻¹ ∇ℓ(z)`` are not divided by n: theirs = ours × n.

    .venv/bin/python bench/peers.py --rows dattri --repeats 5
"""

from __future__ import annotations

import numpy as np
import peerlib
import torch
from torch.func import functional_call
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from mnemoscope.data import prepare
from mnemoscope.influence import IFExact, IFExactConfig
from mnemoscope.task import Task
from mnemoscope.train import TrainConfig, full_masks, train_ensemble

DAMPING = 1e-3


def _digits_logreg(device: str):
    data = prepare("digits", seed=0)
    config = TrainConfig(epochs=20)
    model = train_ensemble(
        "logreg", data, full_masks(1, data.n_train), config, seed=0, device=device
    )
    return data, model, Task.from_train(config)


def ours(data, model, task, device: str):
    estimator = IFExact(IFExactConfig(damping=DAMPING)).fit({"model": model}, data, task, device)
    matrix = estimator.influence_matrix(data.x_test, data.y_test).numpy()
    return estimator.self_influence().score, matrix


def theirs(data, model, task, device: str):
    from dattri.algorithm.influence_function import IFAttributorExplicit
    from dattri.task import AttributionTask

    module = model.module().to(device)
    params = {k: v[0].to(device) for k, v in model.params.items()}

    def mean_loss(theta, batch):
        x, y = batch
        return F.cross_entropy(functional_call(module, theta, (x,)), y)

    attribution = AttributionTask(loss_func=mean_loss, model=module, checkpoints=params)
    attributor = IFAttributorExplicit(attribution, device=device, regularization=task.l2 + DAMPING)
    train = DataLoader(TensorDataset(data.x_train, data.y_train), batch_size=data.n_train)
    test = DataLoader(TensorDataset(data.x_test, data.y_test), batch_size=data.n_test)
    attributor.cache(train)
    self_scores = attributor.self_attribute(train)
    matrix = attributor.attribute(train, test)
    return self_scores.detach().double().cpu().numpy(), matrix.detach().double().cpu().numpy()


def run(repeats: int, device: str) -> list[dict]:
    torch.set_num_threads(1)
    data, model, task = _digits_logreg(device)
    n = data.n_train
    agree_pairs, agreement = peerlib.influence_agreement(
        ours(data, model, task, device), theirs(data, model, task, device), n
    )
    times = peerlib.interleaved(
        {
            "peer": lambda: theirs(data, model, task, device),
            "ours": lambda: ours(data, model, task, device),
        },
        repeats,
    )
    return [
        {
            "peer": "dattri 0.3.0 IFAttributorExplicit",
            "method": f"if_exact, digits logreg, fit + self + {data.n_test} targets",
            "agreement": agreement,
            "target": 1.5,
            "notes": (
                f"n {n}, P {sum(int(np.prod(v.shape[1:])) for v in model.params.values())}; "
                f"regularization theirs = l2 + damping ({task.l2:g} + {DAMPING:g})"
            ),
            **peerlib.ratio(times["peer"], times["ours"]),
            **agree_pairs,
        }
    ]
