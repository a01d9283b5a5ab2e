"""The one trainer: K models of one architecture trained at once with ``torch.func``.

Parameters of the K models are stacked along a leading dimension and the forward
pass is ``vmap(functional_call)`` over models, each model reading its own batch
of its own subset. Because the K parameter sets are disjoint, the gradient of the
*sum* of the K mean batch losses with respect to the stacked tensors is, slice by
slice, each model's own gradient: one backward pass trains all K. A single model
is an ensemble of one.
"""

from __future__ import annotations

import importlib
import math
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from mnemoscope.data import Dataset
from mnemoscope.models import build_model
from mnemoscope.task import Task
from mnemoscope.train.masks import derive_seed
from mnemoscope.train.optim import Params, StackedOptimizer
from mnemoscope.train.options import TrainConfig
from mnemoscope.train.spec import Sharing
from mnemoscope.train.trained import (
    Checkpoint,
    TrainedEnsemble,
    _cat_params,
    _models_logits,
)

DEFAULT_CHUNK = 64
DP_CODE = "mnemoscope.train.dp"
"""The module of DP-SGD (:mod:`mnemoscope.train.dp`), code of every stage training with DP."""


def init_module(
    arch: str,
    input_shape: tuple[int, ...],
    n_classes: int,
    seed: int,
    k: int,
    options: Mapping[str, Any] | None = None,
) -> nn.Module:
    """Model k's initial weights: drawn under a seed derived from ``(seed, k)``;
    ``options``: the architecture's options.

    The global RNG is forked, so the caller's random state is left as it was.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, 0x1417, k))
        return build_model(arch, input_shape, n_classes, **(options or {}))


def epoch_orders(
    mask_row: torch.Tensor, seed: int, k: int, epochs: int, order: Sharing = "per_model"
) -> list[torch.Tensor]:
    """Model k's data order: for each epoch, a permutation of the indices in its subset.

    ``'per_model'``: one generator per model, seeded from ``(seed, k)``, drawn epoch
    after epoch, as a ``DataLoader(shuffle=True, generator=...)`` would.
    ``'shared'``: one permutation of all n examples per epoch, the same for every
    model, keeping only the model's members: dropping example i leaves the relative
    order of the others unchanged.
    """
    orders = _order_stream(mask_row, seed, k, order)
    return [next(orders) for _ in range(epochs)]


def _order_stream(
    mask_row: torch.Tensor, seed: int, k: int, order: Sharing
) -> Iterator[torch.Tensor]:
    """The orders of :func:`epoch_orders`, drawn one epoch at a time: the trainer holds
    one epoch's order per model, not ``epochs · n`` indices."""
    if order == "shared":
        generator = torch.Generator().manual_seed(derive_seed(seed, 0x0D3E, 0x5A4ED))
        while True:
            perm = torch.randperm(len(mask_row), generator=generator)
            yield perm[mask_row[perm]]
    else:
        members = mask_row.nonzero().flatten()
        generator = torch.Generator().manual_seed(derive_seed(seed, 0x0D3E, k))
        while True:
            yield members[torch.randperm(len(members), generator=generator)]


