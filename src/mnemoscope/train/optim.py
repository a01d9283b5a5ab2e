"""SGD and Adam on stacked parameters ``[K, ...]``, one independent optimizer per model.

They follow ``torch.optim.SGD`` (no dampening, no Nesterov) and ``torch.optim.Adam``
/ ``AdamW`` update rules exactly, element-wise, so K models updated here match K
models each trained alone with torch's optimizers. ``active [K]`` lets a model
skip a step (its subset ran out of batches before the others'): its parameters
and optimizer state are left as they were. Under ``schedule: cosine`` each model's
learning rate follows its own step count (what ``torch.optim.lr_scheduler.LambdaLR``
stepped once per update gives a model trained alone).

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

    def __init__(
        self, params: Params, config: TrainConfig, total_steps: torch.Tensor | None = None
    ) -> None:
        """``total_steps [K]``: each model's steps over the whole run (needed by the
        cosine schedule)."""
        if config.schedule != "constant" and total_steps is None:
            raise ValueError(f"schedule {config.schedule!r} needs each model's total steps")
        self.config = config
        self.names = list(params)
        first = params[self.names[0]]
        self.state: list[list[torch.Tensor]] = [
            [torch.zeros_like(params[k]) for k in self.names]
            for _ in range(1 if config.optimizer == "sgd" else 2)
        ]
        self.steps = torch.zeros(first.shape[0], dtype=torch.float64, device=first.device)
        self.total_steps = (
            None
            if total_steps is None
            else torch.as_tensor(total_steps, dtype=torch.float64, device=first.device)
        )

    def current_lr(self) -> torch.Tensor | float:
        """The learning rate of each model's next update, ``[K]`` (a float if constant):
        ``lr · ½(1 + cos(π t / T))`` after t of T steps under the cosine schedule."""
        if self.config.schedule == "constant":
            return self.config.lr
        assert self.total_steps is not None
        return self.config.lr * 0.5 * (1 + torch.cos(torch.pi * self.steps / self.total_steps))

    @torch.no_grad()
    def step(self, params: Params, grads: Params, active: torch.Tensor) -> None:
        """One update of every active model; ``grads`` may be overwritten."""
        p = [params[k] for k in self.names]
        g = [grads[k] for k in self.names]
        idle = (~active).nonzero().flatten()
        saved = (
            [[t[idle].clone() for t in group] for group in (p, *self.state)] if len(idle) else []
        )
        lr = self.current_lr()
        self.steps += active.to(self.steps.dtype)
        if self.config.optimizer == "sgd":
            self._sgd(p, g, lr)
        else:
            self._adam(p, g, lr)
        for group, kept in zip((p, *self.state), saved):
            for tensor, old in zip(group, kept):
                tensor[idle] = old

    def _sgd(self, p: list[torch.Tensor], g: list[torch.Tensor], lr: torch.Tensor | float) -> None:
        cfg = self.config
        if cfg.weight_decay:
            torch._foreach_add_(g, p, alpha=cfg.weight_decay)
        if cfg.momentum:
            (buf,) = self.state
            torch._foreach_mul_(buf, cfg.momentum)
            torch._foreach_add_(buf, g)
            g = buf
        if isinstance(lr, float):
            torch._foreach_add_(p, g, alpha=-lr)
        else:
            for param, grad in zip(p, g):
                param.sub_(grad * _per_model(lr, param))

    def _adam(self, p: list[torch.Tensor], g: list[torch.Tensor], lr: torch.Tensor | float) -> None:
        cfg = self.config
        beta1, beta2 = cfg.betas
        if cfg.optimizer == "adamw" and isinstance(lr, float):
            torch._foreach_mul_(p, 1 - lr * cfg.weight_decay)
        elif cfg.optimizer == "adamw":
            for param in p:
                param.mul_(_per_model(1 - lr * cfg.weight_decay, param))
        elif cfg.weight_decay:
            torch._foreach_add_(g, p, alpha=cfg.weight_decay)
        m, v = self.state
        torch._foreach_lerp_(m, g, 1 - beta1)
        torch._foreach_mul_(v, beta2)
        torch._foreach_addcmul_(v, g, g, value=1 - beta2)
        steps = self.steps.clamp_min(1)
        step_size = lr / (1 - beta1**steps)  # [K], per model
        bias2_sqrt = (1 - beta2**steps).sqrt()
        for param, m_k, v_k in zip(p, m, v):
            shape = (-1,) + (1,) * (param.dim() - 1)
            denom = (v_k.sqrt() / bias2_sqrt.to(param.dtype).view(shape)).add_(1e-8)
            param.sub_(step_size.to(param.dtype).view(shape) * m_k / denom)


def _per_model(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``values [K]`` shaped to scale ``like [K, ...]`` model by model, in its dtype."""
    return values.to(like.dtype).view((-1,) + (1,) * (like.dim() - 1))
