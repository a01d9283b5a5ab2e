"""Row ``captum`` of :mod:`peers`: TracIn self-influence, mnemoscope's ``tracin`` vs Captum
0.9.0's ``TracInCP`` in its fast mode, on the same checkpoints of the digits mlp and cnn.

Both models are trained with mnemoscope's trainer on sklearn digits (1,437 training
examples, 10% flipped labels) for 10 epochs, keeping 5 checkpoints (epochs 2, 4, …, 10).
The TracIn-CP self-influence ``Σ_c η_c ‖∇ℓ(z_i; θ_c)‖²`` of every training example:

- **ours**: ``TracIn(TracInConfig(checkpoints=5))`` over all parameters, its default batch
  (layer-wise identities for Linear/Conv/GroupNorm, ``vmap(grad)`` for anything else);
- **Captum** (what a user writes): ``TracInCP(model, TensorDataset(x, y), checkpoints,
  load, loss_fn=CrossEntropyLoss(reduction="sum"), batch_size=256,
  sample_wise_grads_per_batch=True).self_influence()``; ``load`` copies the checkpoint
  from memory and returns its learning rate, which Captum multiplies in (TracIn's η_c).

Captum's fast mode covers only ``nn.Linear`` and ``nn.Conv2d`` and silently drops every
other parameter (the cnn's GroupNorm): agreement is taken against ours restricted to
those layers' parameters (``params: [names]``), scale factor 1; the timed side of ours
covers all parameters, and the notes say what share of a score Captum leaves out.

A third side, timed with the two, bounds what any per-example method can reach: a plain
batched forward and backward of the summed loss over the same checkpoints and batches
(:func:`plain_backward`, no per-example work). The notes give Captum's time over it: a
target ratio above that would need our whole pass, per-example norms included, to be
faster than one plain batched backward.

    .venv/bin/python bench/peers.py --rows captum [--repeats 5] [--device cuda]
"""

from __future__ import annotations

import statistics
import warnings

import numpy as np
import peerlib
import torch
from torch import nn
from torch.func import functional_call

from mnemoscope.data import prepare
from mnemoscope.influence import TracIn, TracInConfig
from mnemoscope.task import Task
from mnemoscope.train import TrainConfig, TrainedEnsemble, full_masks, train_ensemble

TARGETS = {"mlp": 3.0, "cnn": 3.0}
"""The issue's targets, time ratio Captum / ours (the mlp row is held at its level)."""
EPOCHS, CHECKPOINTS, CAPTUM_BATCH = 10, 5, 256


def captum_self_influence(model: TrainedEnsemble, data, batch_size: int, device: str):
    """Captum's TracInCP fast mode on ``model``'s checkpoints, ``[n]`` float64."""
    from captum.influence import TracInCP

    module = model.module().to(device)
    kept = {str(c.epoch): c for c in model.checkpoints}

    def load(net: nn.Module, key: str) -> float:
        net.load_state_dict({k: v[0] for k, v in kept[key].params.items()})
        return kept[key].lr

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Captum warns that it leaves out the GroupNorm
        tracin = TracInCP(
            module,
            data,
            list(kept),
            load,
            loss_fn=nn.CrossEntropyLoss(reduction="sum"),
            batch_size=batch_size,
            sample_wise_grads_per_batch=True,
        )
        return tracin.self_influence().double().cpu().numpy()


def ours(model: TrainedEnsemble, dataset, device: str, params="all") -> np.ndarray:
    config = TracInConfig(checkpoints=len(model.checkpoints), params=params)
    fitted = TracIn(config).fit({"model": model}, dataset, Task(), device=device)
    return np.asarray(fitted.self_influence().score)


def plain_backward(model: TrainedEnsemble, dataset, device: str, batch_size: int = 512) -> None:
    """What any per-example method pays at least: at each checkpoint, one ordinary batched
    forward pass and backward pass of the summed loss to every parameter, over the training
    set in batches of ``batch_size`` (ours' default), no per-example work at all."""
    module = model.module().to(device)
    x, y = dataset.x_train.to(device), dataset.y_train.to(device)
    for checkpoint in model.checkpoints:
        params = {k: v[0].to(device).requires_grad_() for k, v in checkpoint.params.items()}
        for xb, yb in zip(x.split(batch_size), y.split(batch_size)):
            loss = nn.functional.cross_entropy(
                functional_call(module, params, (xb,)), yb, reduction="sum"
            )
            torch.autograd.grad(loss, list(params.values()))


def captum_layers(module: nn.Module) -> list[str]:
    """The parameters Captum's fast mode differentiates: those of Linear and Conv2d."""
    return [
        f"{layer}.{name}"
        for layer, sub in module.named_modules()
        if type(sub) in (nn.Linear, nn.Conv2d)
        for name, _ in sub.named_parameters(recurse=False)
    ]


def run(repeats: int, device: str) -> list[dict]:
    dataset = prepare("digits", seed=0, label_noise=0.1)
    epochs = TracIn(TracInConfig(checkpoints=CHECKPOINTS)).checkpoint_epochs(EPOCHS)
    data = torch.utils.data.TensorDataset(dataset.x_train.to(device), dataset.y_train.to(device))
    rows = []
    for arch, target in TARGETS.items():
        model = train_ensemble(
            arch,
            dataset,
            full_masks(1, dataset.n_train),
            TrainConfig(epochs=EPOCHS, batch_size=64, lr=0.05),
            seed=0,
            checkpoint_epochs=epochs,
        )
        covered = captum_layers(model.module())
        theirs = captum_self_influence(model, data, CAPTUM_BATCH, device)
        agreement = peerlib.agreement(ours(model, dataset, device, covered), theirs)
        left_out = 1 - theirs / ours(model, dataset, device)
        times = peerlib.interleaved(
            {
                "captum": lambda m=model: captum_self_influence(m, data, CAPTUM_BATCH, device),
                "ours": lambda m=model: ours(m, dataset, device),
                "plain": lambda m=model: plain_backward(m, dataset, device),
            },
            repeats,
        )
        floor = peerlib.ratio(times["captum"], times["plain"])
        plain = statistics.median(times["plain"]) / statistics.median(times["ours"])
        rows.append(
            {
                "peer": "Captum 0.9.0 TracInCP fast",
                "method": f"tracin self-influence, {arch}, {len(epochs)} checkpoints",
                "agreement": (
                    f"max rel {agreement['max_rel_diff']:.1e} on Captum's "
                    f"{len(covered)} Linear/Conv2d tensors; Spearman {agreement['spearman']:.6f}"
                ),
                "target": target,
                "notes": (
                    f"ours over all parameters; Captum leaves out a median "
                    f"{np.median(left_out):.1%} (max {left_out.max():.1%}) of a score"
                    f"; Captum batch {CAPTUM_BATCH}, {device}; a plain batched forward + "
                    f"backward over the same checkpoints takes {plain:.0%} of ours and "
                    f"Captum {floor['ratio']:.2f}× it (3× would need ours ≤ "
                    f"{floor['ratio'] / target:.2f}× the plain pass)"
                ),
                **peerlib.ratio(times["captum"], times["ours"]),
                **agreement,
            }
        )
    return rows
