"""Statistics over score tables: agreement between methods, mislabel detection, and the
study's tables (top-k overlap, cross-architecture agreement, leakage, applications, removal)."""

from mnemoscope.analysis.applications import accuracy_curve_rows, detection_by_kind, group_means
from mnemoscope.analysis.correlations import correlation_table, correlation_with_ci
from mnemoscope.analysis.cross_arch import cross_arch_table
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
from mnemoscope.analysis.leakage import leakage_table
from mnemoscope.analysis.overlap import overlap_table
from mnemoscope.analysis.removal import removal_table

__all__ = [
    "INFLUENCE_EVAL",
    "LdsData",
    "accuracy_curve_rows",
    "correlation_table",
    "correlation_with_ci",
    "cross_arch_table",
    "detection_by_kind",
    "detection_auc",
    "detection_table",
    "group_means",
    "influence_eval_table",
    "lds",
    "lds_masks",
    "leakage_table",
    "loo_agreement",
    "mislabel_auc",
    "overlap_table",
    "removal_table",
]
