"""Influence functions with an EK-FAC approximation of the Gauss–Newton matrix (``if_ekfac``)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch
from pydantic import Field, field_validator
from torch import nn
from torch.func import functional_call

from mnemoscope.data import Dataset
from mnemoscope.estimator import register
from mnemoscope.influence.adapters import layer_adapter
from mnemoscope.influence.gradient_dot import GradDotConfig
from mnemoscope.influence.influence_functions import InfluenceFunction
from mnemoscope.influence.layerwise import ForwardRecorder, LayerwiseGradients
from mnemoscope.meter import count
from mnemoscope.task import Task

if TYPE_CHECKING:
    from typing import Self

COORDINATE_BYTES = 8 * 2**20
"""Bytes of float64 eigen-coordinates formed at once: the allocator reuses blocks this small
(fresh 107 MB blocks of 512 digits-mlp examples were several times slower per element)."""


class EKFACConfig(GradDotConfig):
    """``{method: if_ekfac, damping: 0.001, fisher: true, params: all}``; strict."""

    method: Literal["if_ekfac"] = "if_ekfac"  # type: ignore[assignment]
    damping: float = Field(1e-3, ge=0, le=1e6)
    """Absolute damping λ added to every eigenvalue (the task's L2 coefficient is added on
    top); not relative to the spectrum. At most 10⁶."""
    fisher: Literal["true", "empirical"] = "true"
    """'true': labels drawn from the model's predictive distribution (the Fisher equals the
    Gauss–Newton matrix in expectation); 'empirical': the training labels."""
    fisher_samples: int = Field(1, ge=1, le=1000)
    """Labels drawn per training example for the true Fisher (ignored for 'empirical'): the
    fit's time grows with it, the noise of the draws shrinks (table in docs/methods.md)."""
    seed: int = Field(0, ge=0, le=2**32 - 1)
    """Seed of the label draws."""

    @field_validator("fisher", mode="before")
    @classmethod
    def _yaml_true(cls, value: Any) -> Any:
        # YAML reads an unquoted `fisher: true` as the boolean
        return "true" if value is True else value


@dataclass(frozen=True)
class KroneckerLayer:
    """A Linear or Conv1d/Conv2d layer whose selected weight and/or bias share one
    Kronecker-factored block.

    Attributes:
        name: the module's path in the model.
        weight, bias: the selected parameter names (None: not selected or absent).
        d_out: output features (channels).
        d_in: input patch size (if the weight is selected) plus 1 (if the bias is).
    """

    name: str
    module: nn.Module
    weight: str | None
    bias: str | None
    d_out: int
    d_in: int

    def inputs(self, a: torch.Tensor) -> torch.Tensor:
        """Layer input → ``[b, T, d_in]``: input patches per position, then a 1 for the bias."""
        patches = layer_adapter(self.module, subclasses=True).patches(self.module, a)
        parts = [patches] if self.weight else []
        if self.bias:
            parts.append(patches.new_ones(*patches.shape[:2], 1))
        return torch.cat(parts, 2)

    def output_grads(self, delta: torch.Tensor) -> torch.Tensor:
        """Gradient w.r.t. the layer output → ``[b, T, d_out]``."""
        return layer_adapter(self.module, subclasses=True).positions(delta)


