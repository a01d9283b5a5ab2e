"""The curvature of the training objective, ``A = H + (l2 + λ)·I``, and ways to invert it.

The objective is the mean training loss plus ``(l2/2)·‖θ‖²`` (:meth:`Task.objective`),
so its Hessian over the selected parameters is ``H + l2·I``, ``H`` the Hessian of the
mean loss; influence functions add an explicit damping ``λ ≥ 0``. ``H`` is either the
true Hessian (indefinite for a non-convex net) or the generalised Gauss–Newton matrix
``(1/n) Σ_i J_iᵀ ∇²_f ℓ_i J_i`` (``J_i`` the Jacobian of the logits, ``∇²_f ℓ_i`` the
Hessian of the loss in the logits: positive semi-definite). For cross-entropy on a
model whose logits are linear in the selected parameters (logistic regression, or
the last layer alone) the two are equal.

Everything is built on Hessian-vector products with ``torch.func``: ``jvp`` of
``grad`` (Hessian) or ``jvp`` then ``vjp`` of the logits (Gauss–Newton), vectorised
over several vectors at once (the dense Gauss–Newton matrix: on the logits' Jacobians).
Solvers work in float64 on flattened ``[m, P]`` rows.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import torch
from torch import nn
from torch.func import functional_call, grad, hessian, jacrev, jvp, vjp, vmap

from mnemoscope.meter import count
from mnemoscope.task import Task

CurvatureKind = Literal["hessian", "gauss_newton"]
Params = dict[str, torch.Tensor]
MatVec = Callable[[torch.Tensor], torch.Tensor]

PAIRS_PER_CALL = 2**14
"""Example-vector pairs in one vectorised curvature product (bounds activation memory)."""
DENSE_COLUMNS = 256
"""Columns of the identity multiplied at once when the dense Hessian is built."""
JACOBIAN_ENTRIES = 2**23
"""Entries of per-example logit Jacobians held at once for the dense Gauss–Newton matrix."""


class Curvature:
    """``A = H + (l2 + λ)·I`` of one model, restricted to the parameters ``names``.

    Args:
        module: the architecture, called with ``functional_call``.
        params: one model's parameters (no model dimension); those not in ``names``
            are held fixed.
        names: the parameters the curvature is taken over, flattened in this order
            (the order of :func:`~mnemoscope.influence.per_example_grads`).
        task: gives the loss and ``l2``.
        x, y: the training set ``[n, ...]``, ``[n]``; cast to the parameters' dtype.
        kind: ``'hessian'`` or ``'gauss_newton'``.
        damping: λ ≥ 0.
        batch_size: training examples per vectorised product.
    """

    def __init__(
        self,
        module: nn.Module,
        params: Params,
        names: Sequence[str],
        task: Task,
        x: torch.Tensor,
        y: torch.Tensor,
        *,
        kind: CurvatureKind,
        damping: float,
        batch_size: int,
    ) -> None:
        self.module, self.task, self.kind = module, task, kind
        self.names = list(names)
        self.trainable = {k: params[k].detach() for k in self.names}
        self.frozen = {k: v.detach() for k, v in params.items() if k not in self.trainable}
        first = self.trainable[self.names[0]]
        self.dtype, self.device = first.dtype, first.device
        self.x, self.y = x.to(self.device, self.dtype), y.to(self.device)
        self.shift = float(task.l2) + float(damping)
        self.batch_size = batch_size
        self.sizes = [self.trainable[k].numel() for k in self.names]
        self.n_params = sum(self.sizes)

    @property
    def n_train(self) -> int:
        return int(self.y.shape[0])

    def matvec(self, vectors: torch.Tensor, index: torch.Tensor | None = None) -> torch.Tensor:
        """``[m, P]`` float64 rows ``v`` → rows ``A v``; with ``index``, ``H`` is the mean
        over those training examples only (a stochastic estimate, for LiSSA)."""
        x, y = (self.x, self.y) if index is None else (self.x[index], self.y[index])
        out = torch.zeros_like(vectors, dtype=torch.float64)
        for xb, yb in zip(x.split(self.batch_size), y.split(self.batch_size)):
            width = max(1, PAIRS_PER_CALL // len(yb))
            for start in range(0, len(vectors), width):
                chunk = vectors[start : start + width].to(self.dtype)
                out[start : start + width] += self._sum_products(chunk, xb, yb).double()
        return out / len(y) + self.shift * vectors.double()

    def dense(self) -> torch.Tensor:
        """The ``[P, P]`` float64 matrix A, symmetrised: the Hessian from P curvature
        products; the Gauss–Newton matrix ``(1/n) Σ_i J_iᵀ ∇²_f ℓ_i J_i`` from the logits'
        per-example Jacobians ``J_i [C, P]`` (C backward passes per example, not P)."""
        eye = torch.eye(self.n_params, dtype=torch.float64, device=self.device)
        if self.kind == "gauss_newton":
            matrix = self._gauss_newton_sum() / self.n_train + self.shift * eye
        else:
            matrix = torch.cat([self.matvec(columns) for columns in eye.split(DENSE_COLUMNS)])
        return (matrix + matrix.T) / 2

    def _gauss_newton_sum(self) -> torch.Tensor:
        """``Σ_i J_iᵀ ∇²_f ℓ_i J_i`` ``[P, P]`` float64, ``JACOBIAN_ENTRIES`` of the stacked
        Jacobians at a time (each block's product in the parameters' dtype)."""
        frozen, module, task = self.frozen, self.module, self.task
        jacobians = vmap(
            jacrev(lambda theta, x: functional_call(module, {**frozen, **theta}, (x[None],))[0]),
            (None, 0),
        )
        output_hessians = vmap(hessian(lambda z, y: task.loss(z[None], y[None])[0]))
        total = torch.zeros(self.n_params, self.n_params, dtype=torch.float64, device=self.device)
        classes = functional_call(module, {**frozen, **self.trainable}, (self.x[:1],)).shape[1]
        rows = max(1, min(self.batch_size, JACOBIAN_ENTRIES // (classes * self.n_params)))
        for xb, yb in zip(self.x.split(rows), self.y.split(rows)):
            z = functional_call(module, {**frozen, **self.trainable}, (xb,)).detach()
            parts = jacobians(self.trainable, xb)
            j = torch.cat([parts[k].flatten(2) for k in self.names], 2)  # [b, C, P]
            hj = torch.bmm(output_hessians(z, yb), j)
            total += (j.flatten(0, 1).T @ hj.flatten(0, 1)).double()
            count(len(yb))
        return total

    def _unflatten(self, rows: torch.Tensor) -> Params:
        parts = rows.split(self.sizes, dim=1)
        return {
            k: part.reshape(len(rows), *self.trainable[k].shape)
            for k, part in zip(self.names, parts)
        }

    def _sum_products(self, rows: torch.Tensor, xb: torch.Tensor, yb: torch.Tensor):
        """``Σ_{i in batch} H_i v`` for each row v, ``H_i`` example i's curvature."""
        frozen, module, task = self.frozen, self.module, self.task

        def logits(theta: Params) -> torch.Tensor:
            return functional_call(module, {**frozen, **theta}, (xb,))

        if self.kind == "hessian":

            def batch_loss(theta: Params) -> torch.Tensor:
                return task.loss(logits(theta), yb).sum()

            def product(v: Params) -> Params:
                return jvp(grad(batch_loss), (self.trainable,), (v,))[1]

        else:
            out, pullback = vjp(logits, self.trainable)

            def output_loss(z: torch.Tensor) -> torch.Tensor:
                return task.loss(z, yb).sum()

            def product(v: Params) -> Params:
                jv = jvp(logits, (self.trainable,), (v,))[1]
                return pullback(jvp(grad(output_loss), (out,), (jv,))[1])[0]

        result = vmap(product)(self._unflatten(rows))
        return torch.cat([result[k].flatten(1) for k in self.names], dim=1)


