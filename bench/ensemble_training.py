"""Models per second: the vmap ensemble engine vs a plain sequential PyTorch loop.

Both train K MLPs on sklearn digits, each on its own 70% subset, with identical
hyperparameters, initial weights and data order, and both record what the engine
records: every example's loss and correctness at each presentation, and each
model's final logits on the training pool and the test split.
The two are timed in the same run on the same machine; the ratio is the claim.

    .venv/bin/python bench/ensemble_training.py [--models 64] [--epochs 10] [--device cpu]
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.nn import functional as F

from mnemoscope.data import prepare
from mnemoscope.train import TrainConfig, epoch_orders, init_module, subset_masks, train_ensemble


def sequential(dataset, masks, config: TrainConfig, seed: int, device: torch.device) -> None:
    """The baseline: one model after another, nn.Module + torch.optim.SGD, recording the
    same things as the engine: each example's loss and correctness when its batch is
    presented, then the final logits on the training pool and the test split."""
    x, y = dataset.x_train.to(device), dataset.y_train.to(device)
    n = dataset.n_train
    for k in range(masks.shape[0]):
        model = init_module("mlp", dataset.input_shape, dataset.n_classes, seed, k).to(device)
        opt = torch.optim.SGD(
            model.parameters(),
            lr=config.lr,
            momentum=config.momentum,
            weight_decay=config.weight_decay,
        )
        losses = torch.full((config.epochs, n), float("nan"), device=device)
        correct = torch.zeros(config.epochs, n, dtype=torch.bool, device=device)
        for epoch, order in enumerate(epoch_orders(masks[k], seed, k, config.epochs)):
            for batch in order.to(device).split(config.batch_size):
                opt.zero_grad()
                logits = model(x[batch])
                per_example = F.cross_entropy(logits, y[batch], reduction="none")
                losses[epoch, batch] = per_example.detach()
                correct[epoch, batch] = logits.argmax(-1) == y[batch]
                per_example.mean().backward()
                opt.step()
        with torch.no_grad():
            model(x).cpu(), model(dataset.x_test.to(device)).cpu()
        losses.cpu(), correct.cpu()


def _timed(fn) -> float:
    started = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    device = torch.device(args.device)
    dataset = prepare("digits", seed=0, label_noise=0.1)
    config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=0.05)
    masks = subset_masks(args.models, dataset.n_train, 0.7, seed=0)
    # warm-up (allocator, kernels), then the best of `repeats` for each
    train_ensemble("mlp", dataset, masks[:2], config, seed=0, device=device)
    sequential(dataset, masks[:2], config, 0, device)
    engine = min(
        _timed(lambda: train_ensemble("mlp", dataset, masks, config, seed=0, device=device))
        for _ in range(args.repeats)
    )
    baseline = min(
        _timed(lambda: sequential(dataset, masks, config, 0, device)) for _ in range(args.repeats)
    )
    print(
        f"device={device} threads={torch.get_num_threads()} K={args.models} "
        f"epochs={args.epochs} batch={args.batch_size} n_train={dataset.n_train} (70% subsets)"
    )
    print(f"engine (vmap, torch.func):  {args.models / engine:8.2f} models/s  ({engine:.2f} s)")
    print(f"sequential PyTorch loop:    {args.models / baseline:8.2f} models/s  ({baseline:.2f} s)")
    print(f"speed-up: {baseline / engine:.2f}x")


if __name__ == "__main__":
    main()
