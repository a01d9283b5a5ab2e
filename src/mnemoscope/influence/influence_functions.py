"""Influence functions (Koh & Liang 2017) with four ways to apply the inverse curvature,
and two variants in :mod:`mnemoscope.influence.relative_influence`: RelatIF and influence on the margin.

All of them score training example i against a target z with

    I(i, z) = (1/n) ∇m(z)ᵀ (H + l2·I + λI)⁻¹ ∇ℓ(z_i)

at the final model θ̂ trained on all n examples, ``m`` the target's loss (or margin),
``H + l2·I`` the Hessian of the objective (mean loss + ``(l2/2)‖θ‖²``) over the selected
parameters, λ the damping. Removing z_i moves the optimum by ``θ̂_{−i} − θ̂ ≈ (1/n)
(H + l2·I)⁻¹ ∇ℓ(z_i)``, so ``I(i, z) ≈ ℓ(z; θ̂_{−i}) − ℓ(z; θ̂)`` (λ = 0): positive means
removing i would raise the target's loss (i helps z), the sign convention of every
attributor. The estimators differ only in how they apply ``A⁻¹`` to a block of vectors
(:meth:`InfluenceFunction.solve`); self-influence and train×target influence share one
code path each, EK-FAC's too (:mod:`~mnemoscope.influence.ekfac`, in its eigenbasis).
"""

from __future__ import annotations

import warnings
from abc import abstractmethod
from collections.abc import Iterator
from typing import TYPE_CHECKING, ClassVar, Literal

import torch
from pydantic import Field, ValidationInfo, field_validator

from mnemoscope.data import Dataset
from mnemoscope.errors import ConfigError
from mnemoscope.estimator import Scores, register
from mnemoscope.influence.base import DEFAULT_MEMORY_BUDGET, InfluenceBlock, InfluenceEstimator
from mnemoscope.influence.curvature import (
    Curvature,
    LissaDiverged,
    NotPositiveDefinite,
    conjugate_gradient,
    lanczos,
    lissa,
    numerical_zero,
    spectral_solve,
)
from mnemoscope.influence.gradient_dot import GradDotConfig
from mnemoscope.influence.gradients import select_params
from mnemoscope.task import Measurement, Task

if TYPE_CHECKING:
    from typing import Self

MAX_EXACT_PARAMS = 10_000
"""Most selected parameters ``if_exact`` accepts: its dense matrix is P² float64 (800 MB
at 10⁴) and its eigendecomposition O(P³)."""
FIT_WORKSPACE = 3
"""Dense float64 matrices an exact influence function's fit holds at once: the
Hessian, its eigenvectors and the solver's workspace."""


class IFExactConfig(GradDotConfig):
    method: Literal["if_exact"] = "if_exact"  # type: ignore[assignment]
    hessian: Literal["hessian", "gauss_newton"] = "gauss_newton"
    """Curvature H: the Hessian of the mean training loss, or its Gauss–Newton matrix
    (positive semi-definite; equal to the Hessian when the logits are linear in the
    selected parameters)."""
    damping: float = Field(0.001, ge=0, le=1e6)
    """λ ≥ 0 added to the diagonal of H + l2·I (at most 10⁶)."""


class IFConjugateGradientConfig(IFExactConfig):
    method: Literal["if_cg"] = "if_cg"  # type: ignore[assignment]
    max_iterations: int = Field(100, ge=1, le=100_000)
    """Conjugate-gradient steps per solve at most (at most 10⁵)."""
    tolerance: float = Field(1e-6, gt=0, lt=1)
    """A solve stops when its residual is at most this fraction of its right-hand side."""


