"""Readers of the file formats a user's dataset may come in; nothing is ever unpickled.

Each reader returns raw arrays ``(x [N, ...], y [N] int64)`` exactly as the file holds
them (no scaling), or raises :class:`DataError` with one line naming the file and the
problem. Checks common to every format (finite inputs, label range, class counts)
are made by :mod:`mnemoscope.data.files`.

- IDX (LeCun's MNIST format; Fashion-MNIST and KMNIST use it too): a big-endian
  header ``0x00 0x00 <dtype> <ndim>``, ``ndim`` 32-bit sizes, then the values;
  images are ``0x00000803`` (bytes, 3 dimensions), labels ``0x00000801``. Gzipped
  files are recognised by their first two bytes.
- CIFAR binary version: records of ``1 + 3072`` bytes (CIFAR-10: label, then the red,
  green and blue 32×32 planes) or ``2 + 3072`` (CIFAR-100: coarse label, fine label).
- CSV and Parquet tables: one row per example, a label column, numeric features.
- ``.npz`` archives of plain numeric arrays, read with ``allow_pickle=False``.
- Hugging Face ``datasets`` folders written by ``save_to_disk``: :mod:`mnemoscope.data.hf`.

Sizes are never trusted from a header (:mod:`mnemoscope.data.bounded`).
"""

from __future__ import annotations

import csv
import os
import re
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pandas as pd

from mnemoscope.data.bounded import (
    DEFLATE_RATIO,
    MAX_DATA_BYTES,
    fits_in_memory,
    open_regular,
    read_bytes,
    read_head,
    stored_size,
)
from mnemoscope.errors import ConfigError, DataError
from mnemoscope.resources import available_memory

Arrays = tuple[np.ndarray, np.ndarray]

MAX_IDX_BYTES = MAX_DATA_BYTES
"""An IDX header promising more than this is refused before anything is read."""
MAX_COLUMNS = 100_000
"""A table with more columns than this is refused before its rows are read."""
MAX_HEADER_BYTES = 1 << 24
"""A CSV whose first line (the column names) is longer than this (16 MiB) is refused."""

