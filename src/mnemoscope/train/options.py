"""Training hyperparameters shared by every model of a study (the config's ``train:`` block)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field


def _list_as_tuple(value: Any) -> Any:
    """YAML and JSON have no tuples: accept a list (its items stay strictly validated)."""
    return tuple(value) if isinstance(value, list) else value


Beta = Annotated[float, Field(ge=0, lt=1)]


class TrainConfig(BaseModel):
    """How each model is trained; one model or K at once, the same hyperparameters.

    Strict: a number written as a string, a boolean where a number is meant or a
    fraction where an integer is meant is refused; so is ``.inf`` or ``.nan``.
    """

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    epochs: int = Field(20, gt=0, le=10_000)
    """Passes over each model's own training subset (at most 10 000)."""
    batch_size: int = Field(128, gt=0, le=1_000_000)
    """Examples per step per model; a subset's last batch may be smaller (at most 10⁶)."""
    optimizer: Literal["sgd", "adam", "adamw"] = "sgd"
    lr: float = Field(0.1, gt=0, le=1e3)
    """Learning rate, constant over training (recorded with each checkpoint for TracIn);
    at most 1000."""
    momentum: float = Field(0.9, ge=0, lt=1)
    """SGD momentum (PyTorch semantics, no dampening); ignored by Adam."""
    betas: Annotated[tuple[Beta, Beta], BeforeValidator(_list_as_tuple)] = (0.9, 0.999)
    """Adam's moment decay rates, each in [0, 1)."""
    weight_decay: float = Field(0.0005, ge=0, le=1e3)
    """L2 penalty added to the gradient (sgd, adam) or decoupled decay (adamw); at most 1000."""
    chunk_size: int | None = Field(None, gt=0, le=100_000)
    """Models trained at once; bounds memory. None: all of them (at most 64). At most 100 000."""
