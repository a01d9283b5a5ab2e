"""Architecture options: one strict pydantic model per architecture that takes any."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

MAX_WIDTH = 4096
"""The widest layer an option may ask for (a typo guard, not a hardware limit)."""
MAX_DEPTH = 64
"""The most blocks an option may ask for."""


class ArchOptions(BaseModel):
    """Base of every architecture's options: unknown keys, strings for numbers, booleans
    for integers and non-finite numbers are refused; every size has an upper bound."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, frozen=True)
