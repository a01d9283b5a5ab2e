"""TRAK (Park et al. 2023): randomly projected log-odds gradients of an ensemble, with a
kernel regression between them."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Literal

import torch
from pydantic import Field

from mnemoscope.data import Dataset
from mnemoscope.estimator import PlanContext, Scores, register
from mnemoscope.influence.adapters import Outer
from mnemoscope.influence.base import DEFAULT_MEMORY_BUDGET, InfluenceBlock, InfluenceEstimator
from mnemoscope.influence.gradient_dot import (
    DenseGradientsConfig,
    checkpoints_or_error,
    evenly_spaced_epochs,
)
from mnemoscope.influence.gradients import Params, select_params
from mnemoscope.influence.layerwise import LayerwiseGradients
from mnemoscope.projection import RandomProjection
from mnemoscope.task import Task, log_odds  # noqa: F401  (defined in the task; importable here)
from mnemoscope.train import EnsembleSpec, TrainedEnsemble, full_masks, subset_masks

if TYPE_CHECKING:
    from typing import Self


class TRAKConfig(DenseGradientsConfig):
    method: Literal["trak"] = "trak"  # type: ignore[assignment]
    proj_dim: int = Field(512, ge=1, le=100_000)
    """k, dimensions of the random projection of each gradient (at least 1, at most 10⁵)."""
    n_models: int = Field(10, ge=1, le=10_000)
    """M, independently trained models whose scores are averaged (at most 10 000)."""
    subset_fraction: float = Field(1.0, gt=0, le=1)
    """Fraction of the training set each model is trained on: 1 (the default) trains every
    model on all of it, with its own initialisation and data order; below 1, on random
    subsets, as in Park et al.'s experiments with subsampled ensembles."""
    damping: float = Field(0.01, ge=0, le=1e6)
    """λ relative to the mean eigenvalue of ``ΦᵀΦ``: ``(ΦᵀΦ + damping · tr(ΦᵀΦ)/k · I)⁻¹``.
    0 (TRAK as published) inverts ``ΦᵀΦ`` on its range (a pseudo-inverse), which is
    ill-conditioned when k is near the rank of Φ (at most n); against exact
    leave-one-out on a logistic regression (digits, n = 240) 0.01 did better than 0."""
    projection: Literal["rademacher", "gaussian"] = "rademacher"
    """Entries of the projection: ±1/√k with equal odds, or normal with variance 1/k."""
    projection_structure: Literal["dense", "factored"] = "dense"
    """'dense' (the default): one ``[#params, k]`` matrix on the flattened gradient.
    'factored' (LoGra, Choe et al. 2024): a weight whose per-example gradient is
    ``D_i U_iᵀ`` (Linear, Conv1d/2d) is projected by a Kronecker product
    ``P_out ⊗ P_in`` as ``vec(P_outᵀ D_i U_iᵀ P_in)``, from its two factors, never forming
    the gradient; k is split as ``k_out · k_in`` (the divisor of k nearest below √k for
    ``k_out``: 512 = 16 · 32); every other parameter is projected densely, each with its
    own matrix, and all land summed in the same k coordinates."""
    seed: int = Field(0, ge=0, le=2**32 - 1)
    """Seed of the projections (model m draws its own from ``(seed, m)``)."""
    checkpoints: int = Field(1, ge=1, le=1_000)
    """Checkpoints per model, evenly spaced over training, the last one the final model (as
    for ``tracin``); the M·C parameter sets are averaged over as M·C models. 1 (the
    default): the final models only."""


