"""Layer-wise per-example gradient norms and dots against per-example autograd and vmap(grad)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn.metrics import roc_auc_score
from torch import nn
from torch.func import functional_call

from mnemoscope.data import prepare
from mnemoscope.errors import ConfigError
from mnemoscope.influence import TracIn, TracInConfig
from mnemoscope.influence.adapters import _BLOCK_FLOATS, Outer
from mnemoscope.influence.gradients import per_example_grads, select_params
from mnemoscope.influence.layerwise import (
    GradientFactors,
    LayerwiseGradients,
    gradient_factors,
)
from mnemoscope.models import build_model
from mnemoscope.task import Task
from mnemoscope.train import TrainConfig, full_masks, train_ensemble


def _perturbed(module: nn.Module, seed: int = 0) -> dict[str, torch.Tensor]:
    """float64 parameters away from their initial values (GroupNorm's γ=1, β=0 included)."""
    module.double()
    generator = torch.Generator().manual_seed(seed)
    return {
        name: (p + 0.3 * torch.randn(p.shape, generator=generator, dtype=p.dtype)).detach()
        for name, p in module.named_parameters()
    }


def _loop_grads(module, params, x, y, names, measurement="loss") -> torch.Tensor:
    """``[n, P]`` per-example gradients, one example at a time with plain autograd."""
    rows = []
    for i in range(len(y)):
        own = {k: v.detach().requires_grad_(k in names) for k, v in params.items()}
        logits = functional_call(module, own, (x[i : i + 1],))
        value = Task.measure(logits, y[i : i + 1], measurement)[0]
        grads = torch.autograd.grad(value, [own[k] for k in names], allow_unused=True)
        grads = [torch.zeros_like(own[k]) if g is None else g for k, g in zip(names, grads)]
        rows.append(torch.cat([g.flatten() for g in grads]))
    return torch.stack(rows)


def _batched_factors(module, params, x, y, names, batch, measurement="loss") -> list:
    """The factors of consecutive batches of ``batch`` examples, as tracin takes them."""
    factors = LayerwiseGradients(module, names, Task(), measurement)
    return [factors(params, xb, yb) for xb, yb in zip(x.split(batch), y.split(batch))]


def _sq_norms(module, params, x, y, names, batch, measurement="loss") -> torch.Tensor:
    parts = _batched_factors(module, params, x, y, names, batch, measurement)
    return torch.cat([f.sq_norms() for f in parts])


def _assert_matches(module, params, x, y, x_t, y_t, names, measurement="loss", batch=10):
    expected = _loop_grads(module, params, x, y, names, measurement)
    expected_t = _loop_grads(module, params, x_t, y_t, names, measurement)
    norms = _sq_norms(module, params, x, y, names, batch, measurement)
    torch.testing.assert_close(norms, (expected**2).sum(1), rtol=1e-9, atol=1e-12)
    # the targets' factors held as one batch (GradientFactors.cat), the training ones streamed
    targets = GradientFactors.cat(
        _batched_factors(module, params, x_t, y_t, names, batch, measurement)
    )
    train = _batched_factors(module, params, x, y, names, batch, measurement)
    dots = torch.cat([f.dots(targets) for f in train])
    torch.testing.assert_close(dots, expected @ expected_t.T, rtol=1e-9, atol=1e-12)
    return expected


CASES = {  # dataset, arch, a list selection
    "logreg": ("digits_small", "logreg", ["1.bias"]),
    "mlp": ("digits_small", "mlp", ["1.bias", "3.weight"]),
    "cnn-2d": ("digits_small", "cnn", ["0.weight", "1.bias", "5.weight", "11.weight"]),
    "cnn-1d": ("mnist1d_small", "cnn", ["0.bias", "4.weight", "5.weight", "9.weight"]),
}


@pytest.mark.parametrize("measurement", ["loss", "margin"])
@pytest.mark.parametrize("selection", ["all", "last_layer", "list"])
@pytest.mark.parametrize("case", list(CASES))
def test_layerwise_equals_per_example_autograd(request, case, selection, measurement):
    fixture, arch, chosen = CASES[case]
    data = request.getfixturevalue(fixture)
    torch.manual_seed(0)
    module = build_model(arch, data.input_shape, data.n_classes)
    params = _perturbed(module)
    names = select_params(module, chosen if selection == "list" else selection)
    x, y = data.x_train[:23].double(), data.y_train[:23]
    x_t, y_t = data.x_test[:13].double(), data.y_test[:13]
    _assert_matches(module, params, x, y, x_t, y_t, names, measurement)
    # every layer of the registry's models is handled layer-wise: no vmap(grad) at all
    assert gradient_factors(module, params, x[:4], y[:4], names).fallback == []


@pytest.mark.parametrize("arch", ["mlp", "cnn"])
def test_layerwise_equals_vmap_grad_in_float32(digits_small, arch):
    torch.manual_seed(1)
    module = build_model(arch, digits_small.input_shape, digits_small.n_classes)
    params = {k: v.detach() for k, v in module.named_parameters()}
    names = list(params)
    x, y = digits_small.x_train[:64], digits_small.y_train[:64]
    grads = torch.cat(list(per_example_grads(module, params, x, y, names, 32))).double()
    norms = _sq_norms(module, params, x, y, names, 32)
    torch.testing.assert_close(norms, (grads**2).sum(1), rtol=1e-5, atol=0)


def test_normalisation_layers_on_flat_features(digits_small):
    # LayerNorm and GroupNorm on [b, C]: no positions to sum over, one γ entry per feature
    module = nn.Sequential(
        nn.Flatten(), nn.Linear(64, 16), nn.LayerNorm(16), nn.GroupNorm(4, 16), nn.Linear(16, 10)
    )
    params = _perturbed(module)
    names = list(params)
    x, y = digits_small.x_train[:11].double(), digits_small.y_train[:11]
    _assert_matches(module, params, x, y, x[:3], y[:3], names, batch=4)
    assert gradient_factors(module, params, x, y, names).fallback == []


class Scaled(nn.Module):
    """A parameter in an element-wise product: no layer-wise identity applies."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(width))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h * self.scale


class Awkward(nn.Module):
    """Every way a layer-wise shortcut could silently go wrong, next to layers where it holds."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(8, 12)  # applied at 8 positions: [b, 8, 8] → [b, 8, 12]
        self.norm = nn.LayerNorm(12)
        self.scaled = Scaled(96)
        self.shared = nn.Linear(96, 96)  # applied twice
        self.peek = nn.Linear(96, 16)  # its weight is also read outside the layer
        self.inplace = nn.Linear(16, 16)  # its output is modified in place
        self.tied_a = nn.Linear(16, 16, bias=False)
        self.tied_b = nn.Linear(16, 16, bias=False)
        self.tied_b.weight = self.tied_a.weight  # one tensor, two names
        self.out = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(torch.tanh(self.embed(x.view(-1, 8, 8)))).flatten(1)
        h = self.scaled(h)
        h = torch.tanh(self.shared(torch.tanh(self.shared(h))))
        h = self.peek(h) + 0.1 * h[:, :16] @ self.peek.weight[:, :16].T
        h = self.inplace(h).tanh_()
        h = self.tied_b(torch.tanh(self.tied_a(h)))
        return self.out(h)


def test_unsupported_uses_fall_back_to_exact_values(digits_small):
    module = Awkward()
    params = _perturbed(module)
    names = select_params(module, "all")
    x, y = digits_small.x_train[:17].double(), digits_small.y_train[:17]
    x_t, y_t = digits_small.x_test[:6].double(), digits_small.y_test[:6]
    expected = _assert_matches(module, params, x, y, x_t, y_t, names)
    factors = gradient_factors(module, params, x, y, names)
    assert set(factors.fallback) == {
        "scaled.scale",
        "shared.weight",
        "shared.bias",
        "peek.weight",
        "inplace.weight",
        "inplace.bias",
        "tied_a.weight",
    }
    # the layers whose identities hold are still taken layer-wise, and the vmap(grad)
    # path agrees with the loop on this model too
    assert {"embed.weight", "norm.weight", "peek.bias", "out.weight"}.isdisjoint(factors.fallback)
    grads = torch.cat(list(per_example_grads(module, params, x, y, names, 8)))
    torch.testing.assert_close(grads, expected, rtol=1e-9, atol=1e-12)


class ModifiesInput(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 5), nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x) + 1.0
        logits = self.b(h)
        h.mul_(0.5)  # after `b` read it: `b`'s recorded input is no longer what it saw
        return logits