class IFLissaConfig(IFExactConfig):
    method: Literal["if_lissa"] = "if_lissa"  # type: ignore[assignment]
    depth: int = Field(1000, ge=1, le=1_000_000)
    """Steps of the recursion (terms of the Neumann series; at most 10⁶)."""
    scale: float | None = Field(None, gt=0, le=1e12)
    """s: the series converges when every eigenvalue of the sampled H + l2·I + λI lies in
    (0, 2s). None: 1.2 × the largest eigenvalue, estimated by 20 Lanczos steps."""
    repeats: int = Field(1, ge=1, le=1_000)
    """Independent recursions averaged (at most 1000)."""
    sample_size: int = Field(256, ge=1, le=1_000_000)
    """Training examples per step's curvature product; ≥ n: the full mean (deterministic)."""
    seed: int = Field(0, ge=0, le=2**32 - 1)
    """Seed of the samples."""


class IFArnoldiConfig(IFExactConfig):
    method: Literal["if_arnoldi"] = "if_arnoldi"  # type: ignore[assignment]
    rank: int = Field(50, ge=1, le=100_000)
    """k: eigenpairs of largest magnitude kept (at most the selected parameters)."""
    iterations: int | None = Field(None, ge=1, le=100_000)
    """Lanczos (Arnoldi) steps, at least ``rank``; None: 2 × rank."""
    seed: int = Field(0, ge=0, le=2**32 - 1)
    """Seed of the starting vector."""

    @field_validator("iterations")
    @classmethod
    def _at_least_rank(cls, iterations: int | None, info: ValidationInfo) -> int | None:
        rank = info.data.get("rank")
        if iterations is not None and rank is not None and iterations < rank:
            raise ValueError(f"iterations {iterations} < rank {rank}: need at least rank steps")
        return iterations


