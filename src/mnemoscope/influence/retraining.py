"""Retraining-based influence: exact leave-one-out (``loo``) and its subsampled relative
(``downsampling``). No gradients: both compare models trained with and without an example.

Either method may leave some training examples without an estimate (``loo`` outside its
chosen examples, ``downsampling`` where an example is in every subset or in none). Their
self-influence is NaN there; :meth:`influence` yields no block for those rows, and
:meth:`influence_matrix` fills them with NaN.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
from pydantic import ConfigDict, Field

from mnemoscope.data import Dataset
from mnemoscope.errors import ConfigError
from mnemoscope.estimator import MethodConfig, PlanContext, Scores, register
from mnemoscope.influence.base import DEFAULT_MEMORY_BUDGET, InfluenceBlock, InfluenceEstimator
from mnemoscope.subsets import FeldmanZhangConfig, agresti_caffo, member_stats
from mnemoscope.task import Task
from mnemoscope.train import EnsembleSpec, TrainedEnsemble, derive_seed, subset_masks

if TYPE_CHECKING:
    from typing import Self

_CHOICE = 0x100E
"""Seed domain of the examples ``loo`` leaves out when it does not take them all."""


class _PartialRows(InfluenceEstimator):
    """An attributor with an estimate for the training rows ``scored_`` only."""

    scored_: torch.Tensor
    """``[n_train]`` bool: the rows that have an estimate."""

    def _runs(self) -> list[slice]:
        """The scored rows as maximal runs of consecutive positions."""
        positions = self.scored_.nonzero().flatten().tolist()
        runs: list[slice] = []
        for p in positions:
            if runs and runs[-1].stop == p:
                runs[-1] = slice(runs[-1].start, p + 1)
            else:
                runs.append(slice(p, p + 1))
        return runs

    def influence_matrix(
        self,
        x_target: torch.Tensor,
        y_target: torch.Tensor,
        memory_budget: int = DEFAULT_MEMORY_BUDGET,
    ) -> torch.Tensor:
        """``[n_train, n_targets]``; NaN rows for the training examples without an estimate."""
        matrix = super().influence_matrix(x_target, y_target, memory_budget)
        matrix[~self.scored_] = float("nan")
        return matrix


class LooConfig(MethodConfig):
    """Strict: a string, a boolean or a fraction where an integer is meant is refused."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    method: Literal["loo"] = "loo"
    n_examples: int | None = Field(None, ge=1, le=1_000_000)
    """Training examples to leave out, one retraining each, drawn at random (seeded by
    the study seed); None: every training example. The others get NaN."""
    repeats: int = Field(3, ge=1, le=1_000)
    """R, independent replicates (each its own shared initialisation and data order); the
    score is their mean and its stderr their standard error (R ≥ 2)."""


