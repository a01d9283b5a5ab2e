"""Training hyperparameters shared by every model of a study (the config's ``train:`` block)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveInt


class TrainConfig(BaseModel):
    """How each model is trained; one model or K at once, the same hyperparameters."""

    model_config = ConfigDict(extra="forbid")

    epochs: PositiveInt = 20
    """Passes over each model's own training subset."""
    batch_size: PositiveInt = 128
    """Examples per step per model; a subset's last batch may be smaller."""
    optimizer: Literal["sgd", "adam", "adamw"] = "sgd"
    lr: float = Field(0.1, gt=0)
    """Learning rate, constant over training (recorded with each checkpoint for TracIn)."""
    momentum: float = Field(0.9, ge=0, lt=1)
    """SGD momentum (PyTorch semantics, no dampening); ignored by Adam."""
    betas: tuple[float, float] = (0.9, 0.999)
    """Adam's moment decay rates."""
    weight_decay: float = Field(0.0005, ge=0)
    """L2 penalty added to the gradient (sgd, adam) or decoupled decay (adamw)."""
    chunk_size: PositiveInt | None = None
    """Models trained at once; bounds memory. None: all of them (at most 64)."""
