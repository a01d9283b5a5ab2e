"""DP-SGD for K models at once, inside the vmap trainer, and its privacy accounting.

DP-SGD (Abadi et al. 2016, "Deep Learning with Differential Privacy", Alg. 1), as Opacus
1.6 implements it (``opacus.optimizers.DPOptimizer``), model by model:

- **Poisson sampling.** At each step model k draws each example of its own subset
  independently with probability ``q_k = min(1, B / n_k)`` (B the config's
  ``batch_size``, n_k the subset's size), so the expected batch size is B; an epoch is
  ``⌈n_k / B⌉`` steps. This is the sampling the accountant assumes (the subsampled
  Gaussian mechanism). Batch sizes vary from step to step and from model to model: the
  K batches of a step are padded to the largest and padding carries weight 0.
- **Clipping.** Each example's gradient ``g_i`` of its loss ``ℓ(z_i; θ)`` is scaled by
  ``c_i = min(1, C / (‖g_i‖ + 10⁻⁶))`` (Opacus's factor; Abadi et al. write
  ``1 / max(1, ‖g_i‖ / C)``), C = ``max_grad_norm``.
- **Noise.** ``ĝ = (Σ_i c_i g_i + N(0, σ² C² I)) / B``, σ = ``noise_multiplier``; the
  noise is drawn from model k's own generator, seeded from ``(seed, k)``, one draw a step
  for all its parameters, flattened in their order (:class:`GaussianNoise`). ``ĝ`` then
  goes to the configured optimizer (its weight decay, momentum or Adam moments apply to
  ``ĝ``, as torch's optimizer wrapped by Opacus's does).

**Per-example gradient norms** come from the layer-wise identities of
:mod:`mnemoscope.influence.layerwise` where a layer allows them (for a Linear,
``‖∇_W ℓ_i‖² = ‖a_i‖² ‖δ_i‖²``, with the layer's input ``a_i`` and the gradient ``δ_i`` at
its output, and ``Σ_i c_i ∇_W ℓ_i = Σ_i c_i δ_i a_iᵀ``: the ``[B, out, in]`` per-example
gradients are never formed), and from ``vmap(grad)`` for every other parameter, so no
layer is refused. Which layers qualify is decided by
:class:`~mnemoscope.influence.layerwise.LayerwiseGradients` on one model's first batch;
all K models share the architecture. The gradient at a covered layer's output is read
by adding a zero probe to it (its gradient is ``δ_i``), everything under one
``vmap`` over models of ``vmap`` over examples of ``grad``.

**Accounting** is Opacus's (``opacus.accountants``, RDP or PRV; the optional extra
``mnemoscope[dp]``): model k is the subsampled Gaussian mechanism with noise σ_k,
sampling rate q_k, for ``epochs · ⌈n_k / B⌉`` steps. ``target_epsilon`` sets each σ_k by
``opacus.accountants.utils.get_noise_multiplier``. Nothing here does accounting by hand.

**Records.** An example drawn several times in an epoch has the loss and correctness of
its last draw recorded; a member no step drew in an epoch (probability ≈ 1/e) has its
loss and correctness under the parameters at the end of that epoch (one forward pass,
so that ``csl`` and ``forgetting`` see every member every epoch); a non-member has NaN
and False, as without DP.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from mnemoscope.errors import ConfigError
from mnemoscope.influence.adapters import Dense, Outer, Piece, layer_adapter
from mnemoscope.influence.layerwise import LayerwiseGradients
from mnemoscope.task import Task
from mnemoscope.train.masks import derive_seed
from mnemoscope.train.optim import Params, StackedOptimizer
from mnemoscope.train.options import DPConfig

CLIP_EPS = 1e-6
"""Added to the norm in the clipping factor, as Opacus does."""


def _opacus_accountants() -> Any:
    try:
        from opacus import accountants
        from opacus.accountants import utils
    except ImportError:
        raise ConfigError(
            "train.dp needs Opacus's accountant: pip install 'mnemoscope[dp]'"
        ) from None
    return accountants, utils


@dataclass(frozen=True)
class ModelPrivacy:
    """One model's DP-SGD run and its guarantee.

    Attributes:
        noise_multiplier: σ.
        sample_rate: q, the probability that a step draws a given member.
        steps: updates over the whole run.
        epsilon: the accountant's ε at ``delta`` after ``steps`` steps (inf when σ = 0).
        delta: δ.
    """

    noise_multiplier: float
    sample_rate: float
    steps: int
    epsilon: float
    delta: float


def sample_rate(subset_size: int, batch_size: int) -> float:
    """``q = min(1, B / n_k)``: the expected Poisson batch is the configured batch size."""
    return min(1.0, batch_size / subset_size)


def epoch_steps(subset_size: int, batch_size: int) -> int:
    """Steps of one epoch, ``⌈n_k / B⌉``, as without DP."""
    return math.ceil(subset_size / batch_size)


def epsilon(dp: DPConfig, noise_multiplier: float, sample_rate: float, steps: int) -> float:
    """The accountant's ε after ``steps`` steps of the subsampled Gaussian mechanism."""
    if noise_multiplier == 0:
        return math.inf
    accountants, _ = _opacus_accountants()
    accountant = accountants.create_accountant(mechanism=dp.accountant)
    accountant.history = [(noise_multiplier, sample_rate, steps)]
    return float(accountant.get_epsilon(delta=dp.delta))


