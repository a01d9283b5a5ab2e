"""The cost estimate: forward FLOP and activation sizes from one traced pass (checked
against closed forms), per-stage memory and time in ``--dry-run``, runs larger than
memory refused in one line before anything is trained."""

from __future__ import annotations

import re

import pytest
import yaml
from typer.testing import CliRunner

from mnemoscope.cli import app
from mnemoscope.config import parse_config
from mnemoscope.data import BUILTIN, BuiltinDataset
from mnemoscope.errors import UserError
from mnemoscope.models import build_model
from mnemoscope.runner.estimate import (
    RUNTIME,
    data_bytes,
    estimate_study,
    profile,
    refuse_if_too_big,
)
from mnemoscope.train import TrainConfig

CIFAR = (3, 32, 32)


def _study(n_models: int = 2, width: int = 16, **train) -> dict:
    """A study of resnets on 50,000 CIFAR-shaped training examples (12,500 test)."""
    return {
        "name": "estimate",
        "seed": 0,
        "datasets": [{"name": "cifar_shaped", "test_fraction": 0.2}],
        "archs": ["resnet"],
        "arch_options": {"resnet": {"width": width}},
        "train": {"epochs": 1, "batch_size": 128, "lr": 0.05, **train},
        "memorization": [{"method": "csl", "n_models": n_models}],
        "analysis": {"n_bootstrap": 10},
    }


@pytest.fixture
def cifar_shaped(monkeypatch) -> None:
    """A built-in dataset of 62,500 CIFAR-shaped examples that is never generated: the
    estimate needs only its sizes."""
    spec = BuiltinDataset("cifar_shaped", "image", 10, 62_500, "CIFAR-shaped", None, CIFAR)
    monkeypatch.setitem(BUILTIN, "cifar_shaped", spec)


def _item(estimate, prefix: str):
    (item,) = [i for i in estimate.items if i.what.startswith(prefix)]
    return item


def test_profile_counts_products_and_saved_activations_exactly():
    logreg = profile(build_model("logreg", (64,), 10), (64,))
    assert logreg.forward_flop == 2 * 64 * 10  # one [64] × [64, 10] product
    assert logreg.saved_bytes == 4 * 64  # the linear layer keeps its input
    mlp = profile(build_model("mlp", (64,), 10, width=128), (64,))
    assert mlp.forward_flop == 2 * (64 * 128 + 128 * 128 + 128 * 10)
    assert mlp.saved_bytes == 4 * (64 + 128 + 128)  # the input and both ReLU outputs
    assert mlp.widest_floats == 128
    # resnet: a stride-2 3×3 stem to w channels on 16×16, 2 blocks of two w→w 3×3
    # convolutions, a w→10 head; multiply-adds counted as 2 FLOP
    for w in (8, 16):
        resnet = profile(build_model("resnet", CIFAR, 10, width=w), CIFAR)
        positions = 16 * 16
        convs = 2 * positions * (w * 3 * 9 + 4 * w * w * 9)
        assert resnet.forward_flop == convs + 2 * w * 10
        assert resnet.widest_floats == w * positions
        # at least the inputs of the 5 convolutions and the outputs of 5 norms and ReLUs
        assert resnet.saved_bytes >= 4 * (3 * 32 * 32 + 8 * w * positions)
        assert resnet.n_params == sum(
            p.numel() for p in build_model("resnet", CIFAR, 10, width=w).parameters()
        )


def test_training_work_counts_convolutions_not_six_flop_per_parameter(cifar_shaped):
    estimate = estimate_study(parse_config(_study()))
    train = _item(estimate, "train cifar_shaped/resnet/")
    resnet = profile(build_model("resnet", CIFAR, 10, width=16), CIFAR)
    # 2 models × 50,000 presentations (forward + backward: 3 forward passes), then the
    # final logits of both models on 62,500 examples
    assert train.flop == resnet.forward_flop * (3 * 2 * 50_000 + 2 * 62_500)
    assert train.flop > 50 * 6 * resnet.n_params * 2 * 50_000  # the old count, ×50
    # the process holds the runtime and all 62,500 inputs besides training
    assert data_bytes(CIFAR, 50_000, 12_500) == 62_500 * (4 * 3072) + 8 * (3 * 50_000 + 25_000)
    assert train.peak_bytes > RUNTIME + data_bytes(CIFAR, 50_000, 12_500)
    # 64 models at once keep 32 times the activations of 2
    wide = _item(estimate_study(parse_config(_study(n_models=64))), "train cifar_shaped/")
    working = train.peak_bytes - RUNTIME - data_bytes(CIFAR, 50_000, 12_500)
    assert wide.peak_bytes - RUNTIME - data_bytes(CIFAR, 50_000, 12_500) > 20 * working


