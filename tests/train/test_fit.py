"""fit_problem: when trained models fit too little of their data for memorization to show."""

from __future__ import annotations

from mnemoscope.runner.study import FIT_WARNING as STUDY_FIT_WARNING
from mnemoscope.train.fit import FIT_WARNING, FLIPPED_FIT_WARNING, fit_problem


def test_fine_when_both_fits_are_at_or_above_their_thresholds():
    assert fit_problem({"in_subset_accuracy": 0.97, "in_subset_accuracy_flipped": 0.8}) is None
    edge = {"in_subset_accuracy": FIT_WARNING, "in_subset_accuracy_flipped": FLIPPED_FIT_WARNING}
    assert fit_problem(edge) is None
    assert fit_problem({"in_subset_accuracy": 0.95, "in_subset_accuracy_flipped": None}) is None
    assert fit_problem({"in_subset_accuracy": 0.95}) is None  # no label noise


def test_too_few_flipped_labels_fitted():
    problem = fit_problem({"in_subset_accuracy": 0.91, "in_subset_accuracy_flipped": 0.27})
    assert problem == (
        "fits 91% of its own training labels but only 27% of the flipped ones (< 50%)"
    )


def test_too_few_training_labels_fitted_says_both():
    problem = fit_problem({"in_subset_accuracy": 0.42, "in_subset_accuracy_flipped": 0.1})
    assert problem == "fits only 42% of its own training labels (10% of the flipped ones) (< 90%)"
    assert fit_problem({"in_subset_accuracy": 0.899}) == (
        "fits only 90% of its own training labels (< 90%)"
    )


def test_the_study_threshold_is_the_same_one():
    assert STUDY_FIT_WARNING is FIT_WARNING == 0.9
