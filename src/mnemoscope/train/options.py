"""Training hyperparameters: the config's ``train:`` block (per arch: ``arch_train:``)."""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    model_serializer,
    model_validator,
)


def _list_as_tuple(value: Any) -> Any:
    """YAML and JSON have no tuples: accept a list (its items stay strictly validated)."""
    return tuple(value) if isinstance(value, list) else value


Beta = Annotated[float, Field(ge=0, lt=1)]


class DPConfig(BaseModel):
    """Differentially private training, DP-SGD (Abadi et al. 2016, Alg. 1): the ``dp:``
    entry of ``train:``. Each step clips every example's gradient to ``max_grad_norm``,
    sums, adds Gaussian noise of standard deviation ``noise_multiplier · max_grad_norm``
    and divides by the expected batch size; batches are Poisson-sampled (see
    :mod:`mnemoscope.train.dp`). Give ``noise_multiplier`` or ``target_epsilon``, not both.
    """

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    noise_multiplier: float | None = Field(None, ge=0, le=1e6)
    """σ: the noise's standard deviation in units of ``max_grad_norm`` (0: clipping only,
    no privacy: ε is infinite)."""
    target_epsilon: float | None = Field(None, gt=0, le=1e6)
    """The ε to reach after the run: σ is the smallest the accountant allows
    (``opacus.accountants.utils.get_noise_multiplier``), model by model."""
    max_grad_norm: float = Field(1.0, gt=0, le=1e6)
    """C: each example's gradient is scaled to norm at most C."""
    delta: float = Field(1e-5, gt=0, lt=1)
    """δ of the (ε, δ) guarantee."""
    accountant: Literal["rdp", "prv"] = "rdp"
    """Opacus's accountant that turns (σ, sampling rate, steps) into ε: Rényi DP
    (Mironov 2017) or privacy random variables (Gopi et al. 2021)."""

    @model_validator(mode="after")
    def _one_noise_setting(self) -> DPConfig:
        if (self.noise_multiplier is None) == (self.target_epsilon is None):
            raise ValueError("give exactly one of noise_multiplier and target_epsilon")
        return self


class TrainConfig(BaseModel):
    """How each model is trained; one model or K at once, the same hyperparameters.

    Strict: a number written as a string, a boolean where a number is meant or a
    fraction where an integer is meant is refused; so is ``.inf`` or ``.nan``.
    """

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    epochs: int = Field(20, gt=0, le=10_000)
    """Passes over each model's own training subset (at most 10 000)."""
    batch_size: int = Field(128, gt=0, le=1_000_000)
    """Examples per step per model; a subset's last batch may be smaller (at most 10⁶)."""
    optimizer: Literal["sgd", "adam", "adamw"] = "sgd"
    lr: float = Field(0.1, gt=0, le=1e3)
    """Learning rate (the peak one under ``schedule: cosine``), recorded with each
    checkpoint for TracIn; at most 1000."""
    schedule: Literal["constant", "cosine"] = "constant"
    """``constant``: ``lr`` at every step. ``cosine``: per-step cosine annealing from
    ``lr`` to 0 (Loshchilov & Hutter 2017, SGDR eq. 5 without restarts):
    ``lr_t = lr · ½(1 + cos(π t / T))`` for update t = 0 … T − 1, T each model's own
    total steps (``epochs · ⌈|subset| / batch_size⌉``), for every optimizer."""
    momentum: float = Field(0.9, ge=0, lt=1)
    """SGD momentum (PyTorch semantics, no dampening); ignored by Adam."""
    betas: Annotated[tuple[Beta, Beta], BeforeValidator(_list_as_tuple)] = (0.9, 0.999)
    """Adam's moment decay rates, each in [0, 1)."""
    weight_decay: float = Field(0.0005, ge=0, le=1e3)
    """L2 penalty added to the gradient (sgd, adam) or decoupled decay (adamw); at most 1000."""
    chunk_size: int | None = Field(None, gt=0, le=100_000)
    """Models trained at once; bounds memory. None: all of them (at most 64). At most 100 000."""
    precision: Literal["float32", "bfloat16"] = "float32"
    """Arithmetic of the training forward and backward passes. ``float32``: everything in
    fp32. ``bfloat16``: mixed precision (Micikevicius et al. 2018; bf16 as in Kalamkar et
    al. 2019): each step casts the fp32 master weights and the inputs to bf16, runs the
    forward and backward passes in bf16 and casts the logits back to fp32 for the loss;
    the gradients reach the fp32 masters as fp32, and the optimizer state and the update
    stay fp32. The recorded losses and correctness come from those bf16 forward passes;
    the final logits are computed in fp32 from the fp32 weights. Faster on CPUs with bf16
    matrix units (Intel AMX) and on GPUs; a CPU without bf16 instructions (neither
    AVX512-BF16 nor AMX) emulates them, 6–10× slower than fp32, and training warns. The
    scores move by what bf16's 8-bit mantissa changes in training (README, "Training
    settings"; BENCHMARKS.md)."""

    dp: DPConfig | None = None
    """DP-SGD settings (:class:`DPConfig`); None: ordinary training."""

    @model_validator(mode="after")
    def _dp_trains_in_float32(self) -> TrainConfig:
        if self.dp is not None and self.precision != "float32":
            raise ValueError(
                f"precision {self.precision!r} is not available with dp: DP-SGD trains in "
                "float32 (leave precision at float32)"
            )
        return self

    @model_serializer(mode="wrap")
    def _without_defaults(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """A constant schedule, float32 precision and no DP dump as before those fields
        existed: training cache keys of existing configs stay as they were."""
        data = handler(self)
        for name, default in (("schedule", "constant"), ("precision", "float32"), ("dp", None)):
            if name in data and data[name] == default:
                del data[name]
        return data

    def lr_at(self, step: int, total_steps: int) -> float:
        """The learning rate of update ``step`` (0-based) of a run of ``total_steps``."""
        if self.schedule == "constant":
            return self.lr
        return self.lr * 0.5 * (1 + math.cos(math.pi * step / total_steps))
