"""A trained ensemble: the K models' parameters and what was recorded while training
them (losses, correctness, logits, checkpoints), saved to and loaded from one file."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn
from torch.func import functional_call, vmap

from mnemoscope.errors import DataError
from mnemoscope.models import build_model
from mnemoscope.store.atomic import write_safetensors
from mnemoscope.train.optim import Params

EVAL_BATCH = 1024
"""Model-examples per vmapped evaluation pass (inputs × models evaluated at once)."""
MIN_EVAL_BATCH = 16
"""Fewest inputs per evaluation pass, however many models: fewer cost more in calls."""


@dataclass
class Checkpoint:
    """Parameters ``[K, ...]`` after ``epoch`` epochs (0: before training) and the
    learning rate then in force: that of the last update before the checkpoint (of the
    first update for epoch 0), the ``η_c`` by which TracIn-CP weighs it (Pruthi et al.
    2020, eq. 3). Under a schedule, models whose subsets differ in size take different
    numbers of steps and reach epoch e at different learning rates: ``lr`` is model 0's,
    ``lrs`` every model's (empty in files written before schedules: all equal ``lr``)."""

    epoch: int
    lr: float
    params: Params
    lrs: tuple[float, ...] = ()


@dataclass
class TrainedEnsemble:
    """K trained models and what was recorded while training them.

    Attributes:
        params: final parameters, each ``[K, ...]``.
        masks: ``[K, n]`` bool, ``masks[k, i]``: training example i was in model k's subset.
        train_loss: ``[K, E, n]`` cross-entropy of example i under model k when its
            minibatch was presented in epoch e, before that step's update (as forgetting
            events, Toneva et al. 2019, and cumulative sample loss, Ravikumar et al. 2025,
            are defined). NaN where ``masks[k, i]`` is False: model k never saw i.
        train_correct: ``[K, E, n]`` bool, the argmax prediction equalled the training
            label at that presentation; False where model k never saw i.
        train_logits: ``[K, n, C]`` final logits on every training example, seen or not.
        test_logits: ``[K, n_test, C]`` final logits on the test split.
        checkpoints: parameters saved during training, oldest first.
        arch_options: the options the architecture was built with (``arch_options``).
    """

    arch: str
    input_shape: tuple[int, ...]
    n_classes: int
    params: Params
    masks: torch.Tensor
    train_loss: torch.Tensor
    train_correct: torch.Tensor
    train_logits: torch.Tensor
    test_logits: torch.Tensor
    checkpoints: list[Checkpoint] = field(default_factory=list)
    arch_options: dict[str, Any] = field(default_factory=dict)

    @property
    def n_models(self) -> int:
        return int(self.masks.shape[0])

    @property
    def epochs(self) -> int:
        """Epochs each model was trained for."""
        return int(self.train_loss.shape[1])

    @property
    def initial(self) -> Params:
        """Parameters before training; the spec must have asked for ``keep_initial``."""
        for checkpoint in self.checkpoints:
            if checkpoint.epoch == 0:
                return checkpoint.params
        raise ValueError("this ensemble did not keep its initial parameters (keep_initial)")

    def checkpoint(self, epoch: int) -> Checkpoint:
        """The checkpoint kept after ``epoch`` epochs."""
        for checkpoint in self.checkpoints:
            if checkpoint.epoch == epoch:
                return checkpoint
        kept = [c.epoch for c in self.checkpoints]
        raise ValueError(f"no checkpoint at epoch {epoch}; this ensemble kept {kept}")

    def module(self) -> nn.Module:
        """A module of this architecture to ``functional_call`` with these parameters."""
        return build_model(self.arch, self.input_shape, self.n_classes, **self.arch_options)

    @torch.no_grad()
    def logits(
        self, x: torch.Tensor, device: str | torch.device = "cpu", params: Params | None = None
    ) -> torch.Tensor:
        """``x [N, ...]`` → ``[K, N, C]`` logits of the K final models on ``device`` (one
        vmapped forward pass per batch of inputs, as the trainer's final evaluation), or of
        other stacked parameters of the K models (a checkpoint's ``params``)."""
        params = {k: v.to(device) for k, v in (self.params if params is None else params).items()}
        return _models_logits(self.module().to("meta"), params, x.to(device))

    def save(self, path: Path) -> Path:
        """Write everything to one safetensors file, atomically."""
        tensors = {f"params.{k}": v for k, v in self.params.items()}
        for i, ckpt in enumerate(self.checkpoints):
            tensors.update({f"checkpoint.{i}.{k}": v for k, v in ckpt.params.items()})
        tensors.update(
            masks=self.masks,
            train_loss=self.train_loss,
            train_correct=self.train_correct,
            train_logits=self.train_logits,
            test_logits=self.test_logits,
        )
        meta = {
            "arch": self.arch,
            "arch_options": self.arch_options,
            "input_shape": list(self.input_shape),
            "n_classes": self.n_classes,
            "checkpoints": [
                {"epoch": c.epoch, "lr": c.lr, "lrs": list(c.lrs)} for c in self.checkpoints
            ],
        }
        return write_safetensors(path, tensors, {"mnemoscope": json.dumps(meta)})

    @classmethod
    def load_parts(cls, paths: Sequence[Path]) -> TrainedEnsemble:
        """One ensemble from files of consecutive parts of its models, in order."""
        return concatenate_parts([cls.load(path) for path in paths])

    @classmethod
    def load(cls, path: Path) -> TrainedEnsemble:
        """The ensemble of a file :meth:`save` wrote; :class:`DataError` naming the file
        for one that is not (unreadable, keys or shapes that do not fit its architecture),
        whatever its digest."""
        from safetensors import SafetensorError

        try:
            ensemble = cls._read(path)
            ensemble._check_shapes()
        except DataError:
            raise
        except (SafetensorError, KeyError, TypeError, ValueError, AttributeError) as error:
            detail = str(error).strip().splitlines()
            raise DataError(
                f"{path}: not a model file this version of mnemoscope wrote "
                f"({type(error).__name__}{': ' + detail[0] if detail else ''}); delete it and "
                "run again to retrain it"
            ) from None
        return ensemble

    def _check_shapes(self) -> None:
        """Parameters of the architecture's names and shapes for ``K`` models, and records
        of ``K`` models, or :class:`ValueError`."""
        k = self.n_models
        expected = {name: (k, *p.shape) for name, p in self.module().named_parameters()}
        for params in [self.params, *(c.params for c in self.checkpoints)]:
            got = {name: tuple(tensor.shape) for name, tensor in params.items()}
            if got != expected:
                raise ValueError(f"parameters {got} do not fit arch '{self.arch}' ({expected})")
        n = self.masks.shape[1] if self.masks.ndim == 2 else -1
        shapes = {
            "masks": (self.masks.shape, (k, n)),
            "train_loss": (self.train_loss.shape[:1] + self.train_loss.shape[2:], (k, n)),
            "train_correct": (self.train_correct.shape, self.train_loss.shape),
            "train_logits": (self.train_logits.shape, (k, n, self.n_classes)),
            "test_logits": (self.test_logits.shape[::2], (k, self.n_classes)),
        }
        for name, (got, want) in shapes.items():
            if tuple(got) != tuple(want) or (name == "test_logits" and self.test_logits.ndim != 3):
                raise ValueError(f"{name} has shape {tuple(got)}, expected {tuple(want)}")

    @classmethod
    def _read(cls, path: Path) -> TrainedEnsemble:
        from safetensors import safe_open

        with safe_open(str(path), "pt") as handle:
            meta = json.loads(handle.metadata()["mnemoscope"])
        tensors = load_file(str(path))

        def group(prefix: str) -> Params:
            return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}

        checkpoints = [
            Checkpoint(c["epoch"], c["lr"], group(f"checkpoint.{i}."), tuple(c.get("lrs", ())))
            for i, c in enumerate(meta["checkpoints"])
        ]
        return cls(
            arch=meta["arch"],
            arch_options=meta.get("arch_options", {}),  # absent from files of older versions
            input_shape=tuple(meta["input_shape"]),
            n_classes=meta["n_classes"],
            params=group("params."),
            masks=tensors["masks"],
            train_loss=tensors["train_loss"],
            train_correct=tensors["train_correct"],
            train_logits=tensors["train_logits"],
            test_logits=tensors["test_logits"],
            checkpoints=checkpoints,
        )


