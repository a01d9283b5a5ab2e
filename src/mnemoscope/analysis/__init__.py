"""Statistics over score tables: agreement between methods and mislabel detection."""

from mnemoscope.analysis.correlations import correlation_table, correlation_with_ci
from mnemoscope.analysis.detection import detection_auc, detection_table
from mnemoscope.analysis.influence_eval import (
    INFLUENCE_EVAL,
    LdsData,
    influence_eval_table,
    lds,
    lds_masks,
    loo_agreement,
    mislabel_auc,
)

__all__ = [
    "INFLUENCE_EVAL",
    "LdsData",
    "correlation_table",
    "correlation_with_ci",
    "detection_auc",
    "detection_table",
    "influence_eval_table",
    "lds",
    "lds_masks",
    "loo_agreement",
    "mislabel_auc",
]
