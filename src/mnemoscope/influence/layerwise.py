"""Per-example gradient norms and dot products from one batched backward pass.

For a layer that treats each example on its own, the per-example gradient of its
parameters is a product of two things an ordinary batched forward and backward already
hold: the layer's input and the gradient at its output (Goodfellow 2015, "Efficient
per-example gradient computations"; Rochette, Manoel & Tramel 2019 for convolutions).
With ``m_i`` the measurement of example i and ``δ_i`` the gradient of ``Σ_j m_j`` with
respect to the layer's output at example i (example i's own, since examples do not
interact in the forward pass):

- ``nn.Linear`` on ``a_i [in]``: ``∇_W m_i = δ_i a_iᵀ``, ``∇_b m_i = δ_i``; hence
  ``‖∇_W m_i‖² = ‖a_i‖²‖δ_i‖²`` and ``⟨∇_W m_i, ∇_W m_t⟩ = (a_i·a_t)(δ_i·δ_t)``, and the
  ``[out, in]`` gradient is never formed.
- A Linear applied at several positions, and ``nn.Conv1d``/``nn.Conv2d`` through the
  unfolded input ``U_i [patch, positions]`` and output gradient ``D_i [out, positions]``:
  ``∇_W m_i = D_i U_iᵀ``, ``∇_b m_i = D_i 1``. Norms and dots are taken either of that
  ``[out, patch]`` product (one batched matmul) or through the Gram matrices,
  ``⟨D_i U_iᵀ, D_t U_tᵀ⟩ = Σ_pq (U_iᵀU_t)_pq (D_iᵀD_t)_pq``, whichever costs fewer flops.
- ``nn.GroupNorm``/``nn.LayerNorm``: ``∇_γ m_i = Σ δ_i ⊙ x̂_i``, ``∇_β m_i = Σ δ_i``, summed
  over the positions sharing a γ, with ``x̂_i`` the normalised input.

Every other selected parameter goes through ``vmap(grad)``
(:func:`~mnemoscope.influence.gradients.per_example_grads`), so no layer type is refused
and the results always cover all selected parameters. A supported layer falls back to
``vmap(grad)`` as well wherever its identity might not hold: it is called more than once
in a forward pass (weight sharing), one of its parameters is tied to another name or used
by any operation other than the layer's own (every operation of the forward pass is
watched), its input or output is modified in place afterwards, or its input is not
``[batch, ...]``-shaped. A model with BatchNorm in training mode (statistics across
examples) falls back entirely. What cannot be detected: a supported layer must see the
batch on dim 0 of its input (as every model of :mod:`mnemoscope.models` does), and the
model must not mix examples.

Cost per batch of b: one forward and one backward pass (to the layer outputs only), plus
``b·(in + out)`` per Linear, ``b·out·patch·positions`` per convolution and the
``vmap(grad)`` of the parameters that fall back. Results are float64.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.func import functional_call
from torch.overrides import TorchFunctionMode

from mnemoscope.errors import ConfigError
from mnemoscope.influence.adapters import Dense, Outer, Piece, layer_adapter
from mnemoscope.influence.gradients import Params, per_example_grads
from mnemoscope.meter import count
from mnemoscope.task import Measurement, Task


@dataclass
class GradientFactors:
    """Per-example gradients of a batch, one :data:`Piece` per parameter name.

    Attributes:
        pieces: parameter name → its per-example gradients, factored or dense.
        fallback: the names whose gradients came from ``vmap(grad)``.
    """

    pieces: dict[str, Piece]
    fallback: list[str] = field(default_factory=list)

    def sq_norms(self) -> torch.Tensor:
        """``[b]`` float64: ``‖∇m_i‖²`` over all the parameters."""
        return sum(piece.sq_norms() for piece in self.pieces.values())

    def dots(self, other: GradientFactors) -> torch.Tensor:
        """``[b, b_other]`` float64: ``∇m_i · ∇m_t`` over all the parameters."""
        if self.pieces.keys() != other.pieces.keys():
            raise ValueError("the two batches' gradients cover different parameters")
        total = 0
        for name, piece in self.pieces.items():
            theirs = other.pieces[name]
            if isinstance(piece, Outer) and isinstance(theirs, Outer):
                total = total + piece.dots(theirs)
            else:
                total = total + piece.dense.double() @ theirs.dense.double().T
        return total

    @staticmethod
    def cat(parts: Sequence[GradientFactors]) -> GradientFactors:
        """The factors of consecutive batches as those of one batch, to be held for dot
        products: a weight's factors are kept only where they beat its dense gradients."""
        pieces: dict[str, Piece] = {}
        for name in parts[0].pieces:
            own = [part.pieces[name] for part in parts]
            if all(isinstance(p, Outer) and p.keeps_factors for p in own) and (
                len({(p.u.shape[2], p.channels_last) for p in own}) == 1
            ):
                u, d = torch.cat([p.u for p in own]), torch.cat([p.d for p in own])
                pieces[name] = Outer(u, d, own[0].channels_last)
            else:
                pieces[name] = Dense(torch.cat([p.dense for p in own]))
        fallback = sorted({name for part in parts for name in part.fallback})
        return GradientFactors(pieces, fallback)


