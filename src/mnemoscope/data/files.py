"""A dataset from the user's own files: where it is, what it holds, checked once.

A :class:`FileSource` names the file or folder (absolute), its format and how to read
it, and pins the SHA-256 of every file read, so a stage's cache key changes with the
data and a file changed behind a run's back is refused. :func:`load_pool` reads the
source into a :class:`FilePool`: the raw inputs and labels of the training pool and,
when the files provide one (IDX ``t10k``, CIFAR ``test_batch``, a ``test`` split of
a ``datasets`` folder, ``test_path``), of the test split.

Inputs keep their layout: ``[N, d]`` is tabular, ``[N, C, L]`` a sequence and
``[N, C, H, W]`` an image (channels first). Labels are integers ``0..K-1``, each class
with training examples; ``K`` is fixed by the format (CIFAR) or the largest label + 1.
"""

from __future__ import annotations

import functools
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

import numpy as np

from mnemoscope.data import formats
from mnemoscope.data.dataset import Kind
from mnemoscope.errors import ConfigError, DataError

Format = Literal["csv", "parquet", "npz", "idx", "cifar10", "cifar100", "hf"]
Normalize = Literal["standard", "unit", "none"]
FORMATS: tuple[str, ...] = get_args(Format)
FOLDER_FORMATS = ("idx", "cifar10", "cifar100", "hf")
SUFFIXES = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet", ".npz": "npz"}
MAX_HF_FILES = 10_000
"""A ``datasets`` folder with more files than this is refused (each one is hashed)."""
FLOAT32_MAX = float(np.finfo(np.float32).max)
MAX_SPAN = 1e30
"""A feature (or channel) whose values span more than this is refused for ``standard``
and ``unit`` scaling: divided by a spread down to 1e-8, it would overflow float32."""
MAX_CLASSES = 100_000
"""A label of this or more is refused: ``K`` classes make ``K`` logits per example."""


@dataclass(frozen=True)
class FileSource:
    """How to read a dataset from files; every path absolute.

    Attributes:
        path: the file (csv, parquet, npz) or folder (idx, cifar10, cifar100, hf).
        format: one of :data:`FORMATS`.
        sha256: digest of every file read (:func:`source_digest`); reading checks it.
        test_path: a file of the same format holding the test split (csv, parquet, npz).
        label_column: the label column (csv, parquet, hf; default ``label``), or
            ``fine``/``coarse`` for cifar100 (default ``fine``).
        feature_columns: the feature columns of a table (default: all but the label).
        image_column: the image column of a ``datasets`` folder (else it is a table).
        x_key, y_key: the arrays of an ``.npz`` archive.
        normalize: ``standard``, ``unit`` or ``none`` (see :func:`normalise`).
    """

    path: str
    format: Format
    sha256: str
    test_path: str | None = None
    label_column: str | None = None
    feature_columns: tuple[str, ...] | None = None
    image_column: str | None = None
    x_key: str = "x"
    y_key: str = "y"
    normalize: Normalize = "standard"

    @property
    def label(self) -> str:
        return self.label_column or ("fine" if self.format == "cifar100" else "label")


@dataclass(frozen=True, eq=False)
class FilePool:
    """The raw arrays of a source, checked; read-only (they may be shared by a cache).

    ``pixels``: the inputs are bytes 0–255, scaled to [0, 1] by ``standard`` and ``unit``.
    """

    kind: Kind
    n_classes: int
    x: np.ndarray
    y: np.ndarray
    x_test: np.ndarray | None
    y_test: np.ndarray | None
    pixels: bool


def infer_format(path: Path, given: str | None) -> Format:
    """``given``, or the format of the file's extension; a folder needs ``given``."""
    if given is not None:
        if given not in FORMATS:
            raise ConfigError(f"unknown format '{given}'; known: {', '.join(FORMATS)}")
        if given in FOLDER_FORMATS and not path.is_dir():
            raise ConfigError(f"{path}: format {given} reads a folder, this is a file")
        if given not in FOLDER_FORMATS and path.is_dir():
            raise ConfigError(f"{path}: format {given} reads a file, this is a folder")
        return given  # type: ignore[return-value]
    if path.is_dir():
        raise ConfigError(f"{path}: a folder needs a format: {', '.join(FOLDER_FORMATS)}")
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise ConfigError(
            f"{path}: cannot tell the format from the extension '{suffix}'; give format "
            f"(one of {', '.join(FORMATS)})"
        )
    return SUFFIXES[suffix]  # type: ignore[return-value]


