"""The built-in demo study: digits and MNIST-1D, three architectures, 10% label noise."""

from __future__ import annotations

from mnemoscope.config import StudyConfig, parse_config


def demo_config(quick: bool = False) -> StudyConfig:
    """The demo: ≤ 5 minutes on a 2-core CPU (``quick``: ≤ 1 minute, smaller everything)."""
    return parse_config(
        {
            "name": "demo-quick" if quick else "demo",
            "seed": 0,
            "device": "cpu",
            "datasets": [
                {"name": "digits", "label_noise": 0.1, **({"n_samples": 800} if quick else {})},
                {"name": "mnist1d", "label_noise": 0.1, "n_samples": 800 if quick else 2000},
            ],
            "archs": ["logreg", "mlp", "cnn"],
            # quick: fewer, larger steps at a higher learning rate, so the subset models
            # still fit the flipped labels they train on (FZ cannot see them otherwise)
            "train": {
                "epochs": 40,
                "batch_size": 64 if quick else 32,
                "optimizer": "sgd",
                "lr": 0.1 if quick else 0.05,
                "momentum": 0.9,
                "weight_decay": 0.0005,
            },
            # lira reads the same subset ensemble (same K and fraction): no extra training
            "memorization": [
                {
                    "method": "feldman_zhang",
                    "n_models": 16 if quick else 32,
                    "subset_fraction": 0.7,
                },
                {
                    "method": "lira",
                    "n_models": 16 if quick else 32,
                    "subset_fraction": 0.7,
                    "variant": "online",
                },
            ],
            "influence": [
                {"method": "tracin", "checkpoints": 3 if quick else 5},
                {"method": "grad_dot"},
            ],
            "analysis": {"n_bootstrap": 200 if quick else 1000},
        }
    )
