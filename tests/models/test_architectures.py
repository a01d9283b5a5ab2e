"""resnet and transformer against plain PyTorch: the vmap trainer, per-example gradients,
the classifier head as last layer, memorization of planted mislabeled examples."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score
from torch.nn import functional as F

from mnemoscope.data import prepare
from mnemoscope.influence import TracIn, TracInConfig
from mnemoscope.memorization import FeldmanZhang, FeldmanZhangConfig
from mnemoscope.models import build_model, last_layer_names
from mnemoscope.task import Task
from mnemoscope.train import (
    TrainConfig,
    epoch_orders,
    full_masks,
    init_module,
    subset_masks,
    train_ensemble,
)

SHAPES = [(1, 8, 8), (1, 40), (30,)]


@pytest.mark.parametrize("arch", ["resnet", "transformer"])
@pytest.mark.parametrize("shape", SHAPES)
def test_head_is_last_and_reads_the_features(arch, shape):
    model = build_model(arch, shape, 7, width=8, depth=1)
    x = torch.randn(5, *shape)
    logits = model(x)
    assert logits.shape == (5, 7)
    assert last_layer_names(model) == ["head.weight", "head.bias"]
    params = dict(model.named_parameters())
    features = Task.features(model, params, x)
    assert features.shape == (5, 8)  # width
    torch.testing.assert_close(features @ params["head.weight"].T + params["head.bias"], logits)
    # each example's logits depend on that example alone (nothing mixes the batch)
    torch.testing.assert_close(model(x[2:3]), logits[2:3], atol=1e-5, rtol=1e-5)


def test_options_change_the_model():
    def size(arch, shape, **options):
        return sum(p.numel() for p in build_model(arch, shape, 10, **options).parameters())

    assert (
        size("resnet", (1, 8, 8), depth=3)
        > size("resnet", (1, 8, 8))
        > size("resnet", (1, 8, 8), width=8)
    )
    assert size("transformer", (1, 40), depth=3) > size("transformer", (1, 40))
    patched = build_model("transformer", (1, 8, 8), 10, patch=3, pool="cls")
    assert patched.position.shape == (9 + 1, 32)  # ⌈8/3⌉² patches + the class token


def _train_alone(arch, options, dataset, mask_row, config: TrainConfig, seed: int, k: int):
    """One model with torch.optim, the trainer's init and data order (as tests/train)."""
    model = init_module(arch, dataset.input_shape, dataset.n_classes, seed, k, options)
    if config.optimizer == "sgd":
        opt = torch.optim.SGD(
            model.parameters(),
            lr=config.lr,
            momentum=config.momentum,
            weight_decay=config.weight_decay,
        )
    else:
        opt = torch.optim.Adam(
            model.parameters(), lr=config.lr, betas=config.betas, weight_decay=config.weight_decay
        )
    for order in epoch_orders(mask_row, seed, k, config.epochs):
        for batch in order.split(config.batch_size):
            opt.zero_grad()
            logits = model(dataset.x_train[batch])
            F.cross_entropy(logits, dataset.y_train[batch]).backward()
            opt.step()
    return dict(model.named_parameters())


@pytest.mark.parametrize(
    ("arch", "data", "optimizer", "options"),
    [
        ("resnet", "digits_small", "sgd", {"width": 8}),
        ("resnet", "mnist1d_small", "sgd", {"width": 8, "depth": 1}),
        ("transformer", "digits_small", "adam", {"width": 16, "depth": 1, "pool": "cls"}),
        ("transformer", "mnist1d_small", "sgd", {"width": 16, "heads": 2}),
    ],
)
def test_vmap_trainer_matches_models_trained_alone(request, arch, data, optimizer, options):
    dataset = request.getfixturevalue(data)
    config = TrainConfig(
        epochs=2,
        batch_size=32,
        optimizer=optimizer,
        lr=0.05 if optimizer == "sgd" else 0.01,
        weight_decay=0.01,
    )
    masks = torch.cat(
        [subset_masks(1, dataset.n_train, 0.5, 1), subset_masks(1, dataset.n_train, 0.9, 2)]
    )
    trained = train_ensemble(arch, dataset, masks, config, seed=7, arch_options=options)
    assert trained.arch_options == options
    atol = 2e-5 if optimizer == "sgd" else 2e-4  # as tests/train/test_ensemble.py
    for k in range(masks.shape[0]):
        alone = _train_alone(arch, options, dataset, masks[k], config, seed=7, k=k)
        for name, value in alone.items():
            torch.testing.assert_close(
                trained.params[name][k], value.detach(), atol=atol, rtol=1e-4
            )


