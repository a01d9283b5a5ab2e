"""What a run will cost, from its config alone, before anything is built or written.

Every stage runs in a process that holds the interpreter and torch (``RUNTIME``) and
the dataset's tensors. On top of that, for every dataset × architecture × ensemble
the estimators declare:

* a training part (``chunk_size`` models at once) holds, at its peak, its models'
  records (per-presentation loss and correctness, final logits, parameters and
  checkpoints), a training step's working memory (parameters, gradients, optimizer
  state, and the activations autograd saves for a batch of every model) and an
  evaluation pass's (a few of the widest layer outputs of ``EVAL_BATCH``
  model-examples): the allocator does not hand back what the steps freed;
* reading the ensemble to score it holds every model's records (twice while parts
  are joined);
* DP-SGD training (``train.dp``, and the study's DP sweep, one line per dataset ×
  architecture for all its settings) holds Poisson batches up to ``B + 4√B`` and the
  per-example gradients of the parameters no layer-wise identity covers.

Activation sizes and forward FLOP come from one traced forward pass of the
architecture on a single example: the tensors autograd saves for the backward pass
(:func:`torch.autograd.graph.saved_tensors_hooks`), the widest output of a leaf module,
and :class:`torch.utils.flop_counter.FlopCounterMode` (matrix products and
convolutions), so convolutional and attention networks are not counted as
``6 · parameters`` FLOP per example. Training work is 3 forward passes' worth per
example presented (forward and backward) and one forward pass per model and example
for the final logits. Estimators that keep large matrices add a ``fit`` line:
exact influence functions (``P × P`` float64 and its eigendecomposition), ``trak``
(``[M, n, k]`` projected features) and ``sample_info_*`` (the ``[n·C, n·C]`` float64
kernel and its inverse). Loading a dataset checks that its inputs are finite, which
briefly takes ``VALIDATE_COPIES`` times the training inputs more.

A run whose peak does not fit in the memory its process may use (the least of the
machine's memory, the cgroup's limit and the address-space limit, ``ulimit -v``) is
refused with the estimate in the message; ``--dry-run`` prints it. The figures are
estimates, within a factor of about 2 (checked against the measured peak resident
memory of training resnets on 50,000 CIFAR-shaped examples in
``tests/train/test_scale.py``): they exist to refuse ``epochs: 1e12`` before it grows
memory until the allocator gives up, not to plan a budget. Memory on a GPU is counted as if it were the machine's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from mnemoscope.config import DatasetConfig, StudyConfig
from mnemoscope.data import layout
from mnemoscope.errors import UserError
from mnemoscope.estimator import REGISTRY
from mnemoscope.influence.adapters import layer_adapter
from mnemoscope.models import build_model
from mnemoscope.resources import PHYSICAL, MemoryLimit, memory_limit
from mnemoscope.store import DatasetInfo
from mnemoscope.train.ensemble import DEFAULT_CHUNK
from mnemoscope.train.options import TrainConfig
from mnemoscope.train.trained import eval_batch

FLOATS = 4
SUSTAINED_FLOPS = 10e9
"""FLOP/s assumed for the time estimate: a modest share of a laptop core's peak (one
CPU thread trained resnets on CIFAR-shaped inputs at about 12 GFLOP/s)."""
RUNTIME = 512 * 2**20
"""Resident memory of a stage's process apart from its data: the interpreter, torch
and its libraries (measured 350–420 MiB on Linux with torch 2.13 after the imports) and
what the first vmapped forward and backward passes allocate for good (≈ 120 MiB)."""
TRAIN_OVERHEAD = 4.0
"""Training-step memory per model-example over the bytes autograd saves for it: the
saved activations, their gradients during the backward pass, the copies vmap's batching
rules make, and allocator slack (measured 3.6–3.7 for resnets on CIFAR-shaped inputs)."""
EVAL_OVERHEAD = 6.0
"""Evaluation memory per model-example, in widest-layer outputs: a layer's input and
output, the copies vmap makes and the residual branch (measured ≈ 6 for resnets)."""
EPOCH_BUFFERS = 4 + 1 + 8 + 4
"""Bytes per model and training example the trainer holds for one epoch: the step
losses and correctness in schedule order, the schedule's indices and weights."""
VALIDATE_COPIES = 1.5
"""Extra bytes, per byte of training inputs, while a loaded dataset is checked to be
finite (``torch.isfinite`` makes a float copy and byte masks)."""


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
            + (f", {item.flop:.3g} FLOP (≈ {human_time(item.flop)})" if item.flop else "")
            for item in self.items
        ]
        rows.append(
            f"  largest stage: {human_bytes(self.peak_bytes)}; training work {self.flop:.3g} "
            f"FLOP (≈ {human_time(self.flop)} at {SUSTAINED_FLOPS / 1e9:.0f} GFLOP/s)"
        )
        return rows


