"""The cosine learning-rate schedule: closed form, torch.optim + LambdaLR, checkpoint lrs."""

from __future__ import annotations

import math

import pytest
import torch
from torch.nn import functional as F

from mnemoscope.train import (
    TrainConfig,
    TrainedEnsemble,
    epoch_orders,
    init_module,
    subset_masks,
    train_ensemble,
)
from mnemoscope.train.optim import StackedOptimizer


def cosine(lr: float, t: int, total: int) -> float:
    return lr * 0.5 * (1 + math.cos(math.pi * t / total))


def test_lr_sequence_is_the_closed_form_per_model():
    config = TrainConfig(lr=0.3, schedule="cosine", momentum=0.0, weight_decay=0.0)
    params = {"w": torch.zeros(2, 3)}
    optimizer = StackedOptimizer(params, config, torch.tensor([5, 8]))
    seen: list[list[float]] = [[], []]
    for step in range(8):
        active = torch.tensor([step < 5, True])  # model 0 has only 5 steps
        lr = optimizer.current_lr()
        for k in range(2):
            if bool(active[k]):
                seen[k].append(float(lr[k]))
        optimizer.step(params, {"w": torch.ones(2, 3)}, active)
    assert seen[0] == pytest.approx([cosine(0.3, t, 5) for t in range(5)], rel=1e-12)
    assert seen[1] == pytest.approx([cosine(0.3, t, 8) for t in range(8)], rel=1e-12)
    assert [config.lr_at(t, 8) for t in range(8)] == pytest.approx(seen[1], rel=1e-12)
    # plain SGD, gradient 1: each parameter moved by the sum of its model's lrs
    torch.testing.assert_close(
        params["w"][:, 0], -torch.tensor([sum(seen[0]), sum(seen[1])]), rtol=1e-6, atol=1e-7
    )
    assert TrainConfig(lr=0.3).lr_at(7, 8) == 0.3  # constant: no annealing


def cosine_alone(arch, dataset, mask_row, config: TrainConfig, seed: int, k: int):
    """One model trained alone with torch.optim and a per-step LambdaLR cosine."""
    model = init_module(arch, dataset.input_shape, dataset.n_classes, seed, k)
    kwargs = {"lr": config.lr, "weight_decay": config.weight_decay}
    if config.optimizer == "sgd":
        opt = torch.optim.SGD(model.parameters(), momentum=config.momentum, **kwargs)
    else:
        cls = torch.optim.Adam if config.optimizer == "adam" else torch.optim.AdamW
        opt = cls(model.parameters(), betas=config.betas, **kwargs)
    total = config.epochs * math.ceil(int(mask_row.sum()) / config.batch_size)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda t: 0.5 * (1 + math.cos(math.pi * t / total))
    )
    lrs = []
    for order in epoch_orders(mask_row, seed, k, config.epochs):
        for batch in order.split(config.batch_size):
            opt.zero_grad()
            logits = model(dataset.x_train[batch])
            F.cross_entropy(logits, dataset.y_train[batch]).backward()
            lrs.append(opt.param_groups[0]["lr"])
            opt.step()
            scheduler.step()
        lrs.append(None)  # an epoch boundary
    return dict(model.named_parameters()), lrs


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw"])
def test_cosine_ensemble_matches_torch_lambda_lr(digits_small, optimizer):
    config = TrainConfig(
        epochs=3,
        batch_size=32,
        optimizer=optimizer,
        lr=0.05 if optimizer == "sgd" else 0.01,
        weight_decay=0.01,
        schedule="cosine",
    )
    # subsets of unequal size: the two models anneal over different numbers of steps
    masks = torch.cat(
        [
            subset_masks(1, digits_small.n_train, 0.5, 1),
            subset_masks(1, digits_small.n_train, 0.9, 2),
        ]
    )
    trained = train_ensemble("mlp", digits_small, masks, config, seed=7, checkpoint_epochs=(1, 3))
    atol = 2e-5 if optimizer == "sgd" else 2e-4  # as in test_ensemble: Adam amplifies rounding
    for k in range(2):
        alone, lrs = cosine_alone("mlp", digits_small, masks[k], config, seed=7, k=k)
        for name, value in alone.items():
            torch.testing.assert_close(
                trained.params[name][k], value.detach(), atol=atol, rtol=1e-4
            )
        # each checkpoint records the lr of the model's last update before it
        before_boundary = [lrs[i - 1] for i, lr in enumerate(lrs) if lr is None]
        for checkpoint in trained.checkpoints:
            assert checkpoint.lrs[k] == pytest.approx(before_boundary[checkpoint.epoch - 1])
    assert trained.checkpoints[0].lrs[0] != pytest.approx(trained.checkpoints[0].lrs[1])
    assert trained.checkpoints[-1].lrs[0] < 0.05 * config.lr  # annealed almost to 0


def test_checkpoint_lrs_survive_save_and_parts(digits_small, tmp_path):
    config = TrainConfig(epochs=2, batch_size=64, lr=0.1, schedule="cosine", chunk_size=1)
    masks = torch.cat(
        [
            subset_masks(1, digits_small.n_train, 0.3, 1),
            subset_masks(1, digits_small.n_train, 0.8, 2),
        ]
    )
    trained = train_ensemble(
        "logreg", digits_small, masks, config, seed=0, checkpoint_epochs=(1,), keep_initial=True
    )
    loaded = TrainedEnsemble.load(trained.save(tmp_path / "e.safetensors"))
    for original, back in zip(trained.checkpoints, loaded.checkpoints):
        assert (back.epoch, back.lr, back.lrs) == (original.epoch, original.lr, original.lrs)
    initial, first = loaded.checkpoints
    assert initial.lrs == (0.1, 0.1)  # epoch 0: the first update's lr
    steps = [math.ceil(int(m.sum()) / 64) for m in masks]
    assert first.lrs == pytest.approx([cosine(0.1, s - 1, 2 * s) for s in steps])
    assert first.lr == first.lrs[0]


def test_constant_schedule_keeps_the_dump_and_records_lr():
    assert "schedule" not in TrainConfig().model_dump()  # cache keys of older configs stay
    assert TrainConfig(schedule="cosine").model_dump()["schedule"] == "cosine"
    cosine_config = TrainConfig(schedule="cosine")
    assert TrainConfig.model_validate(cosine_config.model_dump()) == cosine_config
    with pytest.raises(ValueError, match="total steps"):
        StackedOptimizer({"w": torch.zeros(1, 2)}, cosine_config)
