"""Datasets: built-in pools, splits, label noise, provenance (knows nothing of models)."""

from mnemoscope.data.builtin import BUILTIN, BuiltinDataset
from mnemoscope.data.dataset import Dataset, Kind
from mnemoscope.data.prepare import flip_labels, prepare

__all__ = ["BUILTIN", "BuiltinDataset", "Dataset", "Kind", "flip_labels", "prepare"]
