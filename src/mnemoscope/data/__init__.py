"""Datasets: built-in pools or the user's files, splits, label noise, provenance (knows
nothing of models)."""

from mnemoscope.data.builtin import BUILTIN, BuiltinDataset, register_dataset
from mnemoscope.data.canaries import Canaries, insert_canaries
from mnemoscope.data.corruptions import corrupt, split_sources, undersample
from mnemoscope.data.dataset import CORRUPTIONS, SOURCES, Dataset, Kind
from mnemoscope.data.files import FORMATS, FileSource, load_pool, source_digest
from mnemoscope.data.prepare import Layout, flip_labels, layout, prepare

__all__ = [
    "BUILTIN",
    "CORRUPTIONS",
    "FORMATS",
    "SOURCES",
    "BuiltinDataset",
    "Canaries",
    "Dataset",
    "FileSource",
    "Kind",
    "Layout",
    "corrupt",
    "flip_labels",
    "insert_canaries",
    "layout",
    "load_pool",
    "prepare",
    "register_dataset",
    "source_digest",
    "split_sources",
    "undersample",
]
