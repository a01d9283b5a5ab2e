"""The command line: bad input is one line and exit code 2, with nothing written."""

from __future__ import annotations

import json

import pytest
import yaml
from typer.testing import CliRunner

from mnemoscope.cli import app
from mnemoscope.estimator import REGISTRY
from tests.runner.test_study import TINY

runner = CliRunner()


def _known(family: str) -> str:
    """The registered methods of a family, as the error lists them (sorted)."""
    from mnemoscope.estimator import estimators

    return ", ".join(sorted(estimators(family)))


def _write(tmp_path, config) -> str:
    path = tmp_path / "config.yaml"
    path.write_text(config if isinstance(config, str) else yaml.safe_dump(config))
    return str(path)


def _with(change) -> dict:
    config = json.loads(json.dumps(TINY))
    change(config)
    return config


BAD = [
    (_with(lambda c: c.update(colour="red")), "colour: unknown key"),
    (_with(lambda c: c["train"].update(lr=0)), "train.lr: Input should be greater than 0"),
    (
        _with(lambda c: c["train"].update(epochs="many")),
        "train.epochs: Input should be a valid integer",
    ),
    (
        _with(lambda c: c["train"].update(optimizer="rmsprop")),
        "train.optimizer: Input should be 'sgd', 'adam' or 'adamw'",
    ),
    (
        _with(lambda c: c["train"].update(momentum=1.5)),
        "train.momentum: Input should be less than 1",
    ),
    (
        _with(lambda c: c.update(archs=["vgg"])),
        "archs: unknown arch ['vgg']; known: logreg, mlp, cnn",
    ),
    (_with(lambda c: c.update(archs=[])), "archs: List should have at least 1 item"),
    (
        _with(lambda c: c.update(datasets=[{"name": "cifar10"}])),
        "datasets.0.name: unknown dataset 'cifar10'; built-in: blobs, breast_cancer, digits, mnist1d",
    ),
    (
        _with(lambda c: c["datasets"][0].update(label_noise=-0.1)),
        "datasets.0.label_noise: Input should be greater than or equal to 0",
    ),
    (_with(lambda c: c["datasets"][0].update(shuffle=True)), "datasets.0.shuffle: unknown key"),
    (
        _with(lambda c: c["memorization"][0].update(subset_fraction=1.0)),
        "memorization.0.feldman_zhang.subset_fraction: Input should be less than 1",
    ),
    (
        _with(lambda c: c["memorization"][0].update(models=3)),
        "memorization.0.feldman_zhang.models: unknown key",
    ),
    (
        _with(lambda c: c["influence"].append({"method": "magic"})),
        f"influence.2: unknown influence method 'magic'; known: {_known('influence')}",
    ),
    (
        _with(lambda c: c["memorization"].append({"method": "tracin"})),
        f"memorization.1: unknown memorization method 'tracin'; known: {_known('memorization')}",
    ),
    (
        _with(lambda c: c["memorization"].append("feldman_zhang")),
        f"memorization.1: expected a mapping with a 'method' key; known: {_known('memorization')}",
    ),
    (
        _with(lambda c: c["influence"][0].update(params=[])),
        "influence.0.tracin.params: expected 'all', 'last_layer' or a non-empty list",
    ),
    (
        _with(lambda c: c.update(executor={"kind": "ray", "threads": 0})),
        "executor.threads: expected a positive integer or 'auto'",
    ),
    (
        _with(lambda c: c.update(executor={"kind": "dask"})),
        "executor.kind: Input should be 'local' or 'ray'",
    ),
    (
        _with(lambda c: c.update(targets={"split": "train", "n": 0})),
        "targets.n: Input should be greater than 0",
    ),
    (
        _with(lambda c: c["influence"].append({"method": "grad_dot"})),
        "influence: a method is listed twice",
    ),
    (
        _with(lambda c: c["influence"][0].update(checkpoints=0)),
        "influence.0.tracin.checkpoints: Input should be greater than or equal to 1",
    ),
    (_with(lambda c: c.update(device="tpu")), "device: Input should be 'cpu', 'cuda' or 'auto'"),
    (
        _with(lambda c: c["analysis"].update(confidence=2)),
        "analysis.confidence: Input should be less than 1",
    ),
    ("name: [unclosed", "not valid YAML"),
    ("- just\n- a list\n", "expected a mapping"),
    (
        _with(lambda c: c["train"].update(epochs=True)),
        "train.epochs: Input should be a valid integer",
    ),
    (_with(lambda c: c["train"].update(lr="0.1")), "train.lr: Input should be a valid number"),
    (
        _with(lambda c: c["train"].update(lr=float("inf"))),
        "train.lr: Input should be a finite number",
    ),
    (
        _with(lambda c: c["train"].update(epochs=10**6)),
        "train.epochs: Input should be less than or equal to 10000",
    ),
    (
        _with(lambda c: c.update(seed=2**32)),
        "seed: Input should be less than or equal to 4294967295",
    ),
    (
        _with(lambda c: c["memorization"][0].update(subset_fraction=0.01)),
        "memorization.0.feldman_zhang.subset_fraction: subset_fraction 0.01 with n_models 4",
    ),
    ("train: {lr: 0.1, lr: 0.2}\n", "line 1: duplicate key 'lr'"),
    ("[" * 100_000, "nested too deeply"),
]


