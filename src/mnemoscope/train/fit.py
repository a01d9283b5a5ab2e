"""Whether trained models fit their training labels well enough for memorization to show.

Memorization scores compare models trained with and without an example; they mean
little when the models do not fit their own training labels, and nothing about the
flipped labels when the models fit hardly any of them (a flipped label that no model
fits looks like an ordinary hard example to every score). One pure function, so that a
run's warnings and a table's ``fit`` column say the same.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

FIT_WARNING = 0.9
"""Below this final accuracy of models on their own training labels, the run warns."""
FLIPPED_FIT_WARNING = 0.5
"""Below this final accuracy on their own flipped training labels, the run warns."""


def fit_problem(record_fit: Mapping[str, Any]) -> str | None:
    """None when models fit their data, else the one-line reason.

    ``record_fit`` is a training stage record's ``fit``: ``in_subset_accuracy`` (final
    accuracy over every model and example of its own subset) and
    ``in_subset_accuracy_flipped`` (the same over the examples whose label was flipped;
    None when none were).
    """
    overall = record_fit["in_subset_accuracy"]
    flipped = record_fit.get("in_subset_accuracy_flipped")
    on_flipped = "" if flipped is None else f" ({flipped:.0%} of the flipped ones)"
    if overall < FIT_WARNING:
        return (
            f"fits only {overall:.0%} of its own training labels{on_flipped} (< {FIT_WARNING:.0%})"
        )
    if flipped is not None and flipped < FLIPPED_FIT_WARNING:
        return (
            f"fits {overall:.0%} of its own training labels but only {flipped:.0%} of the "
            f"flipped ones (< {FLIPPED_FIT_WARNING:.0%})"
        )
    return None
