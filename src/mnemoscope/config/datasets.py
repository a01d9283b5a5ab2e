"""A ``datasets:`` entry: a built-in dataset by name, or the user's files by ``path``
(read, checked and hashed when the config is validated), its canaries and its planted
provenance (corruptions, an under-sampled class, two sources)."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationInfo,
    field_validator,
    model_serializer,
    model_validator,
)

from mnemoscope.config.common import _STRICT, _field_error
from mnemoscope.config.provenance import (
    CorruptionsConfig,
    SourcesConfig,
    UndersampleConfig,
    check_planting,
)
from mnemoscope.data import BUILTIN, FileSource, Layout, layout, source_digest
from mnemoscope.data.files import Format, Normalize, infer_format
from mnemoscope.errors import ConfigError, DataError, UserError

_DATASET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_FILE_KEYS = (
    "path",
    "format",
    "test_path",
    "label_column",
    "feature_columns",
    "image_column",
    "x_key",
    "y_key",
    "normalize",
    "sha256",
)
# the formats each file-only key applies to
_KEY_FORMATS = {
    "test_path": ("csv", "parquet", "npz"),
    "label_column": ("csv", "parquet", "hf", "cifar100"),
    "feature_columns": ("csv", "parquet", "hf"),
    "image_column": ("hf",),
    "x_key": ("npz",),
    "y_key": ("npz",),
}


class CanariesConfig(BaseModel):
    """Training examples of one class turned into canaries: each gets a unique pattern
    (a seeded ``fraction`` of its input coordinates set to ``±strength``) and a label of
    another class that only memorization explains; ``examples.parquet`` marks them
    (``is_canary``) and the ``canary`` method scores them."""

    model_config = ConfigDict(
        extra="forbid", strict=True, allow_inf_nan=False, populate_by_name=True
    )

    n: int = Field(ge=1, le=10_000)
    """How many canaries (at most the class's clean training examples)."""
    class_: int = Field(0, ge=0, le=100_000, alias="class")
    """The class the canaries are drawn from."""
    fraction: float = Field(0.1, gt=0, le=1)
    """Fraction of the input coordinates each pattern sets."""
    strength: float = Field(3.0, gt=0, le=1_000)
    """Value (±) the pattern sets them to, in units of the standardised inputs."""

    @model_serializer(mode="wrap")
    def _class_as_written(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """Dump the class under ``class``, the key a config file uses (``class_`` is only
        the Python name), so a saved config reads back as written."""
        data = handler(self)
        if "class_" in data:
            data["class"] = data.pop("class_")
        return data


class DatasetConfig(BaseModel):
    """A built-in dataset by name, or the user's own files by ``path``.

    The files are read and checked when the config is validated (a bad file is one
    line naming it, before a run writes anything) and their SHA-256 is recorded in
    ``sha256``, so the data stage's cache key follows the file contents.
    """

    model_config = _STRICT

    name: str
    """A built-in dataset (``mnemoscope datasets`` lists them); with ``path``, any other
    name of letters, digits and ``_.-`` (at most 64 characters)."""
    label_noise: float = Field(0.0, ge=0, lt=1)
    """Fraction of training labels flipped to another class (seeded, recorded per example)."""
    test_fraction: float = Field(0.2, gt=0, lt=1)
    """Held-out fraction of the stratified split; every class needs at least one test and
    one training example (checked when the data is built)."""
    n_samples: int | None = Field(None, gt=0, le=10_000_000)
    """Examples to generate (mnist1d, blobs) or to subsample, stratified (digits,
    breast_cancer); at least the dataset's number of classes, at most 10⁷."""

    @field_validator("n_samples")
    @classmethod
    def _one_per_class(cls, n_samples: int | None, info: ValidationInfo) -> int | None:
        name = info.data.get("name")  # absent when the name itself was refused
        if n_samples is not None and name in BUILTIN:
            n_classes = BUILTIN[name].n_classes
            if n_samples < n_classes:
                raise ValueError(
                    f"{name} has {n_classes} classes: n_samples should be at least {n_classes}"
                )
        return n_samples

    canaries: CanariesConfig | None = None
    """Plant canaries, e.g. ``{n: 5, class: 0}`` (inserted last, after label noise and the
    keys below, among examples with clean labels and inputs)."""
    undersample: UndersampleConfig | None = None
    """Make one class rare in the training split, e.g. ``{class: 3, keep: 0.1}``."""
    sources: SourcesConfig | None = None
    """Two sources, e.g. ``{noisy_fraction: 0.5, label_noise: 0.2}`` (not with ``label_noise``)."""
    corruptions: CorruptionsConfig | None = None
    """Corrupt training inputs, e.g. ``{noise: 0.02, occlusion: 0.02, adversarial: 0.02}``."""

    path: str | None = Field(None, min_length=1, max_length=4096)
    """The user's data: a file (``.csv``, ``.parquet``, ``.npz``) or a folder (format
    ``idx``, ``cifar10``, ``cifar100``, ``hf``). A relative path is relative to the
    config file's folder (to the working directory for a config built in Python); it
    is stored absolute."""
    format: Format | None = None
    """``csv``, ``parquet``, ``npz`` (told by the extension; may be forced), ``idx``
    (MNIST-style folder: train/t10k images and labels, gzipped or not), ``cifar10`` /
    ``cifar100`` (the binary version's folder) or ``hf`` (a ``save_to_disk`` folder;
    needs ``pip install 'mnemoscope[hf]'``)."""
    test_path: str | None = Field(None, min_length=1, max_length=4096)
    """csv, parquet, npz: a second file of the same format holding the test split (else
    ``test_fraction`` of ``path`` is held out). IDX ``t10k`` files, CIFAR test batches
    and a ``test`` split of a ``datasets`` folder are used as the test split."""
    label_column: str | None = Field(None, min_length=1, max_length=256)
    """csv, parquet, hf: the column of integer labels 0..K-1 (default ``label``);
    cifar100: ``fine`` (100 classes, default) or ``coarse`` (20)."""
    feature_columns: list[str] | None = Field(None, min_length=1, max_length=100_000)
    """csv, parquet, hf: the numeric feature columns (default: every other column)."""
    image_column: str | None = Field(None, min_length=1, max_length=256)
    """hf: the column of images (kept as [C, H, W]); without it the folder is a table."""
    x_key: str | None = Field(None, min_length=1, max_length=256)
    """npz: the inputs' array (default ``x``): [N, d] table, [N, C, L] sequences or
    [N, C, H, W] images (channels first)."""
    y_key: str | None = Field(None, min_length=1, max_length=256)
    """npz: the labels' array (default ``y``), integers 0..K-1."""
    normalize: Normalize | None = None
    """Files only. ``standard`` (default): byte images (uint8) scaled to [0, 1], then each
    feature (tables) or channel (images, sequences) standardised with the training
    split's mean and standard deviation; ``unit``: byte images scaled to [0, 1], other
    data min-max scaled per feature/channel to the training split's range; ``none``:
    values as read."""
    sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")
    """Files only: SHA-256 of the files read, recorded when the config is validated; a
    value given in the config pins the data (a different file is refused)."""

    @model_validator(mode="after")
    def _source_or_builtin(self, info: ValidationInfo) -> DatasetConfig:
        if self.path is None:
            if self.name not in BUILTIN:
                known = ", ".join(sorted(BUILTIN))
                raise _field_error("name", f"unknown dataset '{self.name}'; built-in: {known}")
            given = [key for key in _FILE_KEYS if getattr(self, key) is not None]
            if given:
                raise _field_error(given[0], "only for data read from files (give path)")
            self._check_planting(
                layout(self.name, test_fraction=self.test_fraction, n_samples=self.n_samples)
            )
            return self
        if self.name in BUILTIN:
            raise _field_error(
                "name", f"'{self.name}' is a built-in dataset; name data read from files otherwise"
            )
        if not _DATASET_NAME.fullmatch(self.name):
            raise _field_error(
                "name", "letters, digits and _.- (not first) only, at most 64 characters"
            )
        base = (info.context or {}).get("base_dir") or Path.cwd()
        self.path = _absolute(base, self.path)
        if self.test_path is not None:
            self.test_path = _absolute(base, self.test_path)
        try:
            for path in (self.path, self.test_path):
                if path is not None and not _exists(path):
                    raise DataError(f"{path}: no such file or folder")
            try:
                self.format = infer_format(Path(self.path), self.format)
            except ConfigError as error:
                raise _field_error("format", str(error)) from None
            for key, formats in _KEY_FORMATS.items():
                if getattr(self, key) is not None and self.format not in formats:
                    raise _field_error(key, f"not read by format {self.format}")
            if self.format == "cifar100" and self.label_column not in (None, "fine", "coarse"):
                raise _field_error("label_column", "cifar100 labels are 'fine' or 'coarse'")
            if self.test_path is not None and not Path(self.test_path).is_file():
                raise DataError(f"{self.test_path}: test_path is not a file")
            self.normalize = self.normalize or "standard"
            pinned, self.sha256 = self.sha256, source_digest(self._source(""))
            if pinned is not None and pinned != self.sha256:
                raise DataError(
                    f"{self.path}: sha256 is {self.sha256}, the config pins {pinned} "
                    "(the data changed)"
                )
            shape = layout(
                self.name,
                test_fraction=self.test_fraction,
                n_samples=self.n_samples,
                source=self.source,
            )
        except UserError as error:  # not a pydantic error: a stage re-validating sees it too
            raise type(error)(f"dataset '{self.name}': {error}") from None
        self._check_planting(shape)
        return self

    def _check_planting(self, shape: Layout) -> None:
        check_planting(
            self.name,
            shape,
            self.label_noise,
            self.corruptions,
            self.undersample,
            self.sources,
            self.canaries.n if self.canaries is not None else 0,
        )

    @model_serializer(mode="wrap")
    def _without_unset_file_keys(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """A built-in dataset dumps as before files could be read (its cache keys stay)."""
        data = handler(self)
        # keys a built-in entry leaves unset stay out, so its cache keys do not change
        optional = (*_FILE_KEYS, "canaries", "undersample", "sources", "corruptions")
        return {k: v for k, v in data.items() if k not in optional or v is not None}

    @property
    def source(self) -> FileSource | None:
        """How to read the files (None for a built-in dataset)."""
        if self.path is None or self.format is None or self.sha256 is None:
            return None
        return self._source(self.sha256)

    def _source(self, sha256: str) -> FileSource:
        assert self.path is not None and self.format is not None
        return FileSource(
            path=self.path,
            format=self.format,
            sha256=sha256,
            test_path=self.test_path,
            label_column=self.label_column,
            feature_columns=tuple(self.feature_columns) if self.feature_columns else None,
            image_column=self.image_column,
            x_key=self.x_key or "x",
            y_key=self.y_key or "y",
            normalize=self.normalize or "standard",
        )


def _absolute(base: Path, path: str) -> str:
    """``path`` (``~`` expanded) made absolute against ``base``, without following links."""
    return os.path.normpath(Path(base) / Path(path).expanduser())


def _exists(path: str) -> bool:
    """Whether ``path`` exists; :class:`DataError` when the system cannot tell (a name too
    long, a loop of links, no permission), which ``Path.exists`` would raise as is."""
    try:
        os.stat(path)
    except FileNotFoundError:
        return False
    except (OSError, ValueError) as error:
        raise DataError(
            f"{path}: cannot read ({getattr(error, 'strerror', None) or error})"
        ) from None
    return True
