"""What every part of the config shares: strict models and one-line field errors."""

from __future__ import annotations

from pydantic import ConfigDict
from pydantic_core import PydanticCustomError

_STRICT = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


def _field_error(field: str, message: str) -> PydanticCustomError:
    """An error located at ``field`` of the model being validated (one line, as a
    method entry's)."""
    return PydanticCustomError(
        "method_entry", "{loc}: {message}", {"loc": field, "message": message}
    )
