"""What a run will cost, from its config alone, before anything is built or written.

For every dataset × architecture × ensemble the estimators declare, the memory a
training part holds at its peak (stacked parameters, gradients and optimizer state,
activations of a batch, the per-presentation records and final logits, the
checkpoints) and the training work (≈ 6 FLOP per parameter per example presented:
forward and backward); the largest other matrices (the analysis bootstrap, a block
of train×target influence). A run whose peak does not fit in the machine's memory
is refused with the estimate in the message; ``--dry-run`` prints it.

The figures are estimates, within a small factor: they exist to refuse ``epochs:
1e12`` before it grows memory until the allocator gives up, not to plan a budget.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import nn

from mnemoscope.config import DatasetConfig, StudyConfig
from mnemoscope.data import layout
from mnemoscope.errors import UserError
from mnemoscope.estimator import REGISTRY
from mnemoscope.models import build_model
from mnemoscope.store import DatasetInfo
from mnemoscope.train.ensemble import DEFAULT_CHUNK, EVAL_BATCH

FLOATS = 4
SUSTAINED_FLOPS = 10e9
"""FLOP/s assumed for the time estimate: a modest share of a laptop core's peak."""


@dataclass(frozen=True)
class Item:
    """One line of the estimate: what, how much memory at its peak, how much work."""

    what: str
    peak_bytes: int
    flop: float = 0.0


@dataclass(frozen=True)
class Estimate:
    items: list[Item]

    @property
    def peak_bytes(self) -> int:
        """Stages run one at a time per worker: the largest of them."""
        return max((item.peak_bytes for item in self.items), default=0)

    @property
    def flop(self) -> float:
        return sum(item.flop for item in self.items)

    def lines(self) -> list[str]:
        rows = [
            f"  {item.what}: peak {human_bytes(item.peak_bytes)}"
            + (f", {item.flop:.3g} FLOP" if item.flop else "")
            for item in self.items
        ]
        minutes = self.flop / SUSTAINED_FLOPS / 60
        rows.append(
            f"  largest stage: {human_bytes(self.peak_bytes)}; training work {self.flop:.3g} "
            f"FLOP (≈ {minutes:.3g} min at {SUSTAINED_FLOPS / 1e9:.0f} GFLOP/s)"
        )
        return rows


def human_bytes(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if count < 1024 or unit == "PiB":
            return f"{count:.3g} {unit}"
        count /= 1024
    return f"{count:.3g} PiB"


def machine_memory() -> int:
    """Physical memory of this machine, in bytes."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _activations_per_example(module: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Floats every module outputs for one example (kept for the backward pass)."""
    total = 0

    def count(_module: nn.Module, _inputs: object, output: object) -> None:
        nonlocal total
        if isinstance(output, torch.Tensor):
            total += output.numel()

    handles = [m.register_forward_hook(count) for m in module.modules()]
    try:
        with torch.no_grad():
            module(torch.zeros(1, *input_shape))
    finally:
        for handle in handles:
            handle.remove()
    return total


def expected_dataset(ds: DatasetConfig) -> DatasetInfo:
    """A dataset's sizes as its data stage will make them, without building it (a
    dataset from files is read and checked, a built-in one is not generated)."""
    shape = layout(
        ds.name, test_fraction=ds.test_fraction, n_samples=ds.n_samples, source=ds.source
    )
    return DatasetInfo(
        kind=shape.kind,
        input_shape=list(shape.input_shape),
        n_classes=shape.n_classes,
        n_train=shape.n_train,
        n_test=shape.n_test,
        n_mislabeled=round(ds.label_noise * shape.n_train),
        label_noise=ds.label_noise,
        fingerprint="(not built)",
    )


def estimate_study(config: StudyConfig) -> Estimate:
    """The estimate of ``config``; raises :class:`UserError` for a parameter name an
    estimator cannot use on an architecture (checked here, before any training)."""
    from mnemoscope.runner.plan import ensemble_specs, plan_context

    cfg = config
    items: list[Item] = []
    estimators = [REGISTRY[e.method](e) for e in [*cfg.memorization, *cfg.influence]]
    n_largest = 0
    for ds in cfg.datasets:
        info = expected_dataset(ds)
        n_train, n_test = info.n_train, info.n_test
        shape = tuple(info.input_shape)
        n_largest = max(n_largest, n_train)
        specs, _ = ensemble_specs(estimators, plan_context(cfg, n_train))
        for arch in cfg.archs:
            module = build_model(arch, shape, info.n_classes, **cfg.arch_options.get(arch, {}))
            for estimator in estimators:
                estimator.check_model(module)
            n_params = sum(p.numel() for p in module.parameters())
            activations = _activations_per_example(module, shape)
            states = 1 if cfg.train.optimizer == "sgd" else 2
            for ensemble in specs.values():
                presented = float(ensemble.masks.sum()) * cfg.train.epochs
                kept = len(ensemble.checkpoint_epochs) + int(ensemble.keep_initial)

                # per model: parameters, checkpoints, per-presentation records, logits
                per_model = (
                    FLOATS * n_params * (1 + kept)
                    + cfg.train.epochs * n_train * (FLOATS + 1)
                    + FLOATS * (n_train + n_test) * info.n_classes
                )
                k = min(ensemble.n_models, cfg.train.chunk_size or DEFAULT_CHUNK)
                batch = max(3 * cfg.train.batch_size, EVAL_BATCH)  # backward keeps ~3×
                working = FLOATS * k * (n_params * (1 + states) + activations * batch)
                name = f"{ds.name}/{arch}/{ensemble.name} ({ensemble.n_models} models)"
                flop = 6.0 * n_params * presented
                items.append(Item(f"train {name}", k * per_model + working, flop))
                items.append(Item(f"read {name} to score it", ensemble.n_models * per_model))
    if cfg.targets is not None:
        items.append(Item("train×target influence block", cfg.targets.memory_mb * 2**20))
    n_methods = len(estimators)
    items.append(
        Item(
            "analysis bootstrap",
            int(8 * cfg.analysis.n_bootstrap * n_largest * max(2, n_methods)),
        )
    )
    return Estimate(items)


def refuse_if_too_big(estimate: Estimate, memory: int | None = None) -> None:
    """:class:`UserError` naming the largest stage when it cannot fit in memory."""
    memory = machine_memory() if memory is None else memory
    if estimate.peak_bytes > memory:
        largest = max(estimate.items, key=lambda item: item.peak_bytes)
        raise UserError(
            f"this run needs about {human_bytes(largest.peak_bytes)} for {largest.what}, "
            f"more than this machine's {human_bytes(memory)} of memory; reduce its sizes "
            "(see --dry-run)"
        )
