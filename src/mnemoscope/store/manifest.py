"""The run's manifest as a typed model: what ran, with which config, data and code.

``manifest.json`` is written by the runner and read by everything else (report,
summary, query) through :class:`~mnemoscope.store.RunDir`; a manifest that does not
match this model is a one-line user error, not a half-drawn report.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class DatasetInfo(BaseModel):
    """One dataset of the run, as its data stage built it."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["image", "sequence", "tabular"]
    """``image`` ([C, H, W] inputs), ``sequence`` ([C, L]) or ``tabular`` ([d])."""
    input_shape: list[int]
    n_classes: int
    n_train: int
    n_test: int
    n_mislabeled: int
    n_canaries: int = 0
    label_noise: float
    n_noisy_input: int = 0
    """Training inputs given Gaussian noise (``corruptions.noise``)."""
    n_occluded: int = 0
    n_adversarial: int = 0
    n_undersampled_kept: int | None = None
    """Training examples of the under-sampled class kept (None: no ``undersample``)."""
    n_noisy_source: int = 0
    """Training examples of source ``noisy`` (``sources``)."""
    fingerprint: str
    """SHA-256 of the dataset's tensors."""


class FileDigest(BaseModel):
    """Size and SHA-256 of an output file when its stage finished."""

    model_config = ConfigDict(extra="forbid")

    size: int
    sha256: str


class StageRecord(BaseModel):
    """A finished stage: its cache key, outputs (with their digests) and time."""

    model_config = ConfigDict(extra="forbid")

    key: str
    seconds: float
    outputs: list[str]
    files: dict[str, FileDigest] = Field(default_factory=dict)
    """Each output's size and hash: a stage whose outputs changed since is not finished."""
    finished: str
    record: dict[str, Any] = Field(default_factory=dict)
    """What the stage reported about its work (e.g. the dataset it built)."""


class Manifest(BaseModel):
    """``manifest.json``."""

    model_config = ConfigDict(extra="forbid")

    name: str = ""
    config: dict[str, Any] = Field(default_factory=dict)
    versions: dict[str, str] = Field(default_factory=dict)
    started: str | None = None
    datasets: dict[str, DatasetInfo] = Field(default_factory=dict)
    stages: dict[str, StageRecord] = Field(default_factory=dict)
