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
- Hugging Face ``datasets`` folders written by ``save_to_disk`` (optional extra).
"""

from __future__ import annotations

import csv
import gzip
import json
import os
import re
import stat
import zipfile
import zlib
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pandas as pd

from mnemoscope.errors import ConfigError, DataError
from mnemoscope.resources import available_memory

Arrays = tuple[np.ndarray, np.ndarray]

MAX_DATA_BYTES = 1 << 34
"""A file (after gunzipping) or an array larger than this (16 GiB) is refused unread."""
MAX_IDX_BYTES = MAX_DATA_BYTES
"""An IDX header promising more than this is refused before anything is read."""
MAX_COLUMNS = 100_000
"""A table with more columns than this is refused before its rows are read."""
MAX_HEADER_BYTES = 1 << 24
"""A CSV whose first line (the column names) is longer than this (16 MiB) is refused."""
DEFLATE_RATIO = 1032
"""Deflate (gzip, zip) never expands data by more than this factor (RFC 1951: a
258-byte match costs at least 2 bits), so a claim beyond it is a crafted header."""

_IDX_DTYPES = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_CIFAR_IMAGE = 3 * 32 * 32
_CHUNK = 1 << 20


def open_regular(path: Path) -> BinaryIO:
    """``path`` opened for reading, or :class:`DataError` unless it is a regular file (a
    device such as ``/dev/zero`` never ends, a FIFO blocks; both are refused without
    waiting: the file is opened non-blocking and checked before a byte is read)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as error:
        raise DataError(f"{path}: cannot read ({error.strerror or error})") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        kind = "a folder" if stat.S_ISDIR(mode) else "a device, FIFO or socket"
        raise DataError(f"{path}: not a regular file ({kind}); only regular files are read")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def fits_in_memory(path: Path, nbytes: int, what: str) -> None:
    """:class:`DataError` when ``what`` needs more than :data:`MAX_DATA_BYTES` or than the
    memory this process can still allocate: checked before anything is allocated."""
    budget = min(MAX_DATA_BYTES, available_memory())
    if nbytes > budget:
        raise DataError(
            f"{path}: {what} needs {nbytes} bytes, more than the {budget} this process can "
            f"hold (at most {MAX_DATA_BYTES} and the memory left to it)"
        )


def _read_bytes(path: Path, limit: int, excess: str) -> bytes | bytearray:
    """The file's bytes (gunzipped when it starts with the gzip magic), or
    :class:`DataError` ``path: excess`` when there are more than ``limit``: a plain file's
    size is checked first, gzipped data is read in blocks as it comes (never allocated
    from ``limit`` up front) and never beyond :data:`DEFLATE_RATIO` times the file."""
    try:
        with open_regular(path) as file:
            size = os.fstat(file.fileno()).st_size
            gzipped = file.read(2) == b"\x1f\x8b"
            file.seek(0)
            if not gzipped:
                if size > limit:
                    raise DataError(f"{path}: {excess}")
                return file.read(size)
            bound = min(limit, DEFLATE_RATIO * size)
            out = bytearray()
            with gzip.GzipFile(fileobj=file, mode="rb") as stream:
                while block := stream.read(min(_CHUNK, bound + 1 - len(out))):
                    out += block
                    if len(out) > bound:
                        raise DataError(f"{path}: {excess}")
            return out
    except (EOFError, gzip.BadGzipFile, zlib.error) as error:
        raise DataError(f"{path}: corrupt or truncated gzip data ({error})") from None
    except OSError as error:
        raise DataError(f"{path}: cannot read ({error.strerror or error})") from None


def _head(path: Path, n: int) -> bytes:
    """The first ``n`` bytes of the file (of its gunzipped data when gzipped)."""
    try:
        with open_regular(path) as file:
            if file.read(2) != b"\x1f\x8b":
                file.seek(0)
                return file.read(n)
            file.seek(0)
            with gzip.GzipFile(fileobj=file, mode="rb") as stream:
                return stream.read(n)
    except (EOFError, gzip.BadGzipFile, zlib.error) as error:
        raise DataError(f"{path}: corrupt or truncated gzip data ({error})") from None
    except OSError as error:
        raise DataError(f"{path}: cannot read ({error.strerror or error})") from None


