"""Models per second: the vmap ensemble engine vs a plain sequential PyTorch loop.

Both train K MLPs on sklearn digits, each on its own 70% subset, with identical
hyperparameters, initial weights and data order, and both record what the engine
records: every example's loss and correctness at each presentation, and each
model's final logits on the training pool and the test split.
Two baselines: torch.optim.SGD with its defaults (what a user writes; on CPU, torch
2.13 picks the per-tensor for-loop) and with foreach=True (the engine's kernels).
The three are timed in the same run, interleaved; the per-repetition ratios are the claim.

    .venv/bin/python bench/ensemble_training.py [--models 64] [--epochs 10] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.nn import functional as F

from mnemoscope.data import prepare
from mnemoscope.train import TrainConfig, epoch_orders, init_module, subset_masks, train_ensemble


def sequential(
    dataset, masks, config: TrainConfig, seed: int, device: torch.device, foreach: bool | None
) -> torch.Tensor:
    """The baseline: one model after another, nn.Module + torch.optim.SGD, recording the
    same things as the engine: each example's loss and correctness when its batch is
    presented, then the final logits on the training pool and the test split.
    ``foreach=None`` leaves torch.optim's default; True forces the foreach kernels.
    Returns the final logits on the training pool, ``[K, n, C]``."""
    x, y = dataset.x_train.to(device), dataset.y_train.to(device)
    n = dataset.n_train
    train_logits = []
    for k in range(masks.shape[0]):
        model = init_module("mlp", dataset.input_shape, dataset.n_classes, seed, k).to(device)
        opt = torch.optim.SGD(
            model.parameters(),
            lr=config.lr,
            momentum=config.momentum,
            weight_decay=config.weight_decay,
            **({} if foreach is None else {"foreach": foreach}),
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
            train_logits.append(model(x).cpu())
            model(dataset.x_test.to(device)).cpu()
        losses.cpu(), correct.cpu()
    return torch.stack(train_logits)


def _timed(fn, *args) -> float:
    started = time.perf_counter()
    fn(*args)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - started


def _spread(values: list[float]) -> str:
    return f"{statistics.median(values):6.2f} ({min(values):.2f}-{max(values):.2f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    device = torch.device(args.device)
    dataset = prepare("digits", seed=0, label_noise=0.1)
    config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=0.05)
    masks = subset_masks(args.models, dataset.n_train, 0.7, seed=0)
    runs = {
        "engine (vmap, torch.func)": lambda m: train_ensemble(
            "mlp", dataset, m, config, seed=0, device=device
        ),
        "sequential, torch.optim defaults": lambda m: sequential(
            dataset, m, config, 0, device, None
        ),
        "sequential, foreach=True": lambda m: sequential(dataset, m, config, 0, device, True),
    }
    for run in runs.values():  # warm-up (allocator, kernels)
        run(masks[:2])
    seconds = {name: [] for name in runs}
    for _ in range(args.repeats):  # interleaved, so drift in the machine hits all three
        for name, run in runs.items():
            seconds[name].append(_timed(run, masks))
    print(
        f"device={device} threads={torch.get_num_threads()} torch={torch.__version__} "
        f"K={args.models} epochs={args.epochs} batch={args.batch_size} "
        f"n_train={dataset.n_train} (70% subsets) repeats={args.repeats}"
    )
    print("models/s, median (min-max) over repetitions:")
    for name, times in seconds.items():
        print(f"  {name:34s} {_spread([args.models / t for t in times])}")
    engine, defaults, foreach = seconds.values()
    print("speed-up of the engine, per repetition, median (min-max):")
    print(f"  vs torch.optim defaults: {_spread([b / e for b, e in zip(defaults, engine)])}x")
    print(f"  vs foreach=True:         {_spread([b / e for b, e in zip(foreach, engine)])}x")


if __name__ == "__main__":
    main()
