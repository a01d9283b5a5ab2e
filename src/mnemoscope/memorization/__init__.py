"""Memorization and leakage estimators (registered by name)."""

from mnemoscope.memorization.base import MemorizationEstimator
from mnemoscope.memorization.feldman_zhang import FeldmanZhang, FeldmanZhangConfig

__all__ = ["FeldmanZhang", "FeldmanZhangConfig", "MemorizationEstimator"]