def _stored_size(path: Path) -> tuple[int, bool]:
    """The file's size on disk and whether it is gzipped."""
    with open_regular(path) as file:
        return os.fstat(file.fileno()).st_size, file.read(2) == b"\x1f\x8b"


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """The array of an IDX file of ``ndim`` dimensions (gzipped or not)."""
    head = _head(path, 4 + 4 * ndim)
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
    stored, gzipped = _stored_size(path)
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
    raw = _read_bytes(path, offset + size, excess)
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
        budget = min(MAX_DATA_BYTES, available_memory())
        raw = _read_bytes(
            path, budget, f"more than {budget} bytes, more than this process can hold"
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
    if np.issubdtype(values.dtype, np.integer):
        return values.astype(np.int64)
    if np.issubdtype(values.dtype, np.floating):
        bad = ~np.isfinite(values) | (values != np.round(values))
        if not bad.any():
            return values.astype(np.int64)
        first = int(np.argmax(bad))
        raise DataError(
            f"{path}: {what}: label {values[first].item()!r} at row {first} is not an integer"
        )
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
            n_columns = len(next(csv.reader([text]), []))
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


def check_confined(folder: Path, files: list[Path]) -> None:
    """:class:`DataError` for a file of ``folder`` (a symbolic link) whose target is
    outside it: every file a dataset reads lies inside its path, so its hash covers it."""
    root = folder.resolve()
    for file in files:
        target = file.resolve()
        if not target.is_relative_to(root):
            raise DataError(
                f"{file}: links to {target}, outside the dataset's folder {folder}; every "
                "file read must be inside it"
            )


_MAX_JSON_BYTES = 1 << 26


def _json(path: Path) -> object:
    try:
        with open_regular(path) as file:
            if os.fstat(file.fileno()).st_size > _MAX_JSON_BYTES:
                raise DataError(f"{path}: larger than {_MAX_JSON_BYTES} bytes")
            return json.loads(file.read())
    except (ValueError, UnicodeDecodeError) as error:
        raise DataError(f"{path}: not valid JSON ({error})") from None


def _check_hf_references(folder: Path) -> None:
    """:class:`DataError` unless every split (``dataset_dict.json``) and every Arrow file
    (each split's ``state.json``) that ``load_from_disk`` would open is inside
    ``folder``: a name such as ``../other/x.arrow`` or ``/etc/passwd`` is refused."""
    root = folder.resolve()

    def inside(path: Path, where: Path, what: str) -> Path:
        if not path.resolve().is_relative_to(root):
            raise DataError(
                f"{where}: {what} {str(path)!r} is outside the dataset's folder {folder}; "
                "every file read must be inside it"
            )
        return path

    splits = [folder]
    listing = folder / "dataset_dict.json"
    if listing.is_file():
        names = _json(listing)
        names = names.get("splits") if isinstance(names, dict) else None
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise DataError(f"{listing}: 'splits' is not a list of names")
        splits = [inside(folder / name, listing, "split") for name in names]
    for split in splits:
        state_file = split / "state.json"
        if not state_file.is_file():
            continue  # load_from_disk says what is missing
        state = _json(state_file)
        entries = state.get("_data_files") if isinstance(state, dict) else None
        for entry in entries if isinstance(entries, list) else []:
            name = entry.get("filename") if isinstance(entry, dict) else None
            if not isinstance(name, str):
                raise DataError(f"{state_file}: a data file without a filename")
            inside(split / name, state_file, "data file")


def read_hf(
    folder: Path, image_column: str | None, label_column: str, feature_columns: list[str] | None
) -> tuple[Arrays, Arrays | None]:
    """``(train, test or None)`` of a ``save_to_disk`` folder: a Dataset, or a DatasetDict
    whose ``train`` split is read and whose ``test`` split, if any, is the test split."""
    try:
        import datasets
    except ImportError:
        raise ConfigError(
            f"{folder}: format hf needs the Hugging Face datasets package: "
            "pip install 'mnemoscope[hf]'"
        ) from None
    _check_hf_references(folder)
    try:
        loaded = datasets.load_from_disk(str(folder))
    except (ValueError, OSError, KeyError, TypeError, AttributeError) as error:
        # a crafted state.json or Arrow file fails inside datasets or pyarrow in many ways
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise DataError(f"{folder}: not a datasets save_to_disk folder ({first})") from None
    if isinstance(loaded, datasets.DatasetDict):
        if "train" not in loaded:
            raise DataError(f"{folder}: no 'train' split (splits: {', '.join(loaded)})")
        parts = [loaded["train"], loaded["test"] if "test" in loaded else None]
    else:
        parts = [loaded, None]
    arrays = [
        None
        if part is None
        else _hf_arrays(folder, part, image_column, label_column, feature_columns)
        for part in parts
    ]
    return arrays[0], arrays[1]  # type: ignore[return-value]


def _hf_arrays(
    folder: Path,
    part: object,
    image_column: str | None,
    label_column: str,
    feature_columns: list[str] | None,
) -> Arrays:
    columns = list(part.column_names)  # type: ignore[attr-defined]
    n_rows = int(part.num_rows)  # type: ignore[attr-defined]
    fits_in_memory(folder, 8 * n_rows * len(columns), f"{n_rows} rows of {len(columns)} columns")
    for column in [
        label_column,
        *([image_column] if image_column else []),
        *(feature_columns or []),
    ]:
        if column not in columns:
            raise DataError(f"{folder}: no column '{column}' (columns: {', '.join(columns)})")
    y = integer_labels(folder, np.asarray(part[label_column]), f"column '{label_column}'")  # type: ignore[index]
    if image_column:
        try:
            images = [np.asarray(image) for image in _hf_images(folder, part, image_column)]
        except DataError:
            raise
        except Exception as error:  # a decoder's own error on a corrupt image
            raise DataError(f"{folder}: column '{image_column}': cannot decode ({error})") from None
        shapes = {image.shape for image in images}
        if len(shapes) != 1:
            raise DataError(
                f"{folder}: column '{image_column}': images of several shapes "
                f"({', '.join(map(str, sorted(shapes)[:3]))}); resize them to one"
            )
        x = np.stack(images)
        if x.ndim == 3:
            x = x[:, None]  # grey [N, H, W] -> [N, 1, H, W]
        elif x.ndim == 4:
            x = np.moveaxis(x, -1, 1)  # decoded images are channels-last
        else:
            raise DataError(f"{folder}: column '{image_column}': images of shape {x.shape[1:]}")
        return x, y
    features = feature_columns or [c for c in columns if c != label_column]
    frame = part.select_columns(features).to_pandas()  # type: ignore[attr-defined]
    for column in features:
        if not pd.api.types.is_numeric_dtype(frame[column]):
            raise DataError(
                f"{folder}: column '{column}' is not numeric; give image_column for images "
                "or list numeric feature_columns"
            )
    return frame.to_numpy(dtype=np.float64), y


def _hf_images(folder: Path, part: object, image_column: str) -> list[object]:
    """The decoded images of an ``Image`` column from the bytes the folder stores; an
    image stored as a path to a file elsewhere is refused, never opened."""
    import datasets

    feature = part.features[image_column]  # type: ignore[attr-defined]
    if not isinstance(feature, datasets.Image):
        return list(part[image_column])  # type: ignore[index]
    cells = part.cast_column(image_column, datasets.Image(decode=False))[image_column]  # type: ignore[attr-defined]
    images = []
    for row, cell in enumerate(cells):
        if cell is None or cell.get("bytes") is None:
            named = None if cell is None else cell.get("path")
            raise DataError(
                f"{folder}: column '{image_column}': the image at row {row} is not stored in "
                f"the folder (path {named!r}); only data inside the dataset's path is read"
            )
        images.append(feature.decode_example({"bytes": cell["bytes"], "path": None}))
    return images
