"""SGD and Adam on stacked parameters ``[K, ...]``, one independent optimizer per model.

They follow ``torch.optim.SGD`` (no dampening, no Nesterov) and ``torch.optim.Adam``
/ ``AdamW`` update rules exactly, element-wise, so K models updated here match K
models each trained alone with torch's optimizers. ``active [K]`` lets a model
skip a step (its subset ran out of batches before the others'): its parameters
and optimizer state stay untouched.
"""

from __future__ import annotations

import torch

from mnemoscope.train.options import TrainConfig

Params = dict[str, torch.Tensor]


def _per_model(active: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return active.view(-1, *([1] * (like.dim() - 1)))


class StackedOptimizer:
    """Functional optimizer over a dict of stacked parameter tensors, updated in place."""

    def __init__(self, params: Params, config: TrainConfig) -> None:
        self.config = config
        self.buffers = {name: torch.zeros_like(p) for name, p in params.items()}
        self.second = (
            {name: torch.zeros_like(p) for name, p in params.items()}
            if config.optimizer != "sgd"
            else {}
        )
        n_models = next(iter(params.values())).shape[0]
        self.steps = torch.zeros(
            n_models, dtype=torch.float64, device=next(iter(params.values())).device
        )

    @torch.no_grad()
    def step(self, params: Params, grads: Params, active: torch.Tensor) -> None:
        cfg = self.config
        self.steps += active.to(self.steps.dtype)
        for name, p in params.items():
            keep = _per_model(active, p)
            g = grads[name]
            if cfg.optimizer == "adamw":
                decayed = p * (1 - cfg.lr * cfg.weight_decay)
            else:
                decayed = p
                if cfg.weight_decay:
                    g = g + cfg.weight_decay * p
            if cfg.optimizer == "sgd":
                buf = self.buffers[name]
                if cfg.momentum:
                    buf.copy_(torch.where(keep, cfg.momentum * buf + g, buf))
                    g = buf
                update = decayed - cfg.lr * g
            else:
                beta1, beta2 = cfg.betas
                m, v = self.buffers[name], self.second[name]
                m.copy_(torch.where(keep, beta1 * m + (1 - beta1) * g, m))
                v.copy_(torch.where(keep, beta2 * v + (1 - beta2) * g * g, v))
                step = _per_model(self.steps, p).clamp_min(1)
                bias1 = (1 - beta1**step).to(p.dtype)
                bias2 = (1 - beta2**step).to(p.dtype)
                denom = v.sqrt() / bias2.sqrt() + 1e-8
                update = decayed - (cfg.lr / bias1) * m / denom
            p.copy_(torch.where(keep, update, p))
