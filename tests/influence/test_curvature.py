"""The dense Gauss–Newton matrix of :class:`~mnemoscope.influence.curvature.Curvature`
(built from the logits' per-example Jacobians) against its definition by autograd."""

from __future__ import annotations

import torch

from mnemoscope.influence.curvature import Curvature
from mnemoscope.models import build_model
from mnemoscope.task import Task


def test_dense_gauss_newton_from_jacobians_equals_its_definition(digits_small):
    # (1/n) Σ_i J_iᵀ (diag p_i − p_i p_iᵀ) J_i + (l2 + λ) I with J_i by autograd, one example
    # and one logit at a time, on an mlp whose logits are not linear in the parameters
    torch.manual_seed(2)
    module = build_model("mlp", digits_small.input_shape, 10).double()
    params = {k: v.detach() for k, v in module.named_parameters()}
    names = ["3.bias", "5.weight"]
    x, y = digits_small.x_train[:15].double(), digits_small.y_train[:15]
    task = Task(l2=0.02)
    dense = Curvature(
        module, params, names, task, x, y, kind="gauss_newton", damping=0.5, batch_size=7
    ).dense()
    theta = [params[k].clone().requires_grad_(True) for k in names]
    truth = torch.zeros_like(dense)
    for i in range(len(y)):
        logits = torch.func.functional_call(
            module, {**params, **dict(zip(names, theta))}, x[i : i + 1]
        )[0]
        rows = [torch.autograd.grad(z, theta, retain_graph=True) for z in logits]
        jacobian = torch.stack([torch.cat([g.flatten() for g in row]) for row in rows])
        p = torch.softmax(logits.detach(), -1)
        truth += jacobian.T @ (torch.diag(p) - torch.outer(p, p)) @ jacobian
    truth = truth / len(y) + (0.02 + 0.5) * torch.eye(len(truth), dtype=torch.float64)
    torch.testing.assert_close(dense, truth, rtol=1e-8, atol=1e-12)
