"""Bad configs are one line naming the field: strict types, finite numbers, upper bounds,
ranges, and YAML files that are binary, huge, nested too deeply or have duplicate keys."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mnemoscope import config as config_module
from mnemoscope.config import (
    MAX_CONFIG_BYTES,
    DatasetConfig,
    StudyConfig,
    load_config,
    parse_config,
)
from mnemoscope.data import BUILTIN, BuiltinDataset, prepare
from mnemoscope.errors import ConfigError, DataError, UserError
from mnemoscope.influence.gradient_dot import GradDotConfig, TracInConfig
from mnemoscope.memorization import FeldmanZhangConfig
from mnemoscope.train import TrainConfig

BASE = {
    "name": "tiny",
    "seed": 0,
    "datasets": [{"name": "digits", "label_noise": 0.1, "n_samples": 300}],
    "archs": ["logreg", "mlp"],
    "train": {"epochs": 3, "batch_size": 64, "lr": 0.05},
    "memorization": [{"method": "feldman_zhang", "n_models": 4}],
    "influence": [{"method": "tracin", "checkpoints": 2}, {"method": "grad_dot"}],
    "analysis": {"n_bootstrap": 50},
}

INF, NAN = float("inf"), float("nan")


def _with(path: str, value) -> dict:
    """``BASE`` with the value at a dotted path (list indices as numbers) replaced."""
    config = json.loads(json.dumps(BASE))
    *parents, last = path.split(".")
    node = config
    for part in parents:
        node = node[int(part)] if part.isdigit() else node.setdefault(part, {})
    node[int(last) if last.isdigit() else last] = value
    return config


# (changed field, value, text the one-line message must contain)
BAD = [
    # strict types: booleans, numbers as strings, fractions for integers
    ("train.epochs", True, "train.epochs: Input should be a valid integer"),
    ("train.epochs", "5", "train.epochs: Input should be a valid integer"),
    ("train.epochs", 2.5, "train.epochs: Input should be a valid integer"),
    ("train.lr", "0.1", "train.lr: Input should be a valid number"),
    ("train.lr", True, "train.lr: Input should be a valid number"),
    ("train.betas", ["0.9", 0.999], "train.betas.0: Input should be a valid number"),
    ("train.betas", [0.9, False], "train.betas.1: Input should be a valid number"),
    ("train.betas", "0.9", "train.betas: Input should be a valid tuple"),
    ("train.betas", [0.9, 0.99, 0.9], "train.betas: Tuple should have at most 2 items"),
    ("seed", True, "seed: Input should be a valid integer"),
    ("seed", "0", "seed: Input should be a valid integer"),
    ("name", 7, "name: Input should be a valid string"),
    ("datasets.0.n_samples", 300.0, "datasets.0.n_samples: Input should be a valid integer"),
    ("datasets.0.label_noise", "0.1", "datasets.0.label_noise: Input should be a valid number"),
    ("analysis.n_bootstrap", False, "analysis.n_bootstrap: Input should be a valid integer"),
    ("memorization.0.n_models", True, "memorization.0.feldman_zhang.n_models: Input should be"),
    ("memorization.0.n_models", 4.0, "memorization.0.feldman_zhang.n_models: Input should be"),
    ("influence.0.checkpoints", "2", "influence.0.tracin.checkpoints: Input should be"),
    ("influence.1.batch_size", 1.5, "influence.1.grad_dot.batch_size: Input should be"),
    ("targets", {"n": True}, "targets.n: Input should be a valid integer"),
    ("executor", {"threads": True}, "executor.threads: expected a positive integer or 'auto'"),
    ("executor", {"threads": 2.0}, "executor.threads: expected a positive integer or 'auto'"),
    ("executor", {"num_cpus": "2"}, "executor.num_cpus: Input should be a valid integer"),
    ("influence.0.params", ["fc.weight", 3], "influence.0.tracin.params: expected 'all'"),
    ("influence.0.params", [], "influence.0.tracin.params: expected 'all'"),
    ("memorization.0.method", ["feldman_zhang"], "memorization.0: 'method' should be a string"),
    # finite numbers only
    ("train.lr", INF, "train.lr: Input should be a finite number"),
    ("train.lr", NAN, "train.lr: Input should be a finite number"),
    ("train.momentum", NAN, "train.momentum: Input should be a finite number"),
    ("train.weight_decay", INF, "train.weight_decay: Input should be a finite number"),
    ("train.betas", [0.9, NAN], "train.betas.1: Input should be a finite number"),
    ("datasets.0.label_noise", NAN, "datasets.0.label_noise: Input should be a finite number"),
    ("datasets.0.test_fraction", NAN, "datasets.0.test_fraction: Input should be a finite"),
    ("analysis.confidence", NAN, "analysis.confidence: Input should be a finite number"),
    ("memorization.0.subset_fraction", NAN, "feldman_zhang.subset_fraction: Input should be a fin"),
    # upper bounds
    ("train.epochs", 10_001, "train.epochs: Input should be less than or equal to 10000"),
    ("train.batch_size", 10**6 + 1, "train.batch_size: Input should be less than or equal to"),
    ("train.chunk_size", 100_001, "train.chunk_size: Input should be less than or equal to"),
    ("train.lr", 1e4, "train.lr: Input should be less than or equal to 1000"),
    ("train.weight_decay", 1e4, "train.weight_decay: Input should be less than or equal to"),
    ("train.epochs", 10**100, "train.epochs: Input should be less than or equal to 10000"),
    ("memorization.0.n_models", 100_001, "feldman_zhang.n_models: Input should be less than or"),
    ("influence.0.checkpoints", 1001, "influence.0.tracin.checkpoints: Input should be less"),
    ("influence.1.batch_size", 10**6 + 1, "influence.1.grad_dot.batch_size: Input should be les"),
    ("analysis.n_bootstrap", 100_001, "analysis.n_bootstrap: Input should be less than or equal"),
    ("datasets.0.n_samples", 10**7 + 1, "datasets.0.n_samples: Input should be less than or eq"),
    ("targets", {"n": 10**6 + 1}, "targets.n: Input should be less than or equal to 1000000"),
    ("targets", {"memory_mb": 2**20 + 1}, "targets.memory_mb: Input should be less than or equa"),
    ("executor", {"num_cpus": 4097}, "executor.num_cpus: Input should be less than or equal to"),
    ("executor", {"threads": 1025}, "executor.threads: Input should be less than or equal to"),
    # ranges
    ("train.betas", [0.9, 1.0], "train.betas.1: Input should be less than 1"),
    ("train.betas", [-0.1, 0.9], "train.betas.0: Input should be greater than or equal to 0"),
    ("seed", -1, "seed: Input should be greater than or equal to 0"),
    ("seed", 2**32, "seed: Input should be less than or equal to 4294967295"),
    (
        "memorization.0.subset_fraction",
        0.01,
        "memorization.0.feldman_zhang.subset_fraction: subset_fraction 0.01 with n_models 4: "
        "each example is in no subset or in all 4 (and gets no score) with probability 0.96",
    ),
    ("memorization.0.subset_fraction", 0.99, "lower subset_fraction"),
    ("datasets.0.n_samples", 9, "datasets.0.n_samples: digits has 10 classes"),
    # one line even when the input has line breaks
    ("datasets.0.name", "dig\nits", "datasets.0.name: unknown dataset 'dig\\nits'"),
    (
        "memorization.0.method",
        "a\u2028b",
        "memorization.0: unknown memorization method 'a\\u2028b'",
    ),
    ("colour\nred", 1, "colour\\nred: unknown key"),
]


def _one_line(message: str) -> None:
    assert len(message.splitlines()) == 1, repr(message)


@pytest.mark.parametrize(("path", "value", "message"), BAD, ids=[m for _, _, m in BAD])
def test_bad_value_is_one_line_naming_the_field(path, value, message):
    with pytest.raises(ConfigError) as caught:
        parse_config(_with(path, value))
    _one_line(str(caught.value))
    assert message in str(caught.value)
    assert str(caught.value).startswith("config error: ")


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("train.lr", 1),  # an integer where a float is meant is fine
        ("train.betas", [0, 0.5]),
        ("train.lr", 1e3),
        ("train.epochs", 10_000),
        ("seed", 2**32 - 1),
        ("executor", {"threads": "auto", "num_cpus": 4096}),
        ("executor", {"threads": 1024}),
        ("memorization.0", {"method": "feldman_zhang", "n_models": 2, "subset_fraction": 0.5}),
        ("memorization.0.subset_fraction", 0.5),
        ("datasets.0.n_samples", 10),
        ("influence.0.params", ["fc.weight"]),
    ],
)
def test_edge_values_are_accepted(path, value):
    # K = 2 at fraction 0.5: an example goes unscored with probability exactly 0.5
    assert isinstance(parse_config(_with(path, value)), StudyConfig)


def test_round_trips_keep_working():
    config = parse_config(_with("train.betas", [0.8, 0.9]))
    assert config.train.betas == (0.8, 0.9)
    # the runner re-validates dumps, python and JSON (where tuples become lists)
    for dump in (config.model_dump(), json.loads(json.dumps(config.model_dump(mode="json")))):
        assert StudyConfig.model_validate(dump) == config
        assert TrainConfig.model_validate(dump["train"]) == config.train
        assert DatasetConfig.model_validate(dump["datasets"][0]) == config.datasets[0]
    for entry in [*config.memorization, *config.influence]:
        assert type(entry).model_validate(entry.model_dump(mode="json")) == entry
    assert TrainConfig.model_validate_json(config.train.model_dump_json()) == config.train
    built = StudyConfig(
        datasets=[DatasetConfig(name="digits")],
        archs=["mlp"],
        train=TrainConfig(epochs=2, lr=1, betas=(0.5, 0.5)),
        memorization=[FeldmanZhangConfig(n_models=8)],
        influence=[TracInConfig(checkpoints=2, params=["fc.weight"]), GradDotConfig()],
    )
    assert StudyConfig.model_validate(built.model_dump()) == built
    assert TrainConfig(lr=np.float64(0.5)).lr == 0.5  # numpy floats are floats


def test_subset_fraction_message_for_a_too_small_fraction():
    with pytest.raises(ValueError, match=r"probability 0\.96; raise n_models or subset_fraction"):
        FeldmanZhangConfig(n_models=4, subset_fraction=0.01)
    with pytest.raises(ValueError, match=r"probability 0\.58; raise n_models or lower subset"):
        FeldmanZhangConfig(n_models=2)  # K = 2 at the default 0.7: 0.7² + 0.3² = 0.58
    FeldmanZhangConfig(n_models=3)  # 0.7³ + 0.3³ = 0.37


# ---- YAML files -------------------------------------------------------------------------


def _load(tmp_path, content: str | bytes):
    path = tmp_path / "config.yaml"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    _one_line(str(caught.value))
    return str(caught.value)


BAD_YAML = [
    ("train: {lr: 0.1, lr: 0.2}\n", "line 1: duplicate key 'lr'"),
    ("name: a\nseed: 1\nname: b\n", "line 3: duplicate key 'name'"),
    (yaml.safe_dump(BASE) + "archs: [mlp]\n", "duplicate key 'archs'"),
    (b"name: \xff\xfe\n", "not UTF-8 text"),
    (bytes(range(256)), "not UTF-8 text"),
    ("name: a\x00b\n", "not valid YAML"),
    ("[" * 100_000, "nested too deeply"),
    ("a: " * 5_000 + "1", "not valid YAML"),  # 'mapping values are not allowed here'
    ("- " * 100_000 + "x", "nested too deeply"),
    ("name: [unclosed", "not valid YAML"),
    (
        "train: {epochs: true}\n" + yaml.safe_dump({k: v for k, v in BASE.items() if k != "train"}),
        "train.epochs: Input should be a valid integer",
    ),
    (
        "train: {lr: .inf}\ndatasets: [{name: digits}]\narchs: [mlp]\n",
        "train.lr: Input should be a finite number",
    ),
    (
        "train: {lr: .nan}\ndatasets: [{name: digits}]\narchs: [mlp]\n",
        "train.lr: Input should be a finite number",
    ),
    (
        "train: {lr: '0.1'}\ndatasets: [{name: digits}]\narchs: [mlp]\n",
        "train.lr: Input should be a valid number",
    ),
    (
        "name: 2024-01-01\ndatasets: [{name: digits}]\narchs: [mlp]\n",
        "name: Input should be a valid string",
    ),
    ("? [a, b]\n: 1\n", "not valid YAML"),  # an unhashable key
]


@pytest.fixture(params=["libyaml", "python"])
def loader(request, monkeypatch):
    """The loader ``load_config`` uses: libyaml's where PyYAML has it, else PyYAML's own."""
    if request.param == "python":

        class PythonLoader(config_module._NoDuplicateKeys, yaml.SafeLoader):
            pass

        monkeypatch.setattr(config_module, "_Loader", PythonLoader)
    elif not hasattr(yaml, "CSafeLoader"):
        pytest.skip("PyYAML without libyaml")
    return request.param


@pytest.mark.parametrize(("content", "message"), BAD_YAML, ids=[m for _, m in BAD_YAML])
def test_bad_yaml_is_one_line(tmp_path, loader, content, message):
    assert message in _load(tmp_path, content)


def test_yaml_that_is_accepted(tmp_path, loader):
    path = tmp_path / "config.yaml"
    path.write_text(
        "datasets:\n  - &d {name: digits, n_samples: 200}\narchs: [mlp]\n"
        "train: {betas: [0.5, 0.75], lr: 1}\n"
        "influence: [{<<: {method: grad_dot, batch_size: 8}, batch_size: 16}]\n",
        encoding="utf-8",
    )
    config = load_config(path)
    assert config.train.betas == (0.5, 0.75) and config.train.lr == 1.0
    assert config.influence[0].batch_size == 16  # a merge key may be overridden
    path.write_bytes(b"\xef\xbb\xbf" + b"datasets: [{name: digits}]\narchs: [mlp]\n")  # a BOM
    assert load_config(path).archs == ["mlp"]


def test_file_too_large_directory_and_missing(tmp_path):
    big = tmp_path / "big.yaml"
    big.write_bytes(b"#" * (MAX_CONFIG_BYTES + 1))
    with pytest.raises(ConfigError, match="config file too large"):
        load_config(big)
    with pytest.raises(ConfigError, match="config file is a directory"):
        load_config(tmp_path)
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_deeply_nested_python_data_is_a_config_error():
    nested: list = []
    for _ in range(100_000):
        nested = [nested]
    with pytest.raises(ConfigError) as caught:
        parse_config(_with("archs", nested))
    _one_line(str(caught.value))


# ---- the stratified split -------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "kwargs", "message"),
    [
        ("digits", {"test_fraction": 0.001}, "test_fraction 0.001 of 1797 examples leaves 2 test"),
        ("digits", {"test_fraction": 0.999}, "test_fraction 0.999 of 1797 examples leaves 1 train"),
        ("digits", {"n_samples": 30, "test_fraction": 0.2}, "test_fraction 0.2 of 30 examples"),
        ("digits", {"n_samples": 10}, "class 0 has 1 example of 10: test_fraction 0.2"),
        ("breast_cancer", {"n_samples": 2}, "test_fraction"),
    ],
)
def test_split_that_leaves_a_class_out_is_a_data_error(name, kwargs, message):
    with pytest.raises(DataError) as caught:
        prepare(name, seed=0, **kwargs)
    _one_line(str(caught.value))
    assert message in str(caught.value) and "test_fraction" in str(caught.value)


def test_rare_class_without_test_examples_is_named(monkeypatch):
    def skewed(n_samples, seed):  # class 0: 2 of 100 examples; 2 test examples go to class 1
        y = np.array([0] * 2 + [1] * 98, dtype=np.int64)
        return np.zeros((100, 3), dtype=np.float32), y

    spec = BuiltinDataset(
        name="skewed",
        kind="tabular",
        n_classes=2,
        default_samples=None,
        description="test",
        load=skewed,
    )
    monkeypatch.setitem(BUILTIN, "skewed", spec)
    with pytest.raises(DataError, match="test_fraction 0.02 leaves class 0 without test"):
        prepare("skewed", seed=0, test_fraction=0.02)


# ---- properties -------------------------------------------------------------------------


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(content=st.binary(max_size=2_000))
def test_random_bytes_raise_only_user_errors(tmp_path, content):
    path = tmp_path / "random.yaml"
    path.write_bytes(content)
    try:
        load_config(path)
    except UserError as error:
        _one_line(str(error))


_TOKENS = [*"{}[]:,-?&*!|>'\"#%@` \n\tabc01.e+", "<<", "&a", "*a", "!!binary", "!!set", "\u2028"]
_TOKENS += ["train", "lr", "datasets", "name", "digits", "archs", "mlp", ".inf", "1e999", "~"]


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(content=st.lists(st.sampled_from(_TOKENS), max_size=120).map("".join))
def test_yaml_like_text_raises_only_user_errors(tmp_path, content):
    path = tmp_path / "text.yaml"
    path.write_text(content, encoding="utf-8")
    try:
        load_config(path)
    except UserError as error:
        _one_line(str(error))


_junk = st.one_of(
    st.none(),
    st.booleans(),
    st.sampled_from([INF, -INF, NAN, 1e308, -0.0, 10**30, -(10**30), 2**63, 0, -1]),
    st.integers(),
    st.floats(),
    st.text(max_size=8),
    st.sampled_from(["auto", "all", "last_layer", "0.1", "5", "sgd", "digits", "\n"]),
    st.recursive(
        st.none() | st.integers() | st.text(max_size=3),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner),
        max_leaves=6,
    ),
)


def _maybe(valid: st.SearchStrategy) -> st.SearchStrategy:
    return st.one_of(valid, valid, _junk)


def _mapping(fields: dict[str, st.SearchStrategy]) -> st.SearchStrategy:
    """Some of the fields, each valid or junk, and now and then an unknown key."""
    return st.fixed_dictionaries(
        {}, optional={**{k: _maybe(v) for k, v in fields.items()}, "bogus": _junk}
    )


_fraction = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)
_count = st.integers(min_value=-1, max_value=200)

_train = _mapping(
    {
        "epochs": _count,
        "batch_size": _count,
        "optimizer": st.sampled_from(["sgd", "adam", "adamw", "rmsprop"]),
        "lr": st.floats(min_value=-1, max_value=2e3),
        "momentum": _fraction,
        "betas": st.lists(_maybe(_fraction), min_size=0, max_size=3),
        "weight_decay": _fraction,
        "chunk_size": _count | st.none(),
    }
)
_dataset = _mapping(
    {
        "name": st.sampled_from([*BUILTIN, "cifar10"]),
        "label_noise": _fraction,
        "test_fraction": _fraction,
        "n_samples": _count | st.none(),
    }
)
_fz = st.fixed_dictionaries(
    {"method": st.just("feldman_zhang")},
    optional={"n_models": _maybe(_count), "subset_fraction": _maybe(_fraction), "x": _junk},
)
_grad = st.fixed_dictionaries(
    {"method": _maybe(st.sampled_from(["grad_dot", "tracin"]))},
    optional={
        "params": _maybe(st.sampled_from(["all", "last_layer", [], ["fc.weight"]])),
        "batch_size": _maybe(_count),
        "checkpoints": _maybe(_count),
    },
)
_config = st.fixed_dictionaries(
    {
        "datasets": _maybe(st.lists(_dataset, max_size=2)),
        "archs": _maybe(st.lists(st.sampled_from(["logreg", "mlp", "cnn", "vgg"]), max_size=3)),
    },
    optional={
        "name": _maybe(st.text(max_size=5)),
        "seed": _maybe(st.integers(min_value=-2, max_value=2**33)),
        "device": _maybe(st.sampled_from(["cpu", "cuda", "auto", "tpu"])),
        "train": _maybe(_train),
        "memorization": _maybe(st.lists(_maybe(_fz), max_size=2)),
        "influence": _maybe(st.lists(_maybe(_grad), max_size=3)),
        "analysis": _maybe(_mapping({"n_bootstrap": _count, "confidence": _fraction})),
        "targets": _maybe(
            _mapping(
                {
                    "split": st.sampled_from(["test", "train"]),
                    "n": _count,
                    "memory_mb": _count,
                }
            )
            | st.none()
        ),
        "executor": _maybe(
            _mapping(
                {
                    "kind": st.sampled_from(["local", "ray"]),
                    "num_cpus": _count,
                    "threads": st.sampled_from(["auto", 1, 2, 0, 2000]),
                }
            )
        ),
    },
)


@settings(max_examples=200, deadline=None)
@given(data=_config)
def test_generated_configs_parse_or_raise_one_line_config_errors(data):
    try:
        config = parse_config(data)
    except ConfigError as error:
        _one_line(str(error))
        return
    # what was accepted is finite, bounded and survives the runner's round trip
    assert isinstance(config, StudyConfig)
    assert math.isfinite(config.train.lr) and 1 <= config.train.epochs <= 10_000
    assert StudyConfig.model_validate(json.loads(json.dumps(config.model_dump(mode="json"))))


@pytest.mark.parametrize(
    ("arch_train", "where"),
    [
        ({"cnn": {"lr": 0.01}}, "arch_train.cnn: 'cnn' is not in archs"),
        ({"mlp": {"lrr": 0.01}}, "arch_train.mlp.lrr: unknown key; known: epochs"),
        ({"mlp": {"lr": -1.0}}, "arch_train.mlp.lr: Input should be greater than 0"),
        ({"mlp": {"lr": "0.1"}}, "arch_train.mlp.lr: Input should be a valid number"),
        ({"mlp": {"epochs": 2.5}}, "arch_train.mlp.epochs: Input should be a valid integer"),
        ({"mlp": {"schedule": "linear"}}, "arch_train.mlp.schedule: Input should be"),
        ({"mlp": {"betas": [0.9, 1.5]}}, "arch_train.mlp.betas.1: Input should be less than 1"),
        ({"mlp": [1]}, "arch_train.mlp: Input should be a valid dictionary"),
        ({"mlp": {"optimizer": "lion"}}, "arch_train.mlp.optimizer: Input should be"),
    ],
)
def test_bad_arch_train_is_one_line_naming_it(arch_train, where):
    with pytest.raises(ConfigError) as error:
        parse_config({**BASE, "arch_train": arch_train})
    message = str(error.value)
    assert message.startswith(f"config error: {where}") and "\n" not in message


def test_arch_train_merges_over_train_and_reads_back_equal():
    config = parse_config(
        {**BASE, "arch_train": {"mlp": {"optimizer": "adamw", "lr": 0.001, "schedule": "cosine"}}}
    )
    mlp = config.train_for("mlp")
    assert (mlp.optimizer, mlp.lr, mlp.schedule) == ("adamw", 0.001, "cosine")
    assert (mlp.epochs, mlp.batch_size) == (3, 64)  # from the train block
    assert config.train_for("logreg") == config.train
    assert parse_config(config.model_dump(mode="json")) == config
    assert StudyConfig.model_validate(config.model_dump()) == config


def test_the_documented_arch_train_example_loads_as_documented():
    config = load_config(Path(__file__).parents[1] / "examples" / "arch_train.yaml")
    assert config.archs == ["logreg", "mlp", "cnn", "resnet", "transformer"]
    by_arch = {arch: config.train_for(arch) for arch in config.archs}
    assert {a: t.epochs for a, t in by_arch.items()} == {
        "logreg": 200,
        "mlp": 50,
        "cnn": 50,
        "resnet": 100,
        "transformer": 80,
    }
    assert by_arch["transformer"].lr == 0.005 and by_arch["mlp"].lr == 0.01
    assert all(t.schedule == "cosine" and t.weight_decay == 0.0 for t in by_arch.values())
