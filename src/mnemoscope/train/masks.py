"""Subset masks ``[K, n]``: which training examples each of K models sees."""

from __future__ import annotations

import numpy as np
import torch


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from integers, stable across platforms and processes."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(2, np.uint64)[0] >> 1)


def subset_masks(n_models: int, n_examples: int, fraction: float, seed: int) -> torch.Tensor:
    """``[K, n]`` bool: row k holds exactly ``round(fraction · n)`` examples, drawn without
    replacement with a seed derived from ``(seed, k)`` – so row k is the same whatever K is.

    The Feldman–Zhang estimator (Alg. 1) and LiRA's shadow models use such masks.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"subset fraction must lie in (0, 1], got {fraction}")
    size = max(1, int(round(fraction * n_examples)))
    masks = torch.zeros(n_models, n_examples, dtype=torch.bool)
    for k in range(n_models):
        rng = np.random.default_rng(derive_seed(seed, 0x5B5E7, k))
        masks[k, torch.from_numpy(rng.choice(n_examples, size=size, replace=False))] = True
    return masks


def full_masks(n_models: int, n_examples: int) -> torch.Tensor:
    """``[K, n]`` all True: every model sees every training example."""
    return torch.ones(n_models, n_examples, dtype=torch.bool)
