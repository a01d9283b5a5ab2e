"""A dataset entry's planted provenance (after Harutyunyan et al. 2021, ICLR, §5):
corrupted and adversarial inputs, an under-sampled class and two data sources. What each
does is :mod:`mnemoscope.data.corruptions`; here are the keys and their checks."""

from __future__ import annotations

from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    model_serializer,
    model_validator,
)

from mnemoscope.config.common import _field_error
from mnemoscope.data import Layout

_STRICT_ALIASED = ConfigDict(
    extra="forbid", strict=True, allow_inf_nan=False, populate_by_name=True
)


class CorruptionsConfig(BaseModel):
    """Training inputs corrupted, labels untouched: disjoint seeded fractions of the
    training set (after ``undersample``), none of them a flipped label or a canary.
    ``examples.parquet`` marks them (``is_noisy_input``, ``is_occluded``,
    ``is_adversarial``). ``noise_std`` and ``epsilon`` are in units of the training
    inputs' standard deviation per channel (images, sequences) or feature (tables)."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    noise: float = Field(0.0, ge=0, lt=0.5)
    """Fraction given Gaussian noise of standard deviation ``noise_std`` on every coordinate."""
    occlusion: float = Field(0.0, ge=0, lt=0.5)
    """Fraction with one random part blanked: a patch of ``occlusion_size`` of each side set
    to 0 (images), a segment of ``occlusion_size`` of the length set to 0 (sequences), or
    ``occlusion_size`` of the features set to their training mean (tables)."""
    adversarial: float = Field(0.0, ge=0, lt=0.5)
    """Fraction replaced by FGSM adversarial examples (Goodfellow et al. 2015):
    ``x + epsilon · sign(∇ₓ loss)`` against a logistic regression the data stage fits on
    the clean-label training examples."""
    noise_std: float = Field(1.0, gt=0, le=100)
    """Standard deviation of the added noise (input scale)."""
    occlusion_size: float = Field(0.5, gt=0, le=1)
    """Fraction of each spatial / sequence axis (of the features, for tables) blanked."""
    epsilon: float = Field(0.5, gt=0, le=100)
    """FGSM step (input scale)."""

    @model_validator(mode="after")
    def _below_half(self) -> CorruptionsConfig:
        total = self.noise + self.occlusion + self.adversarial
        if total >= 0.5:
            raise ValueError(f"noise + occlusion + adversarial = {total:g}; keep it below 0.5")
        return self

    def fractions(self) -> dict[str, float]:
        return {"noise": self.noise, "occlusion": self.occlusion, "adversarial": self.adversarial}


class UndersampleConfig(BaseModel):
    """One class made rare in the *training* split: a seeded ``keep`` fraction (at least
    2) of its training examples stays, the test split is untouched; ``examples.parquet``
    marks the class (``is_undersampled``, both splits)."""

    model_config = _STRICT_ALIASED

    class_: int = Field(alias="class", ge=0, le=100_000)
    """The class under-sampled (by its original label)."""
    keep: float = Field(gt=0, lt=1)
    """Fraction of its training examples kept."""

    @model_serializer(mode="wrap")
    def _class_as_written(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data = handler(self)
        if "class_" in data:
            data["class"] = data.pop("class_")
        return data


class SourcesConfig(BaseModel):
    """The training set as two sources of the same data: a seeded ``noisy_fraction`` of it
    is source ``noisy``, its labels flipped at ``label_noise``; the rest is source
    ``clean``. ``examples.parquet``'s ``source`` says which (``main`` without sources)."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    noisy_fraction: float = Field(0.5, gt=0, lt=1)
    """Fraction of the training set in source ``noisy``."""
    label_noise: float = Field(0.2, ge=0, lt=1)
    """Fraction of the noisy source's labels flipped to another class."""


def check_planting(
    name: str,
    layout: Layout,
    label_noise: float,
    corruptions: CorruptionsConfig | None,
    undersample: UndersampleConfig | None,
    sources: SourcesConfig | None,
    n_canaries: int,
) -> None:
    """Refuse, with one line naming the key, what cannot be planted in a dataset of this
    ``layout``. Training-set sizes here are before under-sampling; the data stage
    re-checks the exact counts."""
    if undersample is not None and undersample.class_ >= layout.n_classes:
        raise _field_error(
            "undersample.class",
            f"{undersample.class_} is not a class of '{name}' (classes 0..{layout.n_classes - 1})",
        )
    n = layout.n_train
    n_flipped = round(label_noise * n)
    if sources is not None:
        if label_noise > 0:
            raise _field_error(
                "sources",
                "refused with label_noise > 0: the noisy source's labels are flipped at "
                "sources.label_noise",
            )
        n_noisy = round(sources.noisy_fraction * n)
        if not 0 < n_noisy < n:
            raise _field_error(
                "sources.noisy_fraction",
                f"{sources.noisy_fraction:g} of {n} training examples leaves a source empty",
            )
        n_flipped = round(sources.label_noise * n_noisy)
    if corruptions is None:
        return
    counts = {kind: round(f * n) for kind, f in corruptions.fractions().items()}
    for kind, f in corruptions.fractions().items():
        if f > 0 and counts[kind] == 0:
            raise _field_error(
                f"corruptions.{kind}", f"{f:g} of {n} training examples rounds to none; raise it"
            )
    available = n - n_flipped - n_canaries
    if sum(counts.values()) > available:
        raise _field_error(
            "corruptions",
            f"{sum(counts.values())} examples to corrupt, but only {available} of the {n} "
            "training examples are neither flipped nor canaries",
        )
