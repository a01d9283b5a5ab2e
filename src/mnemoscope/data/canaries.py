"""Canaries: training examples given a unique feature and a label only it explains.

A canary is a training example of a chosen class stamped with a pattern of its own
(a seeded set of input coordinates set to large values) and relabelled to another
class. Nothing but memorization lets a model predict that label, so a canary is a
planted, known-memorized example (after Hartley & Tsaftaris 2022, unique-feature
memorization): memorization scores should rank it at the top, and a model trained on
it reacts to its pattern on inputs it never saw.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

from mnemoscope.errors import DataError


@dataclass(frozen=True, eq=False)
class Canaries:
    """The canaries of a dataset.

    Attributes:
        index: ``[c]`` int64 positions of the canaries in the training split.
        mask: ``[c, *input_shape]`` bool, the coordinates each canary's pattern sets.
        value: ``[c, *input_shape]`` float32, the values it sets them to.
    """

    index: torch.Tensor
    mask: torch.Tensor
    value: torch.Tensor

    def stamp(self, x: torch.Tensor, canary: int) -> torch.Tensor:
        """``x [N, *input_shape]`` with canary ``canary``'s pattern stamped on each input."""
        return torch.where(self.mask[canary], self.value[canary], x)

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"canary_index": self.index, "canary_mask": self.mask, "canary_value": self.value}

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor]) -> Canaries | None:
        if "canary_index" not in tensors:
            return None
        return cls(tensors["canary_index"], tensors["canary_mask"], tensors["canary_value"])


def insert_canaries(
    dataset,
    n: int,
    source_class: int,
    seed: int,
    fraction: float = 0.1,
    strength: float = 3.0,
):
    """Turn ``n`` training examples of ``source_class`` into canaries.

    Each canary's pattern sets a seeded ``fraction`` of the input coordinates (at least
    one) to ``±strength`` (the inputs are standardised, so 3 is three standard
    deviations), and its label becomes a seeded class other than ``source_class``; its
    original label is kept in ``y_train_original``. Canaries are drawn among examples with
    a clean label and an uncorrupted input. Raises :class:`DataError` when the class has
    fewer than ``n`` such training examples.

    Returns:
        A new :class:`~mnemoscope.data.Dataset` with ``canaries`` set.
    """
    if not 0 <= source_class < dataset.n_classes:
        raise DataError(
            f"canaries: class {source_class} is not a class of '{dataset.name}' "
            f"(classes 0..{dataset.n_classes - 1})"
        )
    clean = ~dataset.is_mislabeled & ~dataset.is_corrupted  # canaries plant on clean data
    candidates = torch.nonzero((dataset.y_train == source_class) & clean).flatten()
    if n > len(candidates):
        raise DataError(
            f"canaries: n = {n} is larger than class {source_class} of '{dataset.name}' "
            f"({len(candidates)} clean training examples)"
        )
    rng = np.random.default_rng(seed)
    index = torch.from_numpy(np.sort(rng.choice(candidates.numpy(), size=n, replace=False)))
    shape = dataset.input_shape
    size = int(np.prod(shape))
    chosen = max(1, round(fraction * size))
    mask = np.zeros((n, size), dtype=bool)
    value = np.zeros((n, size), dtype=np.float32)
    labels = dataset.y_train.clone()
    others = [c for c in range(dataset.n_classes) if c != source_class]
    for j, i in enumerate(index.tolist()):
        coords = rng.choice(size, size=chosen, replace=False)
        mask[j, coords] = True
        value[j, coords] = strength * rng.choice([-1.0, 1.0], size=chosen)
        labels[i] = int(rng.choice(others))
    canaries = Canaries(
        index.long(),
        torch.from_numpy(mask.reshape(n, *shape)),
        torch.from_numpy(value.reshape(n, *shape)),
    )
    x = dataset.x_train.clone()
    for j, i in enumerate(index.tolist()):
        x[i] = canaries.stamp(x[i : i + 1], j)[0]
    return replace(dataset, x_train=x, y_train=labels, canaries=canaries)