def noise_multipliers(
    dp: DPConfig, subset_sizes: Sequence[int], batch_size: int, epochs: int
) -> list[float]:
    """Each model's σ (one per subset size): ``noise_multiplier``, or under
    ``target_epsilon`` the accountant's σ for that target, model by model."""
    if dp.noise_multiplier is not None:
        return [dp.noise_multiplier] * len(subset_sizes)
    _, utils = _opacus_accountants()
    found: dict[tuple[float, int], float] = {}
    out = []
    for size in subset_sizes:
        q, steps = sample_rate(int(size), batch_size), epochs * epoch_steps(int(size), batch_size)
        if (q, steps) not in found:
            found[q, steps] = float(
                utils.get_noise_multiplier(
                    target_epsilon=dp.target_epsilon,
                    target_delta=dp.delta,
                    sample_rate=q,
                    steps=steps,
                    accountant=dp.accountant,
                )
            )
        out.append(found[q, steps])
    return out


def model_privacy(
    dp: DPConfig, subset_sizes: Sequence[int], batch_size: int, epochs: int
) -> list[ModelPrivacy]:
    """Each model's σ, q, steps and ε (one per subset size)."""
    sigmas = noise_multipliers(dp, subset_sizes, batch_size, epochs)
    found: dict[tuple[float, float, int], ModelPrivacy] = {}
    out = []
    for size, sigma in zip(subset_sizes, sigmas):
        q, steps = sample_rate(int(size), batch_size), epochs * epoch_steps(int(size), batch_size)
        if (sigma, q, steps) not in found:
            found[sigma, q, steps] = ModelPrivacy(
                sigma, q, steps, epsilon(dp, sigma, q, steps), dp.delta
            )
        out.append(found[sigma, q, steps])
    return out


class PoissonSampler:
    """Model k's batches: each step, each member of its subset drawn with probability q_k,
    from a generator seeded from ``(seed, k)`` (so a model's batches never depend on the
    other models of its chunk)."""

    def __init__(self, mask_row: torch.Tensor, batch_size: int, seed: int, k: int) -> None:
        self.members = mask_row.nonzero().flatten()
        self.rate = sample_rate(len(self.members), batch_size)
        self.generator = torch.Generator().manual_seed(derive_seed(seed, 0xD9, k))

    def batch(self) -> torch.Tensor:
        """The indices (into the training set) of the next step's batch."""
        drawn = torch.rand(len(self.members), generator=self.generator) < self.rate
        return self.members[drawn]


class GaussianNoise:
    """Model k's noise: standard normal draws from a generator seeded from ``(seed, k)``,
    at every step one draw for all its parameters, flattened in their order."""

    def __init__(self, seed: int, k: int, device: torch.device) -> None:
        self.generator = torch.Generator(device).manual_seed(derive_seed(seed, 0xD9015E, k))
        self.device = device

    def draw(self, size: int, dtype: torch.dtype) -> torch.Tensor:
        """One step's draws ``[size]``: the parameters' noise, flattened and concatenated."""
        return torch.randn(size, generator=self.generator, device=self.device, dtype=dtype)


