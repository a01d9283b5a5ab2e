"""Seeded random projections, shared by TRAK's projected gradients and sample information's
projected Jacobians: a neutral module, so neither family imports the other."""

from __future__ import annotations

import math
from typing import Literal

import torch

from mnemoscope.train import derive_seed

Distribution = Literal["rademacher", "gaussian"]

CHUNK_BYTES = 16 * 2**20
"""Bytes of one chunk of rows of a projection matrix, the unit in which it is drawn."""
CACHE_BYTES = 64 * 2**20
"""A projection matrix up to this size is kept, for the key it was last drawn for, after
it is first drawn; a larger one is drawn again, chunk by chunk, on every use."""


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


class RandomProjection:
    """``x ↦ x P`` for a seeded ``P [rows, k]`` with i.i.d. entries of variance ``1/k``
    (:func:`random_matrix` scaled by ``1/√k``), so ``E[P Pᵀ] = I`` and inner products are
    preserved in expectation, with relative error shrinking like ``1/√k``
    (Johnson–Lindenstrauss).

    One instance serves many matrices of that shape, each named by an integer ``key``
    (TRAK: seed and model; sample information: seed and parameter tensor): chunk c of rows
    of the matrix of ``key`` is drawn from ``derive_seed(*key, c)`` on the CPU, so it is
    the same on every device, in every process and whatever else was drawn. Memory: the
    last key's matrix when it takes at most ``cache_bytes`` (None: every key's matrix, kept
    for the life of the instance), else one chunk at a time.
    """

    def __init__(
        self,
        rows: int,
        k: int,
        distribution: Distribution = "gaussian",
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
        cache_bytes: int | None = CACHE_BYTES,
    ) -> None:
        self.rows, self.k, self.distribution = rows, k, distribution
        self.dtype, self.device = dtype, torch.device(device)
        size = torch.finfo(dtype).bits // 8
        step = max(1, CHUNK_BYTES // (size * k))
        self.chunks = [(s, min(s + step, rows)) for s in range(0, rows, step)]
        self.keeps = cache_bytes is None or size * rows * k <= cache_bytes
        self.every_key = cache_bytes is None
        self.cache: dict[tuple[tuple[int, ...], int], torch.Tensor] = {}

    def chunk(self, key: tuple[int, ...], c: int) -> torch.Tensor:
        """Rows ``chunks[c]`` of the matrix of ``key``, ``[rows_c, k]``, scaled."""
        if (key, c) in self.cache:
            return self.cache[key, c]
        start, stop = self.chunks[c]
        draw = random_matrix(
            derive_seed(*key, c), stop - start, self.k, self.distribution, self.dtype
        )
        matrix = (draw / math.sqrt(self.k)).to(self.device)
        if self.keeps:
            if not self.every_key and self.cache and next(iter(self.cache))[0] != key:
                self.cache.clear()  # another key's matrix: keep only the current one
            self.cache[key, c] = matrix
        return matrix

    def matrix(self, key: tuple[int, ...]) -> torch.Tensor:
        """The whole ``[rows, k]`` matrix of ``key``."""
        return torch.cat([self.chunk(key, c) for c in range(len(self.chunks))])

    def __call__(self, x: torch.Tensor, key: tuple[int, ...]) -> torch.Tensor:
        """``x [..., rows]`` → ``[..., k]``, ``x P`` in the projection's dtype."""
        x = x.to(self.dtype)
        if len(self.chunks) == 1:
            return x @ self.chunk(key, 0)
        out = torch.zeros(*x.shape[:-1], self.k, dtype=self.dtype, device=x.device)
        for c, (start, stop) in enumerate(self.chunks):
            out += x[..., start:stop] @ self.chunk(key, c)
        return out
