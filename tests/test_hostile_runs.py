"""Generated configs, valid and hostile, through ``mnemoscope run`` in-process: exit code
0 or 2 only, never a traceback, one line on 2, and nothing left that a later valid run
would trip over."""

from __future__ import annotations

import copy
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from mnemoscope.cli import app
from mnemoscope.config import parse_config
from mnemoscope.store import RunDir

VALID = {
    "name": "hostile",
    "seed": 0,
    "datasets": [{"name": "digits", "label_noise": 0.1, "n_samples": 100}],
    "archs": ["logreg"],
    "train": {"epochs": 1, "batch_size": 32, "lr": 0.05},
    "memorization": [{"method": "feldman_zhang", "n_models": 3}],
    "influence": [{"method": "grad_dot"}],
    "analysis": {"n_bootstrap": 5},
}

# Where a value can go, and the small valid values a generated config may also hold
# (large valid values would make a run long, not hostile).
FIELDS = {
    ("seed",): [0, 3],
    ("train", "epochs"): [1, 2],
    ("train", "batch_size"): [16, 64],
    ("train", "lr"): [0.01, 0.1],
    ("train", "momentum"): [0.0, 0.5],
    ("train", "betas"): [[0.9, 0.99]],
    ("train", "weight_decay"): [0.0],
    ("train", "chunk_size"): [2, None],
    ("datasets", 0, "label_noise"): [0.0, 0.2],
    ("datasets", 0, "test_fraction"): [0.3],
    ("datasets", 0, "n_samples"): [80, 120],
    ("memorization", 0, "n_models"): [2, 4],
    ("memorization", 0, "subset_fraction"): [0.5],
    ("influence", 0, "params"): ["last_layer", ["1.weight"]],
    ("influence", 0, "batch_size"): [8],
    ("analysis", "n_bootstrap"): [3],
    ("analysis", "confidence"): [0.9],
    ("archs",): [["logreg"], ["mlp"]],
    ("targets",): [{"split": "test", "n": 3}],
    ("executor",): [{"kind": "local", "threads": 1}],
}
HOSTILE = st.one_of(
    st.sampled_from(
        [float("inf"), float("-inf"), float("nan"), -1, 0, 10**15, 2**64, 1e12, True, False]
    ),
    st.sampled_from(["5", "0.1", "", "auto", "\x00", "é" * 3, None, [], {}, [[[]]], [1, 2, 3]]),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
)


def _set(config: dict, path: tuple, value: object) -> None:
    node = config
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value


@st.composite
def configs(draw) -> dict:
    config = copy.deepcopy(VALID)
    for path in draw(st.lists(st.sampled_from(sorted(FIELDS, key=str)), max_size=3, unique=True)):
        valid = draw(st.booleans())
        value = draw(st.sampled_from(FIELDS[path])) if valid else draw(HOSTILE)
        _set(config, path, value)
    return config


def _run(config_text: str | bytes, root: Path) -> tuple[int, str]:
    path = root / "study.yaml"
    path.write_bytes(config_text if isinstance(config_text, bytes) else config_text.encode())
    result = CliRunner().invoke(app, ["run", str(path), "--out", str(root / "out")])
    return result.exit_code, result.output


def _check(code: int, output: str, root: Path) -> None:
    assert code in (0, 2), output
    assert "Traceback" not in output
    if code == 2:
        # the error is one line, the last; a run that failed mid-way printed its progress
        # before it (stages done or cached, warnings), and nothing else
        lines = [line for line in output.splitlines() if line.strip()]
        assert lines[-1].startswith("error: "), output
        assert all(line.startswith(("done ", "cached ", "warning ")) for line in lines[:-1]), output
        # a later valid run in the same directory is not refused
        RunDir(root / "out").claim(parse_config(VALID).model_dump(mode="json"))


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(config=configs())
def test_generated_configs_run_or_fail_in_one_line(tmp_path_factory, config):
    root = tmp_path_factory.mktemp("hostile")
    code, output = _run(yaml.safe_dump(config, allow_unicode=True), root)
    _check(code, output, root)


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.binary(max_size=200))
def test_random_bytes_as_a_config_fail_in_one_line(tmp_path_factory, data):
    root = tmp_path_factory.mktemp("bytes")
    code, output = _run(data, root)
    _check(code, output, root)
