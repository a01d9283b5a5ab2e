"""Built-in datasets, generated or loaded locally: no download, ever.

Each loader returns the whole pool ``(x [N, *shape] float32, y [N] int64)``; the
split, label noise and standardisation are applied by :func:`mnemoscope.data.prepare`.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from mnemoscope.data.dataset import Kind
from mnemoscope.errors import DataError

Pool = tuple[np.ndarray, np.ndarray]


@dataclass(frozen=True)
class BuiltinDataset:
    """A built-in dataset: how to make its pool and what it is."""

    name: str
    kind: Kind
    n_classes: int
    default_samples: int | None  # None: the source's fixed size
    description: str
    load: Callable[[int | None, int], Pool]  # (n_samples, seed) -> pool
    input_shape: tuple[int, ...] = ()
    fixed_size: int | None = None  # the pool size of a dataset that is not generated
    digest: str = ""  # a registered dataset's content hash (part of the data stage's key)

    def pool_size(self, n_samples: int | None) -> int:
        """Examples in the pool :func:`~mnemoscope.data.prepare` splits (before any split)."""
        if self.fixed_size is not None:
            return min(n_samples or self.fixed_size, self.fixed_size)
        return n_samples or self.default_samples or 0


def _digits(n_samples: int | None, seed: int) -> Pool:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (bunch.images / 16.0).astype(np.float32)[:, None, :, :]
    return x, bunch.target.astype(np.int64)


def _breast_cancer(n_samples: int | None, seed: int) -> Pool:
    from sklearn.datasets import load_breast_cancer

    bunch = load_breast_cancer()
    return bunch.data.astype(np.float32), bunch.target.astype(np.int64)


@contextmanager
def _global_rng_preserved() -> Iterator[None]:
    """mnist1d reseeds numpy's and Python's global RNGs; give the caller theirs back."""
    numpy_state, python_state = np.random.get_state(), random.getstate()
    try:
        yield
    finally:
        np.random.set_state(numpy_state)
        random.setstate(python_state)


def _mnist1d(n_samples: int | None, seed: int) -> Pool:
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples = n_samples or 4000
    args.seed = seed
    with _global_rng_preserved():
        raw = make_dataset(args)  # generated locally; get_dataset would download a pickle
    x = np.concatenate([raw["x"], raw["x_test"]]).astype(np.float32)[:, None, :]
    y = np.concatenate([raw["y"], raw["y_test"]]).astype(np.int64)
    return x, y


def _blobs(n_samples: int | None, seed: int) -> Pool:
    """Gaussian classes, each a large typical cluster plus a long tail of rare sub-clusters.

    Sub-cluster sizes fall off as a Zipf law (size ∝ 1/rank), so each class has a
    few singletons and pairs far from its bulk: the atypical examples that, by
    Feldman (2020), a model must memorize to classify.
    """
    n_samples = n_samples or 1500
    n_classes, dim, n_sub = 5, 10, 12
    if n_samples < n_classes * n_sub:
        raise DataError(
            f"dataset 'blobs': n_samples must be at least {n_classes * n_sub} "
            f"({n_sub} sub-clusters in each of {n_classes} classes), got {n_samples}"
        )
    rng = np.random.default_rng([seed, 0xB10B])
    per_class = n_samples // n_classes
    ranks = np.arange(1, n_sub + 1)
    weights = 1.0 / ranks
    xs, ys = [], []
    for label in range(n_classes):
        centre = rng.normal(0.0, 4.0, dim)
        sizes = np.maximum(1, np.floor(per_class * 0.35 * weights / weights.sum())).astype(int)
        sizes[0] = per_class - sizes[1:].sum()  # the bulk takes the rest
        for rank, size in enumerate(sizes):
            offset = 0.0 if rank == 0 else rng.normal(0.0, 3.0, dim)
            spread = 1.0 if rank == 0 else 0.3
            xs.append(centre + offset + rng.normal(0.0, spread, (size, dim)))
            ys.append(np.full(size, label))
    return np.concatenate(xs).astype(np.float32), np.concatenate(ys).astype(np.int64)


BUILTIN: dict[str, BuiltinDataset] = {
    d.name: d
    for d in (
        BuiltinDataset(
            "digits",
            "image",
            10,
            None,
            "sklearn handwritten digits, 1797 images 1×8×8",
            _digits,
            (1, 8, 8),
            1797,
        ),
        BuiltinDataset(
            "mnist1d",
            "sequence",
            10,
            4000,
            "MNIST-1D (Greydanus 2020) generated locally, sequences 1×40",
            _mnist1d,
            (1, 40),
        ),
        BuiltinDataset(
            "breast_cancer",
            "tabular",
            2,
            None,
            "sklearn Wisconsin breast cancer, 569 × 30 features (standardised)",
            _breast_cancer,
            (30,),
            569,
        ),
        BuiltinDataset(
            "blobs",
            "tabular",
            5,
            1500,
            "synthetic Gaussian classes with a long tail of rare sub-clusters, 10 features",
            _blobs,
            (10,),
        ),
    )
}


def _kind(shape: tuple[int, ...]) -> Kind:
    return {3: "image", 2: "sequence", 1: "tabular"}[len(shape)]


def _numpy(part: object) -> np.ndarray:
    """An array, tensor or number as a numpy array, its dtype kept (complex stays complex,
    so the checks refuse it rather than a cast dropping its imaginary part)."""
    if hasattr(part, "detach"):
        part = part.detach().cpu()
    return np.asarray(part.numpy() if hasattr(part, "numpy") else part)


def register_dataset(name: str, data, *, description: str = "user dataset") -> BuiltinDataset:
    """Make the user's data known as ``name`` (to the config, ``mnemoscope datasets`` and
    runs), like a built-in dataset: split, label noise and scaling are applied by
    :func:`~mnemoscope.data.prepare` (tables are standardised, images and sequences kept).

    ``data``: a pair ``(x, y)`` of arrays or tensors (``x [N, d]`` table, ``[N, C, L]``
    sequences or ``[N, C, H, W]`` images; ``y [N]`` integer labels ``0..K−1``), or a
    ``torch.utils.data.Dataset`` whose items are ``(x, y)`` pairs (read once, here). The
    arrays are checked (finite, shapes, labels, at least two examples per class) and
    hashed: the hash is part of the data stage's cache key, so new data rebuilds. With
    ``executor: {kind: ray}``, register the dataset in a module the workers import too.
    """
    import hashlib
    import re

    import torch

    from mnemoscope.data.files import check_pool
    from mnemoscope.errors import ConfigError

    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z][A-Za-z0-9_.-]{0,63}", name):
        raise ConfigError(
            f"dataset name {name!r}: expected a letter then up to 63 letters, digits, '_.-'"
        )
    if name in BUILTIN and not BUILTIN[name].digest:
        raise ConfigError(
            f"dataset '{name}' is built in and cannot be replaced; choose another name"
        )
    if isinstance(data, torch.utils.data.Dataset):
        try:
            items = [data[i] for i in range(len(data))]
            x = np.stack([_numpy(item[0]) for item in items])
            y = np.stack([_numpy(item[1]) for item in items])
        except Exception as error:  # any user dataset
            raise DataError(
                f"dataset '{name}': could not read (x, y) items ({type(error).__name__}: {error})"
            ) from None
    elif isinstance(data, tuple | list) and len(data) == 2:
        x, y = (_numpy(part) for part in data)
    else:
        raise ConfigError(
            f"dataset '{name}': expected (x, y) arrays or a torch Dataset of (x, y) items, "
            f"got {type(data).__name__}"
        )
    where = f"dataset '{name}'"
    if x.ndim not in (2, 3, 4) or y.ndim != 1 or len(x) != len(y) or len(y) == 0:
        raise DataError(
            f"{where}: expected x [N, d], [N, C, L] or [N, C, H, W] and y [N], got "
            f"{list(x.shape)} and {list(y.shape)}"
        )
    # the checks data read from files gets, so both ways in accept the same data
    x, y, classes = check_pool(where, x, y)
    counts = np.bincount(y, minlength=classes)
    if counts.min() < 2:
        raise DataError(f"{where}: class {int(counts.argmin())} has only one example")
    x = np.ascontiguousarray(x, dtype=np.float32)
    digest = hashlib.sha256(x.tobytes())
    digest.update(f"|{x.shape}|".encode())
    digest.update(y.tobytes())

    def load(n_samples: int | None, seed: int) -> Pool:
        return x, y

    spec = BuiltinDataset(
        name,
        _kind(tuple(x.shape[1:])),
        classes,
        None,
        description,
        load,
        tuple(int(s) for s in x.shape[1:]),
        len(y),
        digest.hexdigest(),
    )
    BUILTIN[name] = spec
    return spec
