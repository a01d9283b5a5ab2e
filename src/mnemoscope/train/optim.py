"""SGD and Adam on stacked parameters ``[K, ...]``, one independent optimizer per model.

They follow ``torch.optim.SGD`` (no dampening, no Nesterov) and ``torch.optim.Adam``
/ ``AdamW`` update rules exactly, element-wise, so K models updated here match K
models each trained alone with torch's optimizers. ``active [K]`` lets a model
skip a step (its subset ran out of batches before the others'): its parameters
and optimizer state are left as they were.

Updates are in place with ``torch._foreach_*`` (one pass per operation over all
tensors): on small models the optimizer otherwise costs as much as the
forward and backward passes.
"""

from __future__ import annotations

import torch

from mnemoscope.train.options import TrainConfig

Params = dict[str, torch.Tensor]


class StackedOptimizer:
    """Functional optimizer over a dict of stacked parameter tensors, updated in place."""

    def __init__(self, params: Params, config: TrainConfig) -> None:
        self.config = config
        self.names = list(params)
        first = params[self.names[0]]
        self.state: list[list[torch.Tensor]] = [
            [torch.zeros_like(params[k]) for k in self.names]
            for _ in range(1 if config.optimizer == "sgd" else 2)
        ]
        self.steps = torch.zeros(first.shape[0], dtype=torch.float64, device=first.device)

    @torch.no_grad()
    def step(self, params: Params, grads: Params, active: torch.Tensor) -> None:
        """One update of every active model; ``grads`` may be overwritten."""
        p = [params[k] for k in self.names]
        g = [grads[k] for k in self.names]
        idle = (~active).nonzero().flatten()
        saved = (
            [[t[idle].clone() for t in group] for group in (p, *self.state)] if len(idle) else []
        )
        self.steps += active.to(self.steps.dtype)
        if self.config.optimizer == "sgd":
            self._sgd(p, g)
        else:
            self._adam(p, g)
        for group, kept in zip((p, *self.state), saved):
            for tensor, old in zip(group, kept):
                tensor[idle] = old

    def _sgd(self, p: list[torch.Tensor], g: list[torch.Tensor]) -> None:
        cfg = self.config
        if cfg.weight_decay:
            torch._foreach_add_(g, p, alpha=cfg.weight_decay)
        if cfg.momentum:
            (buf,) = self.state
            torch._foreach_mul_(buf, cfg.momentum)
            torch._foreach_add_(buf, g)
            g = buf
        torch._foreach_add_(p, g, alpha=-cfg.lr)

    def _adam(self, p: list[torch.Tensor], g: list[torch.Tensor]) -> None:
        cfg = self.config
        beta1, beta2 = cfg.betas
        if cfg.optimizer == "adamw":
            torch._foreach_mul_(p, 1 - cfg.lr * cfg.weight_decay)
        elif cfg.weight_decay:
            torch._foreach_add_(g, p, alpha=cfg.weight_decay)
        m, v = self.state
        torch._foreach_lerp_(m, g, 1 - beta1)
        torch._foreach_mul_(v, beta2)
        torch._foreach_addcmul_(v, g, g, value=1 - beta2)
        steps = self.steps.clamp_min(1)
        step_size = cfg.lr / (1 - beta1**steps)  # [K], per model
        bias2_sqrt = (1 - beta2**steps).sqrt()
        for param, m_k, v_k in zip(p, m, v):
            shape = (-1,) + (1,) * (param.dim() - 1)
            denom = (v_k.sqrt() / bias2_sqrt.to(param.dtype).view(shape)).add_(1e-8)
            param.sub_(step_size.to(param.dtype).view(shape) * m_k / denom)