def _kronecker_layers(
    module: nn.Module, params: dict[str, torch.Tensor], names: list[str], probe: torch.Tensor
) -> tuple[list[KroneckerLayer], list[str]]:
    """Split the selected parameters into Kronecker layers and the rest (generic path).

    A Linear, or a Conv1d/Conv2d with ``groups=1``, numeric padding and zero padding mode,
    gets a Kronecker block if its forward runs on ``probe`` and its selected parameters are
    read by that forward alone (a weight tied to another name, or also read elsewhere, e.g.
    through ``F.linear``, has gradients its layer's inputs and outputs do not give)."""
    candidates: dict[nn.Module, tuple[str, str | None, str | None]] = {}
    for path, m in module.named_modules():
        adapter, prefix = layer_adapter(m, subclasses=True), f"{path}." if path else ""
        if adapter is not None and adapter.kronecker(m):
            candidates[m] = (path, f"{prefix}weight", f"{prefix}bias")
    recorder = ForwardRecorder({m: [] for m in candidates}, {id(params[n]): n for n in names})
    try:
        with torch.no_grad(), recorder:
            functional_call(module, params, (probe,))
    finally:
        recorder.remove()
    layers, selected = [], set(names)
    for m, (path, weight, bias) in candidates.items():
        weight, bias = (n if n in selected and n in params else None for n in (weight, bias))
        own = [n for n in (weight, bias) if n]
        if own and recorder.calls[m] and all(set(recorder.uses[n]) == {m} for n in own):
            patch = m.weight[0].numel() if weight else 0
            d_out = m.weight.shape[0]
            layers.append(KroneckerLayer(path, m, weight, bias, d_out, patch + (bias is not None)))
    covered = {p for layer in layers for p in (layer.weight, layer.bias) if p}
    return layers, [name for name in names if name not in covered]