class _ProbedLayers:
    """Forward hooks on the covered layers of the template: each records its input and
    adds the current probe (zeros) to its output, so that the gradient with respect to
    the probe is the gradient at the layer's output."""

    def __init__(self, layers: list[nn.Module]) -> None:
        self.position = {layer: i for i, layer in enumerate(layers)}
        self.probes: Sequence[torch.Tensor] = ()
        self.inputs: list[torch.Tensor | None] = [None] * len(layers)
        self.handles = [layer.register_forward_hook(self._hook) for layer in layers]

    def _hook(self, layer: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        i = self.position[layer]
        self.inputs[i] = args[0]
        return output + self.probes[i]

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


class PrivateSteps:
    """DP-SGD for the models ``ks`` of one chunk (module docstring): their batches and
    noise, and :meth:`epoch`, which trains them one epoch and records losses.

    Args:
        dp: the DP settings.
        batch_size: the expected batch size B.
        epochs: epochs of the run (for ``target_epsilon``).
        masks: ``[K, n]`` the chunk's subset masks.
        seed, ks: the run's seed and the models' rows (seeding batches and noise).
        template: the architecture (parameters are passed in).
        params: the stacked parameters ``[K, ...]``.
        example: ``(x, y)`` a few training examples, to decide the layer-wise layers.
        task: the per-example loss.
    """

    def __init__(
        self,
        dp: DPConfig,
        batch_size: int,
        epochs: int,
        masks: torch.Tensor,
        seed: int,
        ks: Sequence[int],
        template: nn.Module,
        params: Params,
        example: tuple[torch.Tensor, torch.Tensor],
        task: Task,
    ) -> None:
        device = next(iter(params.values())).device
        self.batch_size, self.clip, self.task = batch_size, dp.max_grad_norm, task
        self.samplers = [PoissonSampler(masks[i], batch_size, seed, k) for i, k in enumerate(ks)]
        self.noise = [GaussianNoise(seed, k, device) for k in ks]
        self.steps = [epoch_steps(len(s.members), batch_size) for s in self.samplers]
        sizes = [len(s.members) for s in self.samplers]
        sigmas = noise_multipliers(dp, sizes, batch_size, epochs)
        self.std = torch.tensor([sigma * dp.max_grad_norm for sigma in sigmas], device=device)
        self.template, self.names = template, list(params)
        one = {name: p[0].detach() for name, p in params.items()}
        found = LayerwiseGradients(template, self.names, task)(one, *example)
        covered = [name for name in self.names if name not in found.fallback]
        self.layers: dict[nn.Module, list[str]] = {}
        for name in covered:
            self.layers.setdefault(template.get_submodule(name.rpartition(".")[0]), []).append(name)
        self.fallback = list(found.fallback)
        self.probe_shapes = self._output_shapes(one, example[0][:1])

    def _output_shapes(self, params: Params, x: torch.Tensor) -> list[torch.Size]:
        """Each covered layer's output shape for one example (batch dimension 1)."""
        shapes: dict[nn.Module, torch.Size] = {}
        handles = [
            layer.register_forward_hook(lambda m, a, out: shapes.__setitem__(m, out.shape))
            for layer in self.layers
        ]
        try:
            with torch.no_grad():
                functional_call(self.template, params, (x,))
        finally:
            for handle in handles:
                handle.remove()
        return [shapes[layer] for layer in self.layers]

    def _per_example(
        self, params: Params, x: torch.Tensor, y: torch.Tensor
    ) -> tuple[dict[str, Piece], torch.Tensor, torch.Tensor]:
        """For ``x [K, b, ...]``, ``y [K, b]``: every parameter's per-example gradient
        pieces over the ``K·b`` model-examples (model-major), the losses ``[K, b]`` and
        the logits ``[K, b, C]``."""
        n_models, b = y.shape
        probed = _ProbedLayers(list(self.layers))
        frozen_names = [name for name in self.names if name not in self.fallback]

        def example(
            fallback: Params, probes: list[torch.Tensor], frozen: Params, xi, yi
        ) -> tuple[torch.Tensor, tuple]:
            probed.probes = probes
            logits = functional_call(self.template, {**frozen, **fallback}, (xi[None],))
            loss = self.task.loss(logits, yi[None]).sum()
            return loss, (loss.detach(), logits[0].detach(), list(probed.inputs))

        per_example = vmap(grad(example, argnums=(0, 1), has_aux=True), (None, 0, None, 0, 0))
        probes = [
            torch.zeros(n_models, b, *shape, device=y.device, dtype=params[self.names[0]].dtype)
            for shape in self.probe_shapes
        ]
        try:
            (fallback_grads, deltas), (loss, logits, inputs) = vmap(per_example)(
                {name: params[name] for name in self.fallback},
                probes,
                {name: params[name] for name in frozen_names},
                x,
                y,
            )
        finally:
            probed.remove()
        pieces: dict[str, Piece] = {
            name: Dense(g.reshape(n_models * b, -1)) for name, g in fallback_grads.items()
        }
        for (layer, group), a, delta in zip(self.layers.items(), inputs, deltas):
            local = layer_adapter(layer).pieces(
                layer,
                a.reshape(n_models * b, *a.shape[3:]),
                delta.reshape(n_models * b, *delta.shape[3:]),
            )
            pieces.update({name: local[name.rpartition(".")[2]] for name in group})
        return pieces, loss, logits

    @torch.no_grad()
    def gradients(
        self,
        params: Params,
        x: torch.Tensor,
        y: torch.Tensor,
        weight: torch.Tensor,
        active: torch.Tensor,
    ) -> tuple[Params, torch.Tensor, torch.Tensor]:
        """The noisy clipped gradients ``ĝ`` of one step, each ``[K, ...]``, for batches
        ``x [K, b, ...]``, ``y [K, b]`` with ``weight [K, b]`` 1 on real examples and 0 on
        padding, ``active [K]`` the models that take this step (only they draw noise);
        also the per-example losses ``[K, b]`` and logits ``[K, b, C]``."""
        n_models, b = y.shape
        params = {name: p.detach() for name, p in params.items()}
        pieces, loss, logits = self._per_example(params, x, y)
        norms = torch.stack([piece.sq_norms() for piece in pieces.values()]).sum(0).sqrt()
        scale = (self.clip / (norms + CLIP_EPS)).clamp(max=1.0)
        scale = scale.view(n_models, b) * weight.double()
        out = {}
        for name in self.names:
            param = params[name]
            c = scale.to(param.dtype)
            piece = pieces[name]
            if isinstance(piece, Outer):
                u = piece.u.view(n_models, b, *piece.u.shape[1:])
                d = piece.d.view(n_models, b, *piece.d.shape[1:]) * c[:, :, None, None]
                summed = torch.einsum("kbop,kbip->koi", d, u)
                if piece.channels_last:  # the patch as (kernel offsets, channel): reorder
                    summed = summed.view(*summed.shape[:2], *piece.channels_last).movedim(-1, 2)
            else:
                summed = torch.einsum("kb,kbp->kp", c, piece.g.view(n_models, b, -1))
            out[name] = summed.reshape(param.shape)
        sizes = [params[name][0].numel() for name in self.names]
        dtype, device = params[self.names[0]].dtype, params[self.names[0]].device
        # an idle model draws no noise: its stream then never depends on its chunk
        noise = torch.stack(
            [
                draw.draw(sum(sizes), dtype)
                if on
                else torch.zeros(sum(sizes), dtype=dtype, device=device)
                for draw, on in zip(self.noise, active.tolist())
            ]
        ).to(device)
        noise *= self.std.to(dtype)[:, None]
        for name, part in zip(self.names, noise.split(sizes, 1)):
            out[name] = (out[name] + part.view(out[name].shape)) / self.batch_size
        return out, loss, logits

    def epoch(
        self,
        params: Params,
        optimizer: StackedOptimizer,
        x_train: torch.Tensor,
        y_train: torch.Tensor,
        loss_record: torch.Tensor,
        correct_record: torch.Tensor,
    ) -> None:
        """One epoch of every model: ``max_k ⌈n_k / B⌉`` steps, model k idle after its own
        ``⌈n_k / B⌉``; fills ``loss_record`` and ``correct_record`` ``[K, n]`` (CPU)."""
        device = x_train.device
        for step in range(max(self.steps)):
            active = torch.tensor([step < s for s in self.steps])
            drawn = [s.batch() if a else s.members[:0] for s, a in zip(self.samplers, active)]
            index, weight = _padded(drawn, device)
            labels = y_train[index]
            grads, loss, logits = self.gradients(params, x_train[index], labels, weight, active)
            optimizer.step(params, grads, active.to(device))
            _record(loss_record, correct_record, index, weight, loss, logits.argmax(-1) == labels)
        # members no step drew this epoch (≈ 1/e of them): their loss after the epoch
        undrawn = [
            s.members[loss_record[row, s.members].isnan()] for row, s in enumerate(self.samplers)
        ]
        for part in zip(*(u.split(EVAL_BATCH) for u in _same_parts(undrawn))):
            index, weight = _padded(list(part), device)
            with torch.no_grad():
                logits = vmap(self._forward)(params, x_train[index])
            labels = y_train[index]
            loss = self.task.loss(logits, labels)
            _record(loss_record, correct_record, index, weight, loss, logits.argmax(-1) == labels)

    def _forward(self, params: Params, x: torch.Tensor) -> torch.Tensor:
        return functional_call(self.template, params, (x,))


EVAL_BATCH = 512
"""Undrawn members evaluated per model and pass."""


def _same_parts(rows: list[torch.Tensor]) -> list[torch.Tensor]:
    """``rows`` padded with empty tails so that each splits into the same number of parts
    of :data:`EVAL_BATCH` (every pass then holds a part, maybe empty, of every model)."""
    longest = max(len(r) for r in rows)
    parts = max(1, math.ceil(longest / EVAL_BATCH))
    return [torch.cat([r, r.new_full((parts * EVAL_BATCH - len(r),), -1)]) for r in rows]


def _padded(rows: list[torch.Tensor], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Index lists of the K models (−1: none) as ``index [K, width]`` and ``weight``
    (1 on real entries, 0 on padding, which points at example 0)."""
    rows = [r[r >= 0] for r in rows]
    width = max(1, max(len(r) for r in rows))
    index = torch.zeros(len(rows), width, dtype=torch.long)
    weight = torch.zeros(len(rows), width)
    for row, r in enumerate(rows):
        index[row, : len(r)], weight[row, : len(r)] = r, 1.0
    return index.to(device), weight.to(device)


def _record(
    loss_record: torch.Tensor,
    correct_record: torch.Tensor,
    index: torch.Tensor,
    weight: torch.Tensor,
    loss: torch.Tensor,
    correct: torch.Tensor,
) -> None:
    """Write the real entries of ``[K, width]`` losses and correctness into ``[K, n]``."""
    real = weight.cpu() > 0
    rows = torch.arange(len(real))[:, None].expand_as(real)[real]
    columns = index.cpu()[real]
    loss_record[rows, columns] = loss.detach().cpu()[real].to(loss_record.dtype)
    correct_record[rows, columns] = correct.cpu()[real]


def privacy_record(
    dp: DPConfig, masks: torch.Tensor, batch_size: int, epochs: int
) -> dict[str, Any]:
    """What a training stage's manifest record says of its models' privacy: each model's
    ε (``epsilon``; inf as None) and σ, the worst ε (``epsilon_max``, the guarantee that
    holds for every model), δ and the accountant."""
    privacy = model_privacy(dp, [int(s) for s in masks.sum(1)], batch_size, epochs)
    eps = [p.epsilon for p in privacy]
    return {
        "epsilon": [None if math.isinf(e) else e for e in eps],
        "epsilon_max": None if math.isinf(max(eps)) else max(eps),
        "noise_multiplier": [p.noise_multiplier for p in privacy],
        "sample_rate": [p.sample_rate for p in privacy],
        "steps": [p.steps for p in privacy],
        "delta": dp.delta,
        "accountant": dp.accountant,
    }
