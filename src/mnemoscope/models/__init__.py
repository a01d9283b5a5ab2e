"""Architectures by name (logreg, mlp, cnn, resnet, transformer, and any registered with
:func:`register_arch`); all vmap-safe, checked when built."""

from mnemoscope.layers import last_layer_module, last_layer_names
from mnemoscope.models.options import ArchOptions
from mnemoscope.models.registry import (
    ARCHITECTURES,
    Architecture,
    ArchOptionError,
    arch_options,
    arch_source,
    build_model,
    register_arch,
)

__all__ = [
    "ARCHITECTURES",
    "ArchOptionError",
    "ArchOptions",
    "Architecture",
    "arch_options",
    "arch_source",
    "build_model",
    "last_layer_module",
    "last_layer_names",
    "register_arch",
]
