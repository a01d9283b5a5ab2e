"""Hugging Face ``datasets`` folders written by ``save_to_disk`` (the optional ``hf``
extra), read only from inside the folder: every split and Arrow file the folder's JSON
names, and every image, must lie in it (so the dataset's hash covers all it reads)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd

from mnemoscope.data.bounded import fits_in_memory, open_regular
from mnemoscope.data.formats import Arrays, integer_labels
from mnemoscope.errors import ConfigError, DataError


def _resolved(path: Path) -> Path:
    """``path`` with every link followed; :class:`DataError` for a loop or a bad name."""
    try:
        return path.resolve()
    except (OSError, RuntimeError, ValueError) as error:  # 3.11 reports a loop as RuntimeError
        raise DataError(f"{path}: cannot follow its links ({error})") from None


def check_confined(folder: Path, files: list[Path]) -> None:
    """:class:`DataError` for a file of ``folder`` (a symbolic link) whose target is
    outside it: every file a dataset reads lies inside its path, so its hash covers it."""
    root = _resolved(folder)
    for file in files:
        target = _resolved(file)
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
    except (ValueError, RecursionError) as error:  # UnicodeDecodeError is a ValueError
        raise DataError(f"{path}: not valid JSON ({error})") from None


def _check_hf_references(folder: Path) -> None:
    """:class:`DataError` unless every split (``dataset_dict.json``) and every Arrow file
    (each split's ``state.json``) that ``load_from_disk`` would open is inside
    ``folder``: a name such as ``../other/x.arrow`` or ``/etc/passwd`` is refused."""
    root = _resolved(folder)

    def inside(path: Path, where: Path, what: str) -> Path:
        if not _resolved(path).is_relative_to(root):
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
    undecoded = part.cast_column(image_column, datasets.Image(decode=False))  # type: ignore[attr-defined]
    cells = undecoded[image_column]
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
