"""Smooth unique sample information of the linearized network, in weights and in function
(Harutyunyan et al. 2021)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Literal

import torch
from pydantic import ConfigDict, Field
from torch import nn
from torch.func import functional_call
from torch.nn import functional as F

from mnemoscope.data import Dataset
from mnemoscope.errors import ConfigError
from mnemoscope.estimator import MethodConfig, PlanContext, Scores, register
from mnemoscope.memorization.base import MemorizationEstimator
from mnemoscope.memorization.ntk import (
    GaussianProjection,
    Params,
    leave_one_out_directions,
    output_jacobian,
    ridge_inverse,
)
from mnemoscope.params import ParamsSetting, select_params
from mnemoscope.task import Task
from mnemoscope.train import EnsembleSpec, derive_seed, full_masks

if TYPE_CHECKING:
    from typing import Self

MAX_OUTPUTS = 20_000
"""Largest ``n·k`` (training examples × classes): the ``[n·k, n·k]`` float64 kernel and its
inverse then take 3.2 GB each."""
MAX_JACOBIAN_BYTES = 4 * 2**30
"""Largest float64 Jacobian (training and evaluation rows × coordinates) held at once."""
CHUNK_ELEMENTS = 2**22
"""Float64 entries of one block of leave-one-out coefficient changes (32 MiB)."""


class SampleInfoConfig(MethodConfig):
    """Strict: a string, a boolean or a non-finite number where a number is meant is refused."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    method: Literal["sample_info_weights"] = "sample_info_weights"
    l2: float = Field(1e-3, gt=0, le=1e6)
    """λ of the ridge ``(λ/2)‖θ − θ0‖²`` added to half the summed squared error
    ``½‖f_lin − Y‖²`` of the linearized network (in (0, 10⁶]); it makes ``Θ + λI``
    invertible."""
    sigma2: float = Field(1.0, gt=0, le=1e12)
    """σ², variance of the isotropic Gaussian smoothing of the weights (SI) or of the
    outputs (F-SI); the scores scale as 1/σ² (in (0, 10¹²])."""
    proj_dim: int | None = Field(None, ge=1, le=1_000_000)
    """Random Gaussian projection of each parameter tensor's Jacobian to this many
    coordinates (tensors with fewer entries are kept exactly); ``null``: exact Jacobians."""
    params: ParamsSetting = "all"
    """Parameters to linearize in: 'all', 'last_layer' or a non-empty list of names."""
    batch_size: int = Field(32, gt=0, le=1_000_000)
    """Examples per vmapped Jacobian batch (memory ``batch_size · k · P`` floats)."""
    seed: int = Field(0, ge=0, le=2**32 - 1)
    """Seed of the projection and of the evaluation points."""


class SampleInfoFunctionConfig(SampleInfoConfig):
    method: Literal["sample_info_function"] = "sample_info_function"  # type: ignore[assignment]
    n_eval: int = Field(200, ge=1, le=1_000_000)
    """m, test-split points on which the outputs are compared (all of them when the split is
    smaller), drawn with ``seed``."""


@dataclass(frozen=True)
class SampleInformation:
    """Per training example, ``[n]`` float64.

    Attributes:
        weights: ``SI_i = ‖w − w_{−i}‖² / (2σ²)``.
        function: ``F-SI_i = Σ_j ‖f_w(x_j) − f_{w−i}(x_j)‖² / (2σ² m)`` over the m
            evaluation points, or None when none were given.
    """

    weights: torch.Tensor
    function: torch.Tensor | None


def check_size(n: int, k: int, where: str) -> None:
    """Refuse, in one line, a kernel with more than :data:`MAX_OUTPUTS` rows."""
    if n * k > MAX_OUTPUTS:
        raise ConfigError(
            f"{where}: the kernel would have n·k = {n}·{k} = {n * k} rows (at most "
            f"{MAX_OUTPUTS}); lower the dataset's n_samples"
        )