def eval_batch(n_models: int) -> int:
    """Inputs per vmapped evaluation pass of ``n_models`` models: ``EVAL_BATCH``
    model-examples in all (at least ``MIN_EVAL_BATCH`` inputs), so that evaluation
    memory does not grow with the number of models evaluated at once."""
    return max(MIN_EVAL_BATCH, EVAL_BATCH // n_models)


def _models_logits(
    template: nn.Module, params: Params, x: torch.Tensor, out: torch.Tensor | None = None
) -> torch.Tensor:
    """Stacked ``params`` (each ``[K, ...]``) on ``x [N, ...]`` shared by all models →
    ``[K, N, C]``, :func:`eval_batch` inputs at a time, each batch written into ``out``
    (a new tensor on ``x``'s device when None)."""
    n_models = next(iter(params.values())).shape[0]

    def one(p: Params, xb: torch.Tensor) -> torch.Tensor:
        return functional_call(template, p, (xb,))

    logits = out
    step = eval_batch(n_models)
    for start in range(0, len(x), step):
        xb = x[start : start + step]
        # An expanded (batched) input rather than in_dims=None: GroupNorm has no vmap
        # rule for an unbatched input.
        values = vmap(one)(params, xb.expand(n_models, *xb.shape))
        if logits is None:
            logits = values.new_empty(n_models, len(x), values.shape[-1])
        logits[:, start : start + len(xb)] = values
    if logits is None:
        raise ValueError("no inputs to evaluate: x is empty")
    return logits


def _cat_params(parts: list[Params]) -> Params:
    """Stacked parameters of consecutive parts of the models, joined (one part: as is)."""
    if len(parts) == 1:
        return parts[0]
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}


def concatenate_parts(parts: list[TrainedEnsemble]) -> TrainedEnsemble:
    """The parts of one ensemble (trained chunk by chunk) as one ensemble, models in order."""
    if len(parts) == 1:
        return parts[0]
    first = parts[0]
    return TrainedEnsemble(
        arch=first.arch,
        input_shape=first.input_shape,
        n_classes=first.n_classes,
        params=_cat_params([p.params for p in parts]),
        masks=torch.cat([p.masks for p in parts]),
        train_loss=torch.cat([p.train_loss for p in parts]),
        train_correct=torch.cat([p.train_correct for p in parts]),
        train_logits=torch.cat([p.train_logits for p in parts]),
        test_logits=torch.cat([p.test_logits for p in parts]),
        checkpoints=[
            Checkpoint(
                c.epoch,
                c.lr,
                _cat_params([p.checkpoints[i].params for p in parts]),
                tuple(lr for p in parts for lr in p.checkpoints[i].lrs),
            )
            for i, c in enumerate(first.checkpoints)
        ],
        arch_options=first.arch_options,
    )
