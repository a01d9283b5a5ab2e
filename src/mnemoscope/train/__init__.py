"""Training: one trainer for 1..K models on subset masks (torch.func, vmap over models)."""

from mnemoscope.train.ensemble import (
    Checkpoint,
    TrainedEnsemble,
    epoch_orders,
    init_module,
    train_ensemble,
)
from mnemoscope.train.masks import derive_seed, full_masks, subset_masks
from mnemoscope.train.options import TrainConfig

__all__ = [
    "Checkpoint",
    "TrainConfig",
    "TrainedEnsemble",
    "derive_seed",
    "epoch_orders",
    "full_masks",
    "init_module",
    "subset_masks",
    "train_ensemble",
]
