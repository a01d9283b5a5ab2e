"""The vmap ensemble trainer against K models each trained alone with torch.optim."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from mnemoscope.train import (
    TrainConfig,
    TrainedEnsemble,
    epoch_orders,
    full_masks,
    init_module,
    subset_masks,
    train_ensemble,
)


def train_alone(arch, dataset, mask_row, config: TrainConfig, seed: int, k: int):
    """The plain PyTorch loop: one model, torch.optim, the same init and data order.

    Returns the final parameters and, per epoch and example, the loss and correctness
    at the example's presentation (NaN / False where the model never saw it).
    """
    model = init_module(arch, dataset.input_shape, dataset.n_classes, seed, k)
    if config.optimizer == "sgd":
        opt = torch.optim.SGD(
            model.parameters(),
            lr=config.lr,
            momentum=config.momentum,
            weight_decay=config.weight_decay,
        )
    elif config.optimizer == "adam":
        opt = torch.optim.Adam(
            model.parameters(), lr=config.lr, betas=config.betas, weight_decay=config.weight_decay
        )
    else:
        opt = torch.optim.AdamW(
            model.parameters(), lr=config.lr, betas=config.betas, weight_decay=config.weight_decay
        )
    losses = torch.full((config.epochs, dataset.n_train), float("nan"))
    correct = torch.zeros(config.epochs, dataset.n_train, dtype=torch.bool)
    for epoch, order in enumerate(epoch_orders(mask_row, seed, k, config.epochs)):
        for batch in order.split(config.batch_size):
            opt.zero_grad()
            logits = model(dataset.x_train[batch])
            per_example = F.cross_entropy(logits, dataset.y_train[batch], reduction="none")
            losses[epoch, batch] = per_example.detach()
            correct[epoch, batch] = logits.argmax(-1) == dataset.y_train[batch]
            per_example.mean().backward()
            opt.step()
    return dict(model.named_parameters()), losses, correct


@pytest.mark.parametrize(
    ("arch", "optimizer"),
    [("logreg", "sgd"), ("mlp", "sgd"), ("mlp", "adam"), ("mlp", "adamw"), ("cnn", "sgd")],
)
def test_vmap_trainer_matches_models_trained_alone(digits_small, arch, optimizer):
    config = TrainConfig(
        epochs=3,
        batch_size=32,
        optimizer=optimizer,
        lr=0.05 if optimizer == "sgd" else 0.01,
        weight_decay=0.01,
    )
    # Unequal subset sizes: models run out of batches at different steps.
    masks = torch.cat(
        [
            subset_masks(2, digits_small.n_train, 0.5, 1),
            subset_masks(1, digits_small.n_train, 0.9, 2),
        ]
    )
    trained = train_ensemble(arch, digits_small, masks, config, seed=7)
    # Adam divides by sqrt(v): where a gradient is ~0, the rounding difference between a
    # batched and a single matmul is amplified. A wrong update rule errs by ~lr = 1e-2.
    atol = 2e-5 if optimizer == "sgd" else 2e-4
    for k in range(masks.shape[0]):
        alone, _, _ = train_alone(arch, digits_small, masks[k], config, seed=7, k=k)
        for name, value in alone.items():
            torch.testing.assert_close(
                trained.params[name][k], value.detach(), atol=atol, rtol=1e-4
            )


def test_chunking_does_not_change_results(mnist1d_small):
    config = TrainConfig(epochs=2, batch_size=64, lr=0.05)
    masks = subset_masks(5, mnist1d_small.n_train, 0.7, 0)
    whole = train_ensemble("cnn", mnist1d_small, masks, config, seed=3)
    chunked = train_ensemble(
        "cnn", mnist1d_small, masks, config.model_copy(update={"chunk_size": 2}), seed=3
    )
    for name in whole.params:
        torch.testing.assert_close(whole.params[name], chunked.params[name], atol=1e-5, rtol=1e-5)
    assert torch.equal(whole.train_correct, chunked.train_correct)


def test_records_checkpoints_and_roundtrip(digits_small, tmp_path):
    config = TrainConfig(epochs=4, batch_size=64, lr=0.1)
    masks = subset_masks(3, digits_small.n_train, 0.7, 0)
    done = []
    trained = train_ensemble(
        "mlp", digits_small, masks, config, seed=0, checkpoint_epochs=[2, 4], progress=done.append
    )
    n, k = digits_small.n_train, 3
    assert trained.train_loss.shape == (k, 4, n) and trained.train_correct.shape == (k, 4, n)
    assert trained.train_logits.shape == (k, n, 10)
    assert trained.test_logits.shape == (k, digits_small.n_test, 10)
    assert sum(done) == k * 4
    # records at each presentation, as a plain loop records them; nothing where unseen
    for model in range(k):
        _, losses, correct = train_alone("mlp", digits_small, masks[model], config, 0, model)
        torch.testing.assert_close(
            trained.train_loss[model], losses, atol=1e-5, rtol=1e-4, equal_nan=True
        )
        assert torch.equal(trained.train_correct[model], correct)
    assert trained.train_loss[:, :, ~masks[0]][0].isnan().all()
    assert not trained.train_loss[masks[:, None, :].expand(-1, 4, -1)].isnan().any()
    assert [c.epoch for c in trained.checkpoints] == [2, 4]
    assert all(c.lr == 0.1 for c in trained.checkpoints)
    for name in trained.params:  # the last checkpoint is the final model
        assert torch.equal(trained.checkpoints[-1].params[name], trained.params[name])
    # the final logits are the final parameters' logits, on seen and unseen examples
    logits = torch.func.functional_call(
        trained.module(), {k_: v[1] for k_, v in trained.params.items()}, (digits_small.x_train,)
    )
    torch.testing.assert_close(trained.train_logits[1], logits, atol=1e-5, rtol=1e-5)
    # training lowers the loss of the examples a model sees
    first, last = trained.train_loss[:, 0], trained.train_loss[:, -1]
    assert last[masks].mean() < first[masks].mean()
    loaded = TrainedEnsemble.load(trained.save(tmp_path / "e.safetensors"))
    assert torch.equal(loaded.masks, trained.masks)
    assert torch.equal(loaded.train_loss.isnan(), trained.train_loss.isnan())
    assert torch.equal(loaded.train_logits, trained.train_logits)
    assert [(c.epoch, c.lr) for c in loaded.checkpoints] == [(2, 0.1), (4, 0.1)]
    for name in trained.params:
        assert torch.equal(loaded.checkpoints[0].params[name], trained.checkpoints[0].params[name])


def test_subset_masks_are_exact_and_stable():
    masks = subset_masks(6, 100, 0.7, seed=5)
    assert masks.shape == (6, 100) and (masks.sum(1) == 70).all()
    assert torch.equal(subset_masks(3, 100, 0.7, seed=5), masks[:3])  # row k depends on k only
    assert not torch.equal(masks[0], masks[1])
    with pytest.raises(ValueError, match="fraction"):
        subset_masks(2, 10, 1.5, 0)


def test_bad_masks_are_refused(digits_small):
    config = TrainConfig(epochs=1)
    with pytest.raises(ValueError, match="columns"):
        train_ensemble("logreg", digits_small, full_masks(1, 5), config, seed=0)
    empty = torch.zeros(1, digits_small.n_train, dtype=torch.bool)
    with pytest.raises(ValueError, match="empty"):
        train_ensemble("logreg", digits_small, empty, config, seed=0)
    with pytest.raises(ValueError, match="checkpoint"):
        train_ensemble(
            "logreg",
            digits_small,
            full_masks(1, digits_small.n_train),
            config,
            seed=0,
            checkpoint_epochs=[3],
        )


def test_shared_init_and_order_make_leave_one_out_models(digits_small):
    """With ``init: shared, order: shared`` a model trained without example i starts
    from the full model's parameters and sees the others in the same order."""
    n, epochs = digits_small.n_train, 3
    full = torch.ones(n, dtype=torch.bool)
    masks = torch.stack([full, full.clone(), full.clone(), full.clone()])
    masks[2, 5] = False
    masks[3, 17] = False
    config = TrainConfig(epochs=epochs, batch_size=32, lr=0.05)
    trained = train_ensemble(
        "mlp",
        digits_small,
        masks,
        config,
        seed=4,
        init="shared",
        order="shared",
        keep_initial=True,
        checkpoint_epochs=[epochs],
    )
    initial = trained.initial
    start = init_module("mlp", digits_small.input_shape, digits_small.n_classes, 4, 0)
    for name, value in start.named_parameters():
        for k in range(4):
            assert torch.equal(initial[name][k], value.detach())
    for k, left_out in ((2, 5), (3, 17)):
        full_order = epoch_orders(masks[0], 4, 0, epochs, "shared")
        loo_order = epoch_orders(masks[k], 4, k, epochs, "shared")
        for whole, without in zip(full_order, loo_order):
            assert torch.equal(without, whole[whole != left_out])
    # models 0 and 1 have the same mask: same init, same order → the same training run
    for name in trained.params:
        assert torch.equal(trained.params[name][0], trained.params[name][1])
        assert not torch.equal(trained.params[name][0], trained.params[name][2])
    # per-model order: different models shuffle differently
    assert not torch.equal(epoch_orders(full, 4, 0, 1)[0], epoch_orders(full, 4, 1, 1)[0])


def test_a_part_of_the_models_is_those_rows_of_the_whole(digits_small):
    masks = subset_masks(4, digits_small.n_train, 0.7, 0)
    config = TrainConfig(epochs=2, batch_size=64, lr=0.05, chunk_size=2)
    whole = train_ensemble("logreg", digits_small, masks, config, seed=1)
    part = train_ensemble("logreg", digits_small, masks, config, seed=1, models=[2, 3])
    assert torch.equal(part.masks, masks[2:])
    for name in whole.params:
        assert torch.equal(part.params[name], whole.params[name][2:])
    with pytest.raises(ValueError, match="rows"):
        train_ensemble("logreg", digits_small, masks, config, seed=1, models=[4])