def sample_information(
    module: nn.Module,
    params: Params,
    x: torch.Tensor,
    y: torch.Tensor,
    config: SampleInfoConfig,
    names: list[str],
    x_eval: torch.Tensor | None = None,
    where: str = "sample_info",
) -> SampleInformation:
    """SI and F-SI of every training example of ``(x [n, ...], y [n])`` for ``module``
    linearized at ``params``; ``x_eval [m, ...]`` are F-SI's evaluation points.

    Cost: ``n + m`` per-example Jacobians, the ``O((nk)² D)`` kernel, one ``O((nk)³)``
    Cholesky inverse, then ``O((nk)² (1 + mk))`` for the leave-one-out changes.
    """
    device = x.device
    with torch.no_grad():
        f0 = functional_call(module, {k: v.double() for k, v in params.items()}, (x.double(),))
    n, k = f0.shape
    check_size(n, k, where)
    sizes = {name: params[name].numel() for name in names}
    projection = (
        None
        if config.proj_dim is None
        else GaussianProjection(config.proj_dim, config.seed, sizes, device)
    )
    columns = sum(
        size if projection is None else projection.columns(name, size)
        for name, size in sizes.items()
    )
    rows = (n + (0 if x_eval is None else len(x_eval))) * k
    if rows * columns * 8 > MAX_JACOBIAN_BYTES:
        raise ConfigError(
            f"{where}: the Jacobian ({rows} outputs × {columns} coordinates) would take "
            f"{rows * columns * 8 / 2**30:.1f} GiB (at most {MAX_JACOBIAN_BYTES / 2**30:.0f}); "
            "set proj_dim (e.g. 2000) or lower n_samples"
        )
    jacobian = output_jacobian(module, params, x, names, config.batch_size, projection)
    kernel = jacobian @ jacobian.T
    cross = None
    if x_eval is not None:
        eval_jacobian = output_jacobian(
            module, params, x_eval, names, config.batch_size, projection
        )
        cross = eval_jacobian @ jacobian.T  # [m·k, n·k]
        del eval_jacobian
    del jacobian
    residual = (F.one_hot(y, k).double() - f0).flatten()
    inverse = ridge_inverse(kernel, config.l2)
    del kernel
    alpha = inverse @ residual
    u, _ = leave_one_out_directions(inverse, alpha, k)
    weights = torch.empty(n, dtype=torch.float64, device=device)
    function = None if cross is None else torch.empty_like(weights)
    chunk = max(1, CHUNK_ELEMENTS // (n * k))
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        columns_i = inverse[:, start * k : stop * k].reshape(n * k, stop - start, k)
        change = torch.einsum("Nck,ck->cN", columns_i, u[start:stop])  # α − α_{−i}
        # ‖Jᵀ δα‖² = δαᵀ(A − λI)δα = u·α_I − λ‖δα‖², since A δα = u at I and 0 elsewhere
        weights[start:stop] = (u[start:stop] * alpha.view(n, k)[start:stop]).sum(1) - (
            config.l2 * (change**2).sum(1)
        )
        if cross is not None:
            function[start:stop] = ((change @ cross.T) ** 2).sum(1) / len(x_eval)
    scale = 1.0 / (2.0 * config.sigma2)
    return SampleInformation(
        (weights * scale).cpu(), None if function is None else (function * scale).cpu()
    )


class SampleInfo(MemorizationEstimator):
    """Smooth unique information of a training example, from the linearized network.

    The network linearized at its initial weights ``w0``, ``f_lin(x; w) = f(x; w0) +
    J(x)(w − w0)``, trained to convergence on half the summed squared error to the one-hot
    labels plus the ridge, ``½‖f_lin(X; w) − Y‖² + (λ/2)‖w − w0‖²``, has the closed form ``w − w0 = Jᵀ α``,
    ``α = (Θ + λI)⁻¹ (Y − f0)``, with ``Θ = J Jᵀ`` the ``[n·k, n·k]`` neural tangent kernel
    (Harutyunyan et al. 2021, §4, eqs. 10–11 at t → ∞). ``w_{−i}``, the solution without
    example i, comes from a block (Schur complement) update of ``(Θ + λI)⁻¹``, no re-solve.

    - ``sample_info_weights``: ``SI_i = ‖w − w_{−i}‖² / (2σ²)``, the KL divergence between
      ``N(w, σ²I)`` and ``N(w_{−i}, σ²I)`` (Prop. 3.2 with isotropic smoothing), computed as
      ``(α − α_{−i})ᵀ Θ (α − α_{−i}) / (2σ²)`` without forming w.
    - ``sample_info_function``: ``F-SI_i = Σ_j ‖f_w(x_j) − f_{w−i}(x_j)‖² / (2σ² m)`` over m
      test-split points, the mean KL between ``N(f_w(x_j), σ²I)`` and ``N(f_{w−i}(x_j), σ²I)``
      (Prop. 4.2, eq. 16), via the cross-kernel ``Θ(x_j, X)``.

    We implement the isotropic smoothing ``Σ = σ²I``, not the paper's SGD steady-state
    covariance (Appendix), and the converged (t → ∞) solution. Both scores are ≥ 0; higher
    means the example carries more information the others do not (more memorized). Not
    divided by n. Scaled by 1/σ².

    Cost: ``n`` (and ``m``) per-example Jacobians, an ``O((nk)² D)`` kernel (D the
    parameters, or ``proj_dim`` per projected tensor), one ``O((nk)³)`` inverse, then
    ``O((nk)²)`` for the weights or ``O((nk)² mk)`` for the function; memory
    ``2 (nk)²`` float64, so ``n·k ≤ 20 000``.

    Reference: H. Harutyunyan, A. Achille, G. Paolini, O. Majumder, A. Ravichandran,
    R. Bhotika, S. Soatto, "Estimating informativeness of samples with Smooth Unique
    Information", ICLR 2021, Prop. 3.2, 4.2, eqs. 10–11, 16.
    """

    cache_fit = True
    config: SampleInfoConfig
    on_function: ClassVar[bool]

    def fit_bytes(self, module, n_train: int, n_classes: int) -> int:
        """The kernel and its inverse, float64 (a larger one is refused by the fit)."""
        outputs = min(n_train * n_classes, MAX_OUTPUTS)
        return 2 * 8 * outputs**2

    def ensembles(self, context: PlanContext) -> dict[str, EnsembleSpec]:
        check_size(context.n_train, 2, self.name)  # every task has k ≥ 2 classes
        return {"model": EnsembleSpec(full_masks(1, context.n_train), keep_initial=True)}

    def check_model(self, module: nn.Module) -> None:
        select_params(module, self.config.params)

    def fit(self, ensembles, dataset: Dataset, task: Task, device="cpu") -> Self:
        check_size(dataset.n_train, dataset.n_classes, self.name)
        device = torch.device(device)
        model = ensembles["model"]
        module = model.module().to(device)
        names = select_params(module, self.config.params)
        initial = {name: value[0].to(device) for name, value in model.initial.items()}
        x_eval = None
        if self.on_function:
            generator = torch.Generator().manual_seed(derive_seed(self.config.seed, 0xE7A1))
            order = torch.randperm(dataset.n_test, generator=generator)
            chosen = order[: self.config.n_eval].sort().values
            x_eval = dataset.x_test[chosen].to(device)
        information = sample_information(
            module,
            initial,
            dataset.x_train.to(device),
            dataset.y_train.to(device),
            self.config,
            names,
            x_eval,
            self.name,
        )
        self.dataset_ = dataset
        self.score_ = information.function if self.on_function else information.weights
        return self

    def fitted_state(self) -> dict[str, torch.Tensor]:
        return {"score": self.score_.contiguous()}

    def load_fitted(self, state, ensembles, dataset: Dataset, task: Task, device="cpu") -> Self:
        self.dataset_ = dataset
        self.score_ = state["score"].double()
        return self

    def score(self) -> Scores:
        data = self.dataset_
        return Scores(self.name, self.family, data.train_ids.numpy(), self.score_.numpy())


@register
class SampleInfoWeights(SampleInfo):
    name = "sample_info_weights"
    config_class = SampleInfoConfig
    on_function = False
    cost = "one NTK (n·k)² kernel and its inverse at the initial weights; no retraining"
    reference = (
        "Harutyunyan et al. 2021, 'Estimating informativeness of samples with Smooth "
        "Unique Information', Prop. 3.2, eqs. 10-11"
    )
    summary = "unique information in the weights of the linearized network (NTK, LOO update)"


@register
class SampleInfoFunction(SampleInfo):
    name = "sample_info_function"
    config_class = SampleInfoFunctionConfig
    config: SampleInfoFunctionConfig
    on_function = True
    cost = "one NTK (n·k)² kernel, its inverse and an (m·k)×(n·k) cross-kernel; no retraining"
    reference = (
        "Harutyunyan et al. 2021, 'Estimating informativeness of samples with Smooth "
        "Unique Information', Prop. 4.2, eq. 16"
    )
    summary = "unique information in the outputs of the linearized network on test points"