class InfluenceFunction(InfluenceEstimator):
    """``I(i, z) = sign · (1/n) ∇m(z)ᵀ A⁻¹ ∇ℓ(z_i)``, A = H + l2·I + λI (module docstring).

    Subclasses say how ``A⁻¹`` is applied (:meth:`solve`) and may change the target's
    measurement ``m`` (default: its loss) and the sign.
    """

    config: IFExactConfig
    measurement: ClassVar[Measurement] = "loss"
    sign: ClassVar[float] = 1.0
    bytes_per_target_coordinate: ClassVar[int] = 8 * 6
    """Bytes per coordinate of a target while its block is solved (float64 work vectors)."""

    def check_model(self, module) -> None:
        names = select_params(module, self.config.params)
        self._check_size(sum(module.get_parameter(k).numel() for k in names))

    def _check_size(self, n_params: int) -> None:
        """Raise :class:`ConfigError` if the method cannot work on ``n_params`` parameters."""

    def fit(self, ensembles, dataset: Dataset, task: Task, device="cpu") -> Self:
        self._prepare(ensembles, dataset, task, device)
        self._fit_curvature()
        return self

    def _prepare(self, ensembles, dataset: Dataset, task: Task, device) -> None:
        self._hold_final_model(ensembles, dataset, task, device)
        self.curvature_ = Curvature(
            self.module_,
            self.params_,
            self.names_,
            task,
            dataset.x_train,
            dataset.y_train,
            kind=self.config.hessian,
            damping=self.config.damping,
            batch_size=self.config.batch_size,
        )
        self._check_size(self.curvature_.n_params)
        self.n_coordinates_ = self.curvature_.n_params

    def _fit_curvature(self) -> None:
        """Whatever :meth:`solve` needs, computed once (nothing, by default)."""

    @abstractmethod
    def solve(self, rows: torch.Tensor) -> torch.Tensor:
        """``[m, P]`` float64 rows g → rows ``A⁻¹ g``."""

    def _normaliser(self) -> torch.Tensor | None:
        """``[n]`` divisor of training example i's influence, or None."""
        return None

    def _grads(self, x: torch.Tensor, y: torch.Tensor, measurement: Measurement = "loss"):
        """``[b, P]`` float64 gradients of ``measurement`` per example, batch after batch."""
        for g in self._example_grads(x, y, None, measurement, self.curvature_.dtype):
            yield g.double()

    def _train_grads(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """``(∇ℓ(z_i), ∇m(z_i))`` of consecutive batches of training examples."""
        data = self.dataset_
        losses = self._grads(data.x_train, data.y_train)
        if self.measurement == "loss":
            for g in losses:
                yield g, g
        else:
            yield from zip(losses, self._grads(data.x_train, data.y_train, self.measurement))

    def self_influence(self) -> Scores:
        """``sign · (1/n) ∇m(z_i)ᵀ A⁻¹ ∇ℓ(z_i)`` per training example: one gradient pass
        and one solve per batch of training examples."""
        data = self.dataset_
        parts = [(m * self.solve(g)).sum(1).cpu() for g, m in self._train_grads()]
        score = self.sign / data.n_train * torch.cat(parts)
        normaliser = self._normaliser()
        if normaliser is not None:
            score = score / normaliser.cpu()
        return self._scores(score)

    def influence(
        self, x_target, y_target, memory_budget=DEFAULT_MEMORY_BUDGET
    ) -> Iterator[InfluenceBlock]:
        """Blocks of ``[batch_size, b_t]``: ``A⁻¹ ∇m`` of ``b_t`` targets at a time (the
        most whose vectors fit half of ``memory_budget``, at least one), dotted with the
        training gradients one batch at a time."""
        n_train = self.n_train_
        per_target = self.bytes_per_target_coordinate * self.n_coordinates_
        normaliser = self._normaliser()

        def pair(grads: tuple[torch.Tensor, torch.Tensor], solved, row: int) -> torch.Tensor:
            values = self.sign / n_train * (grads[0] @ solved.T)
            if normaliser is None:
                return values
            return values / normaliser[row : row + values.shape[0], None]

        return self.streamed_blocks(
            x_target,
            y_target,
            memory_budget,
            2 * per_target,
            held=lambda x, y: self.solve(torch.cat(list(self._grads(x, y, self.measurement)))),
            train=self._train_grads,
            pair=pair,
        )


class _SpectralInfluence(InfluenceFunction):
    """Applies ``A⁻¹`` through eigenpairs ``(e, Q)``: ``Q diag(1/e) Qᵀ`` (cached)."""

    _cached = ("eigenvalues", "eigenvectors")

    def solve(self, rows: torch.Tensor) -> torch.Tensor:
        return spectral_solve(rows, self.eigenvalues_, self.eigenvectors_)

    def _warn_if_indefinite(self) -> None:
        smallest = float(self.eigenvalues_.min())
        if smallest < -numerical_zero(self.eigenvalues_, self.curvature_.n_params):
            warnings.warn(
                f"{self.name}: H + l2·I + λI has negative eigenvalues (smallest {smallest:.3g}, "
                f"hessian: {self.config.hessian}); influence is still the formula's value but "
                f"self-influence can be negative: raise damping by more than {-smallest:.3g} "
                "or use hessian: gauss_newton",
                RuntimeWarning,
                stacklevel=3,
            )


@register
class IFExact(_SpectralInfluence):
    """Influence function with the exact inverse (Koh & Liang 2017, eq. 2, the influence
    of upweighting on the loss, times −1/n for removal; with a damping term).

    ``I(i, z) = (1/n) ∇ℓ(z)ᵀ (H + l2·I + λI)⁻¹ ∇ℓ(z_i)`` at the final model, H the mean
    training Hessian or Gauss–Newton matrix over the selected parameters (``hessian``),
    l2 the objective's L2 coefficient, λ the damping. Positive: removing z_i would raise
    the loss of z (``≈ ℓ(z; θ̂_{−i}) − ℓ(z; θ̂)``). Divided by n. Self-influence
    ``(1/n) ∇ℓ(z_i)ᵀ A⁻¹ ∇ℓ(z_i)``, ≥ 0 when A is positive definite (always for
    Gauss–Newton with l2 + λ > 0; the true Hessian of a non-convex net may be indefinite,
    which the fit reports with a warning).

    Cost: the dense P×P matrix (Gauss–Newton: the logits' per-example Jacobians, C
    backward passes per example; Hessian: P curvature products), one O(P³)
    eigendecomposition (cached), then per batch of b examples one gradient pass and an
    O(b·P²) product. Refused above 10⁴ selected parameters.
    """

    name = "if_exact"
    config_class = IFExactConfig
    cost = "P Hessian-vector products over the training set, a P×P eigendecomposition, n gradients"
    reference = (
        "Koh & Liang 2017, 'Understanding Black-box Predictions via Influence Functions', eq. 2"
    )
    summary = "influence function with the exact (dense, damped) inverse Hessian"
    cache_fit = True

    def fit_bytes(self, module, n_train: int, n_classes: int) -> int:
        """The dense ``[P, P]`` float64 curvature, its eigenvectors and the solver's
        workspace (``FIT_WORKSPACE`` such matrices)."""
        names = select_params(module, self.config.params)
        return FIT_WORKSPACE * 8 * sum(module.get_parameter(k).numel() for k in names) ** 2

    def _check_size(self, n_params: int) -> None:
        if n_params > MAX_EXACT_PARAMS:
            raise ConfigError(
                f"params: {self.name} needs a dense {n_params}×{n_params} matrix, over its "
                f"limit of {MAX_EXACT_PARAMS} parameters; use if_cg or if_arnoldi, or "
                "params: last_layer"
            )

    def _fit_curvature(self) -> None:
        self.eigenvalues_, self.eigenvectors_ = torch.linalg.eigh(self.curvature_.dense())
        self._warn_if_indefinite()


@register
class IFConjugateGradient(InfluenceFunction):
    """Influence function with ``A⁻¹ g`` by conjugate gradients on Hessian-vector products
    (Koh & Liang 2017, §3 "Conjugate gradients"; Martens 2010).

    Same quantity, sign and normalisation (÷ n) as ``if_exact``. Each block of vectors
    (a batch of training gradients, or of target gradients) is solved together: every
    step is one batched product over the training set. CG needs A positive definite;
    a direction of non-positive curvature (the true Hessian of a non-convex net with
    too little damping) is a :class:`ConfigError` naming ``damping``. Solves that reach
    ``max_iterations`` above ``tolerance`` are reported with a warning.

    Cost: up to ``max_iterations`` curvature products over the training set per
    solve, for n training vectors (self-influence) or n_target vectors (influence); no
    fit, nothing cached.
    """

    name = "if_cg"
    config_class = IFConjugateGradientConfig
    cost = "per example: up to max_iterations Hessian-vector products over the training set"
    reference = "Koh & Liang 2017, eq. 2, §3 (conjugate gradients)"
    summary = "influence function, inverse-Hessian-vector products by conjugate gradients"
    config: IFConjugateGradientConfig

    def solve(self, rows: torch.Tensor) -> torch.Tensor:
        config = self.config
        try:
            x, residual = conjugate_gradient(
                self.curvature_.matvec, rows, config.tolerance, config.max_iterations
            )
        except NotPositiveDefinite as error:
            raise ConfigError(
                f"damping: {self.name} met a direction of curvature {error.rayleigh:.3g} ≤ 0 "
                f"(hessian: {config.hessian}); raise damping or use hessian: gauss_newton"
            ) from None
        stalled = residual > config.tolerance
        if bool(stalled.any()):
            warnings.warn(
                f"{self.name}: {int(stalled.sum())} of {len(rows)} solves stopped at "
                f"max_iterations {config.max_iterations} with relative residual up to "
                f"{float(residual.max()):.2g}; raise max_iterations or damping",
                RuntimeWarning,
                stacklevel=2,
            )
        return x


@register
class IFLissa(InfluenceFunction):
    """Influence function with ``A⁻¹ g`` by LiSSA (Agarwal, Bullins & Hazan 2017, Alg. 1;
    as used by Koh & Liang 2017, §3).

    Same quantity, sign and normalisation (÷ n) as ``if_exact``, approximated by the
    truncated, stochastic Neumann series ``(1/s) Σ_{j<depth} (I − A_j/s)^j g`` with
    ``A_j`` the curvature of ``sample_size`` random training examples (plus l2 + λ),
    averaged over ``repeats``. Truncation damps the directions whose eigenvalue is below
    about ``s/depth``. A recursion that diverges (scale too small, or negative
    curvature) is a :class:`ConfigError` naming ``scale``.

    Cost: ``depth × repeats`` curvature products on ``sample_size`` examples per block
    of vectors: for self-influence, n vectors; for influence, n_target vectors; plus 20
    products over the training set to pick the scale when it is not given.
    """

    name = "if_lissa"
    config_class = IFLissaConfig
    cost = "per example: depth × repeats Hessian-vector products on sample_size examples"
    reference = "Agarwal, Bullins & Hazan 2017 (LiSSA), Alg. 1; Koh & Liang 2017, §3"
    summary = "influence function, inverse-Hessian-vector products by the LiSSA recursion"
    config: IFLissaConfig

    def _fit_curvature(self) -> None:
        scale = self.config.scale
        if scale is None:
            curvature = self.curvature_
            values, _ = lanczos(curvature.matvec, curvature.n_params, 20, 0, self.device_)
            scale = 1.2 * float(values.abs().max())
        self.scale_ = scale

    def solve(self, rows: torch.Tensor) -> torch.Tensor:
        config, curvature = self.config, self.curvature_
        try:
            return lissa(
                curvature.matvec,
                rows,
                curvature.n_train,
                depth=config.depth,
                scale=self.scale_,
                repeats=config.repeats,
                sample_size=config.sample_size,
                seed=config.seed,
            )
        except LissaDiverged:
            raise ConfigError(
                f"scale: {self.name} diverged at scale {self.scale_:.3g} (hessian: "
                f"{config.hessian}); raise scale or damping, or use hessian: gauss_newton"
            ) from None


@register
class IFArnoldi(_SpectralInfluence):
    """Influence function in the subspace of the top-k eigenvectors of the curvature
    (Schioppa, Zablotskaia, Vilar & Sokolov 2022, "Scaling Up Influence Functions",
    AAAI: Arnoldi iteration, then influence in the projected space; only the abstract
    was available to us, so no equation numbers are given).

    ``I(i, z) = (1/n) Σ_{j≤k} (q_jᵀ∇ℓ(z)) (q_jᵀ∇ℓ(z_i)) / e_j`` with ``(e_j, q_j)`` the
    k eigenpairs of A = H + l2·I + λI of largest |e_j|, found by ``iterations`` Lanczos
    steps (Arnoldi's iteration for a symmetric operator) on Hessian-vector products;
    directions outside the subspace are left out, as in the paper. Same sign and
    normalisation (÷ n) as ``if_exact``, which it approaches as k → P.

    Cost: ``iterations`` curvature products over the training set and
    ``O(iterations²·P)`` for orthogonalisation (cached: k eigenpairs), then per batch
    of b examples one gradient pass and an O(b·P·k) projection.
    """

    name = "if_arnoldi"
    config_class = IFArnoldiConfig
    cost = "iterations Hessian-vector products over the training set, then n gradients"
    reference = "Schioppa et al. 2022, 'Scaling Up Influence Functions' (Arnoldi, projection)"
    summary = "influence function in the top-k eigenspace of the Hessian (Arnoldi/Lanczos)"
    cache_fit = True
    config: IFArnoldiConfig

    def _check_size(self, n_params: int) -> None:
        if self.config.rank > n_params:
            raise ConfigError(
                f"rank: {self.config.rank} exceeds the {n_params} selected parameters"
            )

    def _fit_curvature(self) -> None:
        config, curvature = self.config, self.curvature_
        iterations = config.iterations or 2 * config.rank
        values, vectors = lanczos(
            curvature.matvec, curvature.n_params, iterations, config.seed, self.device_
        )
        top = values.abs().argsort(descending=True)[: config.rank]
        self.eigenvalues_, self.eigenvectors_ = values[top], vectors[:, top].contiguous()
        self._warn_if_indefinite()