@pytest.fixture(
    scope="module",
    params=[("resnet", "digits_small"), ("transformer", "mnist1d_small")],
    ids=["resnet-2d", "transformer-1d"],
)
def trained(request):
    arch, data = request.param
    dataset = request.getfixturevalue(data)
    model = train_ensemble(
        arch,
        dataset,
        full_masks(1, dataset.n_train),
        TrainConfig(epochs=2, batch_size=64, lr=0.05),
        seed=0,
        checkpoint_epochs=[1, 2],
        arch_options={"width": 8},
    )
    return model, dataset


def _loop_grad(module, params, x, y, names):
    module.load_state_dict(params, strict=True)
    module.zero_grad()
    F.cross_entropy(module(x[None]), y[None]).backward()
    named = dict(module.named_parameters())
    return torch.cat([named[n].grad.flatten() for n in names])


@pytest.mark.parametrize("selection", ["all", "last_layer"])
def test_tracin_self_influence_equals_autograd_loop(trained, selection):
    model, data = trained
    scores = (
        TracIn(TracInConfig(checkpoints=2, params=selection, batch_size=64))
        .fit({"model": model}, data, Task())
        .self_influence()
    )
    module = model.module()
    assert sum(p.numel() for p in module.parameters()) == sum(
        v[0].numel() for v in model.params.values()
    )  # the stored options rebuilt the trained width
    names = [n for n, _ in module.named_parameters()]
    if selection == "last_layer":
        names = ["head.weight", "head.bias"]
    checked = [*range(0, data.n_train, 12), data.n_train - 1]
    expected = np.zeros(len(checked))
    for ckpt in model.checkpoints:
        params = {k: v[0] for k, v in ckpt.params.items()}
        for j, i in enumerate(checked):
            g = _loop_grad(module, params, data.x_train[i], data.y_train[i], names).double()
            expected[j] += ckpt.lr * float(g @ g)
    np.testing.assert_allclose(scores.score[checked], expected, rtol=1e-4, atol=1e-7)


def _feldman_zhang_auc(arch, options, n_samples, n_models, config: TrainConfig) -> float:
    dataset = prepare("digits", seed=0, label_noise=0.1, n_samples=n_samples)
    masks = subset_masks(n_models, dataset.n_train, 0.7, 0)
    trained = train_ensemble(arch, dataset, masks, config, seed=0, arch_options=options)
    scores = (
        FeldmanZhang(FeldmanZhangConfig(n_models=n_models))
        .fit({"subsets": trained}, dataset, Task())
        .score()
        .score
    )
    scored = ~np.isnan(scores)
    return roc_auc_score(dataset.is_mislabeled.numpy()[scored], scores[scored])


def _adam(epochs: int, lr: float) -> TrainConfig:
    return TrainConfig(epochs=epochs, batch_size=16, lr=lr, optimizer="adam", weight_decay=0.0)


# Options and training that fit the flipped labels (a model must memorize them for
# Feldman-Zhang to see them): a wider single-block resnet, 4×4 patches for the
# transformer (2×2 patches of an 8×8 digit generalize poorly from a few hundred examples).
FZ_SETUP = {
    "resnet": ({"width": 32, "depth": 1}, 0.003),
    "transformer": ({"patch": 4}, 0.003),
}


@pytest.mark.parametrize("arch", ["resnet", "transformer"])
def test_feldman_zhang_flags_flipped_labels_small(arch):
    """Small version of the check below: 200 digits (16 flipped training labels), 4
    models, 25 epochs, a weaker threshold; an example in all 4 subsets or none (1/4 of
    them) has no score."""
    options, lr = FZ_SETUP[arch]
    auc = _feldman_zhang_auc(arch, options, 200, 4, _adam(25, lr))
    assert auc >= 0.75, auc


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["resnet", "transformer"])
def test_feldman_zhang_flags_flipped_labels(arch):
    """600 digits (48 flipped training labels), 32 models of 40 epochs."""
    options, lr = FZ_SETUP[arch]
    auc = _feldman_zhang_auc(arch, options, 600, 32, _adam(40, lr))
    assert auc >= 0.9, auc
