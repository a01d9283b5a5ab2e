"""The memorization family: estimators that turn trained ensembles into per-example scores.

An estimator declares the ensembles it needs (:meth:`ensembles`, usually subset
masks); the runner asks ``train`` for them (estimators never train models
themselves), hands them to :meth:`fit`, and :meth:`score` gives the scores.
Estimators asking for identical masks share one trained ensemble.
"""

from __future__ import annotations

from typing import ClassVar

from mnemoscope.estimator import Estimator, Family


class MemorizationEstimator(Estimator):
    family: ClassVar[Family] = "memorization"