def human_bytes(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if count < 1024 or unit == "PiB":
            return f"{count:.3g} {unit}"
        count /= 1024
    return f"{count:.3g} PiB"


def human_time(flop: float) -> str:
    """The time ``flop`` take at ``SUSTAINED_FLOPS``, in minutes (hours past 100)."""
    minutes = flop / SUSTAINED_FLOPS / 60
    return f"{minutes:.3g} min" if minutes < 100 else f"{minutes / 60:.3g} h"


def machine_memory() -> int:
    """The memory a stage's process may use, in bytes: the least of physical memory, the
    cgroup limit and the address-space limit (:func:`mnemoscope.resources.memory_limit`)."""
    return memory_limit().bytes


@dataclass(frozen=True)
class Profile:
    """One architecture's sizes, per example where it says so, from traced passes."""

    n_params: int
    forward_flop: float
    """FLOP of one forward pass on one example (matrix products, convolutions)."""
    saved_bytes: int
    """Bytes autograd keeps from the forward pass of one example for its backward."""
    widest_floats: int
    """Elements of the largest output of a leaf module, for one example."""
    per_example_params: int = 0
    """Parameters without a layer-wise gradient identity (no layer adapter): DP-SGD forms
    their per-example gradients (``vmap(grad)``), every other layer's never."""


def profile(module: nn.Module, input_shape: tuple[int, ...]) -> Profile:
    """``module``'s :class:`Profile`, from forward passes on 1 and 2 zero inputs."""
    parameters = {p.untyped_storage().data_ptr() for p in module.parameters()}

    def saved(batch: int) -> int:
        storages: dict[int, int] = {}

        def pack(tensor: torch.Tensor) -> torch.Tensor:
            storage = tensor.untyped_storage()
            if storage.data_ptr() not in parameters:
                storages[storage.data_ptr()] = storage.nbytes()
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            module(torch.zeros(batch, *input_shape))
        return sum(storages.values())

    widest = 0

    def widest_output(_module: nn.Module, _inputs: object, output: object) -> None:
        nonlocal widest
        if isinstance(output, torch.Tensor):
            widest = max(widest, output.numel())

    leaves = [m for m in module.modules() if next(m.children(), None) is None]
    handles = [m.register_forward_hook(widest_output) for m in leaves]
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            module(torch.zeros(1, *input_shape))
    finally:
        for handle in handles:
            handle.remove()

    def identity(m: nn.Module) -> bool:
        adapter = layer_adapter(m)
        return adapter is not None and adapter.supports(m)

    return Profile(
        n_params=sum(p.numel() for p in module.parameters()),
        per_example_params=sum(
            p.numel()
            for m in module.modules()
            if not identity(m)
            for p in m.parameters(recurse=False)
        ),
        forward_flop=float(counter.get_total_flops()),
        # per example: what one more example adds (constants such as the transposed
        # weights a linear layer saves are not per example)
        saved_bytes=max(saved(2) - saved(1), 0),
        widest_floats=widest,
    )


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


def data_bytes(input_shape: tuple[int, ...], n_train: int, n_test: int) -> int:
    """A dataset's tensors: float32 inputs, int64 labels, original labels and ids."""
    return FLOATS * (n_train + n_test) * math.prod(input_shape) + 8 * (3 * n_train + 2 * n_test)


def model_bytes(
    n_params: int, epochs: int, n_train: int, n_test: int, n_classes: int, kept: int
) -> int:
    """What the trainer keeps of one model: final parameters and ``kept`` checkpoints,
    per-presentation loss (float32) and correctness (bool) ``[epochs, n]``, final logits
    on both splits, its mask."""
    return (
        FLOATS * n_params * (1 + kept)
        + epochs * n_train * (FLOATS + 1)
        + FLOATS * (n_train + n_test) * n_classes
        + n_train
    )


def part_bytes(
    prof: Profile,
    train: TrainConfig,
    n_models: int,
    n_train: int,
    n_test: int,
    n_classes: int,
    kept: int = 0,
) -> int:
    """Memory of training ``n_models`` models at once besides the runtime and the data:
    their records (:func:`model_bytes`), a training step (parameters, gradients,
    optimizer state; ``TRAIN_OVERHEAD`` times the saved activations of a batch per
    model), an evaluation pass and one epoch's buffers. With ``train.dp`` the batch is
    :func:`dp_batch_bound` (Poisson batches, padded to the largest of the step) and
    the step adds the per-example gradients of ``prof.per_example_params``."""
    states = 1 if train.optimizer == "sgd" else 2
    batch = train.batch_size if train.dp is None else dp_batch_bound(train.batch_size)
    step = n_models * (
        FLOATS * prof.n_params * (2 + states) + TRAIN_OVERHEAD * batch * prof.saved_bytes
    )
    if train.dp is not None:  # the per-example gradients of the layers without an identity
        step += n_models * batch * FLOATS * prof.per_example_params
    per_pass = n_models * eval_batch(n_models)
    evaluation = EVAL_OVERHEAD * FLOATS * per_pass * prof.widest_floats
    # the allocator keeps what the training steps freed: evaluation adds to it
    records = n_models * model_bytes(prof.n_params, train.epochs, n_train, n_test, n_classes, kept)
    return records + int(step + evaluation) + n_models * n_train * EPOCH_BUFFERS


def dp_batch_bound(batch_size: int) -> int:
    """The batch a DP-SGD step holds at most, in practice: Poisson batches of mean B are
    padded to the largest of the step's models, ``B + 4√B`` (a Poisson(B) count exceeds
    it with probability below 1e-4 for B ≥ 16)."""
    return batch_size + math.ceil(4 * math.sqrt(batch_size))


def estimate_study(config: StudyConfig) -> Estimate:
    """The estimate of ``config``; raises :class:`UserError` for a parameter name an
    estimator cannot use on an architecture (checked here, before any training)."""
    from mnemoscope.runner.plan import declared_ensembles

    cfg = config
    items: list[Item] = []
    estimators = [REGISTRY[e.method](e) for e in [*cfg.memorization, *cfg.influence]]
    n_largest = 0
    for ds in cfg.datasets:
        info = expected_dataset(ds)
        n_train, n_test, n_classes = info.n_train, info.n_test, info.n_classes
        shape = tuple(info.input_shape)
        n_largest = max(n_largest, n_train)
        inputs = FLOATS * n_train * math.prod(shape)
        base = RUNTIME + data_bytes(shape, n_train, n_test)
        items.append(Item(f"load {ds.name}", base + int(VALIDATE_COPIES * inputs)))
        declared = declared_ensembles(estimators, cfg, n_train)
        for arch in cfg.archs:
            specs, roles = declared[arch]
            train = cfg.train_for(arch)
            module = build_model(arch, shape, n_classes, **cfg.arch_options.get(arch, {}))
            for estimator in estimators:
                estimator.check_model(module)
            prof = profile(module, shape)
            stored: dict[str, int] = {}  # each ensemble's bytes, all its models
            for digest, ensemble in specs.items():
                kept = len(ensemble.checkpoint_epochs) + int(ensemble.keep_initial)
                per_model = model_bytes(
                    prof.n_params, train.epochs, n_train, n_test, n_classes, kept
                )
                k = min(ensemble.n_models, train.chunk_size or DEFAULT_CHUNK)
                part = part_bytes(prof, train, k, n_train, n_test, n_classes, kept)
                name = f"{ds.name}/{arch}/{ensemble.name} ({ensemble.n_models} models)"
                presented = float(ensemble.masks.sum()) * train.epochs
                flop = prof.forward_flop * (3 * presented + ensemble.n_models * (n_train + n_test))
                items.append(Item(f"train {name}", base + part, flop))
                joined = 1 if ensemble.n_models <= k else 2  # parts are concatenated
                stored[digest] = ensemble.n_models * per_model
                items.append(Item(f"read {name} to score it", base + joined * stored[digest]))
            items += _experiment_items(
                cfg,
                f"{ds.name}/{arch}",
                arch,
                prof,
                base,
                (n_train, n_test, n_classes),
                specs,
                roles,
            )
            for estimator in estimators:
                fitted = estimator.fit_bytes(module, n_train, n_classes)
                if fitted:
                    held = sum(stored[digest] for digest in roles[estimator.name].values())
                    items.append(
                        Item(f"fit {ds.name}/{arch}/{estimator.name}", base + held + fitted)
                    )
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


def _experiment_items(
    cfg: StudyConfig,
    where: str,
    arch: str,
    prof: Profile,
    base: int,
    sizes: tuple[int, int, int],
    specs: dict,
    roles: dict[str, dict[str, str]],
) -> list[Item]:
    """The study's retraining experiments on one (dataset, arch): their models, trained
    seed by seed, and the ensembles they train again for recomputed scores."""
    study, train = cfg.study, cfg.train_for(arch)
    n_train, n_test, n_classes = sizes
    if study is None:
        return []

    def trained(
        n_models: int,
        presented: float,
        what: str,
        config: TrainConfig = train,
        at_once: int | None = None,
        count: str | None = None,
    ) -> Item:
        """``n_models`` models presented ``presented`` examples per epoch in all, trained
        ``at_once`` at a time (None: all) with ``config``; ``count`` names them."""
        k = min(at_once or n_models, config.chunk_size or DEFAULT_CHUNK)
        flop = prof.forward_flop * (3 * presented * config.epochs + n_models * (n_train + n_test))
        memory = base + part_bytes(prof, config, k, n_train, n_test, n_classes)
        return Item(f"{what} {where} ({count or f'{n_models} models'})", memory, flop)

    def rescored(methods: list[str], times: int) -> float:
        digests = {d for m in methods for d in roles.get(m, {}).values()}
        return times * sum(float(specs[d].masks.sum()) for d in digests)

    items = []
    removal = study.removal
    if removal is not None and arch in (removal.archs or cfg.archs):
        per_seed = len(removal.ks) * (1 + 2 * len(removal.methods))
        kept = sum(1 - k for k in removal.ks) / len(removal.ks)
        n_models = per_seed * removal.seeds * len(removal.conditions)
        presented = n_models * kept * n_train
        if "clean" in removal.conditions:
            presented += rescored(removal.methods, 1)
        items.append(trained(n_models, presented, "removal"))
    sweep = study.dp
    if sweep is not None and arch in (sweep.archs or cfg.archs):
        # each setting trains its n_models on the same subsets, one setting after another;
        # memory: a part of a private setting's models (DP batches and gradients)
        private = [s for s in sweep.settings if s is not None]
        worst = train.model_copy(update={"dp": private[0] if private else None})
        n_models = sweep.n_models * len(sweep.settings)
        presented = n_models * round(sweep.subset_fraction * n_train)
        count = f"{len(sweep.settings)} settings × {sweep.n_models} models"
        items.append(trained(n_models, presented, "dp sweep", worst, sweep.n_models, count))
    part = study.summarization
    if part is not None and arch in (part.archs or cfg.archs):
        n_models = 2 * (part.steps + 1) * part.seeds
        presented = n_models * (1 - part.fraction * part.steps / 2) * n_train
        presented += rescored([part.method], part.steps)
        items.append(trained(n_models, presented, "summarization"))
    return items


def refuse_if_too_big(estimate: Estimate, memory: int | None = None) -> None:
    """:class:`UserError` naming the largest stage when it cannot fit in the memory this
    process may use (``memory`` bytes of a machine, if given)."""
    limit = memory_limit() if memory is None else MemoryLimit(memory, PHYSICAL)
    if estimate.peak_bytes > limit.bytes:
        largest = max(estimate.items, key=lambda item: item.peak_bytes)
        room = (
            f"this machine's {human_bytes(limit.bytes)} of memory"
            if limit.what == PHYSICAL
            else f"the {human_bytes(limit.bytes)} that {limit.what} leaves this process"
        )
        raise UserError(
            f"this run needs about {human_bytes(largest.peak_bytes)} for {largest.what}, "
            f"more than {room}; reduce its sizes (see --dry-run)"
        )
