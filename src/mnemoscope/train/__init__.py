"""Training: one trainer for 1..K models on subset masks (torch.func, vmap over models)."""

from mnemoscope.train.ensemble import epoch_orders, init_module, train_ensemble
from mnemoscope.train.masks import derive_seed, full_masks, subset_masks
from mnemoscope.train.options import TrainConfig
from mnemoscope.train.spec import EnsembleSpec, Sharing, merge_specs
from mnemoscope.train.trained import Checkpoint, TrainedEnsemble

__all__ = [
    "Checkpoint",
    "EnsembleSpec",
    "Sharing",
    "TrainConfig",
    "TrainedEnsemble",
    "derive_seed",
    "epoch_orders",
    "full_masks",
    "merge_specs",
    "init_module",
    "subset_masks",
    "train_ensemble",
]
