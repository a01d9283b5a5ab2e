"""Planted provenance for the sample-information applications (Harutyunyan et al. 2021,
"Estimating informativeness of samples with smooth unique information", ICLR, §5):
corrupted and adversarial training inputs, an under-sampled class and two data sources.

Each function takes a :class:`~mnemoscope.data.Dataset` and returns a new one whose
provenance says what was planted where (``examples.parquet``: ``is_noisy_input``,
``is_occluded``, ``is_adversarial``, ``source``, ``is_undersampled``). The data stage
applies them after label noise and before canaries: :func:`undersample` first (the other
fractions are then of the training set the models see, and nothing planted is thrown
away), :func:`split_sources` next (its flipped labels exist before the corruptions, which
avoid them), then :func:`corrupt` (its reference model learns from the clean training
inputs, before any canary pattern) and the canaries last (they avoid corrupted inputs).

Scale: ``noise_std`` and ``epsilon`` are in units of the clean training inputs' standard
deviation, per channel (images ``[C, H, W]``, sequences ``[C, L]``) or per feature (tables
``[d]``); for standardised inputs that is the input scale itself.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F

from mnemoscope.data.dataset import CORRUPTIONS, SOURCES, Dataset
from mnemoscope.data.prepare import flip_labels
from mnemoscope.errors import DataError

REFERENCE_MAX_EXAMPLES = 20_000
"""The reference model learns from at most this many clean training examples (seeded)."""
REFERENCE_L2 = 1e-3
"""L2 penalty (λ/2 · ‖W‖²) of the reference logistic regression."""


def undersample(dataset: Dataset, class_: int, keep: float, seed: int) -> Dataset:
    """Keep a seeded ``keep`` fraction (at least 2) of the *training* examples whose
    original label is ``class_``; every other example, and the whole test split, stays.
    Example ids are unchanged (the kept rows keep theirs, in their order).

    Raises :class:`DataError` when the class has fewer than two training examples.
    """
    if dataset.canaries is not None:
        raise ValueError("undersample before planting canaries (their positions would shift)")
    if not 0 <= class_ < dataset.n_classes:
        raise DataError(
            f"undersample: class {class_} is not a class of '{dataset.name}' "
            f"(classes 0..{dataset.n_classes - 1})"
        )
    members = torch.nonzero(dataset.y_train_original == class_).flatten().numpy()
    if len(members) < 2:
        raise DataError(
            f"undersample: class {class_} of '{dataset.name}' has {len(members)} training "
            "example(s); at least 2 are kept"
        )
    n_keep = min(len(members), max(2, round(keep * len(members))))
    rng = np.random.default_rng(seed)
    kept = rng.choice(members, size=n_keep, replace=False)
    rows = np.ones(dataset.n_train, dtype=bool)
    rows[members] = False
    rows[kept] = True
    index = torch.from_numpy(np.flatnonzero(rows))
    return replace(
        dataset,
        x_train=dataset.x_train[index],
        y_train=dataset.y_train[index],
        y_train_original=dataset.y_train_original[index],
        train_ids=dataset.train_ids[index],
        corruption=None if dataset.corruption is None else dataset.corruption[index],
        train_source=None if dataset.train_source is None else dataset.train_source[index],
        undersampled_class=class_,
    )


def split_sources(
    dataset: Dataset, noisy_fraction: float, label_noise: float, seed: int
) -> Dataset:
    """Split the training set into two sources: a seeded ``round(noisy_fraction · n)``
    examples form source ``noisy``, whose labels are flipped at ``label_noise`` (as
    :func:`~mnemoscope.data.flip_labels`: ``round(label_noise · n_noisy)`` of them, each
    to another class); the rest is source ``clean``, its labels untouched.

    Raises :class:`DataError` when the training labels are already noisy (the sources'
    labels would mix two noise processes) or when a source would be empty.
    """
    if bool(dataset.is_mislabeled.any()):
        raise DataError(
            f"sources: '{dataset.name}' already has flipped labels; give label_noise in "
            "sources only"
        )
    n_noisy = round(noisy_fraction * dataset.n_train)
    if not 0 < n_noisy < dataset.n_train:
        raise DataError(
            f"sources: noisy_fraction {noisy_fraction:g} of {dataset.n_train} training "
            f"examples leaves a source empty"
        )
    rng = np.random.default_rng(seed)
    noisy = np.sort(rng.choice(dataset.n_train, size=n_noisy, replace=False))
    labels = dataset.y_train.numpy().copy()
    labels[noisy] = flip_labels(labels[noisy], dataset.n_classes, label_noise, rng)
    source = np.full(dataset.n_train, SOURCES.index("clean"), dtype=np.int8)
    source[noisy] = SOURCES.index("noisy")
    return replace(dataset, y_train=torch.from_numpy(labels), train_source=torch.from_numpy(source))


def input_scale(x: torch.Tensor) -> torch.Tensor:
    """Standard deviation of the inputs ``x [n, *shape]`` per channel (``[C, ...]`` inputs:
    shape ``[C, 1, ...]``) or per feature (``[d]`` inputs), broadcastable to one input; a
    constant channel or feature counts as 1."""
    if x.dim() == 2:
        std = x.double().std(dim=0, unbiased=False)
    else:
        dims = (0, *range(2, x.dim()))
        std = x.double().std(dim=dims, unbiased=False).view(-1, *([1] * (x.dim() - 2)))
    return torch.where(std > 0, std, torch.ones_like(std)).float()


def occlude(
    x: torch.Tensor, size: float, mean: torch.Tensor, rng: np.random.Generator
) -> torch.Tensor:
    """One input ``x`` with a seeded part blanked: for ``[C, H, W]`` an
    ``round(size·H) × round(size·W)`` patch (at least 1 × 1) set to 0 in every channel,
    for ``[C, L]`` a segment of ``round(size·L)`` positions set to 0, for ``[d]``
    ``round(size·d)`` features set to their training mean ``mean [d]``."""
    out = x.clone()
    if x.dim() == 1:
        chosen = rng.choice(x.shape[0], size=max(1, round(size * x.shape[0])), replace=False)
        out[chosen] = mean[chosen]
        return out
    window = []
    for length in x.shape[1:]:
        extent = max(1, round(size * length))
        start = int(rng.integers(0, length - extent + 1))
        window.append(slice(start, start + extent))
    out[(slice(None), *window)] = 0.0
    return out


class ReferenceModel(torch.nn.Module):
    """A multinomial logistic regression on inputs standardised per channel/feature:
    ``logits = W · flat((x − mean) / scale) + b``, in float64. It is affine in ``x``."""

    def __init__(self, mean: torch.Tensor, scale: torch.Tensor, n_classes: int) -> None:
        super().__init__()
        self.register_buffer("mean", mean.double())
        self.register_buffer("scale", scale.double())
        self.linear = torch.nn.Linear(mean.numel(), n_classes).double()
        torch.nn.init.zeros_(self.linear.weight)
        torch.nn.init.zeros_(self.linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        standard = (x.double() - self.mean) / self.scale
        return self.linear(standard.reshape(len(x), -1))

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``[n]`` cross-entropy on inputs ``x`` with labels ``y``."""
        return F.cross_entropy(self(x), y, reduction="none")


