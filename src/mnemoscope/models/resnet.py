"""A small residual network with GroupNorm, for images, sequences and feature vectors."""

from __future__ import annotations

import math

import torch
from pydantic import Field
from torch import nn

from mnemoscope.models.options import MAX_DEPTH, MAX_WIDTH, ArchOptions


class ResNetOptions(ArchOptions):
    width: int = Field(16, ge=1, le=MAX_WIDTH)
    """Channels of every residual block (units, for a feature vector); at most 4096."""
    depth: int = Field(2, ge=1, le=MAX_DEPTH)
    """Number of residual blocks; at most 64."""


def _groups(width: int) -> int:
    """GroupNorm groups of about 4 channels each (Wu & He 2018 find small groups work
    as well as 32 groups); the count divides ``width``."""
    return math.gcd(width, max(1, width // 4))


class _ConvBlock(nn.Module):
    """``x + GN(conv(ReLU(GN(conv(x)))))`` followed by ReLU (He et al. 2016, Fig. 2)."""

    def __init__(self, conv: type[nn.Module], width: int, kernel: int) -> None:
        super().__init__()
        self.conv1 = conv(width, width, kernel, padding=kernel // 2)
        self.norm1 = nn.GroupNorm(_groups(width), width)
        self.conv2 = conv(width, width, kernel, padding=kernel // 2)
        self.norm2 = nn.GroupNorm(_groups(width), width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.norm1(self.conv1(x)))
        return torch.relu(x + self.norm2(self.conv2(h)))


class _DenseBlock(nn.Module):
    """Pre-norm residual MLP block ``x + W₂ ReLU(W₁ LN(x))`` for feature vectors."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, width)
        self.fc2 = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(torch.relu(self.fc1(self.norm(x))))


class _GlobalAveragePool(nn.Module):
    """``[B, C, *spatial]`` → ``[B, C]``, the mean over positions."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(2).mean(-1)


class ResNet(nn.Module):
    """Stem, ``depth`` residual blocks at constant width, global average pool, classifier.

    ``[C, H, W]`` inputs use 3×3 2-D convolutions, ``[C, L]`` inputs 5-wide 1-D ones;
    the stem has stride 2 (as He et al.'s), halving each spatial axis, and the blocks
    keep that size (the built-in inputs are only 8×8 and 40 long); ``[D]`` inputs
    (and any other shape, flattened) use pre-norm residual MLP blocks and a final
    LayerNorm + ReLU. ``head`` is registered last: it is the model's last layer,
    and its input (``width`` features) is the penultimate representation.
    """

    def __init__(self, input_shape: tuple[int, ...], n_classes: int, width: int, depth: int):
        super().__init__()
        if len(input_shape) in (2, 3):
            conv = nn.Conv2d if len(input_shape) == 3 else nn.Conv1d
            kernel = 3 if len(input_shape) == 3 else 5
            self.stem = nn.Sequential(
                conv(input_shape[0], width, kernel, stride=2, padding=kernel // 2),
                nn.GroupNorm(_groups(width), width),
                nn.ReLU(),
            )
            self.blocks = nn.Sequential(*(_ConvBlock(conv, width, kernel) for _ in range(depth)))
            self.pool: nn.Module = _GlobalAveragePool()
        else:
            self.stem = nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), width))
            self.blocks = nn.Sequential(*(_DenseBlock(width) for _ in range(depth)))
            self.pool = nn.Sequential(nn.LayerNorm(width), nn.ReLU())
        self.head = nn.Linear(width, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.blocks(self.stem(x))))


def build_resnet(
    input_shape: tuple[int, ...], n_classes: int, width: int = 16, depth: int = 2
) -> nn.Module:
    return ResNet(input_shape, n_classes, width, depth)