def lanczos(
    matvec: MatVec, n_params: int, iterations: int, seed: int, device: torch.device | str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Ritz pairs of a symmetric operator after ``iterations`` Lanczos steps.

    Lanczos is Arnoldi's iteration for a symmetric operator: the Hessenberg matrix is
    tridiagonal. Every new vector is re-orthogonalised against all earlier ones (twice),
    so the Krylov basis stays orthonormal in floating point. Stops early when the Krylov
    space is exhausted. Returns eigenvalues ``[m]`` and unit eigenvectors ``[P, m]``,
    ``m ≤ iterations``; the extreme ones converge first. Cost: ``iterations`` operator
    products and ``O(iterations²·P)`` for the re-orthogonalisation.
    """
    generator = torch.Generator().manual_seed(seed)
    q = torch.randn(n_params, generator=generator, dtype=torch.float64).to(device)
    basis = [q / q.norm()]
    alphas: list[torch.Tensor] = []
    betas: list[torch.Tensor] = []
    for step in range(min(iterations, n_params)):
        w = matvec(basis[-1][None])[0]
        alphas.append(basis[-1] @ w)
        stacked = torch.stack(basis)
        for _ in range(2):
            w = w - stacked.T @ (stacked @ w)
        beta = w.norm()
        scale = max(float(a.abs()) for a in alphas)
        if step == min(iterations, n_params) - 1 or beta <= 1e-10 * max(scale, 1e-300):
            break
        betas.append(beta)
        basis.append(w / beta)
    tridiagonal = torch.diag(torch.stack(alphas))
    if betas:
        off = torch.stack(betas)
        tridiagonal = tridiagonal + torch.diag(off, 1) + torch.diag(off, -1)
    values, ritz = torch.linalg.eigh(tridiagonal)
    return values, torch.stack(basis[: len(alphas)]).T @ ritz


def numerical_zero(eigenvalues: torch.Tensor, n_params: int) -> float:
    """``P · ε · max|e|`` (ε of float32, the precision of the curvature products): an
    eigenvalue of smaller magnitude is rounding noise."""
    return n_params * torch.finfo(torch.float32).eps * float(eigenvalues.abs().max())


def spectral_solve(
    rows: torch.Tensor, eigenvalues: torch.Tensor, eigenvectors: torch.Tensor
) -> torch.Tensor:
    """``[m, P]`` rows g → rows ``Q diag(1/e) Qᵀ g`` over the given eigenpairs ``(e, Q)``.

    Eigenvalues that are numerically zero (:func:`numerical_zero`) are left out: a
    pseudo-inverse on those directions rather than a division by rounding noise.
    """
    floor = numerical_zero(eigenvalues, eigenvectors.shape[0])
    inverse = torch.where(eigenvalues.abs() > floor, 1 / eigenvalues, torch.zeros_like(eigenvalues))
    return ((rows @ eigenvectors) * inverse) @ eigenvectors.T


def conjugate_gradient(
    matvec: MatVec, rows: torch.Tensor, tolerance: float, max_iterations: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Solve ``A x = b`` for every row b of ``[m, P]`` at once (one batched product per step).

    Each row runs its own conjugate-gradient recursion and stops when its residual is at
    most ``tolerance · ‖b‖``. Returns the solutions ``[m, P]`` and the final relative
    residuals ``[m]``. Raises :class:`NotPositiveDefinite` on a direction of
    non-positive curvature (CG needs A positive definite).
    """
    b = rows.double()
    x = torch.zeros_like(b)
    residual = b.clone()
    direction = residual.clone()
    norms = b.norm(dim=1)
    squared = (residual**2).sum(1)
    active = squared.sqrt() > tolerance * norms
    for _ in range(max_iterations):
        if not bool(active.any()):
            break
        product = matvec(direction[active])
        curvature = (direction[active] * product).sum(1)
        if bool((curvature <= 0).any()):
            raise NotPositiveDefinite(
                float(curvature.min() / (direction[active] ** 2).sum(1).max())
            )
        alpha = squared[active] / curvature
        x[active] += alpha[:, None] * direction[active]
        residual[active] -= alpha[:, None] * product
        updated = (residual[active] ** 2).sum(1)
        beta = updated / squared[active]
        direction[active] = residual[active] + beta[:, None] * direction[active]
        squared[active] = updated
        active = squared.sqrt() > tolerance * norms
    relative = squared.sqrt() / norms.clamp_min(torch.finfo(torch.float64).tiny)
    return x, relative


class NotPositiveDefinite(ArithmeticError):
    """The operator has a direction ``v`` with ``vᵀAv ≤ 0``; carries ``vᵀAv/‖v‖²``."""

    def __init__(self, rayleigh: float) -> None:
        super().__init__(f"curvature vᵀAv/‖v‖² = {rayleigh:.3g} ≤ 0")
        self.rayleigh = rayleigh


def lissa(
    matvec: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor],
    rows: torch.Tensor,
    n_train: int,
    *,
    depth: int,
    scale: float,
    repeats: int,
    sample_size: int,
    seed: int,
) -> torch.Tensor:
    """LiSSA (Agarwal et al. 2017, Alg. 1): ``A⁻¹ b`` for every row b of ``[m, P]``.

    The truncated Neumann series ``A⁻¹ = (1/s) Σ_j (I − A/s)^j`` as the recursion
    ``v_0 = b``, ``v_j = b + v_{j−1} − A_j v_{j−1} / s`` with ``A_j`` the curvature of a
    fresh random sample of ``sample_size`` training examples (the full mean when
    ``sample_size ≥ n``), averaged over ``repeats`` independent recursions, divided by
    s. Converges when the spectrum of every ``A_j / s`` lies in (0, 2); the rows are
    carried together, so each step is one batched product. Raises
    :class:`LissaDiverged` as soon as a row grows beyond twice what a convergent series
    allows (``‖v_j‖ ≤ (j + 1)·‖b‖``).
    """
    generator = torch.Generator().manual_seed(seed)
    b = rows.double()
    total = torch.zeros_like(b)
    bound = 2 * (depth + 1) * b.norm(dim=1)
    for _ in range(repeats):
        v = b.clone()
        for _ in range(depth):
            index = None
            if sample_size < n_train:
                index = torch.randperm(n_train, generator=generator)[:sample_size]
                index = index.to(rows.device)
            v = b + v - matvec(v, index) / scale
            if not bool((v.norm(dim=1) <= bound).all()):  # also catches NaN
                raise LissaDiverged(scale)
        total += v
    return total / (scale * repeats)


class LissaDiverged(ArithmeticError):
    """The LiSSA recursion grew without bound at this scale."""

    def __init__(self, scale: float) -> None:
        super().__init__(f"the LiSSA recursion diverged at scale {scale:.3g}")
        self.scale = scale