def source_files(source: FileSource) -> list[Path]:
    """Every file :func:`load_pool` reads, in a fixed order."""
    path = Path(source.path)
    extra = [Path(source.test_path)] if source.test_path else []
    if source.format == "idx":
        return [*formats.idx_files(path).values(), *extra]
    if source.format in ("cifar10", "cifar100"):
        found = formats.cifar_files(path, source.format)
        return [*found["train"], *found["test"], *extra]
    if source.format == "hf":
        # everything but folders, so a FIFO or a device among the files is refused when
        # hashed rather than opened (and waited on) by the loader
        files = sorted(p for p in path.rglob("*") if p.is_symlink() or not p.is_dir())
        if len(files) > MAX_HF_FILES:
            raise ConfigError(f"{path}: more than {MAX_HF_FILES} files")
        formats.check_confined(path, files)
        return [*(p for p in files if not p.is_dir()), *extra]  # a link to a folder inside
    return [path, *extra]


def source_digest(source: FileSource) -> str:
    """SHA-256 over each file's path (relative to the source), size and bytes."""
    digest = hashlib.sha256(source.format.encode())
    root = Path(source.path)
    for file in source_files(source):
        try:
            name = file.relative_to(root).as_posix() if file != root else file.name
        except ValueError:  # test_path outside a folder source
            name = file.name
        try:
            with formats.open_regular(file) as handle:
                size = os.fstat(handle.fileno()).st_size
                digest.update(f"|{name}|{size}|".encode())
                for block in iter(functools.partial(handle.read, 1 << 20), b""):
                    digest.update(block)
        except OSError as error:
            raise DataError(f"{file}: cannot read ({error.strerror or error})") from None
    return digest.hexdigest()


def load_pool(source: FileSource) -> FilePool:
    """The checked pool of ``source``; :class:`DataError` if its files changed since
    ``source.sha256`` was taken or hold anything unusable."""
    actual = source_digest(source)
    if actual != source.sha256:
        raise DataError(
            f"{source.path}: the data changed since the config was read (sha256 "
            f"{actual[:12]}…, expected {source.sha256[:12]}…)"
        )
    return _load_checked(source)


@functools.lru_cache(maxsize=2)
def _load_checked(source: FileSource) -> FilePool:
    train, test = _read(source)
    where = source.path
    x, y = _checked_arrays(where, *train)
    x_test = y_test = None
    if test is not None:
        where = source.test_path or source.path
        x_test, y_test = _checked_arrays(f"{where} (test split)", *test)
        if x_test.shape[1:] != x.shape[1:]:
            raise DataError(
                f"{where}: test inputs have shape {x_test.shape[1:]}, training inputs {x.shape[1:]}"
            )
    fixed = {"cifar10": 10, "cifar100": 100 if source.label == "fine" else 20}
    n_classes = fixed.get(source.format) or class_count(source.path, y)
    check_classes(source.path, y, n_classes)
    check_spans(source.path, [x] if x_test is None else [x, x_test], source.normalize)
    if y_test is not None and y_test.max() >= n_classes:
        raise DataError(f"{where}: test label {y_test.max()} outside [0, {n_classes})")
    for array in (x, y, x_test, y_test):
        if array is not None:
            array.flags.writeable = False
    kind: Kind = {2: "tabular", 3: "sequence", 4: "image"}[x.ndim]  # type: ignore[assignment]
    return FilePool(kind, n_classes, x, y, x_test, y_test, pixels=x.dtype == np.uint8)


