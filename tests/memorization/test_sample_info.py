"""Sample information (SI, F-SI) of the linearized network against ground truth: the
linearized network actually retrained without each example (a least-squares solve in
weight space, outputs by forward-mode differentiation of the real network), the
leave-one-out update against an explicit re-inversion, the estimator against brute force,
projections against the exact kernel; and, measured only, against the real network
retrained without each example (MLP and CNN)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import roc_auc_score
from torch import nn
from torch.func import functional_call, jvp

from mnemoscope.config import parse_config
from mnemoscope.data import Dataset, prepare
from mnemoscope.errors import ConfigError
from mnemoscope.estimator import PlanContext
from mnemoscope.memorization import (
    SampleInfoConfig,
    SampleInfoFunction,
    SampleInfoFunctionConfig,
    SampleInfoWeights,
)
from mnemoscope.memorization import sample_info as sample_info_module
from mnemoscope.memorization.ntk import (
    GaussianProjection,
    leave_one_out_directions,
    output_jacobian,
    ridge_inverse,
)
from mnemoscope.memorization.sample_info import sample_information
from mnemoscope.projection import RandomProjection
from mnemoscope.task import Task
from mnemoscope.train import TrainConfig, derive_seed, full_masks, train_ensemble


def _two_digits(n_train: int, n_test: int = 40, flip: float = 0.0, classes=(3, 8)) -> Dataset:
    """Digits of two classes relabelled 0/1; ``flip`` of the training labels swapped."""
    pool = prepare("digits", seed=0)
    a, b = classes

    def pick(x, y, ids, count):
        keep = ((y == a) | (y == b)).nonzero().flatten()[:count]
        return x[keep], (y[keep] == b).long(), ids[keep]

    x, y, ids = pick(pool.x_train, pool.y_train, pool.train_ids, n_train)
    xt, yt, idt = pick(pool.x_test, pool.y_test, pool.test_ids, n_test)
    noisy = y.clone()
    flipped = torch.randperm(len(y), generator=torch.Generator().manual_seed(1))
    flipped = flipped[: int(round(flip * len(y)))]
    noisy[flipped] = 1 - noisy[flipped]
    return Dataset("digits38", "image", x, noisy, y, ids, xt, yt, idt, 2)


def _narrow_mlp(width: int = 16, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, width), nn.ReLU(), nn.Linear(width, 2))


def _params(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().double() for k, v in module.named_parameters()}


def _loop_jacobian(module, params, x) -> torch.Tensor:
    """``[b·k, P]`` by one backward pass per (example, logit), no vmap."""
    names = list(params)
    rows = []
    for xi in x.double():
        theta = {k: v.clone().requires_grad_(True) for k, v in params.items()}
        out = functional_call(module, theta, (xi[None],))[0]
        for c in range(out.shape[0]):
            grads = torch.autograd.grad(out[c], [theta[k] for k in names], retain_graph=True)
            rows.append(torch.cat([g.flatten() for g in grads]))
    return torch.stack(rows)


def _pearson(a, b) -> float:
    return float(np.corrcoef(np.asarray(a, float), np.asarray(b, float))[0, 1])


def _retrained_linearized(module, params, x, y, x_eval, l2):
    """Train the linearized network with and without each example by solving its
    summed-squared-error + (λ/2)‖w − w0‖² problem in weight space (normal equations,
    P × P), then compare weights and, via jvp of the real network at w0, outputs."""
    names = list(params)
    jac = _loop_jacobian(module, params, x)  # [n·k, P]
    f0 = functional_call(module, params, (x.double(),))
    n, k = f0.shape
    residual = (nn.functional.one_hot(y, k).double() - f0).flatten()
    eye = torch.eye(jac.shape[1], dtype=torch.float64)

    def solve(rows):
        j = jac[rows]
        return torch.linalg.solve(j.T @ j + l2 * eye, j.T @ residual[rows])

    full = solve(torch.arange(n * k))
    weights, function = [], []
    for i in range(n):
        keep = torch.tensor([r for r in range(n * k) if r // k != i])
        delta = full - solve(keep)
        weights.append(float(delta @ delta))
        shapes = [params[name].shape for name in names]
        pieces = delta.split([math.prod(s) for s in shapes])
        tangent = {name: p.view(s) for name, p, s in zip(names, pieces, shapes)}
        _, change = jvp(
            lambda th: functional_call(module, th, (x_eval.double(),)), (params,), (tangent,)
        )
        function.append(float((change**2).sum() / len(x_eval)))
    return np.array(weights) / 2, np.array(function) / 2


def test_loo_update_equals_explicit_reinversion():
    generator = torch.Generator().manual_seed(0)
    n, k, l2 = 12, 3, 0.05
    jac = torch.randn(n * k, 30, generator=generator, dtype=torch.float64)
    residual = torch.randn(n * k, generator=generator, dtype=torch.float64)
    inverse = ridge_inverse(jac @ jac.T, l2)
    alpha = inverse @ residual
    u, blocks = leave_one_out_directions(inverse, alpha, k)
    kernel = jac @ jac.T + l2 * torch.eye(n * k, dtype=torch.float64)
    for i in range(n):
        keep = torch.tensor([r for r in range(n * k) if r // k != i])
        reinverted = torch.zeros(n * k, dtype=torch.float64)
        reinverted[keep] = torch.linalg.inv(kernel[keep][:, keep]) @ residual[keep]
        updated = alpha - inverse[:, i * k : (i + 1) * k] @ u[i]
        torch.testing.assert_close(updated, reinverted, rtol=0, atol=1e-8)
        torch.testing.assert_close(blocks[i], inverse[i * k : (i + 1) * k, i * k : (i + 1) * k])


def _linearized_check(n_train: int, width: int) -> tuple[float, float]:
    data = _two_digits(n_train)
    module = _narrow_mlp(width)
    params = _params(module)
    config = SampleInfoFunctionConfig(l2=1e-2)
    x_eval = data.x_test[:20]
    info = sample_information(
        module, params, data.x_train, data.y_train, config, list(params), x_eval
    )
    weights, function = _retrained_linearized(
        module, params, data.x_train, data.y_train, x_eval, config.l2
    )
    np.testing.assert_allclose(info.weights.numpy(), weights, rtol=1e-5)
    np.testing.assert_allclose(info.function.numpy(), function, rtol=1e-5)
    r_w, r_f = _pearson(info.weights, weights), _pearson(info.function, function)
    assert r_w >= 0.99 and r_f >= 0.99, (r_w, r_f)
    return r_w, r_f


def test_closed_form_equals_retrained_linearized_network():
    _linearized_check(60, width=8)


@pytest.mark.slow
def test_closed_form_equals_retrained_linearized_network_full():
    print("linearized, n=200: Pearson SI, F-SI =", _linearized_check(200, width=16))


@pytest.fixture(scope="module")
def trained_mlp():
    data = _two_digits(40, n_test=30)
    model = train_ensemble(
        "mlp",
        data,
        full_masks(1, data.n_train),
        TrainConfig(epochs=2, batch_size=20, lr=0.05),
        seed=0,
        keep_initial=True,
    )
    return model, data


def test_estimators_equal_brute_force_on_the_initial_mlp(trained_mlp):
    """The estimators (vmap(jacrev), Schur update, ‖Jᵀδα‖² identity) against per-example
    autograd Jacobians, a re-solve without each example and Jᵀδα formed explicitly."""
    model, data = trained_mlp
    spec = SampleInfoWeights(SampleInfoConfig()).ensembles(PlanContext(data.n_train, 2, 0))
    assert spec["model"].keep_initial and bool(spec["model"].masks.all())
    weights_estimator = SampleInfoWeights(SampleInfoConfig(l2=0.1, sigma2=2.0)).fit(
        {"model": model}, data, Task()
    )
    config = SampleInfoFunctionConfig(l2=0.1, sigma2=2.0, n_eval=10, seed=3, batch_size=7)
    function_estimator = SampleInfoFunction(config).fit({"model": model}, data, Task())
    si, fsi = weights_estimator.score(), function_estimator.score()
    assert list(si.example_ids) == data.train_ids.tolist() == list(fsi.example_ids)

    module = model.module()
    initial = {k: v[0].double() for k, v in model.initial.items()}
    generator = torch.Generator().manual_seed(derive_seed(3, 0xE7A1))
    chosen = torch.randperm(data.n_test, generator=generator)[:10].sort().values
    jac = _loop_jacobian(module, initial, data.x_train)
    jac_eval = _loop_jacobian(module, initial, data.x_test[chosen])
    f0 = functional_call(module, initial, (data.x_train.double(),))
    n, k = f0.shape
    residual = (nn.functional.one_hot(data.y_train, k).double() - f0).flatten()
    kernel = jac @ jac.T + 0.1 * torch.eye(n * k, dtype=torch.float64)
    alpha = torch.linalg.solve(kernel, residual)
    expected_w, expected_f = [], []
    for i in range(n):
        keep = torch.tensor([r for r in range(n * k) if r // k != i])
        alpha_i = torch.zeros_like(alpha)
        alpha_i[keep] = torch.linalg.solve(kernel[keep][:, keep], residual[keep])
        delta_w = jac.T @ (alpha - alpha_i)
        expected_w.append(float(delta_w @ delta_w) / 4)
        expected_f.append(float(((jac_eval @ delta_w) ** 2).sum()) / 10 / 4)
    np.testing.assert_allclose(si.score, expected_w, rtol=1e-6)
    np.testing.assert_allclose(fsi.score, expected_f, rtol=1e-6)
    # the initial weights, not the trained ones
    final = {k: v[0].double() for k, v in model.params.items()}
    assert not torch.allclose(final["1.weight"], initial["1.weight"])

    restored = SampleInfoFunction(config).load_fitted(
        function_estimator.fitted_state(), {"model": model}, data, Task()
    )
    np.testing.assert_array_equal(restored.score().score, fsi.score)


def test_projected_jacobian_is_the_shared_random_projection_of_each_tensor():
    """Sample information projects each tensor's Jacobian columns with the projector TRAK
    uses (float64 Gaussian, variance 1/dim, one key per tensor); smaller tensors stay
    exact."""
    data = _two_digits(12)
    module = _narrow_mlp()  # a 1024-entry first-layer weight, the rest under 300
    params = _params(module)
    names = list(params)
    sizes = {name: params[name].numel() for name in names}
    projection = GaussianProjection(300, 5, sizes, torch.device("cpu"))
    exact = output_jacobian(module, params, data.x_train, names, 4)
    projected = output_jacobian(module, params, data.x_train, names, 4, projection)
    blocks, start = [], 0
    for position, size in enumerate(sizes.values()):
        block = exact[:, start : start + size]
        start += size
        if size <= 300:
            blocks.append(block)
            continue
        shared = RandomProjection(size, 300, "gaussian", torch.float64, cache_bytes=None)
        matrix = shared.matrix((5, 0x5A3F, position))
        assert matrix.dtype == torch.float64 and abs(float(matrix.var()) * 300 - 1) < 0.05
        blocks.append(block @ matrix)
    torch.testing.assert_close(projected, torch.cat(blocks, 1), rtol=1e-10, atol=1e-12)


def test_projection_approaches_the_exact_scores():
    data = _two_digits(40)
    module = _narrow_mlp(width=64)  # a 4096-entry first-layer weight
    params = _params(module)
    x_eval = data.x_test[:10]

    def scores(proj_dim, seed=0):
        config = SampleInfoFunctionConfig(l2=0.1, proj_dim=proj_dim, seed=seed)
        info = sample_information(
            module, params, data.x_train, data.y_train, config, list(params), x_eval
        )
        return info.weights.numpy(), info.function.numpy()

    exact = scores(None)
    errors = {}
    for dim in (16, 3000):
        projected = scores(dim)
        errors[dim] = [np.abs(p - e).sum() / np.abs(e).sum() for p, e in zip(projected, exact)]
        assert all(np.isfinite(projected[0])) and all(np.isfinite(projected[1]))
    assert all(big < small for big, small in zip(errors[3000], errors[16])), errors
    assert max(errors[3000]) < 0.1, errors
    near = scores(3000)
    assert _pearson(near[0], exact[0]) > 0.98 and _pearson(near[1], exact[1]) > 0.98
    np.testing.assert_array_equal(scores(16)[0], scores(16)[0])  # seeded
    assert not np.array_equal(scores(16, seed=1)[0], scores(16)[0])


def test_flipped_labels_carry_more_unique_information():
    data = _two_digits(60, flip=0.1)
    module = _narrow_mlp()
    params = _params(module)
    config = SampleInfoFunctionConfig(l2=1e-2)
    info = sample_information(
        module, params, data.x_train, data.y_train, config, list(params), data.x_test
    )
    flipped = data.is_mislabeled.numpy()
    assert roc_auc_score(flipped, info.weights) > 0.9
    assert roc_auc_score(flipped, info.function) > 0.9


BASE = {
    "name": "si",
    "seed": 0,
    "datasets": [{"name": "digits", "n_samples": 100}],
    "archs": ["mlp"],
    "train": {"epochs": 1},
    "memorization": [{"method": "sample_info_function"}],
}


def _config_with(**entry):
    config = json.loads(json.dumps(BASE))
    config["memorization"][0].update(entry)
    return config


def test_config_accepts_the_documented_entry():
    config = parse_config(
        _config_with(l2=1e-3, sigma2=1.0, proj_dim=None, n_eval=200, params="last_layer")
    )
    assert isinstance(config.memorization[0], SampleInfoFunctionConfig)


@pytest.mark.parametrize(
    "key, value",
    [
        ("l2", 0.0),
        ("l2", -1.0),
        ("l2", True),
        ("l2", "0.1"),
        ("l2", float("nan")),
        ("sigma2", 0.0),
        ("sigma2", float("inf")),
        ("proj_dim", 0),
        ("proj_dim", 2.5),
        ("proj_dim", 10**7),
        ("n_eval", 0),
        ("n_eval", True),
        ("params", []),
        ("batch_size", 0),
        ("seed", -1),
        ("bogus", 1),
    ],
)
def test_bad_values_are_one_line_config_errors(key, value):
    with pytest.raises(ConfigError, match=rf"memorization\.0\.sample_info_function\.{key}"):
        parse_config(_config_with(**{key: value}))


@settings(max_examples=40, deadline=None)
@given(
    st.one_of(
        st.floats(max_value=0.0),
        st.floats(min_value=1e6, exclude_min=True),
        st.booleans(),
        st.text(max_size=5),
        st.lists(st.integers(), max_size=2),
    )
)
def test_generated_bad_l2_is_refused(value):
    with pytest.raises(ConfigError, match="sample_info_function.l2"):
        parse_config(_config_with(l2=value))


def test_oversized_problems_are_refused_in_one_line(monkeypatch):
    too_many = sample_info_module.MAX_OUTPUTS // 2 + 1
    with pytest.raises(ConfigError, match="n_samples"):
        SampleInfoWeights(SampleInfoConfig()).ensembles(PlanContext(too_many, 1, 0))
    data = _two_digits(20)
    module = _narrow_mlp()
    params = _params(module)
    monkeypatch.setattr(sample_info_module, "MAX_JACOBIAN_BYTES", 1000)
    with pytest.raises(ConfigError, match="proj_dim") as error:
        sample_information(
            module, params, data.x_train, data.y_train, SampleInfoConfig(), list(params)
        )
    assert "\n" not in str(error.value)
    with pytest.raises(ConfigError, match="params: unknown parameter names"):
        SampleInfoWeights(SampleInfoConfig(params=["nope"])).check_model(module)


# --- the real network, retrained without each example: measured, not asserted ---------


def _real_network_pearson(arch: str, n_train: int, epochs: int) -> tuple[float, float]:
    """Pearson of SI / F-SI (linearized at the shared init) against the real network's
    ``‖w − w_{−i}‖²/2`` and mean ``‖f_w(x_j) − f_{w−i}(x_j)‖²/2`` over the test points, the
    n + 1 models trained by the project's trainer (cross-entropy, full-batch GD with
    momentum 0.9, lr 0.1, no weight decay) from one init, with and without each example."""
    data = _two_digits(n_train, n_test=40)
    masks = torch.ones(n_train + 1, n_train, dtype=torch.bool)
    masks[1:] &= ~torch.eye(n_train, dtype=torch.bool)
    train = TrainConfig(epochs=epochs, batch_size=n_train, lr=0.1, weight_decay=0.0)
    model = train_ensemble(
        arch, data, masks, train, seed=0, init="shared", order="shared", keep_initial=True
    )
    weights = torch.cat([v.flatten(1) for v in model.params.values()], 1).double()
    real_w = ((weights[0] - weights[1:]) ** 2).sum(1) / 2
    logits = model.test_logits.double()
    real_f = ((logits[0] - logits[1:]) ** 2).sum((1, 2)) / data.n_test / 2
    config = SampleInfoFunctionConfig(n_eval=data.n_test)
    si = SampleInfoWeights(SampleInfoConfig()).fit({"model": model}, data, Task()).score()
    fsi = SampleInfoFunction(config).fit({"model": model}, data, Task()).score()
    r_w, r_f = _pearson(si.score, real_w), _pearson(fsi.score, real_f)
    assert math.isfinite(r_w) and math.isfinite(r_f)
    print(f"{arch} from scratch, n={n_train}: Pearson SI {r_w:.3f}, F-SI {r_f:.3f}")
    return r_w, r_f


def test_real_network_retrained_without_each_example_small():
    _real_network_pearson("mlp", 12, 100)


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["mlp", "cnn"])
def test_real_network_retrained_without_each_example(arch):
    _real_network_pearson(arch, 100, 300)
