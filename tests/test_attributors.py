"""Scores for the user's own model (mnemoscope.attributors): the public classes give the
run directory's scores exactly, for every influence method of the registry; a plain-PyTorch
ResNet with BatchNorm, trained outside mnemoscope, is attributed in eval mode; inputs as
tensors, Dataset or DataLoader; bad settings are one-line errors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn
from torch.func import functional_call, grad, vmap
from torch.utils.data import DataLoader, TensorDataset

import mnemoscope as ms
from mnemoscope.attributors import ATTRIBUTORS
from mnemoscope.errors import ConfigError, DataError
from mnemoscope.estimator import estimators
from mnemoscope.influence.gradient_dot import evenly_spaced_epochs
from mnemoscope.runner.stages import load_dataset
from mnemoscope.task import Task
from mnemoscope.train import TrainedEnsemble

SETTINGS = {  # small but not default-free: checkpoints and ensembles are exercised
    "tracin": {"checkpoints": 2},
    "trak": {"n_models": 1, "checkpoints": 2, "proj_dim": 16},
    "loo": {"n_examples": 4, "repeats": 1},
    "downsampling": {"n_models": 6},
    "if_lissa": {"depth": 50},
}


def _influence_config() -> dict:
    methods = [{"method": m, **SETTINGS.get(m, {})} for m in sorted(estimators("influence"))]
    return {
        "name": "api-equality",
        "datasets": [{"name": "blobs", "n_samples": 60}],
        "archs": ["logreg"],
        "train": {"epochs": 4, "batch_size": 16, "lr": 0.1, "weight_decay": 0.01},
        "influence": methods,
        "targets": {"split": "test", "n": 3},
        "analysis": {"n_bootstrap": 10},
    }


def _user_model(ensemble: TrainedEnsemble, params) -> nn.Module:
    module = ensemble.module()
    module.load_state_dict({k: v[0] for k, v in params.items()})
    return module


def test_every_influence_method_has_a_public_class():
    assert {cls.method for cls in ATTRIBUTORS.values()} == set(estimators("influence"))
    assert ms.TracIn is ATTRIBUTORS["TracIn"] and ms.IFEKFAC.method == "if_ekfac"


def test_public_api_equals_the_run_directory_for_every_influence_method(tmp_path):
    config = _influence_config()
    results = ms.run(config, tmp_path)
    stages = {s.name: s for s in ms.plan(config, tmp_path)}
    train = {"epochs": 4, "batch_size": 16, "lr": 0.1, "weight_decay": 0.01}
    for method in sorted(estimators("influence")):
        args = stages[f"scores/blobs/logreg/{method}"].args
        dataset = load_dataset(tmp_path, args["dataset"])
        task = Task(**args["task"])
        roles = {
            r: TrainedEnsemble.load_parts([tmp_path / f for f in fs])
            for r, fs in args["ensembles"].items()
        }
        settings = SETTINGS.get(method, {})
        single = all(e.n_models == 1 for e in roles.values())
        if single:  # the user's trained model, with the checkpoints the method reads
            (ensemble,) = roles.values()
            count = args["method"].get("checkpoints", 1)
            reads_checkpoints = count > 1 or method == "tracin"
            epochs = evenly_spaced_epochs(count, ensemble.epochs) if reads_checkpoints else []
            kept = [ensemble.checkpoint(e) for e in epochs]
            checkpoints = [({k: v[0] for k, v in c.params.items()}, c.lr) for c in kept]
            settings = {k: v for k, v in settings.items() if k != "checkpoints"}  # from the list
            scorer = ms.Attributor(method, checkpoints=checkpoints, **settings)
            scorer.fit(_user_model(ensemble, ensemble.params), dataset, task=task)
        else:  # the ensemble engine trains what the method declares, with the run's seeds
            scorer = ms.Attributor(method, **settings)
            scorer.fit("logreg", dataset, train_config=train, seed=0)
        expected = results.scores.query("method == @method").sort_values("example_id")
        got = scorer.frame().sort_values("example_id")
        np.testing.assert_array_equal(got.example_id.to_numpy(), expected.example_id.to_numpy())
        np.testing.assert_allclose(
            got.score.to_numpy(),
            expected.score.to_numpy(),
            rtol=1e-6,
            atol=1e-12,
            err_msg=method,
        )
        rows = results.influence.query("method == @method").sort_values(["train_id", "target_id"])
        matrix = scorer.influence((dataset.x_test[:3], dataset.y_test[:3])).numpy().ravel()
        # the run leaves out the pairs without an estimate (NaN: a method that cannot tell);
        # float32 features (trak) round differently in another process: 1e-6 of the scale
        expected = rows.score.to_numpy()
        np.testing.assert_allclose(
            matrix[~np.isnan(matrix)],
            expected,
            rtol=1e-5,
            atol=1e-6 * np.abs(expected).max(),
            err_msg=method,
        )


class BasicBlock(nn.Module):
    """torchvision's ResNet BasicBlock, in plain PyTorch (in-place ReLU, `out += identity`)."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = (
            nn.Sequential(
                nn.Conv2d(inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
            )
            if stride != 1 or inplanes != planes
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity
        return self.relu(out)


class TinyResNet(nn.Module):
    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(1, 4, 3, 1, 1, bias=False), nn.BatchNorm2d(4), nn.ReLU()
        )
        self.layer1 = BasicBlock(4, 4)
        self.layer2 = BasicBlock(4, 8, stride=2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.layer2(self.layer1(self.stem(x)))), 1))


def _corners(n: int = 48, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 6, 6, generator=g) * 0.3
    y = torch.arange(n) % 3
    for i, label in enumerate(y.tolist()):
        r, c = divmod(label, 2)
        x[i, 0, 3 * r : 3 * r + 3, 3 * c : 3 * c + 3] += 1.0
    return x, y


