"""The in-memory dataset every stage works on: tensors, stable ids and provenance."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
import torch

from mnemoscope.data.canaries import Canaries
from mnemoscope.errors import DataError

Kind = Literal["image", "sequence", "tabular"]

_TENSOR_KEYS = (
    "x_train",
    "y_train",
    "y_train_original",
    "train_ids",
    "x_test",
    "y_test",
    "test_ids",
)


@dataclass(frozen=True, eq=False)
class Dataset:
    """A train/test split with per-example provenance.

    Attributes:
        name: dataset name as given in the config.
        kind: ``'image'`` (inputs ``[C, H, W]``), ``'sequence'`` (``[C, L]``) or
            ``'tabular'`` (``[d]``).
        x_train: ``[n, *input_shape]`` float32 inputs.
        y_train: ``[n]`` int64 labels the models are trained on (after label noise).
        y_train_original: ``[n]`` int64 labels before label noise.
        train_ids: ``[n]`` int64 stable example ids (unique across both splits).
        x_test, y_test, test_ids: the held-out split, same conventions.
        n_classes: number of classes; labels lie in ``[0, n_classes)``.
    """

    name: str
    kind: Kind
    x_train: torch.Tensor
    y_train: torch.Tensor
    y_train_original: torch.Tensor
    train_ids: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    test_ids: torch.Tensor
    n_classes: int
    canaries: Canaries | None = None
    """Training examples turned into canaries (:func:`~mnemoscope.data.insert_canaries`)."""

    def __post_init__(self) -> None:
        self.validate()

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    @property
    def n_train(self) -> int:
        return int(self.x_train.shape[0])

    @property
    def n_test(self) -> int:
        return int(self.x_test.shape[0])

    @property
    def is_mislabeled(self) -> torch.Tensor:
        """``[n]`` bool: the training label was flipped by label noise."""
        return self.y_train != self.y_train_original

    def validate(self) -> None:
        """Raise :class:`DataError` with a one-line message if the data cannot be used."""
        where = f"dataset '{self.name}'"
        for split, x, y, ids in (
            ("train", self.x_train, self.y_train, self.train_ids),
            ("test", self.x_test, self.y_test, self.test_ids),
        ):
            if x.shape[0] == 0:
                raise DataError(f"{where}: the {split} split is empty")
            if y.shape != (x.shape[0],) or ids.shape != (x.shape[0],):
                raise DataError(
                    f"{where}: {split} inputs have {x.shape[0]} rows but labels/ids have "
                    f"shapes {tuple(y.shape)}/{tuple(ids.shape)}; expected ({x.shape[0]},)"
                )
            if not all(bool(torch.isfinite(chunk).all()) for chunk in x.split(4096)):
                raise DataError(f"{where}: {split} inputs contain NaN or infinite values")
            if y.numel() and (int(y.min()) < 0 or int(y.max()) >= self.n_classes):
                raise DataError(
                    f"{where}: {split} labels must lie in [0, {self.n_classes}), "
                    f"found [{int(y.min())}, {int(y.max())}]"
                )
        if self.x_test.shape[1:] != self.x_train.shape[1:]:
            raise DataError(
                f"{where}: test inputs have shape {tuple(self.x_test.shape[1:])}, "
                f"train inputs {tuple(self.x_train.shape[1:])}"
            )
        if self.y_train_original.shape != self.y_train.shape:
            raise DataError(f"{where}: original labels do not match the training labels' shape")
        all_ids = torch.cat([self.train_ids, self.test_ids])
        if all_ids.unique().numel() != all_ids.numel():
            raise DataError(f"{where}: example ids must be unique across train and test")

    def tensors(self) -> dict[str, torch.Tensor]:
        """The dataset's tensors by name, as stored in the run directory."""
        tensors = {key: getattr(self, key) for key in _TENSOR_KEYS}
        return {**tensors, **(self.canaries.tensors() if self.canaries is not None else {})}

    @classmethod
    def from_tensors(
        cls, name: str, kind: Kind, n_classes: int, tensors: dict[str, torch.Tensor]
    ) -> Dataset:
        return cls(
            name=name,
            kind=kind,
            n_classes=n_classes,
            canaries=Canaries.from_tensors(tensors),
            **{k: tensors[k] for k in _TENSOR_KEYS},
        )

    @property
    def is_canary(self) -> torch.Tensor:
        """``[n]`` bool: the training example is a canary."""
        flags = torch.zeros(self.n_train, dtype=torch.bool)
        if self.canaries is not None:
            flags[self.canaries.index] = True
        return flags

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the name, kind, class count and every tensor's bytes."""
        digest = hashlib.sha256(f"{self.name}|{self.kind}|{self.n_classes}".encode())
        for key, tensor in self.tensors().items():
            array = np.ascontiguousarray(tensor.numpy())
            digest.update(f"|{key}|{array.dtype}|{array.shape}|".encode())
            digest.update(array.tobytes())
        return digest.hexdigest()

    def examples_frame(self) -> pd.DataFrame:
        """Rows of the ``examples`` table for this dataset."""
        train = pd.DataFrame(
            {
                "example_id": self.train_ids.numpy(),
                "split": "train",
                "label": self.y_train.numpy(),
                "original_label": self.y_train_original.numpy(),
                "is_mislabeled": self.is_mislabeled.numpy(),
                "is_canary": self.is_canary.numpy(),
            }
        )
        test = pd.DataFrame(
            {
                "example_id": self.test_ids.numpy(),
                "split": "test",
                "label": self.y_test.numpy(),
                "original_label": self.y_test.numpy(),
                "is_mislabeled": False,
                "is_canary": False,
            }
        )
        frame = pd.concat([train, test], ignore_index=True)
        frame.insert(0, "dataset", self.name)
        return frame