class ForwardRecorder(TorchFunctionMode):
    """Watches one batched forward pass: each layer's input and output and how often it
    ran (hooks), and, while entered as a mode, which layer was running whenever an
    operation read a watched parameter (a layer called twice reads its parameters
    twice)."""

    def __init__(self, layers: dict[nn.Module, list[str]], watched: dict[int, str]) -> None:
        super().__init__()
        self.watched = watched
        self.running: list[nn.Module] = []
        self.uses: dict[str, list[nn.Module | None]] = {name: [] for name in watched.values()}
        self.seen: dict[nn.Module, tuple[torch.Tensor, torch.Tensor, tuple[int, int]]] = {}
        self.calls: dict[nn.Module, int] = dict.fromkeys(layers, 0)
        self.handles = []
        for layer in layers:
            self.handles.append(layer.register_forward_pre_hook(self._enter))
            self.handles.append(layer.register_forward_hook(self._leave))

    def _enter(self, layer: nn.Module, args) -> None:
        self.running.append(layer)

    def _leave(self, layer: nn.Module, args, output) -> None:
        self.running.pop()
        self.calls[layer] += 1
        if args and isinstance(args[0], torch.Tensor) and isinstance(output, torch.Tensor):
            versions = (args[0]._version, output._version)
            self.seen[layer] = (args[0].detach(), output, versions)

    def _scan(self, values) -> None:
        for value in values:
            if isinstance(value, list | tuple):
                self._scan(value)
            elif isinstance(value, dict):
                self._scan(value.values())
            elif id(value) in self.watched:
                self.uses[self.watched[id(value)]].append(
                    self.running[-1] if self.running else None
                )

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        self._scan(args)
        self._scan(kwargs.values())
        return func(*args, **kwargs)

    def unchanged(self, layer: nn.Module) -> bool:
        """Neither the layer's input nor its output was modified in place afterwards."""
        a, output, versions = self.seen[layer]
        return (a._version, output._version) == versions

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def _owner(module: nn.Module, name: str) -> tuple[nn.Module, str]:
    prefix, _, local = name.rpartition(".")
    return module.get_submodule(prefix), local