def test_a_layer_whose_input_is_modified_in_place_falls_back():
    module = ModifiesInput()
    params = _perturbed(module)
    x, y = torch.randn(6, 4, dtype=torch.float64), torch.tensor([0, 1, 2, 0, 1, 2])
    names = ["a.weight", "b.bias"]
    assert gradient_factors(module, params, x, y, names).fallback == ["b.bias"]
    _assert_matches(module, params, x, y, x[:2], y[:2], names)


def test_cross_example_layers_are_never_taken_layer_wise():
    module = nn.Sequential(nn.Flatten(), nn.Linear(4, 5), nn.BatchNorm1d(5), nn.Linear(5, 3))
    params = _perturbed(module)
    x, y = torch.randn(6, 4, dtype=torch.float64), torch.tensor([0, 1, 2, 0, 1, 2])
    names = list(params)
    module.eval()  # running statistics: each example on its own, Linear layers layer-wise
    assert gradient_factors(module, params, x, y, names).fallback == ["2.weight", "2.bias"]
    _assert_matches(module, params, x, y, x[:2], y[:2], names)
    module.train()  # batch statistics mix examples: all vmap(grad), which refuses BatchNorm
    with pytest.raises(RuntimeError):
        gradient_factors(module, params, x, y, names)


class SometimesTwice(nn.Module):
    """Calls ``a`` a second time while ``twice`` is set: the decision to take ``a``
    layer-wise, made on an earlier batch, no longer holds then."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 3)
        self.twice = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.a(x))
        if self.twice:
            h = torch.tanh(self.a(h))
        return self.b(h)


def test_layers_reused_across_batches_are_checked_on_each_batch():
    module = SometimesTwice()
    params = _perturbed(module)
    names = list(params)
    x, y = torch.randn(6, 4, dtype=torch.float64), torch.arange(6) % 3
    factors = LayerwiseGradients(module, names)
    twice_a = ["a.weight", "a.bias"]
    # the second batch calls `a` twice: it is watched again, and `a` falls back from then on
    for twice, fallback in ((False, []), (True, twice_a), (False, twice_a)):
        module.twice = twice
        part = factors(params, x, y)
        assert part.fallback == fallback
        expected = _loop_grads(module, params, x, y, names)
        torch.testing.assert_close(part.sq_norms(), (expected**2).sum(1), rtol=1e-9, atol=1e-12)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    dims=st.sampled_from([1, 2]),
    kernel=st.integers(1, 3),
    stride=st.integers(1, 2),
    padding=st.integers(0, 2),
    dilation=st.integers(1, 2),
    groups=st.sampled_from([1, 2]),
    padding_mode=st.sampled_from(["zeros", "circular"]),
    bias=st.booleans(),
)
def test_any_convolution_geometry(
    dims, kernel, stride, padding, dilation, groups, padding_mode, bias
):
    conv = (nn.Conv1d if dims == 1 else nn.Conv2d)(
        2, 4, kernel, stride, padding, dilation, groups, bias, padding_mode
    )
    size = 7
    out = (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1
    module = nn.Sequential(conv, nn.Flatten(), nn.Linear(4 * out**dims, 3))
    torch.manual_seed(0)
    params = _perturbed(module)
    x = torch.randn(9, 2, *[size] * dims, dtype=torch.float64)
    y = torch.arange(9) % 3
    names = list(params)
    _assert_matches(module, params, x, y, x[:3], y[:3], names, batch=4)
    layerwise = groups == 1 and padding_mode == "zeros"
    fallback = gradient_factors(module, params, x, y, names).fallback
    assert fallback == ([] if layerwise else [n for n in names if n.startswith("0.")])


@pytest.mark.parametrize(
    ("channels", "size", "dims", "geometry", "channels_last"),
    [
        (1, 8, 2, (1, 1, 1), False),
        (8, 4, 2, (1, 1, 1), True),
        (2, 9, 1, (1, 1, 1), False),
        (6, 5, 1, (1, 1, 1), True),
        (3, 9, 2, (2, 2, 2), True),  # stride, dilation, padding
        (2, 7, 2, (1, 2, 0), True),
    ],
)
def test_conv_weight_gradients_come_in_the_weights_order(
    channels, size, dims, geometry, channels_last
):
    # the patches are copied channels-last where kernel_w·C > the output's width; the
    # per-example weight gradients must come back in the order of weight.flatten() either way
    stride, dilation, padding = geometry
    conv = (nn.Conv1d if dims == 1 else nn.Conv2d)(
        channels, 5, 3, stride=stride, padding=padding, dilation=dilation
    )
    out = (size + 2 * padding - dilation * 2 - 1) // stride + 1
    module = nn.Sequential(conv, nn.Flatten(), nn.Linear(5 * out**dims, 3))
    torch.manual_seed(0)
    params = _perturbed(module)
    x = torch.randn(7, channels, *[size] * dims, dtype=torch.float64)
    y = torch.arange(7) % 3
    piece = gradient_factors(module, params, x, y, ["0.weight"]).pieces["0.weight"]
    assert (piece.channels_last is not None) == channels_last
    expected = _loop_grads(module, params, x, y, ["0.weight"])
    torch.testing.assert_close(piece.dense, expected, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(piece.sq_norms(), (expected**2).sum(1), rtol=1e-9, atol=1e-12)


def test_squared_norms_of_products_taken_in_blocks_of_rows():
    # out·patch above the block size: one example's product at a time, the same norms
    generator = torch.Generator().manual_seed(0)
    u, d = (torch.randn(3, 400, 400, generator=generator, dtype=torch.float64) for _ in "ud")
    piece = Outer(u, d)
    assert piece.u.shape[1] * piece.d.shape[1] > _BLOCK_FLOATS
    expected = torch.stack([(d[i] @ u[i].T).square().sum() for i in range(3)])
    torch.testing.assert_close(piece.sq_norms(), expected, rtol=1e-12, atol=0)


@settings(max_examples=20, deadline=None)
@given(names=st.lists(st.text(min_size=0, max_size=8), max_size=3))
def test_unknown_or_no_names_are_config_errors(names):
    module = build_model("logreg", (4,), 3)
    params = dict(module.named_parameters())
    if names and all(name in params for name in names):
        return
    with pytest.raises(ConfigError, match="params"):
        gradient_factors(module, params, torch.randn(2, 4), torch.tensor([0, 1]), names)


def test_tracin_over_layerwise_gradients_equals_vmap_grad(digits_small):
    # the estimator end to end, on trained checkpoints: the fast path gives vmap(grad)'s sum
    model = train_ensemble(
        "cnn",
        digits_small,
        full_masks(1, digits_small.n_train),
        TrainConfig(epochs=4, batch_size=64, lr=0.05),
        seed=0,
        checkpoint_epochs=[2, 4],
    )
    estimator = TracIn(TracInConfig(checkpoints=2, batch_size=100))
    scores = estimator.fit({"model": model}, digits_small, Task()).self_influence().score
    module = model.module()
    names = [n for n, _ in module.named_parameters()]
    expected = np.zeros(digits_small.n_train)
    for ckpt in model.checkpoints:
        params = {k: v[0] for k, v in ckpt.params.items()}
        grads = per_example_grads(module, params, digits_small.x_train, digits_small.y_train, names)
        expected += ckpt.lr * torch.cat([(g.double() ** 2).sum(1) for g in grads]).numpy()
    np.testing.assert_allclose(scores, expected, rtol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["mlp", "cnn"])
def test_full_digits_tracin_equals_vmap_grad_and_flags_flipped_labels(arch):
    # The benchmark's setting: all 1,437 training examples, 5 checkpoints over 10 epochs.
    data = prepare("digits", seed=0, label_noise=0.1)
    model = train_ensemble(
        arch,
        data,
        full_masks(1, data.n_train),
        TrainConfig(epochs=10, batch_size=64, lr=0.05),
        seed=0,
        checkpoint_epochs=[2, 4, 6, 8, 10],
    )
    scores = TracIn(TracInConfig(checkpoints=5)).fit({"model": model}, data, Task())
    scores = scores.self_influence().score
    module = model.module()
    names = [n for n, _ in module.named_parameters()]
    expected = np.zeros(data.n_train)
    for ckpt in model.checkpoints:
        params = {k: v[0] for k, v in ckpt.params.items()}
        grads = per_example_grads(module, params, data.x_train, data.y_train, names)
        expected += ckpt.lr * torch.cat([(g.double() ** 2).sum(1) for g in grads]).numpy()
    np.testing.assert_allclose(scores, expected, rtol=1e-5)
    auc = roc_auc_score(data.is_mislabeled.numpy(), scores)
    print(f"{arch}: flipped-label ROC AUC {auc:.3f}")
    assert auc > 0.95