@register
class Loo(_PartialRows):
    """Leave-one-out influence by retraining: the ground truth the estimators approximate.

    ``loo(i, z) = ℓ(z; θ_{−i}) − ℓ(z; θ)``, with ``θ`` trained on the whole training set
    and ``θ_{−i}`` retrained without example i from the same initial weights and the same
    data order (one permutation of the n examples per epoch, i dropped from it:
    ``EnsembleSpec(init='shared', order='shared')``), so the two runs differ only by i.
    Averaged over R replicates, each with its own initialisation and order (an ensemble
    per replicate, ``stream`` r). Self-influence ``ℓ(z_i; θ_{−i}) − ℓ(z_i; θ)``.

    Sign: positive when the model does worse on the target without i, i.e. removing i
    would hurt the target (the convention of ``tracin`` and METHODS.md). Not divided by n:
    it is the raw change of one example's loss. ``stderr`` is the standard deviation over
    the R replicates divided by ``sqrt(R)`` (None when R = 1).

    Examples not chosen (``n_examples`` < n) have no estimate: NaN self-influence, no
    train×target rows (NaN rows in :meth:`influence_matrix`).

    Cost: ``R · (m + 1)`` trainings on n − 1 or n examples, m the examples left out
    (``n_examples``, default n); then the self-influence is free (the trainer's final
    logits) and targets cost ``R · (m + 1)`` forward passes each.

    Reference: Z. Hammoudeh and D. Lowd, "Training Data Influence Analysis and
    Estimation: A Survey", Machine Learning 113, 2024, §4.1 (leave-one-out influence).
    """

    name = "loo"
    max_nan_fraction = 1.0  # examples outside the chosen n_examples have no score
    config_class = LooConfig
    cost = "R·(m+1) trainings (m = n_examples left out, R = repeats); no gradients"
    reference = "Hammoudeh & Lowd 2024, 'Training Data Influence Analysis and Estimation', §4.1"
    summary = (
        "loss change of a target when one training example is left out and the model retrained"
    )
    config: LooConfig

    def chosen(self, n_train: int, seed: int) -> torch.Tensor:
        """``[m]`` sorted positions of the training examples left out."""
        m = self.config.n_examples
        if m is None:
            return torch.arange(n_train)
        if m > n_train:
            raise ConfigError(f"loo.n_examples: {m} is more than the {n_train} training examples")
        rng = np.random.default_rng(derive_seed(seed, _CHOICE))
        return torch.from_numpy(np.sort(rng.choice(n_train, size=m, replace=False)))

    def ensembles(self, context: PlanContext) -> dict[str, EnsembleSpec]:
        if context.n_train < 2:
            raise ConfigError("loo: needs at least 2 training examples")
        chosen = self.chosen(context.n_train, context.seed)
        masks = torch.ones(len(chosen) + 1, context.n_train, dtype=torch.bool)
        masks[torch.arange(1, len(chosen) + 1), chosen] = False  # row 0: the full model
        return {
            f"repeat_{r}": EnsembleSpec(masks, init="shared", order="shared", stream=r)
            for r in range(self.config.repeats)
        }

    def fit(self, ensembles, dataset: Dataset, task: Task, device="cpu") -> Self:
        self.ensembles_ = [ensembles[f"repeat_{r}"] for r in range(self.config.repeats)]
        self.dataset_, self.task_, self.device_ = dataset, task, torch.device(device)
        masks = self.ensembles_[0].masks
        left_out = ~masks[1:]
        if not bool(masks[0].all()) or bool((left_out.sum(1) != 1).any()):
            raise ValueError("loo: row 0 must be the full set and every other row miss one example")
        if any(not torch.equal(e.masks, masks) for e in self.ensembles_):
            raise ValueError("loo: every replicate must leave out the same examples")
        self.chosen_ = left_out.int().argmax(1)  # row j + 1 leaves out example chosen_[j]
        self.scored_ = torch.zeros(dataset.n_train, dtype=torch.bool)
        self.scored_[self.chosen_] = True
        return self

    def _loss_change(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``[m + 1, T, C]`` logits of the full and left-out models → ``[m, T]``
        ``ℓ(z; θ_{−i}) − ℓ(z; θ)``."""
        loss = self.task_.loss(logits.double(), y.expand(logits.shape[0], -1))
        return loss[1:] - loss[:1]

    def self_influence(self) -> Scores:
        data, chosen = self.dataset_, self.chosen_
        rows, labels = torch.arange(1, len(chosen) + 1), data.y_train[chosen]
        per_repeat = torch.stack(
            [
                self.task_.loss(e.train_logits[rows, chosen].double(), labels)
                - self.task_.loss(e.train_logits[0, chosen].double(), labels)
                for e in self.ensembles_
            ]
        ).numpy()  # [R, m]: model j + 1 (without chosen[j]) minus the full model, on chosen[j]
        score = np.full(data.n_train, np.nan)
        score[self.chosen_.numpy()] = per_repeat.mean(0)
        stderr = None
        if len(per_repeat) > 1:
            stderr = np.full(data.n_train, np.nan)
            stderr[self.chosen_.numpy()] = per_repeat.std(0, ddof=1) / np.sqrt(len(per_repeat))
        return self._scores(score, stderr)

    def influence(
        self, x_target, y_target, memory_budget=DEFAULT_MEMORY_BUDGET
    ) -> Iterator[InfluenceBlock]:
        """Blocks of the chosen rows (runs of consecutive positions) × targets, as many
        targets at a time as the logits of all models and the values fit ``memory_budget``."""
        n_models = len(self.chosen_) + 1
        per_target = 8 * (n_models * self.dataset_.n_classes + n_models)
        position = torch.full((self.dataset_.n_train,), -1, dtype=torch.long)
        position[self.chosen_] = torch.arange(len(self.chosen_))  # example → row of values
        runs = self._runs()
        for targets in self.target_slices(len(y_target), per_target, memory_budget):
            y = y_target[targets].to(self.device_)
            values = sum(
                self._loss_change(e.logits(x_target[targets], self.device_), y).cpu()
                for e in self.ensembles_
            ) / len(self.ensembles_)
            for run in runs:
                yield InfluenceBlock(run, targets, values[position[run]])


Measure = Literal["accuracy", "margin", "neg_loss"]


class DownsamplingConfig(FeldmanZhangConfig):
    method: Literal["downsampling"] = "downsampling"  # type: ignore[assignment]
    measure: Measure = "accuracy"
    """What is compared with and without the example: ``accuracy`` (correctness of the
    argmax, Feldman & Zhang), ``margin`` (true-class logit minus the largest other) or
    ``neg_loss`` (minus the cross-entropy)."""


@register
class Downsampling(_PartialRows):
    """Subsampled influence of Feldman & Zhang (2020, eq. 2, estimated as in eq. 3).

    From K models trained on random subsets (mask ``M [K, n]``, the same ensemble as
    ``feldman_zhang`` at equal ``n_models`` and ``subset_fraction``):

    ``infl(i, t) = mean_{k: M_ki=1} m_k(t) − mean_{k: M_ki=0} m_k(t)``

    with ``m_k(t)`` model k's correctness on target t (``measure: accuracy``, the paper's
    choice; the score is then in [−1, 1]), its margin, or its negative loss. Positive: the
    models that saw i do better on t, i.e. removing i would hurt t (the sign of ``tracin``).
    Self-influence is ``infl(i, z_i)``; with ``accuracy`` it equals ``feldman_zhang``'s
    memorization. Not divided by n.

    ``stderr`` of the self-influence: Agresti–Caffo for ``accuracy`` (as
    ``feldman_zhang``), Welch ``sqrt(s²_in/k_in + s²_out/k_out)`` otherwise. Examples in
    every subset or in none have no estimate (NaN; probability ``f^K + (1 − f)^K``).

    Cost: the subset ensemble (K trainings on ``subset_fraction · n`` examples, shared
    with ``feldman_zhang``/``counterfactual``); self-influence is free (the trainer's final
    logits); targets cost K forward passes each and an ``[n, K] × [K, T]`` product.

    Reference: V. Feldman and C. Zhang, "What Neural Networks Memorize and Why:
    Discovering the Long Tail via Influence Estimation", NeurIPS 2020, eqs. (2)–(3).
    """

    name = "downsampling"
    config_class = DownsamplingConfig
    cost = "K trainings on subsets (shared with feldman_zhang at equal K and fraction)"
    reference = "Feldman & Zhang 2020, 'What Neural Networks Memorize and Why', eqs. 2-3"
    summary = "target accuracy (or margin, −loss) of subset models with an example minus without"
    config: DownsamplingConfig

    def ensembles(self, context: PlanContext) -> dict[str, EnsembleSpec]:
        masks = subset_masks(
            self.config.n_models, context.n_train, self.config.subset_fraction, context.seed
        )
        return {"subsets": EnsembleSpec(masks)}

    def fit(self, ensembles, dataset: Dataset, task: Task, device="cpu") -> Self:
        self.ensemble_: TrainedEnsemble = ensembles["subsets"]
        self.dataset_, self.task_, self.device_ = dataset, task, torch.device(device)
        inside = self.ensemble_.masks
        self.k_in_ = inside.sum(0).double()
        self.k_out_ = (~inside).sum(0).double()
        self.scored_ = (self.k_in_ > 0) & (self.k_out_ > 0)
        return self

    def _measured(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``[K, T, C]`` logits → ``[K, T]`` float64 measurement, higher = better."""
        y = y.expand(logits.shape[0], -1)
        if self.config.measure == "accuracy":
            return (logits.argmax(-1) == y).double()
        if self.config.measure == "margin":
            return self.task_.measure(logits.double(), y, "margin")
        return -self.task_.measure(logits.double(), y, "loss")

    def self_influence(self) -> Scores:
        data = self.dataset_
        measured = self._measured(self.ensemble_.train_logits, data.y_train)  # [K, n]
        inside = self.ensemble_.masks
        mean_in, var_in, k_in = member_stats(measured, inside)
        mean_out, var_out, k_out = member_stats(measured, ~inside)
        with np.errstate(divide="ignore", invalid="ignore"):
            if self.config.measure == "accuracy":
                right_in = (measured * inside).sum(0).numpy()
                right_out = (measured * ~inside).sum(0).numpy()
                variance = agresti_caffo(right_in, k_in) + agresti_caffo(right_out, k_out)
            else:
                variance = var_in / k_in + var_out / k_out
        stderr = np.sqrt(variance)
        stderr[~self.scored_.numpy()] = np.nan
        return self._scores(mean_in - mean_out, stderr)

    def influence(
        self, x_target, y_target, memory_budget=DEFAULT_MEMORY_BUDGET
    ) -> Iterator[InfluenceBlock]:
        """Blocks of the scored rows (runs of consecutive positions) × targets, as many
        targets at a time as the K models' logits and the ``[n, T]`` values fit
        ``memory_budget``."""
        n_models, n_train = self.ensemble_.n_models, self.dataset_.n_train
        per_target = 8 * (n_models * self.dataset_.n_classes + n_models + n_train)
        inside, runs = self.ensemble_.masks.double(), self._runs()
        for targets in self.target_slices(len(y_target), per_target, memory_budget):
            logits = self.ensemble_.logits(x_target[targets], self.device_).cpu()
            measured = self._measured(logits, y_target[targets])  # [K, T]
            mean_in = (inside.T @ measured) / self.k_in_[:, None]
            mean_out = ((1 - inside).T @ measured) / self.k_out_[:, None]
            values = mean_in - mean_out  # [n, T]
            for run in runs:
                yield InfluenceBlock(run, targets, values[run])