def reference_model(dataset: Dataset, seed: int) -> ReferenceModel:
    """The model FGSM attacks, learnt from the training examples whose label was not
    flipped (a seeded ``REFERENCE_MAX_EXAMPLES`` of them at most), on their inputs as
    they are: from zero weights, full-batch L-BFGS (strong Wolfe line search, at most
    200 iterations) on mean cross-entropy + ``REFERENCE_L2``/2 · ‖W‖². The objective is
    convex and nothing else is random, so the model is a function of the data and seed
    (a second or two on digits)."""
    clean = torch.nonzero(~dataset.is_mislabeled).flatten().numpy()
    if len(clean) > REFERENCE_MAX_EXAMPLES:
        rng = np.random.default_rng([seed, 0x2EF])
        clean = np.sort(rng.choice(clean, size=REFERENCE_MAX_EXAMPLES, replace=False))
    index = torch.from_numpy(clean)
    x, y = dataset.x_train[index], dataset.y_train[index]
    model = ReferenceModel(dataset.x_train.mean(0), input_scale(dataset.x_train), dataset.n_classes)
    optimizer = torch.optim.LBFGS(
        model.linear.parameters(), max_iter=200, line_search_fn="strong_wolfe", tolerance_grad=1e-9
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        penalty = REFERENCE_L2 / 2 * model.linear.weight.pow(2).sum()
        loss = model.loss(x, y).mean() + penalty
        loss.backward()
        return loss

    optimizer.step(closure)
    return model.requires_grad_(False)


def fgsm(
    model: ReferenceModel, x: torch.Tensor, y: torch.Tensor, step: torch.Tensor
) -> torch.Tensor:
    """Fast gradient sign method (Goodfellow et al. 2015, "Explaining and harnessing
    adversarial examples", ICLR, eq. 3): ``x' = x + step · sign(∇ₓ ℓ(f(x), y))``, ``step``
    broadcastable to one input (ε times the input scale), float32. The reference model
    is affine, so its loss is convex in x and ``ℓ(x') ≥ ℓ(x) + Σ step·|∇ₓℓ| > ℓ(x)``
    (for ∇ₓℓ ≠ 0): every step raises it."""
    inputs = x.detach().double().requires_grad_(True)
    (grad,) = torch.autograd.grad(model.loss(inputs, y).sum(), inputs)
    return x + step * grad.sign().float()


def corrupt(
    dataset: Dataset,
    *,
    seed: int,
    noise: float = 0.0,
    occlusion: float = 0.0,
    adversarial: float = 0.0,
    noise_std: float = 1.0,
    occlusion_size: float = 0.5,
    epsilon: float = 0.5,
) -> Dataset:
    """Corrupt the inputs of seeded, disjoint sets of ``round(fraction · n)`` training
    examples each, drawn from those whose label was not flipped; labels stay.

    - ``noise``: Gaussian noise of standard deviation ``noise_std`` (input scale) added to
      every coordinate;
    - ``occlusion``: one random patch / segment / set of features blanked, ``occlusion_size``
      of each axis (:func:`occlude`);
    - ``adversarial``: FGSM with step ``epsilon`` (input scale) against the reference model
      (:func:`reference_model`) learnt from the clean-label training examples' clean inputs.

    Raises :class:`DataError` when a positive fraction plants none or the sets need more
    examples than have clean labels.
    """
    if dataset.canaries is not None or dataset.corruption is not None:
        raise ValueError("corrupt once, before planting canaries")
    fractions = {"noise": noise, "occlusion": occlusion, "adversarial": adversarial}
    counts = {kind: round(f * dataset.n_train) for kind, f in fractions.items()}
    for kind, f in fractions.items():
        if f > 0 and counts[kind] == 0:
            raise DataError(
                f"corruptions: {kind} {f:g} of {dataset.n_train} training examples rounds "
                "to none; raise it"
            )
    clean = torch.nonzero(~dataset.is_mislabeled).flatten().numpy()
    total = sum(counts.values())
    if total > len(clean):
        raise DataError(
            f"corruptions: {total} examples to corrupt, but '{dataset.name}' has only "
            f"{len(clean)} training examples with clean labels"
        )
    rng = np.random.default_rng(seed)
    chosen = rng.choice(clean, size=total, replace=False)
    codes = np.zeros(dataset.n_train, dtype=np.int8)
    groups: dict[str, np.ndarray] = {}
    start = 0
    for kind, count in counts.items():
        groups[kind] = np.sort(chosen[start : start + count])
        codes[groups[kind]] = CORRUPTIONS.index(kind)
        start += count
    x = dataset.x_train.clone()
    scale = input_scale(dataset.x_train)
    for i in groups["noise"]:
        x[i] += (
            noise_std * scale * torch.from_numpy(rng.standard_normal(dataset.input_shape)).float()
        )
    mean = dataset.x_train.mean(0)
    for i in groups["occlusion"]:
        x[i] = occlude(x[i], occlusion_size, mean, rng)
    if len(groups["adversarial"]):
        index = torch.from_numpy(groups["adversarial"])
        model = reference_model(dataset, seed)
        x[index] = fgsm(model, dataset.x_train[index], dataset.y_train[index], epsilon * scale)
    return replace(dataset, x_train=x, corruption=torch.from_numpy(codes))