@register
class TRAK(InfluenceEstimator):
    """TRAK, Tracing with the Randomly-projected After Kernel (Park, Georgiev, Ilyas,
    Leclerc, Mądry 2023, ICML, Alg. 1).

    For each of M models ``θ_m``: features ``φ_i = Pᵀ ∇_θ f(z_i; θ_m)`` with ``f`` the
    log-odds ``log(p_i / (1 − p_i))`` of the true class (the task's ``'log_odds'``
    measurement: Park et al.'s model output function for classification) and ``P`` a
    seeded random ``[#params, k]`` projection; ``Φ = [φ_1 .. φ_n]`` over the training set. Then

        ``τ(z_i, z_t) = mean_m(φ_tᵀ (ΦᵀΦ + λI)⁻¹ φ_i) · mean_m(1 − p_i)``

    (the kernel term and the weight ``1 − p_i`` are averaged over models separately, as
    in Alg. 1). With ``checkpoints: C > 1`` the M·C parameter sets of C checkpoints per
    model (evenly spaced, the last the final model) take the place of the M models, each
    with its own projection: checkpoints of one run are a cheaper, less diverse stand-in
    for independently trained models.

    For logistic regression this is the one-step Newton estimate of how much the target's
    log-odds would *drop* if i were removed (Park et al. §3, with the Hessian's ``p(1−p)``
    weights dropped): positive = removing i hurts the target, as everywhere; the unit is
    the target's log-odds, not its loss (they move oppositely).

    Self-influence: the diagonal ``mean_m(φ_iᵀ(ΦᵀΦ + λI)⁻¹φ_i) · mean_m(1 − p_i)`` ≥ 0, a
    leverage score times how badly i is fitted (high for mislabeled examples); computed
    per example from the fit, never as an n×n matrix. Normalisation: none beyond the
    kernel inverse (a sum over the training set, so scores shrink like 1/n).

    Cost: M trainings; M·n layer-wise per-example gradients projected to k dimensions,
    ``O(#params · k)`` each (``factored``: ``O((out + in)·√k + k)`` per Linear weight); a
    ``k×k`` eigendecomposition per model. The fit keeps ``[M, n, k]``
    float32 preconditioned features (cached by the runner); each target costs M
    gradients and an ``[n, k]`` product per model.
    """

    name = "trak"
    config_class = TRAKConfig
    cost = "M trainings; M·n projected log-odds gradients; a k×k eigendecomposition per model"
    reference = "Park et al. 2023, 'TRAK: Attributing Model Behavior at Scale', Alg. 1"
    summary = "kernel regression on randomly projected log-odds gradients of an ensemble"
    cache_fit = True
    _cached = ("preconditioned", "keep", "self_influence")
    config: TRAKConfig

    def ensembles(self, context: PlanContext) -> dict[str, EnsembleSpec]:
        m, fraction = self.config.n_models, self.config.subset_fraction
        masks = (
            full_masks(m, context.n_train)
            if fraction == 1
            else subset_masks(m, context.n_train, fraction, context.seed)
        )
        return {"models": EnsembleSpec(masks, tuple(self._epochs(context.epochs)))}

    def _epochs(self, epochs: int) -> list[int]:
        """Checkpoint epochs to read; none (the final models) for one checkpoint."""
        count = self.config.checkpoints
        return [] if count == 1 else evenly_spaced_epochs(count, epochs)

    def _read(self, models: TrainedEnsemble) -> list[Params]:
        """The stacked ``[M, ...]`` parameters read: the final ones, or those of each of
        the C checkpoints."""
        wanted = self._epochs(models.epochs)
        if not wanted:
            return [models.params]
        return [c.params for c in checkpoints_or_error(models, wanted, self.name)]

    def _train_logits(self, models: TrainedEnsemble, x: torch.Tensor) -> torch.Tensor:
        """``[M·C, n, classes]`` logits of every parameter set on the training inputs, in
        the order of ``params_`` (the trainer's final logits for the final models)."""
        if not self._epochs(models.epochs):
            return models.train_logits
        per_checkpoint = [models.logits(x, params=stacked) for stacked in self.stacked_]
        return torch.stack(per_checkpoint, 1).flatten(0, 1)

    def _prepare(self, ensembles, dataset: Dataset, task: Task, device) -> None:
        models = ensembles["models"]
        self.device_, self.dataset_, self.task_ = torch.device(device), dataset, task
        self.module_ = models.module().to(self.device_)
        self.names_ = select_params(self.module_, self.config.params)
        self.stacked_ = self._read(models)
        # model-major: (model m, checkpoint c) is set m·C + c and draws that projection
        self.params_ = [
            {k: v[m].to(self.device_) for k, v in stacked.items()}
            for m in range(models.n_models)
            for stacked in self.stacked_
        ]
        self.gradients_ = LayerwiseGradients(self.module_, self.names_, task, "log_odds")
        self.n_params_ = sum(self.module_.get_parameter(k).numel() for k in self.names_)
        self.projectors_: dict[tuple[str, int], RandomProjection] = {}

    def _projector(self, name: str, side: int, rows: int, k: int) -> RandomProjection:
        """The projection of ``rows`` coordinates to k of parameter ``name`` (``'*'``: all
        of them concatenated; side 0, or 1 and 2 for a factored weight's output and input
        gradients), made once; each keeps the current model's matrix only."""
        if (name, side) not in self.projectors_:
            distribution, device = self.config.projection, self.device_
            self.projectors_[name, side] = RandomProjection(rows, k, distribution, device=device)
        return self.projectors_[name, side]

    def fit_bytes(self, module, n_train: int, n_classes: int) -> int:
        """The ``[M, n, k]`` float32 features kept, and one model's features and their
        preconditioned version in float64 while it is computed."""
        k = self.config.proj_dim
        return 4 * self.config.n_models * n_train * k + 2 * 8 * n_train * k

    def fit(self, ensembles, dataset: Dataset, task: Task, device="cpu") -> Self:
        self._prepare(ensembles, dataset, task, device)
        logits = self._train_logits(ensembles["models"], dataset.x_train)
        labels = dataset.y_train.to(logits.device)
        probability = task.measure(logits, labels.expand(logits.shape[0], -1), "probability")
        self.keep_ = (1 - probability.double()).mean(0).to(self.device_)
        preconditioned, leverage = [], torch.zeros(dataset.n_train, dtype=torch.float64)
        for m in range(len(self.params_)):
            phi = torch.cat(list(self._features(m, dataset.x_train, dataset.y_train))).double()
            psi = phi @ self._inverse_kernel(phi)
            leverage += (phi * psi).sum(1).cpu() / len(self.params_)
            preconditioned.append(psi.float())
        self.preconditioned_ = torch.stack(preconditioned)  # [M, n, k]
        self.self_influence_ = leverage.to(self.device_) * self.keep_
        return self

    def _inverse_kernel(self, phi: torch.Tensor) -> torch.Tensor:
        """``(ΦᵀΦ + λI)⁻¹`` (``[k, k]`` float64), on the kernel's range when λ = 0.

        Φ holds float32 values, so singular values below ``s_max · max(n, k) · ε_float32``
        (numpy's ``matrix_rank`` tolerance) are taken for rounding noise: their
        directions get 0 rather than a huge inverse eigenvalue."""
        kernel = phi.T @ phi
        eigenvalues, vectors = torch.linalg.eigh(kernel)
        top = float(eigenvalues.abs().max())
        damping = self.config.damping * float(eigenvalues.sum()) / len(eigenvalues)
        shifted = eigenvalues + damping
        floor = top * (max(phi.shape) * torch.finfo(torch.float32).eps) ** 2
        inverse = torch.where(shifted > floor, 1 / shifted, torch.zeros_like(shifted))
        return (vectors * inverse) @ vectors.T

    def _features(self, m: int, x: torch.Tensor, y: torch.Tensor) -> Iterator[torch.Tensor]:
        """``[b, k]`` float32 projected log-odds gradients under model m, batch by batch; the
        matrices of model m are drawn from seeds of ``(seed, m, ...)``."""
        k, size = self.config.proj_dim, self.config.batch_size
        k_out = max(f for f in range(1, int(k**0.5) + 1) if k % f == 0)
        for xb, yb in zip(x.split(size), y.split(size)):
            factors = self.gradients_(self.params_[m], xb.to(self.device_), yb.to(self.device_))
            if self.config.projection_structure == "dense":
                g = torch.cat([piece.dense for piece in factors.pieces.values()], 1)
                yield self._projector("*", 0, self.n_params_, k)(g, (self.config.seed, m))
                continue
            phi = torch.zeros(len(yb), k, device=self.device_)
            for j, (name, piece) in enumerate(factors.pieces.items()):
                key = (self.config.seed, m, j)
                if isinstance(piece, Outer):
                    left = self._projector(name, 1, piece.d.shape[1], k_out).matrix((*key, 1))
                    right = self._projector(name, 2, piece.u.shape[1], k // k_out)
                    phi += piece.projected(left, right.matrix((*key, 2)))
                else:
                    phi += self._projector(name, 0, piece.dense.shape[1], k)(piece.dense, key)
            yield phi

    def influence(self, x_target, y_target, memory_budget=DEFAULT_MEMORY_BUDGET):
        """Blocks of all training rows × as many targets as fit ``memory_budget`` (the
        values and the targets' features of every model, 8 bytes each)."""
        n_models = len(self.params_)
        per_target = 8 * (self.n_train_ + n_models * self.config.proj_dim)
        for targets in self.target_slices(len(y_target), per_target, memory_budget):
            values = self.keep_.new_zeros(self.n_train_, targets.stop - targets.start)
            for m in range(n_models):
                phi = torch.cat(list(self._features(m, x_target[targets], y_target[targets])))
                values += (self.preconditioned_[m] @ phi.T).double()
            values *= self.keep_[:, None] / n_models
            yield InfluenceBlock(slice(0, self.n_train_), targets, values.cpu())

    def self_influence(self) -> Scores:
        return self._scores(self.self_influence_)
