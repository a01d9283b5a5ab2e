"""Architectures by name (logreg, mlp, cnn); all vmap-safe."""

from mnemoscope.models.registry import (
    ARCHITECTURES,
    Architecture,
    build_model,
    last_layer_module,
    last_layer_names,
)

__all__ = ["ARCHITECTURES", "Architecture", "build_model", "last_layer_module", "last_layer_names"]