class LayerwiseGradients:
    """Per-example gradients of ``m(z_i; θ)`` with respect to the parameters ``names`` of
    ``module``, one batch at a time (:meth:`__call__`): layer-wise where a layer allows it
    (one batched forward and backward), ``vmap(grad)`` for the rest.

    Which layers the identities cover is decided by watching every operation of the
    forward pass on the first batch of each input shape, and reused for later batches of
    that shape (watching costs Python work on every operation): on those, each covered
    layer must still run exactly once, with its input and output left unmodified, or the
    batch is watched again and the new decision kept. A model that reads a layer's
    parameters from another operation on some batches only (data-dependent control flow)
    is outside what the reuse checks.
    """

    def __init__(
        self,
        module: nn.Module,
        names: Sequence[str],
        task: Task | None = None,
        measurement: Measurement = "loss",
    ) -> None:
        known = {name for name, _ in module.named_parameters()}
        unknown = [name for name in names if name not in known]
        if unknown or not names:
            raise ConfigError(
                f"params: expected a non-empty list of parameter names, unknown {unknown}"
            )
        self.module, self.names = module, list(names)
        self.task, self.measurement = task or Task(), measurement
        aliases: dict[int, list[str]] = {}
        for alias, tensor in module.named_parameters(remove_duplicate=False):
            aliases.setdefault(id(tensor), []).append(alias)
        self.tied = {alias for group in aliases.values() if len(group) > 1 for alias in group}
        cross_example = any(
            isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training for m in module.modules()
        )
        self.candidates: dict[nn.Module, list[str]] = {}
        for name in self.names:
            layer, _ = _owner(module, name)
            adapter = layer_adapter(layer)
            if not cross_example and name not in self.tied and adapter and adapter.supports(layer):
                self.candidates.setdefault(layer, []).append(name)
        self.local = {name: _owner(module, name)[1] for name in self.names}
        self._fast: dict[tuple, dict[nn.Module, list[str]]] = {}

    def __call__(self, params: Params, x: torch.Tensor, y: torch.Tensor) -> GradientFactors:
        """The factors of one batch ``x [b, ...]``, ``y [b]``; ``params`` holds one model's
        parameters (no leading model dimension)."""
        unknown = [name for name in self.names if name not in params]
        if unknown:
            raise ConfigError(f"params: unknown parameter names {unknown}")
        key = (tuple(x.shape[1:]), x.dtype, x.device)
        known = self._fast.get(key)
        pieces: dict[str, Piece] = {}
        if self.candidates and known != {}:
            fast = self._layerwise(params, x, y, known, pieces)
            if fast is None:  # the layers reused for this shape no longer qualify
                del self._fast[key]
                return self(params, x, y)
            self._fast[key] = fast
        fallback = [name for name in self.names if name not in pieces]
        if fallback:
            (g,) = per_example_grads(
                self.module, params, x, y, fallback, len(y), self.task, self.measurement
            )
            sizes = [params[name].numel() for name in fallback]
            pieces.update({name: Dense(part) for name, part in zip(fallback, g.split(sizes, 1))})
        else:  # per_example_grads counted the fallback's examples
            count(len(y))
        return GradientFactors({name: pieces[name] for name in self.names}, fallback)

    def _layerwise(
        self,
        params: Params,
        x: torch.Tensor,
        y: torch.Tensor,
        known: dict[nn.Module, list[str]] | None,
        pieces: dict[str, Piece],
    ) -> dict[nn.Module, list[str]] | None:
        """Fill ``pieces`` from one batched forward and backward; return the layers taken
        layer-wise, or None where ``known`` (reused) ones no longer qualify."""
        layers = self.candidates if known is None else known
        watched = {
            name: params[name].detach().requires_grad_()
            for group in layers.values()
            for name in group
        }
        recorder = ForwardRecorder(layers, {id(tensor): name for name, tensor in watched.items()})
        try:
            with recorder if known is None else contextlib.nullcontext():
                logits = functional_call(
                    self.module, {**params, **watched}, (x,), tie_weights=bool(self.tied)
                )
        finally:
            recorder.remove()

        def qualifies(layer: nn.Module) -> bool:
            return (
                recorder.calls[layer] == 1
                and recorder.unchanged(layer)
                and (a := recorder.seen[layer][0]).dim() >= 2
                and a.shape[0] == len(y)  # the batch on dim 0, the dims the adapter needs
                and layer_adapter(layer).input_ok(layer, a)
            )

        if known is None:
            fast = {
                layer: [name for name in group if recorder.uses[name] == [layer]]
                for layer, group in layers.items()
                if layer in recorder.seen and qualifies(layer)
            }
            fast = {layer: group for layer, group in fast.items() if group}
        elif all(layer in recorder.seen and qualifies(layer) for layer in known):
            fast = known
        else:
            return None
        if fast:
            outputs = [recorder.seen[layer][1] for layer in fast]
            total = self.task.measure(logits, y, self.measurement).sum()
            deltas = torch.autograd.grad(total, outputs, allow_unused=True)
            for (layer, group), output, delta in zip(fast.items(), outputs, deltas):
                delta = torch.zeros_like(output) if delta is None else delta
                local = layer_adapter(layer).pieces(layer, recorder.seen[layer][0], delta.detach())
                pieces.update({name: local[self.local[name]] for name in group})
        return fast


def gradient_factors(
    module: nn.Module,
    params: Params,
    x: torch.Tensor,
    y: torch.Tensor,
    names: Sequence[str],
    task: Task | None = None,
    measurement: Measurement = "loss",
) -> GradientFactors:
    """Per-example gradients of ``m(z_i; θ)`` for one batch ``x [b, ...]``, ``y [b]``, with
    respect to the parameters ``names`` (:class:`LayerwiseGradients` for one batch)."""
    return LayerwiseGradients(module, names, task, measurement)(params, x, y)
