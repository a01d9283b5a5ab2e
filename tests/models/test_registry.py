"""Architecture options in the config, user architectures (register_arch) end to end, and
the models that are refused when built: BatchNorm, forwards that fail under vmap."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from mnemoscope.config import parse_config
from mnemoscope.errors import ConfigError
from mnemoscope.models import (
    ARCHITECTURES,
    ArchOptions,
    arch_options,
    arch_source,
    build_model,
    register_arch,
)
from mnemoscope.runner import run_study
from mnemoscope.runner.plan import Planner
from mnemoscope.store import DatasetInfo, RunDir
from mnemoscope.train import TrainedEnsemble

BASE = {
    "name": "archs",
    "seed": 0,
    "datasets": [{"name": "digits", "label_noise": 0.1, "n_samples": 200}],
    "archs": ["mlp", "cnn"],
    "train": {"epochs": 2, "batch_size": 64, "lr": 0.05},
    "analysis": {"n_bootstrap": 20},
}


@pytest.fixture
def user_arch():
    """Register user architectures for one test, then forget them."""
    names = []

    def register(name, factory, **kwargs):
        names.append(name)
        return register_arch(name, factory, **kwargs)

    yield register
    for name in names:
        ARCHITECTURES.pop(name, None)


def _tiny_gn(input_shape, n_classes):
    """A user model: conv + GroupNorm + ReLU, average pool, linear head."""
    return nn.Sequential(
        nn.Conv2d(input_shape[0], 4, 3, padding=1),
        nn.GroupNorm(2, 4),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, n_classes),
    )


def test_archs_without_options_are_unchanged():
    config = parse_config(BASE)
    assert config.archs == ["mlp", "cnn"] and config.arch_options == {}


def test_options_are_validated_and_kept():
    config = parse_config(
        {
            **BASE,
            "archs": ["resnet", "transformer", "mlp"],
            "arch_options": {"resnet": {"width": 32, "depth": 3}, "mlp": {"width": 64}},
        }
    )
    assert config.arch_options == {"resnet": {"width": 32, "depth": 3}, "mlp": {"width": 64}}
    assert parse_config(config.model_dump()) == config  # a run's stored config reads back


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            {"resnet": {"widht": 3}},
            r"arch_options\.resnet\.widht: unknown option; known: width, depth$",
        ),
        (
            {"resnet": {"width": 0}},
            r"arch_options\.resnet\.width: Input should be greater than or equal to 1",
        ),
        (
            {"resnet": {"depth": 65}},
            r"arch_options\.resnet\.depth: Input should be less than or equal to 64",
        ),
        (
            {"transformer": {"width": 30}},
            r"arch_options\.transformer: width 30 is not a multiple of heads 4",
        ),
        (
            {"transformer": {"pool": "max"}},
            r"arch_options\.transformer\.pool: Input should be 'mean' or 'cls'",
        ),
        ({"cnn": {"width": 8}}, r"arch_options\.cnn: arch 'cnn' takes no options"),
        (
            {"mlp": {"width": 8}},
            r"arch_options\.mlp: 'mlp' is not in archs \['resnet', 'transformer', 'cnn'\]",
        ),
        ({"resnet": 3}, r"arch_options\.resnet: Input should be a valid dictionary"),
    ],
)
def test_bad_options_are_one_line_errors_naming_the_field(options, message):
    with pytest.raises(ConfigError, match=r"^config error: " + message) as caught:
        parse_config({**BASE, "archs": ["resnet", "transformer", "cnn"], "arch_options": options})
    assert "\n" not in str(caught.value)


@settings(max_examples=40, deadline=None)
@given(
    st.one_of(
        st.text(max_size=4),
        st.booleans(),
        st.floats(allow_nan=True, allow_infinity=True),
        st.integers(max_value=0),
        st.integers(min_value=4097),
        st.none(),
        st.lists(st.integers(), max_size=2),
    )
)
def test_any_bad_width_is_refused_naming_it(width):
    with pytest.raises(ConfigError, match=r"^config error: arch_options\.resnet\.width: "):
        parse_config({**BASE, "archs": ["resnet"], "arch_options": {"resnet": {"width": width}}})


def test_build_model_checks_options_too():
    with pytest.raises(ConfigError, match=r"arch_options\.resnet\.heads: unknown option"):
        build_model("resnet", (1, 8, 8), 10, heads=2)
    assert arch_options("transformer", {"heads": 2, "width": 8}) == {
        "width": 8,
        "depth": 2,
        "heads": 2,
        "patch": None,
        "pool": "mean",
    }


def test_options_enter_the_training_key(tmp_path):
    info = DatasetInfo(
        kind="image",
        input_shape=[1, 8, 8],
        n_classes=10,
        n_train=160,
        n_test=40,
        n_mislabeled=16,
        label_noise=0.1,
        fingerprint="x",
    )

    def keys(options):
        cfg = parse_config(
            {
                **BASE,
                "archs": ["resnet"],
                "arch_options": options,
                "influence": [{"method": "grad_dot"}],
            }
        )
        planner = Planner(cfg, RunDir(tmp_path), "cpu")
        planner.data_stages()
        return {s.name: s.key for s in planner.study_stages({"digits": info})}

    default, explicit, wider = (
        keys({}),
        keys({"resnet": {"width": 16}}),
        keys({"resnet": {"width": 32}}),
    )
    (train,) = [name for name in default if name.startswith("train/")]
    assert wider[train] != default[train]
    assert wider["scores/digits/resnet/grad_dot"] != default["scores/digits/resnet/grad_dot"]
    # an option given its default value is the same model
    assert explicit == default


class _Counter(nn.Module):
    """Updates a running mean buffer in place from the batch, as BatchNorm does."""

    def __init__(self, d, n_classes):
        super().__init__()
        self.fc = nn.Linear(d, n_classes)
        self.register_buffer("mean", torch.zeros(d))

    def forward(self, x):
        x = x.flatten(1)
        self.mean.copy_(x.mean(0))
        return self.fc(x)


class _ItemBranch(nn.Module):
    def __init__(self, d, n_classes):
        super().__init__()
        self.fc = nn.Linear(d, n_classes)

    def forward(self, x):
        x = x.flatten(1)
        return self.fc(x) if x.sum().item() > 0 else -self.fc(x)


class _Squeezes(nn.Module):
    """Drops the batch dimension of a batch of one: fails on single examples."""

    def __init__(self, d, n_classes):
        super().__init__()
        self.fc = nn.Linear(d, n_classes)

    def forward(self, x):
        return self.fc(x.flatten(1).squeeze())


@pytest.mark.parametrize(
    ("module", "message"),
    [
        (_Counter, "fails under torch.func.vmap over stacked models"),
        (_ItemBranch, "fails under torch.func.vmap over stacked models"),
        (_Squeezes, r"fails on single examples under torch.func.vmap\(grad\)"),
        (
            lambda d, n: nn.Sequential(nn.Flatten(), nn.Linear(d, n), nn.Dropout(0.5)),
            "fails under torch.func.vmap over stacked models",
        ),
        (
            lambda d, n: nn.Sequential(nn.Flatten(), nn.Linear(d, n + 1)),
            r"on a batch \[B, \*input_shape\] returns shape \[3, 11\], expected \[3, 10\]",
        ),
    ],
)
def test_models_that_do_not_run_under_vmap_are_refused(user_arch, module, message):
    user_arch("broken", lambda shape, n: module(math.prod(shape), n))
    with pytest.raises(ConfigError, match=r"^arch 'broken': the forward pass " + message) as caught:
        build_model("broken", (1, 8, 8), 10)
    assert "\n" not in str(caught.value) and "no BatchNorm" in str(caught.value)


@pytest.mark.parametrize("norm", [nn.BatchNorm1d, nn.BatchNorm2d, nn.SyncBatchNorm])
def test_batchnorm_is_refused_saying_why_and_what_to_use(user_arch, norm):
    user_arch(
        "with_bn",
        lambda shape, n: nn.Sequential(
            nn.Conv2d(1, 4, 3), norm(4), nn.Flatten(), nn.Linear(4 * 6 * 6, n)
        ),
    )
    with pytest.raises(ConfigError) as caught:
        build_model("with_bn", (1, 8, 8), 10)
    text = str(caught.value)
    assert text.startswith(f"arch 'with_bn': {norm.__name__} at '1' cannot be used")
    assert "running statistics" in text and "vmap" in text
    assert "use nn.GroupNorm or nn.LayerNorm" in text


def test_register_arch_refuses_bad_registrations(user_arch):
    with pytest.raises(ConfigError, match="built in"):
        register_arch("mlp", _tiny_gn)
    with pytest.raises(ConfigError, match="arch name"):
        register_arch("bad name/..", _tiny_gn)
    with pytest.raises(ConfigError, match="callable"):
        register_arch("not_callable", 3)
    with pytest.raises(ConfigError, match="ArchOptions"):
        register_arch("bad_options", _tiny_gn, options=dict)
    user_arch("raises", lambda shape, n: nn.Linear(shape[5], n))
    with pytest.raises(
        ConfigError, match=r"^arch 'raises': building the model .* failed \(IndexError"
    ):
        build_model("raises", (1, 8, 8), 10)
    user_arch("not_a_module", lambda shape, n: "model")
    with pytest.raises(ConfigError, match="not an nn.Module"):
        build_model("not_a_module", (1, 8, 8), 10)


def test_user_options_and_source_key(user_arch):
    class WidthOptions(ArchOptions):
        width: int = 4

    def factory(shape, n, width=4):
        return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(shape), width), nn.Linear(width, n))

    user_arch("user_width", factory, options=WidthOptions)
    assert build_model("user_width", (1, 8, 8), 10, width=6)[1].out_features == 6
    with pytest.raises(
        ConfigError, match=r"arch_options\.user_width\.depth: unknown option; known: width"
    ):
        build_model("user_width", (1, 8, 8), 10, depth=2)
    before = arch_source("user_width")
    user_arch("user_width", _tiny_gn)  # the same name, another factory: another key
    assert arch_source("user_width") != before


def test_registered_arch_runs_a_study_end_to_end(user_arch, tmp_path):
    user_arch("tiny_gn", _tiny_gn, description="conv + GroupNorm")
    config = parse_config(
        {
            **BASE,
            "archs": ["tiny_gn", "resnet"],
            "arch_options": {"resnet": {"width": 4, "depth": 1}},
            "memorization": [{"method": "feldman_zhang", "n_models": 3}],
            "influence": [{"method": "grad_dot", "params": "last_layer"}],
        }
    )
    result = run_study(config, tmp_path / "run")
    assert all(o.ran for o in result.outcomes)
    scores = pd.read_parquet(tmp_path / "run" / "scores.parquet")
    n_train = 160
    assert scores.groupby(["arch", "method"]).size().to_dict() == {
        (arch, method): n_train
        for arch in ("tiny_gn", "resnet")
        for method in ("feldman_zhang", "grad_dot")
    }
    grad_dot = scores[scores["method"] == "grad_dot"]
    assert grad_dot["score"].notna().all() and (grad_dot["score"] > 0).all()
    # with 3 models an example is never held out (NaN) with probability 0.7³ + 0.3³ = 0.37
    held_out = scores[scores["method"] == "feldman_zhang"]["score"].notna()
    assert 0.45 < held_out.mean() < 0.8
    (resnet_file,) = (tmp_path / "run" / "models").glob("digits__resnet__full*.safetensors")
    assert TrainedEnsemble.load(resnet_file).arch_options == {"width": 4, "depth": 1}
    again = run_study(config, tmp_path / "run")
    assert again.all_cached
