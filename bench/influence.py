"""TracIn self-influence: mnemoscope's `tracin` vs Captum's TracInCP, on the same checkpoints.

Trains an MLP and a CNN on sklearn digits with mnemoscope's trainer, keeping 5
checkpoints, then computes the TracIn-CP self-influence Σ_c η_c ‖∇ℓ(z_i; θ_c)‖² of every
training example three ways, timed in interleaved repetitions:

- **ours**: `TracIn(TracInConfig(checkpoints=5))`, all parameters (layer-wise identities
  for Linear/Conv/GroupNorm, `vmap(grad)` for anything else), at its default batch size
  (`--ours-batch-size` to change it);
- **vmap(grad)**: the same sum from plain `vmap(grad)` per-example gradients (what
  `tracin` computed before the layer-wise path), in batches of `--batch-size`, for
  reference;
- **Captum**: `TracInCP(model, dataset, checkpoints, load, loss_fn=CrossEntropyLoss(
  reduction="sum"), batch_size=256, sample_wise_grads_per_batch=True).self_influence()`,
  i.e. what a user would write with Captum's fast mode (its defaults otherwise).

`--batch-size` (256) is Captum's batch size, as the comparison was specified.
Captum's fast mode covers only nn.Linear and nn.Conv2d layers; the values are compared
with ours restricted to those layers' parameters (`params: [names]`), which must agree
to 1e-4, and ours over all parameters shows what the restriction leaves out.
Captum is not a dependency of mnemoscope; install it into the venv for this script only:

    .venv/bin/pip install captum
    .venv/bin/python bench/influence.py [--repeats 9] [--epochs 10]
    OMP_NUM_THREADS=1 .venv/bin/python bench/influence.py   # one thread for every contender
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import warnings

import numpy as np
import torch
from torch import nn

from mnemoscope.data import prepare
from mnemoscope.influence import TracIn, TracInConfig
from mnemoscope.influence.gradients import per_example_grads
from mnemoscope.task import Task
from mnemoscope.train import TrainConfig, full_masks, train_ensemble


def _captum_tracin():
    try:
        from captum.influence import TracInCP
    except ImportError:
        print(
            "captum is not installed; install it into the venv for this benchmark only:\n"
            "    .venv/bin/pip install captum",
            file=sys.stderr,
        )
        raise SystemExit(1) from None
    return TracInCP


def captum_self_influence(model, dataset, batch_size: int) -> np.ndarray:
    """Captum's TracInCP fast mode on the same checkpoints; the load function returns
    the checkpoint's learning rate, which Captum multiplies in (as TracIn's η_c)."""
    tracin_cp = _captum_tracin()
    module = model.module()
    kept = {str(c.epoch): c for c in model.checkpoints}

    def load(net: nn.Module, key: str) -> float:
        net.load_state_dict({k: v[0] for k, v in kept[key].params.items()})
        return kept[key].lr

    data = torch.utils.data.TensorDataset(dataset.x_train, dataset.y_train)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        captum = tracin_cp(
            module,
            data,
            list(kept),
            load,
            loss_fn=nn.CrossEntropyLoss(reduction="sum"),
            batch_size=batch_size,
            sample_wise_grads_per_batch=True,
        )
        return captum.self_influence().double().numpy()


def ours(model, dataset, batch_size: int | None, params="all") -> np.ndarray:
    size = {} if batch_size is None else {"batch_size": batch_size}
    config = TracInConfig(checkpoints=len(model.checkpoints), params=params, **size)
    return TracIn(config).fit({"model": model}, dataset, Task()).self_influence().score


def vmap_grad(model, dataset, batch_size: int) -> np.ndarray:
    module = model.module()
    names = [name for name, _ in module.named_parameters()]
    total = torch.zeros(dataset.n_train, dtype=torch.float64)
    for checkpoint in model.checkpoints:
        params = {k: v[0] for k, v in checkpoint.params.items()}
        grads = per_example_grads(
            module, params, dataset.x_train, dataset.y_train, names, batch_size
        )
        total += checkpoint.lr * torch.cat([g.double().square().sum(1) for g in grads])
    return total.numpy()


def _timed(fn, *args) -> tuple[float, np.ndarray]:
    started = time.perf_counter()
    values = fn(*args)
    return time.perf_counter() - started, values


def _spread(values: list[float], digits: int = 3) -> str:
    return f"{statistics.median(values):.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--checkpoints", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=256, help="Captum's and vmap(grad)'s")
    parser.add_argument("--ours-batch-size", type=int, default=None, help="default: tracin's")
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--archs", nargs="+", default=["mlp", "cnn"])
    args = parser.parse_args()
    _captum_tracin()
    dataset = prepare("digits", seed=0, label_noise=0.1)
    epochs = TracIn(TracInConfig(checkpoints=args.checkpoints)).checkpoint_epochs(args.epochs)
    ours_batch = args.ours_batch_size or TracInConfig().batch_size
    print(
        f"load average {os.getloadavg()[0]:.2f} threads={torch.get_num_threads()} "
        f"torch={torch.__version__} n_train={dataset.n_train} "
        f"checkpoints at epochs {epochs} batch: ours={ours_batch} captum, vmap(grad)="
        f"{args.batch_size} repeats={args.repeats}"
    )
    failed = False
    for arch in args.archs:
        model = train_ensemble(
            arch,
            dataset,
            full_masks(1, dataset.n_train),
            TrainConfig(epochs=args.epochs, batch_size=64, lr=0.05),
            seed=0,
            checkpoint_epochs=epochs,
        )
        module = model.module()
        covered = [
            f"{layer}.{name}"
            for layer, sub in module.named_modules()
            if type(sub) in (nn.Linear, nn.Conv2d)
            for name, _ in sub.named_parameters(recurse=False)
        ]
        runs = {
            "ours (tracin, all params)": lambda m, d, _: ours(m, d, args.ours_batch_size),
            "vmap(grad), all params": vmap_grad,
            "captum TracInCP fast": captum_self_influence,
        }
        values = {name: run(model, dataset, args.batch_size) for name, run in runs.items()}
        seconds: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(args.repeats):  # interleaved, so drift in the machine hits all three
            for name, run in runs.items():
                elapsed, values[name] = _timed(run, model, dataset, args.batch_size)
                seconds[name].append(elapsed)
        print(f"\n{arch}: seconds for self-influence, median (min-max) over repetitions")
        for name, times in seconds.items():
            print(f"  {name:28s} {_spread(times)}")
        mine, plain, captum = seconds.values()
        print(
            f"  speed-up vs captum, per repetition: {_spread([c / m for c, m in zip(captum, mine)], 2)}x"
        )
        print(
            f"  speed-up vs vmap(grad):             {_spread([p / m for p, m in zip(plain, mine)], 2)}x"
        )

        restricted = ours(model, dataset, args.ours_batch_size, params=covered)
        reference = values["captum TracInCP fast"]
        gap = np.abs(restricted - reference) / np.abs(reference).max()
        exact = np.abs(values["ours (tracin, all params)"] - values["vmap(grad), all params"])
        share = 1 - reference / values["ours (tracin, all params)"]
        print(
            f"  ours restricted to Captum's layers ({len(covered)} tensors) vs Captum: "
            f"max |diff| / max score = {gap.max():.2e}"
        )
        print(
            f"  ours vs vmap(grad), all params: max |diff| / max score = "
            f"{exact.max() / np.abs(values['vmap(grad), all params']).max():.2e}"
        )
        print(
            f"  share of ours (all params) that Captum leaves out: median {np.median(share):.2%}, "
            f"max {share.max():.2%}"
        )
        failed |= bool(gap.max() > 1e-4)
    print(f"\nload average {os.getloadavg()[0]:.2f} (1 min) at the end")
    if failed:
        raise SystemExit("ours and Captum disagree by more than 1e-4 on the parameters both cover")


if __name__ == "__main__":
    main()
