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

CORRUPTIONS = ("none", "noise", "occlusion", "adversarial")
"""Codes of :attr:`Dataset.corruption`: position in this tuple."""
SOURCES = ("main", "clean", "noisy")
"""Codes of :attr:`Dataset.train_source`: position in this tuple (``main``: no sources)."""

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
        canaries: planted canaries, or None.
        corruption: ``[n]`` int8 code of each training input's planted corruption
            (:data:`CORRUPTIONS`), or None when none were planted.
        train_source: ``[n]`` int8 code of each training example's source
            (:data:`SOURCES`), or None: every example is from source ``main``.
        undersampled_class: the class whose training examples were under-sampled, or None.
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
    corruption: torch.Tensor | None = None
    """Planted input corruptions (:func:`~mnemoscope.data.corrupt`)."""
    train_source: torch.Tensor | None = None
    """Data sources (:func:`~mnemoscope.data.split_sources`)."""
    undersampled_class: int | None = None
    """The class :func:`~mnemoscope.data.undersample` thinned."""

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
        for key, codes, names in (
            ("corruption", self.corruption, CORRUPTIONS),
            ("train_source", self.train_source, SOURCES),
        ):
            if codes is None:
                continue
            if codes.shape != self.y_train.shape or codes.dtype != torch.int8:
                raise DataError(f"{where}: {key} should be int8 of shape ({self.n_train},)")
            if codes.numel() and not 0 <= int(codes.min()) <= int(codes.max()) < len(names):
                raise DataError(f"{where}: {key} codes must lie in [0, {len(names)})")
        rare = self.undersampled_class
        if rare is not None and not 0 <= rare < self.n_classes:
            raise DataError(f"{where}: undersampled class {rare} is not in [0, {self.n_classes})")
        all_ids = torch.cat([self.train_ids, self.test_ids])
        if all_ids.unique().numel() != all_ids.numel():
            raise DataError(f"{where}: example ids must be unique across train and test")

    def tensors(self) -> dict[str, torch.Tensor]:
        """The dataset's tensors by name, as stored in the run directory."""
        tensors = {key: getattr(self, key) for key in _TENSOR_KEYS}
        # provenance only when planted: a dataset without it keeps its fingerprint
        if self.corruption is not None:
            tensors["corruption"] = self.corruption
        if self.train_source is not None:
            tensors["train_source"] = self.train_source
        if self.undersampled_class is not None:
            tensors["undersampled_class"] = torch.tensor([self.undersampled_class])
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
            corruption=tensors.get("corruption"),
            train_source=tensors.get("train_source"),
            undersampled_class=(
                int(tensors["undersampled_class"][0]) if "undersampled_class" in tensors else None
            ),
            **{k: tensors[k] for k in _TENSOR_KEYS},
        )

    @property
    def is_canary(self) -> torch.Tensor:
        """``[n]`` bool: the training example is a canary."""
        flags = torch.zeros(self.n_train, dtype=torch.bool)
        if self.canaries is not None:
            flags[self.canaries.index] = True
        return flags

    def _is(self, corruption: str) -> torch.Tensor:
        if self.corruption is None:
            return torch.zeros(self.n_train, dtype=torch.bool)
        return self.corruption == CORRUPTIONS.index(corruption)

    @property
    def is_noisy_input(self) -> torch.Tensor:
        """``[n]`` bool: Gaussian noise was added to the training input."""
        return self._is("noise")

    @property
    def is_occluded(self) -> torch.Tensor:
        """``[n]`` bool: a patch (segment, features) of the training input was blanked."""
        return self._is("occlusion")

    @property
    def is_adversarial(self) -> torch.Tensor:
        """``[n]`` bool: the training input was replaced by an FGSM adversarial example."""
        return self._is("adversarial")

    @property
    def is_corrupted(self) -> torch.Tensor:
        """``[n]`` bool: the training input carries a planted corruption of any kind."""
        if self.corruption is None:
            return torch.zeros(self.n_train, dtype=torch.bool)
        return self.corruption != 0

    @property
    def source(self) -> np.ndarray:
        """``[n]`` the source of each training example: ``main`` (no sources), ``clean`` or
        ``noisy``."""
        if self.train_source is None:
            return np.full(self.n_train, SOURCES[0], dtype=object)
        return np.asarray(SOURCES, dtype=object)[self.train_source.long().numpy()]

    @property
    def is_undersampled(self) -> torch.Tensor:
        """``[n]`` bool: the training example's original class was under-sampled."""
        return self._of_undersampled_class(self.y_train_original)

    def _of_undersampled_class(self, labels: torch.Tensor) -> torch.Tensor:
        if self.undersampled_class is None:
            return torch.zeros(labels.shape, dtype=torch.bool)
        return labels == self.undersampled_class

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
        """Rows of the ``examples`` table for this dataset.

        Test examples carry no planted corruption and have source ``test``;
        ``is_undersampled`` marks the rare class in both splits (by the original label),
        so accuracy on it can be read off the untouched test split.
        """
        train = pd.DataFrame(
            {
                "example_id": self.train_ids.numpy(),
                "split": "train",
                "label": self.y_train.numpy(),
                "original_label": self.y_train_original.numpy(),
                "is_mislabeled": self.is_mislabeled.numpy(),
                "is_canary": self.is_canary.numpy(),
                "is_noisy_input": self.is_noisy_input.numpy(),
                "is_occluded": self.is_occluded.numpy(),
                "is_adversarial": self.is_adversarial.numpy(),
                "source": self.source,
                "is_undersampled": self.is_undersampled.numpy(),
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
                "is_noisy_input": False,
                "is_occluded": False,
                "is_adversarial": False,
                "source": "test",
                "is_undersampled": self._of_undersampled_class(self.y_test).numpy(),
            }
        )
        frame = pd.concat([train, test], ignore_index=True)
        frame.insert(0, "dataset", self.name)
        return frame