def _read(source: FileSource) -> tuple[formats.Arrays, formats.Arrays | None]:
    path = Path(source.path)
    test_path = Path(source.test_path) if source.test_path else None
    if source.format == "idx":
        return formats.read_idx_folder(formats.idx_files(path))
    if source.format in ("cifar10", "cifar100"):
        found = formats.cifar_files(path, source.format)
        train = formats.read_cifar(found["train"], source.format, source.label)
        test = formats.read_cifar(found["test"], source.format, source.label)
        return train, test if found["test"] else None
    if source.format == "hf":
        return formats.read_hf(
            path, source.image_column, source.label, list(source.feature_columns or []) or None
        )
    if source.format == "npz":

        def read(p: Path) -> formats.Arrays:
            return formats.read_npz(p, source.x_key, source.y_key)
    else:

        def read(p: Path) -> formats.Arrays:
            columns = list(source.feature_columns) if source.feature_columns else None
            return formats.read_table(p, source.format, source.label, columns)

    return read(path), read(test_path) if test_path else None


def _checked_arrays(where: str, x: np.ndarray, y: np.ndarray) -> formats.Arrays:
    """``(x, y)`` after the checks every format shares: rows, shape, finite, label sign."""
    if len(x) == 0:
        raise DataError(f"{where}: no examples")
    if len(x) != len(y):
        raise DataError(f"{where}: {len(x)} inputs but {len(y)} labels")
    if x.ndim not in (2, 3, 4):
        raise DataError(
            f"{where}: inputs of shape {x.shape}; expected [N, d] (a table), [N, C, L] "
            "(sequences) or [N, C, H, W] (images, channels first)"
        )
    if x.ndim == 4 and x.shape[-1] in (1, 3, 4) and x.shape[1] not in (1, 3, 4):
        raise DataError(
            f"{where}: images of shape {x.shape} look channels-last; images are read "
            "channels-first [N, C, H, W] (np.moveaxis(x, -1, 1) converts them)"
        )
    if x.dtype.kind not in "biuf":
        raise DataError(f"{where}: inputs of dtype {x.dtype}; expected real numbers")
    if x.dtype.kind == "f":
        rows = x.reshape(len(x), -1)
        bad = ~np.isfinite(rows).all(axis=1)
        if bad.any():
            raise DataError(f"{where}: row {int(np.argmax(bad))} has a NaN or infinite input")
        if x.dtype.itemsize > 4:  # inputs are trained on as float32
            big = (np.abs(rows) > FLOAT32_MAX).any(axis=1)
            if big.any():
                raise DataError(
                    f"{where}: row {int(np.argmax(big))} has an input beyond float32's range "
                    f"(±{FLOAT32_MAX:.3g}), which training in float32 cannot hold"
                )
    if y.min() < 0:
        row = int(np.argmax(y < 0))
        raise DataError(f"{where}: label {y[row]} at row {row} is negative; labels are 0..K-1")
    return x, y


def check_pool(
    where: str, x: np.ndarray, y: np.ndarray, n_classes: int | None = None
) -> tuple[np.ndarray, np.ndarray, int]:
    """``(x, y, K)`` after every check data gets, however it comes in (files or
    :func:`~mnemoscope.data.register_dataset`): integer labels, shapes, real finite inputs
    that float32 holds, at most :data:`MAX_CLASSES` classes (``n_classes``, or the
    largest label + 1), each with an example, and at least two."""
    x, y = np.asarray(x), np.asarray(y)
    if x.ndim == 0 or y.ndim != 1:
        raise DataError(f"{where}: inputs of shape {x.shape} and labels of shape {y.shape}")
    x, y = _checked_arrays(where, x, formats.integer_labels(where, y, "labels"))
    n_classes = n_classes or class_count(where, y)
    check_classes(where, y, n_classes)
    return x, y, n_classes


