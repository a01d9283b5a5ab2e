"""DP-SGD: K private models at once in the vmap engine vs Opacus one model after another.

Both train K MLPs (two hidden layers of 128) on sklearn digits, each on its own 50%
subset, with the same DP-SGD settings: Poisson sampling at rate B / n_k (expected batch
B = 64), per-example clipping to C = 1, Gaussian noise σ = 1.1, SGD (lr 0.1, momentum 0.9,
weight decay 5e-4), the same number of steps. Opacus: ``PrivacyEngine.make_private`` with
``poisson_sampling=True``, what its tutorials write. The engine without DP is timed too,
for the cost of privacy within the engine. The sides run interleaved; the per-repetition
ratio Opacus / engine is the claim. One torch thread per side.

    .venv/bin/python bench/dp.py [--models 16] [--epochs 2] [--repeats 3] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import peerlib  # noqa: E402

peerlib.reexec_in_peer_venv()

import torch  # noqa: E402
from torch.nn import functional as F  # noqa: E402

from mnemoscope.data import prepare  # noqa: E402
from mnemoscope.train import TrainConfig, init_module, subset_masks, train_ensemble  # noqa: E402

SEED = 0


def opacus_one_after_another(dataset, masks, config: TrainConfig, device: torch.device) -> None:
    """Opacus's DP-SGD, model after model, on the same subsets and settings."""
    from opacus import PrivacyEngine

    x, y = dataset.x_train.to(device), dataset.y_train.to(device)
    for k in range(masks.shape[0]):
        members = masks[k].nonzero().flatten().to(device)
        loader = torch.utils.data.DataLoader(
            torch.utils.data.TensorDataset(x[members], y[members]),
            batch_size=config.batch_size,
        )
        model = init_module("mlp", dataset.input_shape, dataset.n_classes, SEED, k).to(device)
        sgd = torch.optim.SGD(
            model.parameters(),
            lr=config.lr,
            momentum=config.momentum,
            weight_decay=config.weight_decay,
        )
        engine = PrivacyEngine()
        model, sgd, loader = engine.make_private(
            module=model,
            optimizer=sgd,
            data_loader=loader,
            noise_multiplier=config.dp.noise_multiplier,
            max_grad_norm=config.dp.max_grad_norm,
            poisson_sampling=True,
        )
        for _ in range(config.epochs):
            for xb, yb in loader:
                sgd.zero_grad()
                F.cross_entropy(model(xb), yb).backward()
                sgd.step()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")  # Opacus's secure-RNG and hook warnings, every model
    device = torch.device(args.device)
    dataset = prepare("digits", seed=SEED)
    masks = subset_masks(args.models, dataset.n_train, 0.5, SEED)
    base = {"epochs": args.epochs, "batch_size": args.batch_size, "lr": 0.1}
    dp = {"noise_multiplier": 1.1, "max_grad_norm": 1.0, "delta": 1e-5}
    private = TrainConfig.model_validate({**base, "dp": dp})
    plain = TrainConfig.model_validate(base)
    load_before = os.getloadavg()
    times = peerlib.interleaved(
        {
            "engine_dp": lambda: train_ensemble(
                "mlp", dataset, masks, private, seed=SEED, device=device
            ),
            "opacus": lambda: opacus_one_after_another(dataset, masks, private, device),
            "engine_plain": lambda: train_ensemble(
                "mlp", dataset, masks, plain, seed=SEED, device=device
            ),
        },
        args.repeats,
    )
    model_epochs = args.models * args.epochs
    result = {
        "settings": {**vars(args), **dp, "subset": int(masks[0].sum())},
        "opacus_vs_engine_dp": peerlib.ratio(times["opacus"], times["engine_dp"]),
        "engine_dp_vs_plain": peerlib.ratio(times["engine_dp"], times["engine_plain"]),
        "s_per_model_epoch": {
            side: sorted(t / model_epochs for t in ts) for side, ts in times.items()
        },
        "load_before": load_before,
        "machine": peerlib.machine(),
    }
    print(json.dumps(result, indent=1, default=str))


if __name__ == "__main__":
    main()