@pytest.mark.parametrize(("config", "message"), BAD, ids=[m for _, m in BAD])
def test_bad_config_is_one_line_exit_2_nothing_written(tmp_path, config, message):
    out = tmp_path / "out"
    result = runner.invoke(app, ["run", _write(tmp_path, config), "--out", str(out)])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert message in lines[0]
    assert "Traceback" not in result.output
    assert not out.exists()


def test_missing_config_file(tmp_path):
    result = runner.invoke(app, ["run", str(tmp_path / "nope.yaml"), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "config file not found" in result.output


def test_cuda_requested_without_cuda(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    out = tmp_path / "out"
    result = runner.invoke(
        app, ["run", _write(tmp_path, _with(lambda c: c.update(device="cuda"))), "--out", str(out)]
    )
    assert result.exit_code == 2 and "CUDA is not available" in result.output
    assert not out.exists()


def test_run_query_report_and_listings(tmp_path):
    out = tmp_path / "out"
    config = _write(tmp_path, TINY)
    first = runner.invoke(app, ["run", config, "--out", str(out)])
    assert first.exit_code == 0, first.output
    assert "report:" in first.output and "AUC" in first.output
    second = runner.invoke(app, ["run", config, "--out", str(out)])
    assert second.exit_code == 0 and "nothing to do" in second.output
    query = runner.invoke(
        app,
        [
            "query",
            str(out),
            "SELECT method, count(*) AS n FROM scores GROUP BY method ORDER BY method",
        ],
    )
    assert query.exit_code == 0, query.output
    assert "feldman_zhang" in query.output and "tracin" in query.output
    bad_sql = runner.invoke(app, ["query", str(out), "SELECT nope FROM scores"])
    assert bad_sql.exit_code == 2 and "query failed" in bad_sql.output
    assert runner.invoke(app, ["query", str(tmp_path), "SELECT 1"]).exit_code == 2
    (out / "report.html").unlink()
    report = runner.invoke(app, ["report", str(out)])
    assert report.exit_code == 0 and (out / "report.html").exists()
    listing = runner.invoke(app, ["datasets"])
    assert all(name in listing.output for name in ("digits", "mnist1d", "breast_cancer", "blobs"))
    architectures = runner.invoke(app, ["archs"], terminal_width=200)
    assert architectures.exit_code == 0
    for name in ("logreg", "mlp", "cnn", "resnet", "transformer", "width", "heads"):
        assert name in architectures.output
    methods = runner.invoke(app, ["methods"], terminal_width=200)
    assert all(name in methods.output for name in ("feldman_zhang", "tracin", "grad_dot"))
    assert "docs/methods.md" in methods.output
    one = runner.invoke(app, ["methods", "tracin"], terminal_width=200)
    assert one.exit_code == 0 and "Pruthi" in one.output and "η_c" in one.output
    unknown = runner.invoke(app, ["methods", "magic"])
    assert unknown.exit_code == 2
    everything = ", ".join(sorted(REGISTRY))
    assert f"known: {everything}" in unknown.output.replace("\n", " ")


def test_readme_points_only_at_files_the_user_has():
    import re
    from pathlib import Path

    root = Path(__file__).parents[1]
    readme = (root / "README.md").read_text()
    assert "METHODS.md" not in readme and "shared/" not in readme
    for link in re.findall(r"\]\(([^)#:]+)\)", readme):  # relative Markdown links
        assert (root / link).exists(), link
    assert "docs/methods.md" in readme


def test_the_issue_config_shape_parses_unchanged():
    from pathlib import Path

    from mnemoscope.config import load_config

    config = load_config(Path(__file__).parents[1] / "examples" / "study.yaml")
    assert config.name == "example" and config.archs == ["logreg", "mlp", "cnn"]
    assert config.datasets[0].name == "digits" and config.datasets[0].label_noise == 0.1
    assert config.train.batch_size == 128 and config.train.weight_decay == 0.0005
    assert [m.method for m in config.memorization] == ["feldman_zhang"]
    assert config.memorization[0].n_models == 64
    assert [m.method for m in config.influence] == ["tracin", "grad_dot"]
    assert config.influence[0].checkpoints == 5


def test_out_that_is_a_file_is_refused(tmp_path):
    out = tmp_path / "taken"
    out.write_text("precious")
    result = runner.invoke(app, ["run", _write(tmp_path, TINY), "--out", str(out)])
    assert result.exit_code == 2 and "not a directory" in result.output
    assert out.read_text() == "precious"


def test_the_readme_method_example_runs(tmp_path):
    from pathlib import Path

    import pandas as pd

    from mnemoscope.config import parse_config
    from mnemoscope.estimator import REGISTRY
    from mnemoscope.runner import run_study

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    code = readme.split("## Adding a method")[1].split("```python")[1].split("```")[0]
    try:
        exec(compile(code, "README.md", "exec", dont_inherit=True), {})
        config = parse_config(
            {
                "datasets": [{"name": "digits", "n_samples": 150}],
                "archs": ["logreg"],
                "train": {"epochs": 1},
                "memorization": [{"method": "mean_loss", "n_models": 2}],
            }
        )
        run_study(config, tmp_path)
    finally:
        REGISTRY.pop("mean_loss", None)
    scores = pd.read_parquet(tmp_path / "scores.parquet")
    assert set(scores["method"]) == {"mean_loss"} and scores["score"].gt(0).all()
