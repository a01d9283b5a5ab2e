"""The linearized network: output Jacobians, their random projection, and the
leave-one-out update of a kernel ridge solution.

The network linearized at ``θ0`` is ``f_lin(x; θ) = f(x; θ0) + J(x)(θ − θ0)``, with ``J(x)``
the ``[k, P]`` Jacobian of the k logits. Stacking the training examples gives ``J``
``[n·k, P]`` (row ``i·k + c`` is output c of example i) and the neural tangent kernel
``Θ = J Jᵀ``. Trained to convergence on ``½‖f_lin − Y‖² + (λ/2)‖θ − θ0‖²`` (half the summed
squared error and a ridge), ``θ − θ0 = Jᵀ α`` with ``α = (Θ + λI)⁻¹ (Y − f0)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.func import functional_call, jacrev, vmap

from mnemoscope.errors import ConfigError
from mnemoscope.meter import count
from mnemoscope.projection import RandomProjection

Params = dict[str, torch.Tensor]


class GaussianProjection:
    """A seeded random projection of each parameter tensor's Jacobian columns.

    A tensor with ``p > dim`` entries has its ``[rows, p]`` Jacobian block replaced by
    ``block @ G / sqrt(dim)``, ``G`` ``[p, dim]`` with i.i.d. standard normal entries drawn
    (:class:`~mnemoscope.projection.RandomProjection`, float64) from seeds derived from
    ``(seed, position of the tensor)``; smaller tensors are kept exactly. Since
    ``E[G Gᵀ] = dim · I``, the projected kernel is an unbiased estimate of ``Θ`` whose
    relative error shrinks like ``1/sqrt(dim)``.

    Memory: ``Σ p · dim`` float64 for the matrices, held for the whole fit.
    """

    def __init__(self, dim: int, seed: int, sizes: dict[str, int], device: torch.device) -> None:
        self.dim = dim
        self.projections: dict[str, tuple[RandomProjection, tuple[int, ...]]] = {
            name: (
                RandomProjection(size, dim, "gaussian", torch.float64, device, cache_bytes=None),
                (seed, 0x5A3F, position),
            )
            for position, (name, size) in enumerate(sizes.items())
            if size > dim
        }

    def columns(self, name: str, size: int) -> int:
        """Columns the projected block of tensor ``name`` (``size`` entries) has."""
        return self.dim if name in self.projections else size

    def __call__(self, name: str, block: torch.Tensor) -> torch.Tensor:
        if name not in self.projections:
            return block
        projection, key = self.projections[name]
        return projection(block, key)


def output_jacobian(
    module: nn.Module,
    params: Params,
    x: torch.Tensor,
    names: Sequence[str],
    batch_size: int,
    projection: GaussianProjection | None = None,
) -> torch.Tensor:
    """``[b·k, D]`` float64 Jacobian of the logits of ``x [b, ...]`` with respect to the
    parameters ``names`` (concatenated in that order, each projected when ``projection``
    is given); row ``i·k + c`` is logit c of example i.

    Computed in float64 with ``vmap(jacrev)``, ``batch_size`` examples at a time: memory
    ``batch_size · k · P`` floats for a batch before projection.
    """
    trainable = {name: params[name].double() for name in names}
    frozen = {name: value.double() for name, value in params.items() if name not in trainable}

    def logits(theta: Params, xi: torch.Tensor) -> torch.Tensor:
        return functional_call(module, {**frozen, **theta}, (xi[None],))[0]

    per_example = vmap(jacrev(logits), in_dims=(None, 0))
    rows = []
    for xb in x.double().split(batch_size):
        jacobian = per_example(trainable, xb)  # name -> [b, k, *shape]
        count(len(xb))
        blocks = [jacobian[name].flatten(2).flatten(0, 1) for name in names]
        if projection is not None:
            blocks = [projection(name, block) for name, block in zip(names, blocks)]
        rows.append(torch.cat(blocks, dim=1))
    return torch.cat(rows)


def ridge_inverse(kernel: torch.Tensor, l2: float) -> torch.Tensor:
    """``(Θ + λI)⁻¹`` of a PSD ``[N, N]`` float64 kernel by Cholesky; ``kernel`` is
    overwritten (its diagonal raised by ``λ``) to spare an ``N × N`` copy."""
    kernel.diagonal().add_(l2)
    factor, info = torch.linalg.cholesky_ex(kernel)
    if info.item() != 0 or not torch.isfinite(factor).all():
        raise ConfigError(
            f"l2 {l2:g}: the kernel + l2·I is not positive definite in float64 (Cholesky "
            f"failed at order {info.item()}); raise l2 (default 1e-3)"
        )
    return torch.cholesky_inverse(factor)


def leave_one_out_directions(
    inverse: torch.Tensor, alpha: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The leave-one-out change of the dual coefficients, in factored form.

    With ``A = Θ + λI``, ``α = A⁻¹ r`` and ``I`` the k rows of example i, the solution
    without example i (the ``I`` rows and columns of ``A`` and entries of ``r`` removed),
    padded with zeros at ``I``, is ``α_{−i} = α − A⁻¹[:, I] u_i`` with
    ``u_i = (A⁻¹[I, I])⁻¹ α_I`` (the Schur complement of the ``I`` block: block-matrix
    inversion, no re-solve). So ``α − α_{−i} = A⁻¹[:, I] u_i``.

    Returns ``u`` ``[n, k]`` and the diagonal blocks ``A⁻¹[I, I]`` ``[n, k, k]``.
    Cost ``O(n k³)``.
    """
    n = alpha.shape[0] // k
    blocks = inverse.view(n, k, n, k).diagonal(dim1=0, dim2=2).permute(2, 0, 1)
    u = torch.linalg.solve(blocks, alpha.view(n, k, 1)).squeeze(-1)
    return u, blocks