def check_spans(where: str, arrays: list[np.ndarray], how: Normalize) -> None:
    """:class:`DataError` when ``standard`` or ``unit`` scaling could overflow float32: a
    feature or channel whose values (over every split) span more than :data:`MAX_SPAN`."""
    if how == "none" or arrays[0].dtype.kind != "f":
        return
    axes = (0, *range(2, arrays[0].ndim))
    low = np.min([a.min(axes) for a in arrays], axis=0).astype(np.float64)
    high = np.max([a.max(axes) for a in arrays], axis=0).astype(np.float64)
    span = high - low
    if (span > MAX_SPAN).any():
        feature = int(np.argmax(span > MAX_SPAN))
        raise DataError(
            f"{where}: feature {feature} spans {span[feature]:.3g}, more than {MAX_SPAN:g}: "
            f"normalize: {how} would overflow float32 (rescale the data, or normalize: none)"
        )


def class_count(where: str, y: np.ndarray) -> int:
    """``K``: the number of classes the labels present make (the largest + 1), at most
    :data:`MAX_CLASSES`; found from the labels, never by allocating ``K`` of anything."""
    largest = int(y.max())
    if largest >= MAX_CLASSES:
        row = int(np.argmax(y == largest))
        raise DataError(
            f"{where}: label {largest} at row {row}: at most {MAX_CLASSES} classes "
            f"(labels 0..{MAX_CLASSES - 1})"
        )
    return largest + 1


def check_classes(where: str, y: np.ndarray, n_classes: int) -> None:
    """Every class ``0..n_classes-1`` has a training example; at least two classes."""
    if y.max() >= n_classes:
        row = int(np.argmax(y >= n_classes))
        raise DataError(f"{where}: label {y[row]} at row {row} outside [0, {n_classes})")
    present = np.unique(y)  # sorted: class i is missing where present[i] != i
    if len(present) < n_classes:
        gaps = np.flatnonzero(present != np.arange(len(present)))
        missing = int(gaps[0]) if len(gaps) else len(present)
        raise DataError(
            f"{where}: class {missing} has no training examples (labels 0..{n_classes - 1}); "
            "labels must be 0..K-1 with every class present"
        )
    if n_classes < 2:
        raise DataError(f"{where}: a single class; classification needs at least two")


def normalise(
    x_train: np.ndarray, x_test: np.ndarray, how: Normalize, pixels: bool
) -> tuple[np.ndarray, np.ndarray]:
    """float32 inputs, scaled with statistics of the training split only.

    ``standard``: bytes (0–255) divided by 255, then each feature (tables) or channel
    (images, sequences) shifted and divided by its training mean and standard
    deviation (+1e-8). ``unit``: bytes divided by 255; other data min-max scaled per
    feature or channel to the training range ([0, 1] on the training split).
    ``none``: the values as read.
    """
    x_train, x_test = x_train.astype(np.float32), x_test.astype(np.float32)
    if how == "none":
        return x_train, x_test
    if pixels:
        x_train, x_test = x_train / np.float32(255), x_test / np.float32(255)
        if how == "unit":
            return x_train, x_test
    axes = (0, *range(2, x_train.ndim))  # all but the feature / channel axis
    with np.errstate(over="ignore", invalid="ignore"):
        shift, scale = _statistics(x_train, how, axes)
        if not (np.isfinite(shift).all() and np.isfinite(scale).all()):
            # float32 sums of squares overflow past 1.8e19: the statistics in float64
            shift, scale = _statistics(x_train.astype(np.float64), how, axes)
        scaled = tuple(
            ((part - shift) / scale).astype(np.float32, copy=False) for part in (x_train, x_test)
        )
    if not all(np.isfinite(part).all() for part in scaled):
        raise DataError(f"normalize: {how} overflows float32 on these inputs; use none")
    return scaled[0], scaled[1]


def _statistics(
    x_train: np.ndarray, how: Normalize, axes: tuple[int, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """The shift and scale of ``standard`` or ``unit`` scaling, in ``x_train``'s float type."""
    if how == "standard":
        shift = x_train.mean(axes, keepdims=True)
        return shift, x_train.std(axes, keepdims=True) + x_train.dtype.type(1e-8)
    shift = x_train.min(axes, keepdims=True)
    span = x_train.max(axes, keepdims=True) - shift
    return shift, np.where(span > 0, span, x_train.dtype.type(1))
