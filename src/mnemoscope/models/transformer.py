"""A tiny pre-norm transformer over patches: of an image, of a sequence, of a vector."""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import Field, model_validator
from torch import nn
from torch.nn import functional as F

from mnemoscope.models.options import MAX_DEPTH, MAX_WIDTH, ArchOptions

TOKENS = 16
"""Tokens aimed at when ``patch`` is not given: the patch side is chosen to give about
this many (16 patches of 2×2 for an 8×8 image, 14 of 3 for a length-40 sequence)."""


class TransformerOptions(ArchOptions):
    width: int = Field(32, ge=1, le=MAX_WIDTH)
    """Token embedding size; a multiple of ``heads``; at most 4096."""
    depth: int = Field(2, ge=1, le=MAX_DEPTH)
    """Number of transformer blocks (attention + MLP); at most 64."""
    heads: int = Field(4, ge=1, le=64)
    """Attention heads per block; at most 64."""
    patch: int | None = Field(None, ge=1, le=4096)
    """Patch side (square patches of an image, chunks of a sequence or vector), zero-padded
    at the end to a whole number of patches; None: chosen for about 16 tokens."""
    pool: Literal["mean", "cls"] = "mean"
    """``mean``: the classifier reads the mean of the final tokens; ``cls``: a learned
    class token prepended to the patches."""

    @model_validator(mode="after")
    def _heads_divide_width(self) -> TransformerOptions:
        if self.width % self.heads:
            raise ValueError(f"width {self.width} is not a multiple of heads {self.heads}")
        return self


def _patch_side(spatial: tuple[int, ...], patch: int | None) -> int:
    if patch is not None:
        return patch
    return max(1, math.ceil((math.prod(spatial) / TOKENS) ** (1 / len(spatial))))


class _Patches(nn.Module):
    """``[B, C, *spatial]`` → ``[B, T, C·p^d]``: non-overlapping patches of side ``p``, the
    input zero-padded at the end of each spatial axis to a multiple of ``p``. Reshapes
    and a permute only, so it runs under ``vmap`` like any view."""

    def __init__(self, spatial: tuple[int, ...], side: int) -> None:
        super().__init__()
        self.side = side
        self.counts = tuple(math.ceil(s / side) for s in spatial)
        self.padding = [
            amount
            for s, c in zip(reversed(spatial), reversed(self.counts))
            for amount in (0, c * side - s)
        ]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x, self.padding)
        p, batch, channels = self.side, x.shape[0], x.shape[1]
        if len(self.counts) == 1:  # [B, C, n·p] → [B, n, C, p]
            x = x.reshape(batch, channels, self.counts[0], p).permute(0, 2, 1, 3)
        else:  # [B, C, h·p, w·p] → [B, h, w, C, p, p]
            h, w = self.counts
            x = x.reshape(batch, channels, h, p, w, p).permute(0, 2, 4, 1, 3, 5)
        return x.reshape(batch, math.prod(self.counts), -1)


class _SelfAttention(nn.Module):
    """Multi-head scaled dot-product self-attention ``softmax(QKᵀ/√d)V`` (Vaswani et al.
    2017, eq. 1), written out with matmul and softmax so that only ops with plain vmap
    rules run (no fused attention kernel, as ``nn.MultiheadAttention`` may pick)."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, width = x.shape
        d = width // self.heads
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.heads, d).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # [B, heads, T, d]
        weights = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(d), dim=-1)
        return self.out((weights @ v).transpose(1, 2).reshape(batch, tokens, width))


class _Block(nn.Module):
    """Pre-norm block: ``x + Attn(LN(x))``, then ``x + MLP(LN(x))`` (GELU, 2× width)."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.attention = _SelfAttention(width, heads)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(
            nn.Linear(width, 2 * width), nn.GELU(), nn.Linear(2 * width, width)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class Transformer(nn.Module):
    """Patch embedding + learned position embedding, ``depth`` pre-norm blocks, a final
    LayerNorm, mean pooling or a class token, and a linear classifier ``head``.

    ``[C, H, W]`` inputs are cut into square patches (ViT, Dosovitskiy et al. 2021),
    ``[C, L]`` inputs into chunks along L, ``[D]`` inputs (and any other shape,
    flattened) into chunks of the vector. ``head`` is registered last: it is the
    model's last layer, its input (``width`` features) the penultimate representation.
    """

    def __init__(
        self,
        input_shape: tuple[int, ...],
        n_classes: int,
        width: int,
        depth: int,
        heads: int,
        patch: int | None,
        pool: Literal["mean", "cls"],
    ) -> None:
        super().__init__()
        if len(input_shape) in (2, 3):
            channels, spatial = input_shape[0], tuple(input_shape[1:])
            self.unflatten: nn.Module = nn.Identity()
        else:
            channels, spatial = 1, (math.prod(input_shape),)
            self.unflatten = nn.Sequential(nn.Flatten(), nn.Unflatten(1, (1, spatial[0])))
        side = _patch_side(spatial, patch)
        self.patches = _Patches(spatial, side)
        n_tokens = math.prod(self.patches.counts) + (pool == "cls")
        self.pool = pool
        self.position = nn.Parameter(0.02 * torch.randn(n_tokens, width))
        self.cls = nn.Parameter(torch.zeros(1, width)) if pool == "cls" else None
        self.embed = nn.Linear(channels * side ** len(spatial), width)
        self.blocks = nn.Sequential(*(_Block(width, heads) for _ in range(depth)))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.embed(self.patches(self.unflatten(x)))
        if self.cls is not None:
            tokens = torch.cat([self.cls.expand(tokens.shape[0], 1, -1), tokens], dim=1)
        h = self.norm(self.blocks(tokens + self.position))
        return self.head(h[:, 0] if self.cls is not None else h.mean(1))


def build_transformer(
    input_shape: tuple[int, ...],
    n_classes: int,
    width: int = 32,
    depth: int = 2,
    heads: int = 4,
    patch: int | None = None,
    pool: Literal["mean", "cls"] = "mean",
) -> nn.Module:
    return Transformer(input_shape, n_classes, width, depth, heads, patch, pool)
