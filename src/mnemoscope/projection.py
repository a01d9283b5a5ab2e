"""Seeded random projection matrices, shared by TRAK's projected gradients and sample
information's projected Jacobians: a neutral module, so neither family imports the other."""

from __future__ import annotations

from typing import Literal

import torch

Distribution = Literal["rademacher", "gaussian"]


def random_matrix(
    seed: int,
    rows: int,
    columns: int,
    distribution: Distribution = "gaussian",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """``[rows, columns]`` i.i.d. entries, ±1 with equal odds (``rademacher``) or standard
    normal (``gaussian``), drawn on the CPU from ``seed`` so they are the same on every
    device; the caller scales them (by ``1/sqrt(columns)`` for an unbiased projection)."""
    generator = torch.Generator().manual_seed(seed)
    if distribution == "rademacher":
        return torch.randint(0, 2, (rows, columns), generator=generator).to(dtype) * 2 - 1
    return torch.randn(rows, columns, generator=generator, dtype=dtype)