def test_dry_run_prints_memory_and_time_of_every_stage(cifar_shaped, tmp_path):
    config = tmp_path / "study.yaml"
    config.write_text(yaml.safe_dump(_study()))
    result = CliRunner().invoke(
        app, ["run", str(config), "--out", str(tmp_path / "o"), "--dry-run"]
    )
    assert result.exit_code == 0, result.output
    out = result.output
    assert re.search(r"load cifar_shaped: peak [\d.]+ GiB", out)
    train = re.search(
        r"train cifar_shaped/resnet/\S+ \(2 models\): peak ([\d.]+) GiB, ([\d.e+]+) FLOP "
        r"\(≈ ([\d.]+) min\)",
        out,
    )
    assert train, out
    assert 1.0 < float(train.group(1)) < 3.0  # measured 1.61 GiB (tests/train/test_scale.py)
    assert re.search(r"largest stage: [\d.]+ GiB; training work .* FLOP \(≈ .* at", out)
    assert not (tmp_path / "o").exists()


def test_a_resnet_run_larger_than_memory_is_refused_in_one_line(cifar_shaped, tmp_path):
    # 64 resnets of width 256 on batches of 50,000 CIFAR-shaped inputs: tens of TB of
    # activations in one training step
    huge = _study(n_models=64, width=256, batch_size=50_000)
    config = tmp_path / "study.yaml"
    config.write_text(yaml.safe_dump(huge))
    result = CliRunner().invoke(
        app, ["run", str(config), "--out", str(tmp_path / "o"), "--dry-run"]
    )
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.output
    assert re.search(r"needs about [\d.]+ [TP]iB for train cifar_shaped/resnet/", lines[0])
    assert "more than this machine's" in lines[0] and "--dry-run" in lines[0]
    assert not (tmp_path / "o").exists()


def test_large_fitted_matrices_are_counted_and_refused(cifar_shaped):
    """TRAK keeps ``[M, n, k]`` float32 projected gradients: 10 models × 50,000 × 4,096
    is 7.6 GiB, which a 4 GiB machine cannot hold, though it could train the models."""
    study = {
        **_study(),
        "memorization": [],
        "influence": [{"method": "trak", "n_models": 10, "proj_dim": 4_096}],
    }
    estimate = estimate_study(parse_config(study))
    fit = _item(estimate, "fit cifar_shaped/resnet/trak")
    assert fit.peak_bytes > 4 * 10 * 50_000 * 4_096
    assert _item(estimate, "train cifar_shaped/").peak_bytes < 4 * 2**30
    with pytest.raises(UserError, match=r"needs about [\d.]+ GiB for fit cifar_shaped/resnet/trak"):
        refuse_if_too_big(estimate, memory=4 * 2**30)


def test_a_dp_sweep_has_its_line_and_dp_training_counts_its_batches_and_gradients(
    cifar_shaped,
):
    """The DP sweep trains ``settings × n_models`` models on subsets of the same size (3
    forward passes per presentation, then the final logits), one setting at a time; a
    DP-SGD step holds Poisson batches up to B + 4√B and the per-example gradients of the
    parameters without a layer-wise identity (the transformer's attention and
    embeddings; none of the resnet's)."""
    from mnemoscope.runner.estimate import TRAIN_OVERHEAD, dp_batch_bound, part_bytes

    study = _study()
    sweep = {"settings": [None, {"noise_multiplier": 1.0}, {"target_epsilon": 4.0}]}
    study["study"] = {"dp": {**sweep, "n_models": 4, "subset_fraction": 0.5}}
    items = estimate_study(parse_config(study)).items
    (line,) = [i for i in items if i.what.startswith("dp sweep cifar_shaped/resnet ")]
    assert "(3 settings × 4 models)" in line.what
    resnet = profile(build_model("resnet", CIFAR, 10, width=16), CIFAR)
    assert resnet.per_example_params == 0
    assert line.flop == resnet.forward_flop * (3 * 12 * 25_000 + 12 * 62_500)
    assert dp_batch_bound(128) == 128 + 46
    for arch, shape, covered in (("resnet", CIFAR, True), ("transformer", (1, 64), False)):
        prof = profile(build_model(arch, shape, 10), shape)
        assert (prof.per_example_params == 0) == covered
        plain = TrainConfig(epochs=1, batch_size=128)
        private = TrainConfig(epochs=1, batch_size=128, dp={"noise_multiplier": 1.0})
        grown = part_bytes(prof, private, 4, 1000, 100, 10) - part_bytes(
            prof, plain, 4, 1000, 100, 10
        )
        # 4 models: 46 more examples' activations, 174 examples' gradients of those params
        expected = (
            4 * 46 * TRAIN_OVERHEAD * prof.saved_bytes + 4 * 174 * 4 * prof.per_example_params
        )
        assert abs(grown - expected) <= 1