_MAX_LABEL = 2**62  # labels are refused far below (MAX_CLASSES); this only keeps int64 exact
_IDX_DTYPES = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_CIFAR_IMAGE = 3 * 32 * 32


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """The array of an IDX file of ``ndim`` dimensions (gzipped or not)."""
    head = read_head(path, 4 + 4 * ndim)
    expected = f"0x{0x800 + ndim:08X} for bytes"
    if len(head) < 4:
        raise DataError(f"{path}: empty or truncated IDX file ({len(head)} bytes)")
    magic = int.from_bytes(head[:4], "big")
    if head[:2] != b"\0\0" or head[2] not in _IDX_DTYPES or head[3] != ndim:
        raise DataError(
            f"{path}: magic number 0x{magic:08X} is not that of an IDX file of {ndim} "
            f"dimension{'s' if ndim > 1 else ''} (expected {expected})"
        )
    dtype = np.dtype(_IDX_DTYPES[head[2]])
    offset = 4 + 4 * ndim
    if len(head) < offset:
        raise DataError(f"{path}: truncated IDX header")
    shape = tuple(int.from_bytes(head[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    size = int(np.prod(shape, dtype=object)) * dtype.itemsize
    if size > MAX_IDX_BYTES:
        raise DataError(f"{path}: IDX header promises {size} bytes (at most {MAX_IDX_BYTES})")
    stored, gzipped = stored_size(path)
    if gzipped and offset + size > DEFLATE_RATIO * stored:
        raise DataError(
            f"{path}: truncated or crafted: the header promises shape {shape} "
            f"({offset + size} bytes), more than a gzip file of {stored} bytes can hold"
        )
    if not gzipped and stored != offset + size:
        problem = "truncated" if stored < offset + size else "has bytes after the data"
        raise DataError(
            f"{path}: {problem}: the header promises shape {shape} ({offset + size} bytes), "
            f"the file holds {stored} bytes"
        )
    fits_in_memory(path, offset + size, f"shape {shape}")
    excess = (
        f"has bytes after the data: the header promises shape {shape} ({offset + size} "
        "bytes), the file holds more"
    )
    raw = read_bytes(path, offset + size, excess)
    if len(raw) < offset + size:
        raise DataError(
            f"{path}: truncated: the header promises shape {shape} ({offset + size} bytes), "
            f"the file holds {len(raw)} bytes"
        )
    return np.frombuffer(raw, dtype=dtype, offset=offset).reshape(shape)


def _idx_pair(images: Path, labels: Path) -> Arrays:
    x = read_idx(images, 3)
    y = integer_labels(labels, read_idx(labels, 1), "labels")
    if len(x) != len(y):
        raise DataError(f"{images}: {len(x)} images but {labels.name} has {len(y)} labels")
    return x[:, None, :, :], y


_IDX_ROLES = {
    ("train", 3): "train images",
    ("train", 1): "train labels",
    ("test", 3): "test images",
    ("test", 1): "test labels",
}


def idx_files(folder: Path) -> dict[str, Path]:
    """The IDX files of a folder by role (``train images``, ``test labels``...): names
    holding ``idx3``/``idx1``, test ones ``t10k`` or ``test``. The test pair is optional."""
    found: dict[str, list[Path]] = {}
    for file in sorted(folder.iterdir()):
        match = re.search(r"idx([13])", file.name)
        if not file.is_file() or match is None:
            continue
        split = "test" if re.search(r"t10k|test", file.name) else "train"
        found.setdefault(_IDX_ROLES[(split, int(match.group(1)))], []).append(file)
    for role, files in found.items():
        if len(files) > 1:
            names = ", ".join(f.name for f in files)
            raise ConfigError(f"{folder}: several IDX files for the {role}: {names}")
    missing = [r for r in ("train images", "train labels") if r not in found]
    if missing:
        raise ConfigError(
            f"{folder}: no IDX {' or '.join(missing)} file (expected names like "
            "train-images-idx3-ubyte[.gz] and train-labels-idx1-ubyte[.gz])"
        )
    if ("test images" in found) != ("test labels" in found):
        raise ConfigError(f"{folder}: an IDX test images file needs its labels file, and back")
    return {role: files[0] for role, files in found.items()}


def read_idx_folder(files: dict[str, Path]) -> tuple[Arrays, Arrays | None]:
    """``(train, test or None)``: images ``[N, 1, H, W]`` and labels of an IDX folder."""
    train = _idx_pair(files["train images"], files["train labels"])
    test = None
    if "test images" in files:
        test = _idx_pair(files["test images"], files["test labels"])
    return train, test


def _refuse_pickled_cifar(folder: Path) -> None:
    names = {f.name for f in folder.iterdir()}
    if {"data_batch_1", "test_batch", "batches.meta", "train", "meta"} & names or (
        folder.name.endswith(("-py", "-python"))
    ):
        raise ConfigError(
            f"{folder}: this is CIFAR's python version (pickled files), which mnemoscope never "
            "unpickles; use the binary version (cifar-10-binary.tar.gz: folder "
            "cifar-10-batches-bin; cifar-100-binary.tar.gz: folder cifar-100-binary)"
        )


def cifar_files(folder: Path, variant: str) -> dict[str, list[Path]]:
    """The record files of a CIFAR binary folder: ``train`` (in batch order), ``test``."""
    if variant == "cifar10":
        train = sorted(
            folder.glob("data_batch_*.bin"),
            key=lambda p: (len(p.name), p.name),  # data_batch_2 before data_batch_10
        )
        test = [p for p in [folder / "test_batch.bin"] if p.is_file()]
        expected = "data_batch_1.bin ... data_batch_5.bin"
    else:
        train = [p for p in [folder / "train.bin"] if p.is_file()]
        test = [p for p in [folder / "test.bin"] if p.is_file()]
        expected = "train.bin"
    if not train:
        _refuse_pickled_cifar(folder)
        raise ConfigError(f"{folder}: no {variant} binary files (expected {expected})")
    return {"train": train, "test": test}


def read_cifar(files: list[Path], variant: str, label: str) -> Arrays:
    """Images ``[N, 3, 32, 32]`` uint8 and labels of CIFAR binary record files."""
    n_labels = 1 if variant == "cifar10" else 2
    record = n_labels + _CIFAR_IMAGE
    n_classes = {"cifar10": 10, "coarse": 20, "fine": 100}[label if n_labels == 2 else variant]
    xs, ys = [], []
    for path in files:
        # the bytes, the images cut from the records and their concatenation: 3 copies
        budget = min(MAX_DATA_BYTES, available_memory() // 3)
        raw = read_bytes(
            path,
            budget,
            f"more than {budget} bytes, more than this process can hold (a third "
            "of the memory left to it, for the copies reading makes)",
        )
        if not raw:
            raise DataError(f"{path}: empty file")
        if len(raw) % record:
            raise DataError(
                f"{path}: {len(raw)} bytes is not a whole number of {record}-byte {variant} "
                "records (truncated, or the other CIFAR variant?)"
            )
        rows = np.frombuffer(raw, dtype=np.uint8).reshape(-1, record)
        column = 1 if (n_labels == 2 and label == "fine") else 0
        y = rows[:, column].astype(np.int64)
        if y.max() >= n_classes:
            first = int(np.argmax(y >= n_classes))
            raise DataError(
                f"{path}: record {first}: label {y[first]} outside [0, {n_classes}) "
                f"({variant}{' ' + label if n_labels == 2 else ''} labels)"
            )
        xs.append(rows[:, n_labels:].reshape(-1, 3, 32, 32))
        ys.append(y)
    return np.concatenate(xs), np.concatenate(ys)


def _plain(value: object) -> object:
    """A numpy scalar as the Python value it holds (for a readable message)."""
    return value.item() if isinstance(value, np.generic) else value


def integer_labels(path: Path | str, values: np.ndarray, what: str) -> np.ndarray:
    """``values`` as int64 labels, or :class:`DataError` for a missing or non-integer one."""
    if values.dtype == bool:
        return values.astype(np.int64)
    floating = np.issubdtype(values.dtype, np.floating)
    if floating or np.issubdtype(values.dtype, np.integer):
        bad = (~np.isfinite(values) | (values != np.round(values))) if floating else None
        if bad is not None and bad.any():
            first = int(np.argmax(bad))
            raise DataError(
                f"{path}: {what}: label {values[first].item()!r} at row {first} is not an integer"
            )
        # int64 holds every label; a larger one (uint64, 1e30) would wrap when cast
        huge = (np.abs(values) if floating else values) > _MAX_LABEL
        if huge.any():
            first = int(np.argmax(huge))
            raise DataError(
                f"{path}: {what}: label {values[first].item()!r} at row {first} is too large "
                "for a class label"
            )
        return values.astype(np.int64)
    sample = _plain(next(iter(values.ravel()), None))
    raise DataError(
        f"{path}: {what}: labels must be integers 0..K-1, found {values.dtype} values "
        f"(e.g. {sample!r})"
    )


def read_table(
    path: Path, fmt: str, label_column: str, feature_columns: list[str] | None
) -> Arrays:
    """Features ``[N, d]`` and labels of a CSV or Parquet table (rows numbered from 0)."""
    try:
        _check_table_size(path, fmt)
        if fmt == "csv":
            frame = pd.read_csv(path)
        else:
            frame = pd.read_parquet(path)
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: empty file") from None
    except (ValueError, OSError, pd.errors.ParserError, UnicodeDecodeError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise DataError(f"{path}: not a readable {fmt} file ({first})") from None
    if label_column not in frame.columns:
        shown = ", ".join(map(str, list(frame.columns)[:10]))
        raise DataError(f"{path}: no label column '{label_column}' (columns: {shown})")
    if len(frame) == 0:
        raise DataError(f"{path}: no rows")
    features = feature_columns or [c for c in frame.columns if c != label_column]
    missing = [c for c in features if c not in frame.columns]
    if missing:
        raise DataError(f"{path}: no feature column '{missing[0]}'")
    if not features:
        raise DataError(f"{path}: no feature columns besides the label column '{label_column}'")
    for column in features:
        values = frame[column]
        if not (pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values)):
            sample = _plain(values.dropna().iloc[0]) if values.notna().any() else None
            raise DataError(
                f"{path}: column '{column}' is not numeric (e.g. {sample!r}); list the numeric "
                "columns in feature_columns"
            )
    y = integer_labels(path, frame[label_column].to_numpy(), f"column '{label_column}'")
    return frame[features].to_numpy(dtype=np.float64), y


def _check_table_size(path: Path, fmt: str) -> None:
    """:class:`DataError` for a table of more than :data:`MAX_COLUMNS` columns, or one whose
    values (as float64) cannot fit in memory: read from the CSV's first line or the
    Parquet footer, before any row is parsed."""
    with open_regular(path) as file:
        size = os.fstat(file.fileno()).st_size
        if fmt == "csv":
            line = file.readline(MAX_HEADER_BYTES + 1)
            if len(line) > MAX_HEADER_BYTES:
                raise DataError(
                    f"{path}: the first line (the column names) is longer than "
                    f"{MAX_HEADER_BYTES} bytes"
                )
            text = line.decode("utf-8", errors="replace")
            try:
                n_columns = len(next(csv.reader([text]), []))
            except csv.Error:  # e.g. a lone carriage return: pandas reports the file itself
                n_columns = text.count(",") + 1
            n_values = size // 2  # each value takes at least a digit and a separator
        else:
            import pyarrow.parquet as pq

            metadata = pq.ParquetFile(file).metadata
            n_columns, n_values = metadata.num_columns, metadata.num_rows * metadata.num_columns
    if n_columns > MAX_COLUMNS:
        raise DataError(f"{path}: {n_columns} columns (at most {MAX_COLUMNS})")
    fits_in_memory(path, 8 * n_values, f"{n_values} values as float64")


def _npz_member(path: Path, archive: zipfile.ZipFile, key: str) -> zipfile.ZipInfo:
    """The archive member of array ``key``, after checking what it claims (its size and its
    ``.npy`` header's shape and dtype) against the archive's size and this process's
    memory; nothing is allocated from a claim."""
    names = {name.removesuffix(".npy"): name for name in archive.namelist()}
    if key not in names:
        shown = ", ".join(list(names)[:10]) or "none"
        raise DataError(f"{path}: no array '{key}' (arrays: {shown})")
    info = archive.getinfo(names[key])
    stored = os.path.getsize(path)
    if info.compress_type == zipfile.ZIP_STORED:
        ratio = 1
    elif info.compress_type == zipfile.ZIP_DEFLATED:
        ratio = DEFLATE_RATIO
    else:
        raise DataError(
            f"{path}: array '{key}' is compressed with zip method {info.compress_type}; "
            "only stored or deflated arrays are read (np.savez, np.savez_compressed)"
        )
    if info.compress_size > stored or info.file_size > ratio * info.compress_size + 1024:
        raise DataError(
            f"{path}: array '{key}' claims {info.file_size} bytes, more than its "
            f"{info.compress_size} stored bytes can hold (a crafted or damaged archive)"
        )
    with archive.open(info) as member:
        version = np.lib.format.read_magic(member)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(member)
        elif version == (2, 0):
            shape, _, dtype = np.lib.format.read_array_header_2_0(member)
        else:
            raise DataError(f"{path}: array '{key}': .npy format {version} is not read")
        header = member.tell()
    if dtype.hasobject:
        raise DataError(
            f"{path}: an array holds Python objects; only numeric arrays are read "
            "(nothing is unpickled)"
        )
    nbytes = int(np.prod(shape, dtype=object)) * dtype.itemsize
    if header + nbytes != info.file_size:
        raise DataError(
            f"{path}: array '{key}': its header promises shape {shape} of {dtype} "
            f"({nbytes} bytes), the archive holds {info.file_size - header}"
        )
    fits_in_memory(path, nbytes, f"array '{key}' of shape {shape}")
    return info


def read_npz(path: Path, x_key: str, y_key: str) -> Arrays:
    """Arrays ``x_key`` and ``y_key`` of an ``.npz`` archive (never unpickled)."""
    try:
        with open_regular(path) as file:
            if file.read(6) == b"\x93NUMPY":
                raise DataError(f"{path}: not an .npz archive (a single .npy array?)")
            file.seek(0)
            with zipfile.ZipFile(file) as archive:
                arrays = {}
                for key in (x_key, y_key):
                    with archive.open(_npz_member(path, archive, key)) as member:
                        arrays[key] = np.lib.format.read_array(member, allow_pickle=False)
    except DataError:
        raise
    except ValueError as error:
        if "allow_pickle" in str(error):
            raise DataError(
                f"{path}: an array holds Python objects; only numeric arrays are read "
                "(nothing is unpickled)"
            ) from None
        raise DataError(f"{path}: not a readable .npz archive ({error})") from None
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error, NotImplementedError) as error:
        raise DataError(f"{path}: not a readable .npz archive ({error})") from None
    x, y = arrays[x_key], arrays[y_key]
    if not (np.issubdtype(x.dtype, np.number) or x.dtype == bool) or np.iscomplexobj(x):
        raise DataError(f"{path}: array '{x_key}' has dtype {x.dtype}; expected numbers")
    if x.ndim == 0:
        raise DataError(f"{path}: array '{x_key}' is a single value; expected [N, ...] inputs")
    if y.ndim != 1:
        raise DataError(f"{path}: labels '{y_key}' have shape {y.shape}; expected [N]")
    return x, integer_labels(path, y, f"array '{y_key}'")
