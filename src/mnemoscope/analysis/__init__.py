"""Statistics over score tables: agreement between methods and mislabel detection."""

from mnemoscope.analysis.correlations import correlation_table, correlation_with_ci
from mnemoscope.analysis.detection import detection_auc, detection_table

__all__ = ["correlation_table", "correlation_with_ci", "detection_auc", "detection_table"]