def _batched_schedule(
    orders: list[torch.Tensor], batch_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad K orders to a common length: indices and weights ``[K, steps, batch_size]``.

    Padding carries weight 0, so a model's last (short) batch has the same mean
    loss as when trained alone, and a model with no batch left at a step is idle.
    """
    steps = max(math.ceil(len(o) / batch_size) for o in orders)
    index = torch.zeros(len(orders), steps * batch_size, dtype=torch.long)
    weight = torch.zeros(len(orders), steps * batch_size)
    for k, order in enumerate(orders):
        index[k, : len(order)] = order
        weight[k, : len(order)] = 1.0
    shape = (len(orders), steps, batch_size)
    return index.view(shape), weight.view(shape)


PRECISION = {"float32": torch.float32, "bfloat16": torch.bfloat16}
"""The compute dtype of each :attr:`TrainConfig.precision`."""


def cpu_has_bf16_units() -> bool:
    """Whether this CPU has bf16 matrix instructions (AVX512-BF16 or Intel AMX tiles), the
    ones that make bf16 GEMMs faster than fp32; without them PyTorch emulates bf16
    arithmetic and a bf16 ``bmm`` runs an order of magnitude slower than fp32 (3 vs 52
    GFLOP/s on a 2-core AMD EPYC with AVX2 only, BENCHMARKS.md). True where torch cannot
    tell (the check uses ``torch.cpu``'s capability probes)."""
    probes = [getattr(torch.cpu, f"_is_{n}_supported", None) for n in ("avx512_bf16", "amx_tile")]
    if any(probe is None for probe in probes):
        return True
    return any(probe() for probe in probes)


BF16_EMULATED = (
    "train.precision: bfloat16 on a CPU without bf16 matrix instructions (no AVX512-BF16, "
    "no AMX): PyTorch emulates bf16 here and training runs several times slower than "
    "float32 (6-10x measured on a 2-core AVX2 CPU); use float32"
)
"""What training says (a ``RuntimeWarning``; a run's warning) when bf16 is emulated."""


def bf16_is_emulated(precision: str, device: str | torch.device) -> bool:
    """Whether training in ``precision`` on ``device`` would run bf16 without bf16 units."""
    on_cpu = torch.device(device).type == "cpu"
    return precision == "bfloat16" and on_cpu and not cpu_has_bf16_units()


class _Stack:
    """K models as stacked parameters and a vmapped forward pass, computed in
    ``compute`` (mixed precision when it is not the parameters' dtype)."""

    def __init__(
        self,
        modules: list[nn.Module],
        device: torch.device,
        example: torch.Tensor,
        compute: torch.dtype = torch.float32,
    ) -> None:
        params, _ = stack_module_state(modules)
        self.template = modules[0].to("meta")
        self.params = {k: v.detach().to(device) for k, v in params.items()}
        self.compute = compute
        self._match_gradient_layout(example)

    def _match_gradient_layout(self, example: torch.Tensor) -> None:
        """Store each parameter in the memory layout autograd gives its gradient.

        vmapped linear layers return weight gradients as transposed views; element-wise
        optimizer passes over a contiguous parameter and a transposed gradient run ~4×
        slower on CPU than over two tensors of the same layout.
        """
        probe = {k: v.clone().requires_grad_(True) for k, v in self.params.items()}
        n_models = next(iter(probe.values())).shape[0]
        batch = example[:8]
        out = vmap(self._one)(probe, batch.expand(n_models, *batch.shape))
        grads = torch.autograd.grad(out.sum(), list(probe.values()))
        self.params = {
            k: torch.empty_strided(g.shape, g.stride(), dtype=v.dtype, device=v.device)
            .copy_(v)
            .requires_grad_(True)
            for (k, v), g in zip(self.params.items(), grads)
        }

    def _one(self, params: Params, x: torch.Tensor) -> torch.Tensor:
        return functional_call(self.template, params, (x,))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x [K, B, ...]`` → logits ``[K, B, C]``, model k on its own batch.

        The parameters and floating inputs are cast to ``compute`` and the logits back to
        the parameters' dtype; the casts are differentiable, so the gradients reach the
        master parameters in their own dtype. In fp32 every cast returns its input as is:
        the fp32 pass is exactly the uncast one.
        """
        params = {k: v.to(self.compute) for k, v in self.params.items()}
        if x.is_floating_point():
            x = x.to(self.compute)
        master = next(iter(self.params.values())).dtype
        return vmap(self._one)(params, x).to(master)

    @torch.no_grad()
    def evaluate(self, x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """``x [N, ...]`` shared by all models → logits ``[K, N, C]`` (into ``out``)."""
        return _models_logits(self.template, self.params, x, out)


def _snapshot(params: Params) -> Params:
    return {k: v.detach().cpu().clone() for k, v in params.items()}


def train_ensemble(
    arch: str,
    dataset: Dataset,
    masks: torch.Tensor,
    config: TrainConfig,
    *,
    seed: int,
    checkpoint_epochs: Sequence[int] = (),
    init: Sharing = "per_model",
    order: Sharing = "per_model",
    keep_initial: bool = False,
    models: Sequence[int] | None = None,
    device: str | torch.device = "cpu",
    progress: Callable[[int], None] | None = None,
    arch_options: Mapping[str, Any] | None = None,
    task: Task | None = None,
) -> TrainedEnsemble:
    """Train models of ``arch``, model k on ``masks[k]``: all K, or the rows ``models``,
    on the mean of ``task``'s per-example loss (default: cross-entropy; the optimizer adds
    the L2 term of the objective, :class:`~mnemoscope.task.Task`).

    Models are trained ``config.chunk_size`` at a time. Model k's initial weights and
    data order depend only on ``(seed, k)`` (``init`` / ``order`` ``'per_model'``) or
    only on ``seed`` (``'shared'``: see :class:`~mnemoscope.train.EnsembleSpec`), never
    on which other models share its chunk; chunks of one model may still round
    differently from larger ones (a batched kernel), so the chunk size is part of a
    run's cache key. ``checkpoint_epochs`` (1-based) says after which epochs to keep
    the parameters; ``keep_initial`` also keeps them before training, as epoch 0.
    ``progress(m)`` is called after each epoch with m models done with that epoch.
    ``arch_options`` are passed to :func:`~mnemoscope.models.build_model`.
    ``config.precision`` says in which dtype the training passes compute
    (:attr:`TrainConfig.precision`; bf16 on fp32 master weights and optimizer state);
    the final logits are always those of the fp32 weights.

    Cost: ``K · epochs · |subset|`` forward/backward passes, then ``K · (n + n_test)``
    forward passes for the final logits. The per-presentation loss and correctness
    come from the training forward passes, at no extra cost. Memory, besides the data:
    the records (``K · epochs · n`` float32 and bool, the logits) written in place on
    the CPU, and one chunk's parameters, optimizer state and activations of a batch
    (or of :func:`eval_batch` inputs when evaluating); the data orders are drawn one
    epoch at a time (:mod:`mnemoscope.runner.estimate` counts all of it).
    """
    n = masks.shape[1]
    indices = list(range(masks.shape[0])) if models is None else [int(k) for k in models]
    if not indices or not all(0 <= k < masks.shape[0] for k in indices):
        raise ValueError(f"models must be rows of the {masks.shape[0]} masks, got {indices}")
    if n != dataset.n_train:
        raise ValueError(f"masks have {n} columns but the dataset has {dataset.n_train} examples")
    if bool((masks[indices].sum(1) == 0).any()):
        raise ValueError("every model needs at least one training example; a mask row is empty")
    bad = [e for e in checkpoint_epochs if not 1 <= e <= config.epochs]
    if bad:
        raise ValueError(f"checkpoint epochs {bad} outside 1..{config.epochs}")
    device = torch.device(device)
    if bf16_is_emulated(config.precision, device):
        warnings.warn(BF16_EMULATED, RuntimeWarning, stacklevel=2)
    x_train, y_train = dataset.x_train.to(device), dataset.y_train.to(device)
    x_test = dataset.x_test.to(device)
    chunk = config.chunk_size or min(len(indices), DEFAULT_CHUNK)
    kept = set(checkpoint_epochs) | ({0} if keep_initial else set())
    # Every chunk writes its records and logits into these, on the CPU: no copy of
    # them is made on the device or to join the chunks.
    n_models, n_classes = len(indices), dataset.n_classes
    records = _Records(
        loss=torch.full((n_models, config.epochs, n), float("nan")),
        correct=torch.zeros(n_models, config.epochs, n, dtype=torch.bool),
        train_logits=torch.empty(n_models, n, n_classes),
        test_logits=torch.empty(n_models, dataset.n_test, n_classes),
    )
    parts: list[tuple[Params, list[Checkpoint]]] = []
    for start in range(0, n_models, chunk):
        parts.append(
            _train_chunk(
                arch,
                dataset,
                masks,
                indices[start : start + chunk],
                config,
                seed,
                (init, order),
                kept,
                device,
                (x_train, y_train, x_test),
                progress,
                dict(arch_options or {}),
                records.rows(slice(start, start + chunk)),
                task or Task(),
            )
        )
    return TrainedEnsemble(
        arch=arch,
        input_shape=dataset.input_shape,
        n_classes=n_classes,
        params=_cat_params([params for params, _ in parts]),
        masks=masks[indices].clone(),
        train_loss=records.loss,
        train_correct=records.correct,
        train_logits=records.train_logits,
        test_logits=records.test_logits,
        checkpoints=[
            Checkpoint(
                c.epoch,
                c.lr,
                _cat_params([saved[i].params for _, saved in parts]),
                tuple(lr for _, saved in parts for lr in saved[i].lrs),
            )
            for i, c in enumerate(parts[0][1])
        ],
        arch_options=dict(arch_options or {}),
    )


@dataclass
class _Records:
    """What the trainer records for models ``[K, ...]`` (see :class:`TrainedEnsemble`)."""

    loss: torch.Tensor
    correct: torch.Tensor
    train_logits: torch.Tensor
    test_logits: torch.Tensor

    def rows(self, models: slice) -> _Records:
        """Views of these models' rows."""
        return _Records(
            self.loss[models],
            self.correct[models],
            self.train_logits[models],
            self.test_logits[models],
        )


def _train_chunk(
    arch: str,
    dataset: Dataset,
    masks: torch.Tensor,
    ks: list[int],
    config: TrainConfig,
    seed: int,
    sharing: tuple[Sharing, Sharing],
    checkpoint_epochs: set[int],
    device: torch.device,
    data: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    progress: Callable[[int], None] | None,
    arch_options: dict[str, Any],
    records: _Records,
    task: Task,
) -> tuple[Params, list[Checkpoint]]:
    """Train models ``ks`` together, filling ``records`` (their rows); returns their
    final parameters and checkpoints."""
    init, order = sharing
    x_train, y_train, x_test = data
    modules = [
        init_module(
            arch,
            dataset.input_shape,
            dataset.n_classes,
            seed,
            0 if init == "shared" else k,
            arch_options,
        )
        for k in ks
    ]
    stack = _Stack(modules, device, x_train, PRECISION[config.precision])
    # cast once, not each step's batch (in fp32 this is x_train itself)
    x_step = x_train.to(stack.compute) if x_train.is_floating_point() else x_train
    # a model's steps per epoch: its subset's batches, whatever the order sharing
    epoch_steps = [math.ceil(int(masks[k].sum()) / config.batch_size) for k in ks]
    total = [config.epochs * s for s in epoch_steps]
    optimizer = StackedOptimizer(stack.params, config, torch.tensor(total))
    names = list(stack.params)
    orders = [_order_stream(masks[k], seed, k, order) for k in ks]
    checkpoints = []

    def keep(epoch: int) -> None:
        """Checkpoint after ``epoch`` epochs, with the lr of each model's last update
        before it (of its first update for epoch 0)."""
        lrs = tuple(config.lr_at(max(epoch * s - 1, 0), t) for s, t in zip(epoch_steps, total))
        checkpoints.append(Checkpoint(epoch, lrs[0], _snapshot(stack.params), lrs))

    private = None
    if config.dp is not None:
        # imported by name: DP's per-example gradients come from influence (which imports
        # train), and only the stages that train with DP depend on that code: their plan
        # adds DP_CODE to their cache key, as no import statement here would
        dp = importlib.import_module(DP_CODE)
        example = (x_train[:8], y_train[:8])
        args = (config.dp, config.batch_size, config.epochs, masks[ks], seed, ks)
        private = dp.PrivateSteps(*args, stack.template, stack.params, example, task)
    if 0 in checkpoint_epochs:
        keep(0)
    for epoch in range(config.epochs):
        if private is not None:
            loss, correct = records.loss[:, epoch], records.correct[:, epoch]
            private.epoch(stack.params, optimizer, x_train, y_train, loss, correct)
        else:
            epoch_order = [next(o) for o in orders]
            index, weight = _batched_schedule(epoch_order, config.batch_size)
            index, weight = index.to(device), weight.to(device)
            step_loss = torch.empty(index.shape, device=device)  # [K, steps, B], schedule order
            step_correct = torch.empty(index.shape, dtype=torch.bool, device=device)
            for step in range(index.shape[1]):
                idx, w = index[:, step], weight[:, step]
                labels = y_train[idx]
                out = stack.forward(x_step[idx])
                per_example = task.loss(out, labels)
                step_loss[:, step] = per_example.detach()
                step_correct[:, step] = out.argmax(-1) == labels
                batch_loss = (per_example * w).sum(1) / w.sum(1).clamp_min(1.0)
                grads = torch.autograd.grad(batch_loss.sum(), [stack.params[k] for k in names])
                optimizer.step(stack.params, dict(zip(names, grads)), w.sum(1) > 0)
            # model k's real examples are the first len(order) slots of its schedule
            step_loss, step_correct = step_loss.cpu(), step_correct.cpu()
            for row, presented in enumerate(epoch_order):
                real = len(presented)
                records.loss[row, epoch, presented] = step_loss[row].flatten()[:real]
                records.correct[row, epoch, presented] = step_correct[row].flatten()[:real]
        if epoch + 1 in checkpoint_epochs:
            keep(epoch + 1)
        if progress is not None:
            progress(len(ks))
    stack.evaluate(x_train, out=records.train_logits)
    stack.evaluate(x_test, out=records.test_logits)
    return _snapshot(stack.params), checkpoints
