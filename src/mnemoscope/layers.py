"""Which module of a model is its classifier: a neutral helper read by the task (features),
the parameter selection (``params: last_layer``) and the models package."""

from __future__ import annotations

from torch import nn

from mnemoscope.errors import ConfigError


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
