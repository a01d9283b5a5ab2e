"""Whether models fit their own training labels well enough for memorization to show."""

from __future__ import annotations

FIT_OVERALL = 0.9
FIT_FLIPPED = 0.5


def fit_problem(fit: dict) -> str | None:
    """None when the fit is enough, else the one-line reason."""
    overall, flipped = fit["in_subset_accuracy"], fit.get("in_subset_accuracy_flipped")
    if overall < FIT_OVERALL:
        return f"fits {overall:.0%} of its own training labels (< {FIT_OVERALL:.0%})"
    if flipped is not None and flipped < FIT_FLIPPED:
        return (
            f"fits {overall:.0%} of its own training labels but only {flipped:.0%} of the "
            f"flipped ones (< {FIT_FLIPPED:.0%})"
        )
    return None
