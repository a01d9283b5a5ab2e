"""What an estimator asks to have trained: an :class:`EnsembleSpec`.

Estimators never train. Each one *declares* the ensembles it needs; the runner
collects the specs of a whole study, trains each distinct one once and hands every
estimator the ensembles it asked for. Two specs that differ only in the
checkpoints they keep describe the same training runs, so they share one training
(with the union of the checkpoints): see :meth:`EnsembleSpec.trajectory`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch

from mnemoscope.train.masks import full_masks

Sharing = Literal["per_model", "shared"]


@dataclass(frozen=True, eq=False)
class EnsembleSpec:
    """K models of the study's architecture, model k trained on ``masks[k]``.

    Attributes:
        masks: ``[K, n]`` bool; ``masks[k, i]``: training example i is in model k's set.
        checkpoint_epochs: 1-based epochs after which the parameters are kept.
        init: ``'per_model'`` draws model k's initial weights from a seed of its own;
            ``'shared'``: every model starts from the same weights (those of model 0).
        order: ``'per_model'``: model k shuffles its own subset each epoch;
            ``'shared'``: one permutation of all n examples per epoch, filtered by each
            model's mask, so a model trained without example i sees the others in the
            same order as a model trained on everything (what leave-one-out needs).
        keep_initial: keep the parameters before the first step (as checkpoint epoch 0).
        stream: which of several independent replicates of the same masks, init and
            order sharing this is (0 for the first). A non-zero stream enters the
            trajectory digest, from which the runner derives the training seed, so each
            stream draws its own (shared) initialisation and data order; stream 0 leaves
            the digest as it was before streams existed.
    """

    masks: torch.Tensor
    checkpoint_epochs: tuple[int, ...] = ()
    init: Sharing = "per_model"
    order: Sharing = "per_model"
    keep_initial: bool = False
    stream: int = 0
    _digest: str = field(default="", init=False, repr=False)

    def __post_init__(self) -> None:
        masks = torch.as_tensor(self.masks).to(torch.bool).cpu()
        if masks.dim() != 2 or masks.shape[0] == 0 or masks.shape[1] == 0:
            raise ValueError(f"masks must be [K, n] with K, n >= 1, got {tuple(masks.shape)}")
        if self.init not in ("per_model", "shared") or self.order not in ("per_model", "shared"):
            raise ValueError("init and order must each be 'per_model' or 'shared'")
        if isinstance(self.stream, bool) or not isinstance(self.stream, int) or self.stream < 0:
            raise ValueError(f"stream must be an integer >= 0, got {self.stream!r}")
        epochs = tuple(sorted({int(e) for e in self.checkpoint_epochs}))
        if any(e < 1 for e in epochs):
            raise ValueError(f"checkpoint epochs are 1-based, got {list(epochs)}")
        object.__setattr__(self, "masks", masks)
        object.__setattr__(self, "checkpoint_epochs", epochs)
        digest = hashlib.sha256(masks.to(torch.uint8).numpy().tobytes())
        digest.update(f"{tuple(masks.shape)}|{self.init}|{self.order}".encode())
        if self.stream:
            digest.update(f"|stream={self.stream}".encode())
        object.__setattr__(self, "_digest", digest.hexdigest())

    @classmethod
    def single(cls, n_train: int, checkpoint_epochs: Sequence[int] = ()) -> EnsembleSpec:
        """One model on the whole training set (what most influence methods read)."""
        return cls(full_masks(1, n_train), tuple(checkpoint_epochs))

    @property
    def n_models(self) -> int:
        return int(self.masks.shape[0])

    @property
    def trajectory(self) -> str:
        """SHA-256 of what determines the training runs: masks, init, order and stream.

        Specs with equal trajectories are trained once; the checkpoints they keep
        are merged (:func:`merge_specs`).
        """
        return self._digest

    @property
    def name(self) -> str:
        """File-name-safe name of the trained ensemble."""
        kind = "full" if self.n_models == 1 and bool(self.masks.all()) else "ensemble"
        return f"{kind}-{self.trajectory[:12]}"


def merge_specs(specs: Iterable[EnsembleSpec]) -> EnsembleSpec:
    """One spec for several with the same trajectory: the union of their checkpoints."""
    specs = list(specs)
    first = specs[0]
    if any(s.trajectory != first.trajectory for s in specs):
        raise ValueError("only specs with the same masks, init, order and stream can be merged")
    return EnsembleSpec(
        first.masks,
        tuple(sorted({e for s in specs for e in s.checkpoint_epochs})),
        first.init,
        first.order,
        any(s.keep_initial for s in specs),
        first.stream,
    )
