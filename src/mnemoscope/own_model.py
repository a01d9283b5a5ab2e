"""A user's own trained model and data as what the estimators take: a :class:`ModelEnsemble`
(a :class:`~mnemoscope.train.TrainedEnsemble` of one model built from the user's
``nn.Module`` and its checkpoints) and a :class:`~mnemoscope.data.Dataset`.

The model is copied and put in eval mode: its buffers (BatchNorm running statistics) are
then constants of the forward pass, so per-example gradients are well defined and
BatchNorm is fine here (only training K models at once refuses it). Checkpoints give
parameters; every checkpoint is evaluated with the buffers of the model passed.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from mnemoscope.data import Dataset
from mnemoscope.errors import ConfigError, DataError
from mnemoscope.train import Checkpoint, TrainedEnsemble
from mnemoscope.train.trained import Params, _models_logits

CheckpointLike = tuple[Mapping[str, torch.Tensor], float]
"""``(state_dict, lr)``: a model's parameters at some point of training and the learning
rate then in force."""


def examples(data: Any, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x [N, ...] float32, y [N] int64)`` from a pair ``(x, y)`` of tensors or arrays, a
    torch ``Dataset`` of ``(x, y)`` items, a ``DataLoader`` of ``(x, y)`` batches or a
    mnemoscope :class:`~mnemoscope.data.Dataset` (its training split). A ``DataLoader`` is
    read once, in its order (example ids are positions in that order: do not shuffle).
    ``what`` names the argument in the one-line :class:`DataError` a bad input raises."""
    try:
        if isinstance(data, Dataset):
            x, y = data.x_train, data.y_train
        elif isinstance(data, DataLoader):
            batches = [(torch.as_tensor(b[0]), torch.as_tensor(b[1])) for b in data]
            x, y = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
        elif isinstance(data, torch.utils.data.Dataset):
            items = [data[i] for i in range(len(data))]  # type: ignore[arg-type]
            x = torch.stack([torch.as_tensor(item[0]) for item in items])
            y = torch.as_tensor([int(item[1]) for item in items])
        elif isinstance(data, tuple | list) and len(data) == 2:
            x, y = (
                torch.as_tensor(np.asarray(part) if not torch.is_tensor(part) else part)
                for part in data
            )
        else:
            raise DataError(
                f"{what}: expected (x, y) tensors, a torch Dataset or DataLoader of (x, y), "
                f"or a mnemoscope Dataset; got {type(data).__name__}"
            )
    except DataError:
        raise
    except Exception as error:  # any user container
        raise DataError(
            f"{what}: could not read (x, y) ({type(error).__name__}: {error})"
        ) from None
    x, y = x.detach().cpu(), y.detach().cpu()
    if x.dim() < 2 or y.dim() != 1 or len(x) != len(y) or len(y) == 0:
        raise DataError(
            f"{what}: expected x [N, ...] and y [N] with N >= 1, got {list(x.shape)} and "
            f"{list(y.shape)}"
        )
    if y.dtype.is_floating_point and not bool((y == y.round()).all()):
        raise DataError(f"{what}: labels must be integers")
    if not bool(torch.isfinite(x.float()).all()):
        raise DataError(f"{what}: inputs contain NaN or infinite values")
    return x.float(), y.long()


def as_dataset(train: Any, n_classes: int, targets: Any = None) -> Dataset:
    """The training data as a :class:`Dataset`: a mnemoscope Dataset as it is; otherwise
    ids ``0..n−1``, no label noise, and as test split the targets (ids from n on), or the
    first training example when there are none (the test split is only evaluated)."""
    if isinstance(train, Dataset):
        if train.n_classes != n_classes:
            raise DataError(
                f"train: the dataset has {train.n_classes} classes, the model {n_classes}"
            )
        return train
    x, y = examples(train, "train")
    x_test, y_test = examples(targets, "targets") if targets is not None else (x[:1], y[:1])
    n = len(y)
    kind = {3: "image", 2: "sequence"}.get(x.dim() - 1, "tabular")
    return Dataset(
        name="train",
        kind=kind,
        x_train=x,
        y_train=y,
        y_train_original=y.clone(),
        train_ids=torch.arange(n),
        x_test=x_test,
        y_test=y_test,
        test_ids=torch.arange(n, n + len(y_test)),
        n_classes=n_classes,
    )


