"""Architecture registry: a name, an input shape and a class count give an ``nn.Module``.

Every architecture must run under ``torch.func.vmap`` over stacked parameters,
so none uses BatchNorm (its running statistics are buffers mutated in place);
where normalisation helps, GroupNorm or LayerNorm is used instead.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from mnemoscope.errors import ConfigError


@dataclass(frozen=True)
class Architecture:
    name: str
    description: str
    build: Callable[[tuple[int, ...], int], nn.Module]


def _logreg(input_shape: tuple[int, ...], n_classes: int) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), n_classes))


def _mlp(input_shape: tuple[int, ...], n_classes: int, width: int = 128) -> nn.Module:
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(math.prod(input_shape), width),
        nn.ReLU(),
        nn.Linear(width, width),
        nn.ReLU(),
        nn.Linear(width, n_classes),
    )


def _cnn(input_shape: tuple[int, ...], n_classes: int) -> nn.Module:
    """Two conv blocks then a small classifier; 2-D for ``[C, H, W]``, 1-D for ``[C, L]``."""
    if len(input_shape) == 3:
        conv, pool, (channels, *spatial) = nn.Conv2d, nn.MaxPool2d, input_shape
        kernel = 3
    elif len(input_shape) == 2:
        conv, pool, (channels, *spatial) = nn.Conv1d, nn.MaxPool1d, input_shape
        kernel = 5
    else:
        raise ConfigError(
            f"arch 'cnn' needs image [C, H, W] or sequence [C, L] inputs, got shape {input_shape}"
        )
    pad = kernel // 2
    out_spatial = math.prod(s // 4 for s in spatial)
    if out_spatial == 0:
        raise ConfigError(f"arch 'cnn' needs spatial size >= 4, got input shape {input_shape}")
    return nn.Sequential(
        conv(channels, 8, kernel, padding=pad),
        nn.GroupNorm(4, 8),
        nn.ReLU(),
        pool(2),
        conv(8, 16, kernel, padding=pad),
        nn.GroupNorm(4, 16),
        nn.ReLU(),
        pool(2),
        nn.Flatten(),
        nn.Linear(16 * out_spatial, 64),
        nn.ReLU(),
        nn.Linear(64, n_classes),
    )


ARCHITECTURES: dict[str, Architecture] = {
    a.name: a
    for a in (
        Architecture("logreg", "multinomial logistic regression (one linear layer)", _logreg),
        Architecture("mlp", "two hidden layers of 128 ReLU units", _mlp),
        Architecture(
            "cnn", "two conv+GroupNorm+ReLU+maxpool blocks, 2-D or 1-D by input shape", _cnn
        ),
    )
}


def build_model(arch: str, input_shape: tuple[int, ...], n_classes: int) -> nn.Module:
    """Build a freshly initialised ``arch`` (init drawn from torch's global RNG)."""
    if arch not in ARCHITECTURES:
        raise ConfigError(f"unknown arch '{arch}'; known: {', '.join(sorted(ARCHITECTURES))}")
    return ARCHITECTURES[arch].build(tuple(input_shape), n_classes)


def last_layer_module(model: nn.Module) -> nn.Module:
    """The model's last module that has parameters of its own (its classifier)."""
    owners = [module for _, module in model.named_modules() if list(module.parameters(False))]
    if not owners:
        raise ConfigError("the model has no parameters")
    return owners[-1]


def last_layer_names(model: nn.Module) -> list[str]:
    """Parameter names of the model's last module that has parameters (its classifier)."""
    owners = [name for name, module in model.named_modules() if list(module.parameters(False))]
    last = owners[-1]
    return [f"{last}.{p}" if last else p for p, _ in model.get_submodule(last).named_parameters()]
