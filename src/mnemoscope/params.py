"""Which parameters a method differentiates (a config's ``params:``): a neutral helper of
the influence and memorization families."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BeforeValidator
from torch import nn

from mnemoscope.errors import ConfigError
from mnemoscope.layers import last_layer_names

ParamSelection = Literal["all", "last_layer"] | list[str]


def check_selection(params: Any) -> Any:
    """A config's ``params`` value as given if it is one (``'all'``, ``'last_layer'`` or a
    non-empty list of names; a tuple from Python code becomes a list); ValueError if not."""
    if isinstance(params, str) and params in ("all", "last_layer"):
        return params
    if isinstance(params, tuple):  # a list from Python code may come as a tuple
        params = list(params)
    if (
        isinstance(params, list)
        and params
        and all(isinstance(name, str) and name for name in params)
    ):
        return params
    raise ValueError("expected 'all', 'last_layer' or a non-empty list of parameter names")


ParamsSetting = Annotated[ParamSelection, BeforeValidator(check_selection)]
"""A config's ``params`` field: a value :func:`check_selection` refuses is a one-line error."""


def select_params(module: nn.Module, selection: ParamSelection) -> list[str]:
    """Names of the parameters to differentiate: ``'all'``, ``'last_layer'`` or a list."""
    names = [name for name, _ in module.named_parameters()]
    if selection == "all":
        return names
    if selection == "last_layer":
        return last_layer_names(module)
    if not selection:
        raise ConfigError("params: the list of parameter names is empty")
    unknown = [name for name in selection if name not in names]
    if unknown:
        raise ConfigError(f"params: unknown parameter names {unknown}; the model has {names}")
    return list(selection)
