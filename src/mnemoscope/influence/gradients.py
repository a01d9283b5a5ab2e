"""Per-example gradients of the task's loss (or measurement), in batches, with ``vmap(grad)``.

Where only their norms or dot products are needed, :mod:`mnemoscope.influence.layerwise`
gets them from one batched backward pass instead (and falls back to this module).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import nn
from torch.func import grad, vmap

from mnemoscope.meter import count
from mnemoscope.params import ParamSelection, select_params
from mnemoscope.task import Measurement, Task

__all__ = ["ParamSelection", "Params", "per_example_grads", "select_params"]

Params = dict[str, torch.Tensor]


def per_example_grads(
    module: nn.Module,
    params: Params,
    x: torch.Tensor,
    y: torch.Tensor,
    names: Sequence[str],
    batch_size: int = 256,
    task: Task | None = None,
    measurement: Measurement = "loss",
) -> Iterator[torch.Tensor]:
    """Yield ``[b, P]`` flattened gradients of ``m(z_i; θ)`` for consecutive batches.

    ``m`` is the task's per-example loss (``measurement='loss'``) or another
    measurement (:class:`~mnemoscope.task.Task`). ``params`` holds one model's
    parameters (no leading model dimension); only ``names`` are differentiated,
    concatenated in that order. One forward and backward per example, vectorised
    over the batch: O(n) passes in all.
    """
    task = task or Task()
    trainable = {k: params[k] for k in names}
    frozen = {k: v for k, v in params.items() if k not in trainable}

    def value(theta: Params, xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
        return task.example_measurement(module, {**frozen, **theta}, xi, yi, measurement)

    per_example = vmap(grad(value), in_dims=(None, 0, 0))
    for xb, yb in zip(x.split(batch_size), y.split(batch_size)):
        g = per_example(trainable, xb, yb)
        count(len(yb))
        yield torch.cat([g[k].flatten(1) for k in names], dim=1)