@dataclass
class ModelEnsemble(TrainedEnsemble):
    """A trained ensemble whose module is a copy of ``template`` (the user's model, in eval
    mode, buffers included) instead of a registered architecture. Nothing was recorded
    while training it: ``train_loss`` is NaN and ``train_correct`` False throughout."""

    template: nn.Module | None = None

    def module(self) -> nn.Module:
        return copy.deepcopy(self.template)

    @torch.no_grad()
    def logits(
        self, x: torch.Tensor, device: str | torch.device = "cpu", params: Params | None = None
    ) -> torch.Tensor:
        # the real module, not a meta copy: its buffers (running statistics) are read
        params = {k: v.to(device) for k, v in (self.params if params is None else params).items()}
        return _models_logits(self.module().to(device), params, x.to(device))


def n_classes_of(model: nn.Module, x: torch.Tensor) -> int:
    """Classes of ``model``: the width of its output on one example (in eval mode)."""
    template = copy.deepcopy(model).cpu().eval()
    try:
        with torch.no_grad():
            out = template(x[:1])
    except Exception as error:  # any user model
        raise ConfigError(
            f"model: the forward pass fails on a batch of shape {list(x[:1].shape)} "
            f"({type(error).__name__}: {error})"
        ) from None
    if not torch.is_tensor(out) or out.dim() != 2 or out.shape[0] != 1:
        raise ConfigError(
            f"model: expected logits [B, n_classes], got {getattr(out, 'shape', out)}"
        )
    return int(out.shape[1])


def ensemble_from_model(
    model: nn.Module,
    dataset: Dataset,
    checkpoints: Sequence[CheckpointLike] = (),
    device: str | torch.device = "cpu",
) -> ModelEnsemble:
    """One model (the final parameters of ``model``) with ``checkpoints`` kept after epochs
    ``1..C`` (the epochs count C, at least 1), and its logits on both splits."""
    template = copy.deepcopy(model).cpu().eval()
    names = [name for name, _ in template.named_parameters()]
    if not names:
        raise ConfigError("model: it has no parameters")
    final = {name: p.detach()[None] for name, p in template.named_parameters()}
    kept = []
    for j, entry in enumerate(checkpoints):
        if not (isinstance(entry, tuple | list) and len(entry) == 2):
            raise ConfigError(f"checkpoints[{j}]: expected (state_dict, lr), got {type(entry)}")
        state, lr = entry
        missing = [name for name in names if name not in state]
        if missing:
            raise ConfigError(f"checkpoints[{j}]: no parameters {missing[:3]} in the state dict")
        if isinstance(lr, bool) or not isinstance(lr, int | float) or not np.isfinite(lr):
            raise ConfigError(f"checkpoints[{j}]: the learning rate must be a number, got {lr!r}")
        params = {
            n: torch.as_tensor(state[n]).detach().cpu().to(final[n].dtype)[None] for n in names
        }
        bad = [n for n in names if params[n].shape != final[n].shape]
        if bad:
            raise ConfigError(f"checkpoints[{j}]: parameter '{bad[0]}' has the wrong shape")
        kept.append(Checkpoint(j + 1, float(lr), params))
    epochs = max(1, len(kept))
    n = dataset.n_train
    ensemble = ModelEnsemble(
        arch="model",
        input_shape=dataset.input_shape,
        n_classes=dataset.n_classes,
        params=final,
        masks=torch.ones(1, n, dtype=torch.bool),
        train_loss=torch.full((1, epochs, n), float("nan")),
        train_correct=torch.zeros(1, epochs, n, dtype=torch.bool),
        train_logits=torch.empty(0),
        test_logits=torch.empty(0),
        checkpoints=kept,
        template=template,
    )
    ensemble.train_logits = ensemble.logits(dataset.x_train, device).cpu()
    ensemble.test_logits = ensemble.logits(dataset.x_test, device).cpu()
    return ensemble