@pytest.fixture(scope="module")
def resnet_run():
    """A BatchNorm ResNet trained as users train (train mode, minibatches, torch.optim)."""
    torch.manual_seed(0)
    x, y = _corners()
    model = TinyResNet()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    checkpoints = []
    for _ in range(3):
        model.train()
        for xb, yb in DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(xb), yb).backward()
            optimizer.step()
        state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        checkpoints.append((state, 0.05))
    return model, x, y, checkpoints


def test_resnet_with_batchnorm_in_eval_mode(resnet_run):
    model, x, y, checkpoints = resnet_run
    tracin = ms.TracIn(checkpoints=checkpoints).fit(model, (x, y))
    # the closed form: Σ_c η_c ‖∇ℓ(z_i; θ_c)‖² with the eval-mode forward (running stats)
    module = TinyResNet().eval()
    module.load_state_dict(model.state_dict())
    expected = torch.zeros(len(y), dtype=torch.float64)
    for state, lr in checkpoints:
        params = {k: state[k] for k, _ in module.named_parameters()}

        def loss(p, xi, yi):
            return nn.functional.cross_entropy(functional_call(module, p, (xi[None],)), yi[None])

        g = vmap(grad(loss), in_dims=(None, 0, 0))(params, x, y)
        expected += lr * sum(v.flatten(1).double().pow(2).sum(1) for v in g.values())
    torch.testing.assert_close(tracin.self_influence(), expected, rtol=1e-4, atol=1e-8)
    assert model.training  # the user's model is copied, not switched to eval
    for attributor in (ms.TRAK(checkpoints=checkpoints, proj_dim=32), ms.IFEKFAC(damping=1e-3)):
        attributor.fit(model, DataLoader(TensorDataset(x, y), batch_size=10))
        diagonal = attributor.influence((x, y)).diagonal()
        assert bool(torch.isfinite(diagonal).all())
        torch.testing.assert_close(diagonal, attributor.self_influence(), rtol=1e-3, atol=1e-6)


def test_inputs_as_tensors_dataset_or_loader_agree():
    x, y = _corners(30)
    torch.manual_seed(1)
    model = nn.Sequential(nn.Flatten(), nn.Linear(36, 3))
    by_tensors = ms.GradDot().fit(model, (x, y)).self_influence()
    by_dataset = ms.GradDot().fit(model, TensorDataset(x, y)).self_influence()
    by_loader = (
        ms.GradDot().fit(model, DataLoader(TensorDataset(x, y), batch_size=7)).self_influence()
    )
    by_arrays = ms.attribute("grad_dot", model, (x.numpy(), y.numpy()))
    for other in (by_dataset, by_loader, by_arrays):
        torch.testing.assert_close(other, by_tensors)
    frame = ms.GradDot().fit(model, (x, y)).frame()
    assert isinstance(frame, pd.DataFrame) and list(frame.example_id) == list(range(30))


def test_bad_settings_and_inputs_are_one_line_errors():
    x, y = _corners(12)
    model = nn.Sequential(nn.Flatten(), nn.Linear(36, 3))
    for make, words in (
        (lambda: ms.TracIn(checkpointz=2), "tracin.checkpointz: unknown setting"),
        (lambda: ms.TRAK(proj_dim=0), "trak.proj_dim"),
        (lambda: ms.Attributor("nope"), "unknown method 'nope'"),
        (lambda: ms.Attributor("feldman_zhang"), "not an influence method"),
        (lambda: ms.TRAK(n_models=3).fit(model, (x, y)), "fit it on an arch name or a factory"),
        (lambda: ms.LOO().fit(model, (x, y)), "fit it on an arch name or a factory"),
        (lambda: ms.Scorer("csl").fit(model, (x, y)), "a memorization method trains its models"),
        (lambda: ms.GradDot(params=["nope"]).fit(model, (x, y)), "unknown parameter names"),
        (lambda: ms.GradDot().self_influence(), "call fit(model, train) first"),
        (lambda: ms.TracIn(checkpoints=[({}, 0.1)]).fit(model, (x, y)), "checkpoints[0]"),
        (lambda: ms.GradDot().fit(model, (x, y[:5])), "train: expected x [N, ...] and y [N]"),
        (lambda: ms.GradDot().fit(model, "data.csv"), "train: expected (x, y)"),
        (
            lambda: ms.Scorer("forgetting").fit("logreg", (x, y), train_config={"epochz": 1}),
            "train_config.epochz: unknown key",
        ),
    ):
        with pytest.raises((ConfigError, DataError)) as error:
            make()
        assert words in str(error.value) and "\n" not in str(error.value)


def test_memorization_through_the_ensemble_engine_equals_a_run(tmp_path):
    config = {
        "datasets": [{"name": "blobs", "n_samples": 60}],
        "archs": ["logreg"],
        "train": {"epochs": 3, "batch_size": 16, "lr": 0.1},
        "memorization": [{"method": "feldman_zhang", "n_models": 6}],
        "analysis": {"n_bootstrap": 10},
    }
    results = ms.run(config, tmp_path)
    (stage,) = [s for s in ms.plan(config, tmp_path) if s.name.startswith("scores/")]
    dataset = load_dataset(tmp_path, stage.args["dataset"])
    scorer = ms.Scorer("feldman_zhang", n_models=6).fit(
        "logreg", dataset, train_config=config["train"]
    )
    expected = results.scores.sort_values("example_id").score.to_numpy()
    np.testing.assert_allclose(scorer.frame().score.to_numpy(), expected, rtol=1e-12)