@register
class EKFAC(InfluenceFunction):
    """Influence functions with an eigenvalue-corrected Kronecker-factored Gauss–Newton.

    ``I(i, z) = (1/n) ∇ℓ(z)ᵀ (G + (λ + l2) I)⁻¹ ∇ℓ(z_i)``: the first-order change of the
    target's loss when training example i is removed (ε = −1/n in Koh & Liang 2017, eq. 2).
    G is the Fisher of the mean training loss, ``(1/n) Σ_i E_ŷ[g_i(ŷ) g_i(ŷ)ᵀ]`` with
    ``g_i(ŷ) = ∇ℓ((x_i, ŷ))`` and ŷ drawn from the model's predictive distribution (equal to
    the Gauss–Newton matrix for softmax cross-entropy), or with ŷ = y_i (``fisher:
    empirical``). λ is the config's absolute ``damping``, l2 the task's L2 coefficient (the
    objective is mean loss + (l2/2)‖θ‖²). Self-influence is ``I(i, i)`` (≥ 0).

    **Sign and normalisation.** Positive: removing z_i would raise the target's loss
    (helpful), as for ``tracin``. Divided by n.

    **Approximation.** G is block-diagonal across layers. For each Linear/Conv1d/Conv2d
    layer with input patches ā (a 1 appended for the bias) and output gradients δ at
    positions t (one position for Linear on vectors; output pixels for convolutions,
    Grosse & Martens 2016), K-FAC factors ``A = (1/n) Σ_i Σ_t ā ā ᵀ`` and
    ``S = (1/(n m)) Σ_{i,ŷ} (1/T) Σ_t δ δᵀ`` (m label draws per example) are
    eigendecomposed, ``A = Q_A diag Q_Aᵀ``, ``S = Q_S diag Q_Sᵀ``; the EK-FAC eigenvalue
    correction replaces the product of their eigenvalues by
    ``Λ_kl = E[(Q_Sᵀ G_i Q_A)_kl²]``, the mean over examples and label draws of the squared
    per-example gradient ``G_i = Σ_t δ_t ā_tᵀ`` in the Kronecker eigenbasis. Then
    ``(G + λ')⁻¹ v = Q_S ((Q_Sᵀ V Q_A) / (Λ + λ')) Q_Aᵀ``. Every other parameter (GroupNorm,
    LayerNorm, embeddings, grouped convolutions, a layer's parameters read outside its forward)
    goes through a diagonal Fisher, ``Λ_j = E[g_ij²]``: EK-FAC with the identity basis.
    Where ``Λ + λ'`` is 0 (no damping, no curvature) the direction is dropped.

    **As an influence function** on the gradients' coordinates in the eigenbasis, where the
    solve divides by ``Λ + λ'``; a layer's ``Q_Sᵀ G_i Q_A = Σ_t (Q_Sᵀ δ_t)(Q_Aᵀ ā_t)ᵀ`` come
    from its rotated inputs and output gradients (float32, sums over examples in float64).

    **Cost.** Per batch, a forward pass and per label draw a backward pass to the layer
    outputs, twice (factors, correction); ``eigh`` of each A and S; then one such pass for
    self-influence and one per block of targets for train×target influence, each
    ``T·(d_in² + d_out² + d_in·d_out)`` per example and layer for the coordinates.

    **References.** T. George, C. Laurent, X. Bouthillier, N. Ballas, P. Vincent, "Fast
    Approximate Natural Gradient Descent in a Kronecker-factored Eigenbasis", NeurIPS 2018
    (§3, the eigenvalue correction); R. Grosse, J. Bae, C. Anil et al., "Studying Large
    Language Model Generalization with Influence Functions", 2023, §2.2.3 (EK-FAC for
    influence; eqs. 20–21 by our reading, not re-checked against the paper's text);
    R. Grosse and J. Martens, "A Kronecker-factored approximate Fisher matrix for
    convolution layers", ICML 2016 (KFC).
    """

    name = "if_ekfac"
    config_class = EKFACConfig
    cost = "per label draw: two batched passes; eigh per layer; one pass per score"
    reference = (
        "George et al. 2018 (EK-FAC, §3); Grosse et al. 2023, 'Studying Large Language Model "
        "Generalization with Influence Functions', §2.2.3, eqs. 20–21"
    )
    summary = "influence functions with an eigenvalue-corrected Kronecker-factored Gauss–Newton"
    cache_fit = True
    config: EKFACConfig  # type: ignore[assignment]
    bytes_per_target_coordinate: ClassVar[int] = 20
    """A target's coordinate in float32, in float64 and solved."""

    def _prepare(self, ensembles, dataset: Dataset, task: Task, device) -> None:
        self._hold_final_model(ensembles, dataset, task, device)
        probe = dataset.x_train[:1].to(self.device_)
        self.layers_, self.generic_names_ = _kronecker_layers(
            self.module_, self.params_, self.names_, probe
        )
        self.generic_ = None
        if self.generic_names_:
            self.generic_ = LayerwiseGradients(self.module_, self.generic_names_, task)
        self.shapes_ = {layer.name: (layer.d_out, layer.d_in) for layer in self.layers_}
        self.shapes_.update({k: self.params_[k].shape for k in self.generic_names_})
        self.n_coordinates_ = sum(math.prod(shape) for shape in self.shapes_.values())

    _setup = _prepare  # the fit's prologue under the name its tests call

    def _fit_curvature(self) -> None:
        self.fisher_labels_ = self._fisher_labels()
        self.factors_ = self._factors()
        # row-major, as a loaded fit has them: eigh's column-major eigenvectors would take
        # other BLAS kernels than the saved copies and round differently on some CPUs
        self.bases_ = {
            name: (
                torch.linalg.eigh(a).eigenvectors.contiguous(),
                torch.linalg.eigh(s).eigenvectors.contiguous(),
            )
            for name, (a, s) in self.factors_.items()
        }
        self.eigenvalues_ = self._corrected_eigenvalues()

    def fitted_state(self) -> dict[str, torch.Tensor]:
        state = {"eigenvalues": self.eigenvalues_, "fisher_labels": self.fisher_labels_}
        for name in self.factors_:
            (a, s), (q_a, q_s) = self.factors_[name], self.bases_[name]
            state.update({f"A.{name}": a, f"S.{name}": s, f"Q_A.{name}": q_a, f"Q_S.{name}": q_s})
        return state

    def load_fitted(self, state, ensembles, dataset, task, device="cpu") -> Self:
        self._prepare(ensembles, dataset, task, device)
        at = {k: v.to(self.device_) for k, v in state.items()}
        names = [layer.name for layer in self.layers_]
        self.factors_ = {n: (at[f"A.{n}"], at[f"S.{n}"]) for n in names}
        self.bases_ = {n: (at[f"Q_A.{n}"], at[f"Q_S.{n}"]) for n in names}
        self.eigenvalues_, self.fisher_labels_ = at["eigenvalues"], state["fisher_labels"]
        return self

    def _fisher_labels(self) -> torch.Tensor:
        """``[n, m]`` labels the Fisher is estimated with: drawn from the model, or y_train."""
        data = self.dataset_
        if self.config.fisher == "empirical":
            return data.y_train[:, None].clone()
        with torch.no_grad():
            logits = [
                functional_call(self.module_, self.params_, (x.to(self.device_),))
                for x in data.x_train.split(self.config.batch_size)
            ]
        probs = torch.softmax(torch.cat(logits), -1).double().cpu()
        generator = torch.Generator().manual_seed(self.config.seed)
        return torch.multinomial(probs, self.config.fisher_samples, True, generator=generator)

    def _recorded_forward(self, x: torch.Tensor):
        """The logits of ``x`` and, per Kronecker layer, the ``(input, output)`` of each of
        its calls; the parameters require gradients so that every output does."""
        calls: list[list[tuple[torch.Tensor, torch.Tensor]]] = [[] for _ in self.layers_]
        params = {k: v.detach().requires_grad_() for k, v in self.params_.items()}
        handles = []
        for layer, own in zip(self.layers_, calls):
            record = lambda _m, args, out, own=own: own.append((args[0], out))  # noqa: E731
            handles.append(layer.module.register_forward_hook(record))
        try:
            return functional_call(self.module_, params, (x,)), calls
        finally:
            for handle in handles:
                handle.remove()

    def _layer_gradients(
        self, x: torch.Tensor, labels: torch.Tensor
    ) -> Iterator[tuple[int, list[torch.Tensor], list[torch.Tensor], torch.Tensor]]:
        """For each batch of ``x`` and each label column r of ``labels [n, m]``:
        ``(r, inputs, deltas, generic)``, per Kronecker layer its input patches
        ``ā [b, T, d_in]`` and the gradients of the summed loss at its outputs
        ``δ [b, T, d_out]`` (one forward pass, one backward pass to the outputs per label
        column), and the generic parameters' per-example gradients ``[b, P_generic]``, in
        blocks of the rows whose coordinates take ``COORDINATE_BYTES``."""
        size, draws, layers = self.config.batch_size, labels.shape[1], self.layers_
        rows = max(1, COORDINATE_BYTES // (8 * self.n_coordinates_))
        unused = {"allow_unused": True, "materialize_grads": True}  # zeros for unused outputs
        for start in range(0, len(x), size):
            xb = x[start : start + size].to(self.device_)
            logits, calls = self._recorded_forward(xb)
            inputs = [
                torch.cat([layer.inputs(a.detach()) for a, _ in own], 1)
                for layer, own in zip(layers, calls)
            ]
            outputs = [out for own in calls for _, out in own]
            for r in range(draws):
                yb = labels[start : start + len(xb), r].to(self.device_)
                loss = self.task_.loss(logits, yb).sum()
                grads = iter(
                    torch.autograd.grad(loss, outputs, retain_graph=r + 1 < draws, **unused)
                    if outputs
                    else ()
                )
                deltas = [
                    torch.cat([layer.output_grads(next(grads)) for _ in own], 1)
                    for layer, own in zip(layers, calls)
                ]
                if self.generic_ is None:
                    count(len(yb))
                    generic = torch.zeros(len(yb), 0, device=self.device_)
                else:  # layer-wise where the adapters allow, vmap(grad) otherwise; counted
                    factors = self.generic_(self.params_, xb, yb).pieces.values()
                    generic = torch.cat([piece.dense for piece in factors], 1)
                for first in range(0, len(yb), rows):
                    block = slice(first, first + rows)
                    yield r, [a[block] for a in inputs], [d[block] for d in deltas], generic[block]

    def _factors(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """K-FAC factors ``(A, S)`` of each Kronecker layer, accumulated in float64."""
        f64 = {"dtype": torch.float64, "device": self.device_}
        a_sums = [torch.zeros(layer.d_in, layer.d_in, **f64) for layer in self.layers_]
        s_sums = [torch.zeros(layer.d_out, layer.d_out, **f64) for layer in self.layers_]
        labels = self.fisher_labels_
        if self.layers_:
            for r, inputs, deltas, _ in self._layer_gradients(self.dataset_.x_train, labels):
                for a_sum, s_sum, a, delta in zip(a_sums, s_sums, inputs, deltas):
                    if r == 0:
                        a_sum.addmm_(a.flatten(0, 1).double().T, a.flatten(0, 1).double())
                    delta = delta.double()
                    s_sum.add_(torch.einsum("bto,btp->op", delta, delta) / delta.shape[1])
        n, m = self.n_train_, labels.shape[1]
        return {
            layer.name: (a / n, s / (n * m)) for layer, a, s in zip(self.layers_, a_sums, s_sums)
        }

    def _coordinates(
        self, inputs: list[torch.Tensor], deltas: list[torch.Tensor], generic: torch.Tensor
    ) -> torch.Tensor:
        """``[b, P]`` float64 coordinates of the per-example gradients in the eigenbasis:
        ``Σ_t (Q_Sᵀ δ_t)(Q_Aᵀ ā_t)ᵀ`` flattened ``[d_out, d_in]`` for each Kronecker layer,
        then the generic gradients as they are."""
        out = generic.new_empty(len(generic), self.n_coordinates_, dtype=torch.float64)
        sizes = [layer.d_out * layer.d_in for layer in self.layers_] + [generic.shape[1]]
        blocks = out.split(sizes, 1)
        for layer, a, delta, block in zip(self.layers_, inputs, deltas, blocks):
            q_a, q_s = (q.to(a.dtype) for q in self.bases_[layer.name])
            rotated = torch.einsum("btk,btl->bkl", delta @ q_s, a @ q_a)
            block.view(-1, layer.d_out, layer.d_in).copy_(rotated)
        blocks[-1].copy_(generic)
        return out

    def _grads(self, x: torch.Tensor, y: torch.Tensor, measurement="loss"):
        """``[b, P]`` float64 loss-gradient coordinates in the eigenbasis, block by block."""
        return (self._coordinates(*parts) for _, *parts in self._layer_gradients(x, y[:, None]))

    def _corrected_eigenvalues(self) -> torch.Tensor:
        """``[P]``: mean over examples and label draws of the squared eigen-coordinates."""
        labels = self.fisher_labels_
        total = torch.zeros(self.n_coordinates_, dtype=torch.float64, device=self.device_)
        for _, *parts in self._layer_gradients(self.dataset_.x_train, labels):
            total += (self._coordinates(*parts) ** 2).sum(0)
        return total / (self.n_train_ * labels.shape[1])

    def corrected_eigenvalues(self) -> dict[str, torch.Tensor]:
        """The fitted Λ: ``[d_out, d_in]`` per Kronecker layer (by module path), and the
        diagonal Fisher, shaped like the parameter, per generic parameter (by name)."""
        parts = self.eigenvalues_.split([math.prod(shape) for shape in self.shapes_.values()])
        return {name: part.view(shape) for (name, shape), part in zip(self.shapes_.items(), parts)}

    def solve(self, rows: torch.Tensor) -> torch.Tensor:
        """Eigen-coordinates ``[m, P]`` → ``rows / (Λ + λ + l2)``, 0 where that sum is 0."""
        total = self.eigenvalues_ + self.config.damping + self.task_.l2
        inverse = torch.where(total > 0, 1 / total.clamp_min(torch.finfo(total.dtype).tiny), 0.0)
        return rows * inverse
