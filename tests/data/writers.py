"""Writers of small files in the real formats (headers, magic numbers, record layouts),
written here from the format specifications, so the readers are tested on true files."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

IDX_TYPE = {np.dtype("u1"): 0x08, np.dtype(">i4"): 0x0C, np.dtype(">f4"): 0x0D}


def idx_bytes(array: np.ndarray, dtype: str = "u1") -> bytes:
    """An IDX file: 0x00 0x00, type code, number of dimensions, big-endian sizes, values."""
    array = np.asarray(array).astype(dtype)
    header = bytes([0, 0, IDX_TYPE[array.dtype], array.ndim])
    header += b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    return header + array.tobytes()


def write_idx(path: Path, array: np.ndarray, gz: bool = False, dtype: str = "u1") -> Path:
    data = idx_bytes(array, dtype)
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def write_mnist_folder(
    folder: Path, n_train: int = 40, n_test: int = 20, gz: bool = False, seed: int = 0
) -> dict[str, np.ndarray]:
    """An MNIST-like folder of 4 IDX files (images 6×5, to catch swapped axes)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    arrays = {
        "x_train": rng.integers(0, 256, (n_train, 6, 5), dtype=np.uint8),
        "y_train": np.arange(n_train) % 4,
        "x_test": rng.integers(0, 256, (n_test, 6, 5), dtype=np.uint8),
        "y_test": np.arange(n_test) % 4,
    }
    suffix = ".gz" if gz else ""
    write_idx(folder / f"train-images-idx3-ubyte{suffix}", arrays["x_train"], gz)
    write_idx(folder / f"train-labels-idx1-ubyte{suffix}", arrays["y_train"], gz)
    write_idx(folder / f"t10k-images-idx3-ubyte{suffix}", arrays["x_test"], gz)
    write_idx(folder / f"t10k-labels-idx1-ubyte{suffix}", arrays["y_test"], gz)
    return arrays


def cifar_records(images: np.ndarray, *labels: np.ndarray) -> bytes:
    """CIFAR binary records: the label byte(s), then 1024 red, 1024 green, 1024 blue."""
    n = len(images)
    columns = [np.asarray(label, dtype=np.uint8).reshape(n, 1) for label in labels]
    return np.concatenate([*columns, images.reshape(n, 3072).astype(np.uint8)], axis=1).tobytes()


def cifar_images(n: int, rng: np.random.Generator) -> np.ndarray:
    """[n, 3, 32, 32] bytes whose channels differ in range (red < 80 ≤ green < 160 ≤ blue)."""
    base = rng.integers(0, 80, (n, 3, 32, 32))
    return (base + np.array([0, 80, 160])[None, :, None, None]).astype(np.uint8)


def write_cifar10_folder(folder: Path, n_per_batch: int = 20, seed: int = 0) -> dict:
    """``data_batch_1.bin``, ``data_batch_2.bin`` and ``test_batch.bin``."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    out: dict[str, list[np.ndarray]] = {"x_train": [], "y_train": []}
    for batch in (1, 2):
        x, y = cifar_images(n_per_batch, rng), np.arange(n_per_batch) % 10
        (folder / f"data_batch_{batch}.bin").write_bytes(cifar_records(x, y))
        out["x_train"].append(x)
        out["y_train"].append(y)
    x, y = cifar_images(n_per_batch, rng), (np.arange(n_per_batch) + 3) % 10
    (folder / "test_batch.bin").write_bytes(cifar_records(x, y))
    return {
        "x_train": np.concatenate(out["x_train"]),
        "y_train": np.concatenate(out["y_train"]),
        "x_test": x,
        "y_test": y,
    }


def write_cifar100_folder(folder: Path, n_train: int = 200, n_test: int = 100) -> dict:
    """``train.bin`` and ``test.bin`` of (coarse, fine) labelled records."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    out = {}
    for split, n in (("train", n_train), ("test", n_test)):
        x, fine = cifar_images(n, rng), np.arange(n) % 100
        coarse = fine // 5
        (folder / f"{split}.bin").write_bytes(cifar_records(x, coarse, fine))
        out |= {f"x_{split}": x, f"fine_{split}": fine, f"coarse_{split}": coarse}
    return out
