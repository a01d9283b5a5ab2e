"""EK-FAC on a layer whose weight is also read outside its forward: the generic path, whose
diagonal Fisher is that of the full per-example gradient."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from mnemoscope.influence import EKFAC, EKFACConfig
from mnemoscope.models import register_arch
from mnemoscope.models.registry import ARCHITECTURES
from mnemoscope.task import Task
from tests.influence.test_ekfac import _random_model, _subset


class _SharedHead(nn.Module):
    """A head whose weight is also read outside its forward (through ``F.linear``)."""

    def __init__(self, input_shape, n_classes):
        super().__init__()
        self.first = nn.Linear(int(np.prod(input_shape)), 12)
        self.head = nn.Linear(12, n_classes)

    def forward(self, x):
        h = torch.tanh(self.first(x.flatten(1)))
        return self.head(h) + 0.5 * F.linear(h, self.head.weight)


@pytest.fixture
def shared_head():
    """The architecture registered for one test, then forgotten (a registered name would
    stay in the registry, and the catalog, for later tests)."""
    register_arch("shared_head_ekfac", _SharedHead)
    yield "shared_head_ekfac"
    ARCHITECTURES.pop("shared_head_ekfac", None)


def test_a_weight_read_outside_its_layer_takes_the_generic_path(digits_small, shared_head):
    data = _subset(digits_small, 40)
    model = _random_model(shared_head, data)
    estimator = EKFAC(EKFACConfig(fisher="empirical")).fit({"model": model}, data, Task())
    assert [layer.name for layer in estimator.layers_] == ["first"]  # the head's block is left
    assert estimator.generic_names_ == ["head.weight", "head.bias"]
    # its diagonal Fisher is the mean squared full per-example gradient (both reads)
    module = model.module()
    module.load_state_dict({k: v[0] for k, v in model.params.items()})
    squares = torch.zeros_like(module.head.weight, dtype=torch.float64)
    for i in range(data.n_train):
        loss = F.cross_entropy(module(data.x_train[i : i + 1]), data.y_train[i : i + 1])
        (g,) = torch.autograd.grad(loss, [module.head.weight])
        squares += g.double() ** 2
    lam = estimator.corrected_eigenvalues()["head.weight"]
    torch.testing.assert_close(lam, squares / data.n_train, rtol=1e-4, atol=1e-10)
