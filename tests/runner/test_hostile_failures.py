"""Failures that are not a bad config nor an ``OSError`` of a file: memory running out, a
Cholesky that fails at an allowed ``l2``, a model without parameters, a crafted model
file. Each is one line and exit code 2 naming the stage or the file, and leaves nothing
half-written. (A full disk under the safetensors writer, as the file-size limit, is a
case of ``tests/data/test_hostile_files.py``, which runs in a limited child.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import save_file
from torch import nn
from typer.testing import CliRunner

from mnemoscope.cli import app
from mnemoscope.config import parse_config
from mnemoscope.errors import DataError, UserError
from mnemoscope.models import register_arch
from mnemoscope.models.registry import ARCHITECTURES
from mnemoscope.runner import run_study
from mnemoscope.train import TrainedEnsemble

ROOT = Path(__file__).resolve().parents[2]
TINY = {
    "name": "failures",
    "seed": 0,
    "datasets": [{"name": "digits", "n_samples": 100}],
    "archs": ["logreg"],
    "train": {"epochs": 1, "batch_size": 32, "lr": 0.05},
    "memorization": [{"method": "feldman_zhang", "n_models": 4}],
    "analysis": {"n_bootstrap": 3},
}


def _one_line_error(output: str, *fragments: str) -> str:
    lines = [line for line in output.splitlines() if line.strip()]
    assert "Traceback" not in output and lines, output
    assert lines[-1].startswith("error: "), output
    assert all(line.startswith(("done ", "cached ", "warning ")) for line in lines[:-1]), output
    for fragment in fragments:
        assert fragment in lines[-1], lines[-1]
    return lines[-1]


def _config(tmp_path: Path, config: dict) -> Path:
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_memory_running_out_in_a_stage_is_one_line_naming_it(tmp_path, monkeypatch):
    from mnemoscope.runner import stages

    def exhausted(*args, **kwargs):
        raise MemoryError("cannot allocate 8 GiB")

    monkeypatch.setattr(stages, "train_part", exhausted)
    result = CliRunner().invoke(
        app, ["run", str(_config(tmp_path, TINY)), "--out", str(tmp_path / "o")]
    )
    assert result.exit_code == 2
    _one_line_error(result.output, "train/digits/logreg", "out of memory", "8 GiB")


def test_a_cholesky_that_fails_at_a_tiny_l2_names_the_stage_and_l2(tmp_path):
    # logreg on digits: 650 parameters, a kernel of 80·10 rows, so rank-deficient; l2 = 1e-300
    # is allowed (> 0) but lifts no eigenvalue above rounding
    config = {**TINY, "memorization": [{"method": "sample_info_weights", "l2": 1e-300}]}
    result = CliRunner().invoke(
        app, ["run", str(_config(tmp_path, config)), "--out", str(tmp_path / "o")]
    )
    assert result.exit_code == 2, result.output
    _one_line_error(result.output, "sample_info_weights", "l2 1e-300", "raise l2")


def test_a_model_without_parameters_is_refused_before_anything_is_written(tmp_path):
    register_arch("no-params", lambda shape, n_classes: nn.Flatten())
    try:
        with pytest.raises(UserError, match="'no-params': the model has no trainable parameters"):
            run_study(parse_config({**TINY, "archs": ["no-params"]}), tmp_path / "o")
    finally:
        del ARCHITECTURES["no-params"]
    assert not (tmp_path / "o").exists()


def test_crafted_model_files_are_refused_naming_the_file_whatever_their_digest(tmp_path):
    out = tmp_path / "run"
    run_study(parse_config(TINY), out)
    model = next((out / "models").glob("*.safetensors"))
    good = TrainedEnsemble.load(model)
    meta = {
        "mnemoscope": json.dumps(
            {"arch": "logreg", "input_shape": [1, 8, 8], "n_classes": 10, "checkpoints": []}
        )
    }
    tensors = {f"params.{k}": v for k, v in good.params.items()}
    records = {
        "masks": good.masks,
        "train_loss": good.train_loss,
        "train_correct": good.train_correct,
        "train_logits": good.train_logits,
        "test_logits": good.test_logits,
    }
    wrong_shape = {**tensors, "params.1.weight": torch.zeros(2, 3, 3)}
    crafted = {
        "garbage": None,
        "no metadata": ({**tensors, **records}, None),
        "missing records": (tensors, meta),
        "parameters of another shape": ({**wrong_shape, **records}, meta),
        "records of another model count": ({**tensors, **records, "masks": good.masks[:1]}, meta),
    }
    for name, content in crafted.items():
        path = tmp_path / f"{name.replace(' ', '-')}.safetensors"
        if content is None:
            path.write_bytes(b"\xff" * 8 + b"{not json")
        else:
            save_file({k: v.contiguous() for k, v in content[0].items()}, str(path), content[1])
        with pytest.raises(DataError) as caught:
            TrainedEnsemble.load(path)
        message = str(caught.value)
        assert str(path) in message and "not a model file" in message, (name, message)
        assert "\n" not in message, name


# 1,000 logreg models × 300 epochs on digits: 4.7 GiB to read the ensemble and score it
NEEDS_5_GIB = {
    "datasets": [{"name": "digits"}],
    "archs": ["logreg"],
    "train": {"epochs": 300, "batch_size": 32, "lr": 0.05},
    "memorization": [{"method": "feldman_zhang", "n_models": 1000}],
}


def test_the_run_that_needs_5_gib_fits_without_an_address_space_limit(tmp_path):
    """The other half of the limited case in ``tests/data/test_hostile_files.py`` (refused
    under ``ulimit -v 4G``): with the machine's own memory the same dry run passes."""
    from mnemoscope.resources import physical_memory

    # the project's machines (and CI's) have 24 GiB; a smaller one cannot hold this run
    assert physical_memory() >= 8 * 2**30, "this check needs a machine with at least 8 GiB"
    config, out = _config(tmp_path, NEEDS_5_GIB), tmp_path / "out"
    unlimited = CliRunner().invoke(app, ["run", str(config), "--out", str(out), "--dry-run"])
    assert unlimited.exit_code == 0, unlimited.output
    assert "largest stage" in unlimited.output and not out.exists()


def test_crafted_dataset_files_are_refused_naming_the_file(tmp_path):
    from mnemoscope.runner.stages import load_dataset

    out = tmp_path / "run"
    run_study(parse_config(TINY), out)
    record = {"name": "digits", "kind": "image", "n_classes": 10, "file": "data/digits.safetensors"}
    good = load_dataset(out, record).tensors()
    crafted = {
        "missing tensors": ({"x_train": good["x_train"]}, "digits.safetensors: not a dataset"),
        "labels outside the classes": ({**good, "y_test": good["y_test"] + 10}, r"\[0, 10\)"),
        "fewer labels than inputs": ({**good, "y_train": good["y_train"][:-1]}, "train"),
    }
    for name, (tensors, match) in crafted.items():
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(out / record["file"]))
        with pytest.raises(DataError, match=match) as caught:
            load_dataset(out, record)
        assert "\n" not in str(caught.value), name
