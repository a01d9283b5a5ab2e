"""The layer-adapter registry: how each layer type whose per-example gradients follow from
its input and output gradient (Linear, Conv1d/2d, GroupNorm, LayerNorm) gives them, read by
the layer-wise norms and dots (:mod:`~mnemoscope.influence.layerwise`, which states the
identities) and EK-FAC's factors; any other layer takes the generic ``vmap(grad)`` path."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

import torch
from torch import nn
from torch.nn import functional as F


@dataclass
class Dense:
    """Per-example gradients ``g [b, p]`` of one parameter, flattened."""

    g: torch.Tensor

    @property
    def dense(self) -> torch.Tensor:
        return self.g

    def sq_norms(self) -> torch.Tensor:
        return self.g.square().sum(1).double()


_BLOCK_FLOATS = 1 << 17
"""Floats of per-example products formed at once for squared norms (512 KiB in float32)."""


@dataclass
class Outer:
    """Per-example weight gradients ``D_i U_iᵀ`` kept as ``u [b, patch, P]``, ``d [b, out, P]``.

    ``channels_last``: None where the patch is in the order of the weight's ``flatten()``;
    a convolution's ``(*kernel, C)`` where it is ordered (kernel offsets, channel) instead
    (norms and dot products do not depend on the order; :attr:`dense` restores it)."""

    u: torch.Tensor
    d: torch.Tensor
    channels_last: tuple[int, ...] | None = None

    @cached_property
    def dense(self) -> torch.Tensor:
        """``[b, out·patch]``, in the order of the weight's ``flatten()``."""
        g = torch.bmm(self.d, self.u.transpose(1, 2))
        if self.channels_last:
            g = g.view(*g.shape[:2], *self.channels_last).movedim(-1, 2)
        return g.flatten(1)

    def _gram_cost(self, positions: int) -> tuple[int, int]:
        patch, out = self.u.shape[1], self.d.shape[1]
        return positions * (patch + out), patch * out

    def sq_norms(self) -> torch.Tensor:
        gram, product = self._gram_cost(self.u.shape[2])
        if gram >= product:
            # a few examples' products at a time: the [rows, out, patch] block stays in the
            # core's cache (3.5x faster for the digits cnn's second conv at batch 512)
            rows = max(1, _BLOCK_FLOATS // product)
            blocks = zip(self.u.split(rows), self.d.split(rows))
            return torch.cat(
                [torch.bmm(d, u.transpose(1, 2)).square().sum((1, 2)) for u, d in blocks]
            ).double()
        if self.u.shape[2] == 1:
            return self.u.square().sum((1, 2)).double() * self.d.square().sum((1, 2)).double()
        u, d = self.u.double(), self.d.double()
        return (torch.bmm(u.transpose(1, 2), u) * torch.bmm(d.transpose(1, 2), d)).sum((1, 2))

    @property
    def keeps_factors(self) -> bool:
        """Dot products with another batch of the same shape are cheaper through the
        Gram matrices than through the ``[out, patch]`` gradients (which then take less
        memory too)."""
        gram, product = self._gram_cost(self.u.shape[2] ** 2)
        return gram < product

    def projected(self, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
        """``[b, k_o·k_i]``: ``vec(Lᵀ D_i U_iᵀ R)`` for ``L [out, k_o]``, ``R [patch, k_i]``,
        the flattened gradient times ``L ⊗ R`` (LoGra, Choe et al. 2024), from the factors
        in ``b·P·(out·k_o + patch·k_i + k_o·k_i)`` flops, never forming the gradient."""
        return torch.bmm(left.T @ self.d, self.u.transpose(1, 2) @ right).flatten(1)

    def dots(self, other: Outer) -> torch.Tensor:
        gram, product = self._gram_cost(self.u.shape[2] * other.u.shape[2])
        if gram >= product:
            return self.dense.double() @ other.dense.double().T
        uu = torch.einsum("bkp,tkq->btpq", self.u.double(), other.u.double())
        dd = torch.einsum("bmp,tmq->btpq", self.d.double(), other.d.double())
        return (uu * dd).sum((2, 3))


Piece = Dense | Outer


@dataclass(frozen=True)
class LayerAdapter:
    """How one layer type gives per-example gradients; every field is a callable.

    ``pieces(layer, input, output gradient)``: the per-example gradient pieces by the
    parameter's local name; ``supports(layer)``: its settings allow the identity;
    ``input_ok(layer, input)``: the input has the dimensions it needs. For EK-FAC,
    ``kronecker(layer)``: factored as input patches ⊗ output gradients, with
    ``patches(layer, input)`` ``[b, T, d_in]`` and ``positions(delta)`` ``[b, T, d_out]``.
    """

    pieces: Callable[[nn.Module, torch.Tensor, torch.Tensor], dict[str, Piece]]
    supports: Callable[[nn.Module], bool] = lambda layer: True
    input_ok: Callable[[nn.Module, torch.Tensor], bool] = lambda layer, a: True
    kronecker: Callable[[nn.Module], bool] = lambda layer: False
    patches: Callable[[nn.Module, torch.Tensor], torch.Tensor] | None = None
    positions: Callable[[torch.Tensor], torch.Tensor] | None = None


def conv_patches(
    a: torch.Tensor,
    conv: nn.Conv1d | nn.Conv2d,
    positions: torch.Size | None = None,
    channels_last: bool = False,
) -> torch.Tensor:
    """``a [b, C, *spatial]`` → ``[b, C·kernel, P]``, what ``F.unfold`` gives, as one copy of
    a strided view ``[b, C, *kernel, *positions]`` (several times faster than ``im2col`` on
    small maps). ``positions``: the output's spatial shape (None: from the conv's shape
    arithmetic). ``channels_last``: ``[b, P, kernel·C]`` instead, the patch ordered
    (kernel offsets, channel), copied from a channels-last view in runs of ``kernel_w·C``
    contiguous floats (twice as fast again for the digits cnn's second conv). The patches
    of a layer's input serve its layer-wise gradient identities here and its Kronecker
    factors in :mod:`~mnemoscope.influence.ekfac`."""
    padding = (0,) * (a.dim() - 2) if isinstance(conv.padding, str) else conv.padding
    if positions is None:
        positions = torch.Size(
            (n + 2 * p - d * (k - 1) - 1) // s + 1
            for n, p, d, k, s in zip(
                a.shape[2:], padding, conv.dilation, conv.kernel_size, conv.stride
            )
        )
    if channels_last:  # padded and copied channels-last in one go, then viewed as [b, C, ...]
        a = a.movedim(1, -1)
    if any(padding):
        a = F.pad(a, [0, 0] * channels_last + [p for p in reversed(padding) for _ in range(2)])
    a = a.contiguous().movedim(-1, 1) if channels_last else a.contiguous()
    spatial = a.stride()[2:]
    kernel = [s * d for s, d in zip(spatial, conv.dilation)]
    steps = [s * t for s, t in zip(spatial, conv.stride)]
    b, c = a.shape[:2]
    if channels_last:
        view = a.as_strided(
            (b, *positions, *conv.kernel_size, c), (a.stride(0), *steps, *kernel, 1)
        )
        return view.reshape(b, positions.numel(), -1)
    view = a.as_strided((b, c, *conv.kernel_size, *positions), (*a.stride()[:2], *kernel, *steps))
    return view.reshape(b, -1, positions.numel())


def _norm_pieces(layer: nn.Module, a: torch.Tensor, delta: torch.Tensor) -> dict[str, Piece]:
    if isinstance(layer, nn.GroupNorm):
        normalised = F.group_norm(a, layer.num_groups, None, None, layer.eps)
        summed = tuple(range(2, a.dim()))
    else:
        normalised = F.layer_norm(a, layer.normalized_shape, None, None, layer.eps)
        summed = tuple(range(1, a.dim() - len(layer.normalized_shape)))
    weight = delta * normalised
    if summed:  # an empty tuple would sum over every dimension, the batch included
        weight, delta = weight.sum(summed), delta.sum(summed)
    return {"weight": Dense(weight.flatten(1)), "bias": Dense(delta.flatten(1))}


def _linear_pieces(layer: nn.Module, a: torch.Tensor, delta: torch.Tensor) -> dict[str, Piece]:
    u = a.flatten(1, -2).transpose(1, 2) if a.dim() > 2 else a[:, :, None]
    d = delta.flatten(1, -2).transpose(1, 2) if delta.dim() > 2 else delta[:, :, None]
    return {"weight": Outer(u, d), "bias": Dense(d.sum(2))}


def _conv_pieces(layer: nn.Module, a: torch.Tensor, delta: torch.Tensor) -> dict[str, Piece]:
    d = delta.flatten(2)
    # the layout whose copy moves the longer contiguous runs: kernel_w·C or positions_w
    if layer.kernel_size[-1] * a.shape[1] > delta.shape[-1]:
        u = conv_patches(a, layer, delta.shape[2:], channels_last=True).transpose(1, 2)
        return {"weight": Outer(u, d, (*layer.kernel_size, a.shape[1])), "bias": Dense(d.sum(2))}
    return {"weight": Outer(conv_patches(a, layer, delta.shape[2:]), d), "bias": Dense(d.sum(2))}


def _conv_supported(layer: nn.Module) -> bool:
    padding_ok = not isinstance(layer.padding, str) or layer.padding == "valid"
    return layer.groups == 1 and layer.padding_mode == "zeros" and padding_ok


def _conv_kronecker(layer: nn.Module) -> bool:
    return _conv_supported(layer) and not isinstance(layer.padding, str)


def _per_position(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[0], -1, t.shape[-1])


def _conv(dims: int) -> LayerAdapter:
    return LayerAdapter(
        _conv_pieces,
        _conv_supported,
        lambda layer, a: a.dim() == dims,
        _conv_kronecker,
        lambda layer, a: conv_patches(a, layer).transpose(1, 2),
        lambda delta: delta.flatten(2).transpose(1, 2),
    )


LAYER_ADAPTERS: dict[type[nn.Module], LayerAdapter] = {
    nn.Linear: LayerAdapter(
        _linear_pieces,
        kronecker=lambda layer: True,
        patches=lambda layer, a: _per_position(a),
        positions=_per_position,
    ),
    nn.Conv1d: _conv(3),
    nn.Conv2d: _conv(4),
    nn.GroupNorm: LayerAdapter(_norm_pieces),
    nn.LayerNorm: LayerAdapter(
        _norm_pieces, input_ok=lambda layer, a: a.dim() > len(layer.normalized_shape)
    ),
}
"""Layer type → its adapter; add an entry for a layer type of your own."""


def layer_adapter(layer: nn.Module, subclasses: bool = False) -> LayerAdapter | None:
    """The adapter of ``layer``'s exact type (``subclasses``: or of a type it derives
    from, as EK-FAC takes any Linear), None for the generic path."""
    if not subclasses:
        return LAYER_ADAPTERS.get(type(layer))
    return next((a for kind, a in LAYER_ADAPTERS.items() if isinstance(layer, kind)), None)
