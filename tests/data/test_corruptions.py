"""Planted provenance: corrupted / adversarial inputs, an under-sampled class, two sources,
and their columns in examples.parquet (checked against what was planted)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file

from mnemoscope.config import parse_config
from mnemoscope.data import (
    Dataset,
    corrupt,
    insert_canaries,
    prepare,
    split_sources,
    undersample,
)
from mnemoscope.data.corruptions import input_scale, reference_model
from mnemoscope.errors import ConfigError, DataError
from mnemoscope.runner import run_study
from mnemoscope.runner.stages import build_data, load_dataset
from mnemoscope.store import RunDir, write_safetensors
from mnemoscope.store.tables import EXAMPLES, to_arrow

FRACTIONS = {"noise": 0.05, "occlusion": 0.05, "adversarial": 0.05}


@pytest.fixture(scope="module")
def clean_digits() -> Dataset:
    return prepare("digits", seed=0, n_samples=400)


@pytest.fixture(scope="module")
def tabular() -> Dataset:
    return prepare("breast_cancer", seed=0, label_noise=0.1)


@pytest.mark.parametrize("name", ["digits", "mnist1d", "breast_cancer"])
def test_corruptions_are_counted_disjoint_and_leave_labels_and_other_inputs(name):
    data = prepare(name, seed=1, label_noise=0.2, n_samples=300)
    out = corrupt(data, seed=2, **FRACTIONS)
    flags = torch.stack([out.is_noisy_input, out.is_occluded, out.is_adversarial])
    assert flags.sum(1).tolist() == [round(0.05 * data.n_train)] * 3
    assert (flags.sum(0) <= 1).all()  # disjoint
    assert not (out.is_corrupted & data.is_mislabeled).any()  # never a flipped label
    assert torch.equal(out.y_train, data.y_train)
    assert torch.equal(out.y_train_original, data.y_train_original)
    changed = (out.x_train != data.x_train).flatten(1).any(1)
    assert torch.equal(changed, out.is_corrupted)
    assert torch.equal(out.x_test, data.x_test)


def test_corruptions_are_deterministic_and_seeded(clean_digits):
    first = corrupt(clean_digits, seed=3, **FRACTIONS)
    assert first.fingerprint == corrupt(clean_digits, seed=3, **FRACTIONS).fingerprint
    other = corrupt(clean_digits, seed=4, **FRACTIONS)
    assert not torch.equal(first.corruption, other.corruption)


def test_noise_has_the_asked_standard_deviation_per_channel():
    data = prepare("mnist1d", seed=0, n_samples=500)
    out = corrupt(data, seed=0, noise=0.45, noise_std=2.0)
    scale = input_scale(data.x_train)
    z = ((out.x_train - data.x_train) / scale)[out.is_noisy_input].double()
    # 180 inputs × 40 coordinates: the sample std is within a few % of 2
    assert abs(float(z.std()) - 2.0) < 0.06 and abs(float(z.mean())) < 0.06
    assert float(scale.flatten()[0]) == pytest.approx(float(data.x_train.std()), rel=1e-3)


def _block(mask: torch.Tensor) -> list[tuple[int, int]]:
    """First index and length of the True entries of ``mask`` along each axis, or [] if
    they do not form one solid box."""
    where = torch.nonzero(mask)
    if not len(where):
        return []
    low, high = where.min(0).values, where.max(0).values
    extent = (high - low + 1).tolist()
    if int(mask.sum()) != int(torch.tensor(extent).prod()):
        return []
    return list(zip(low.tolist(), extent, strict=True))


def test_occlusion_blanks_one_patch_of_each_image(clean_digits):
    # shifted so that no pixel is 0 before: every 0 after is the patch's
    data = replace(clean_digits, x_train=clean_digits.x_train + 1)
    out = corrupt(data, seed=0, occlusion=0.2, occlusion_size=0.5)
    starts = set()
    for i in torch.nonzero(out.is_occluded).flatten().tolist():
        zero = out.x_train[i, 0] == 0
        box = _block(zero)
        assert [length for _, length in box] == [4, 4]  # half of each side of 8×8
        assert torch.equal(out.x_train[i, 0][~zero], data.x_train[i, 0][~zero])
        starts.add(tuple(first for first, _ in box))
    assert len(starts) > 5  # the patch moves


def test_occlusion_blanks_one_segment_of_each_sequence():
    data = prepare("mnist1d", seed=0, n_samples=200)
    data = replace(data, x_train=data.x_train.abs() + 1)
    out = corrupt(data, seed=0, occlusion=0.2, occlusion_size=0.25)
    for i in torch.nonzero(out.is_occluded).flatten().tolist():
        zero = out.x_train[i, 0] == 0
        assert [length for _, length in _block(zero)] == [10]  # a quarter of 40
        assert torch.equal(out.x_train[i, 0][~zero], data.x_train[i, 0][~zero])


def test_occlusion_sets_half_the_features_to_the_training_mean(tabular):
    out = corrupt(tabular, seed=0, occlusion=0.1)
    mean = tabular.x_train.mean(0)
    for i in torch.nonzero(out.is_occluded).flatten().tolist():
        at_mean = out.x_train[i] == mean
        assert int(at_mean.sum()) == 15  # half of 30 features
        assert torch.equal(out.x_train[i][~at_mean], tabular.x_train[i][~at_mean])


@pytest.mark.parametrize("name", ["digits", "breast_cancer"])
def test_fgsm_raises_the_reference_loss_and_fools_the_reference_model(name):
    data = prepare(name, seed=0, label_noise=0.1, n_samples=400)
    model = reference_model(data, seed=5)
    clean = ~data.is_mislabeled
    assert (model(data.x_train).argmax(1) == data.y_train)[clean].double().mean() > 0.95
    out = corrupt(data, seed=5, adversarial=0.2, epsilon=0.5)
    adv = out.is_adversarial
    x, y = data.x_train[adv], data.y_train[adv]
    assert (model.loss(out.x_train[adv], y) > model.loss(x, y)).all()
    assert (model(out.x_train[adv]).argmax(1) != y).double().mean() > 0.75
    assert (model(x).argmax(1) != y).double().mean() < 0.1
    # each coordinate moved by ±ε·scale (or not at all where the gradient is zero)
    step = (0.5 * input_scale(data.x_train)).expand_as(x)
    moved = (out.x_train[adv] - x).abs()
    assert torch.allclose(moved[moved > 0], step[moved > 0], rtol=1e-4)


def test_undersample_keeps_the_fraction_the_ids_and_the_test_split(clean_digits):
    out = undersample(clean_digits, 3, 0.1, seed=0)
    was = clean_digits.y_train_original == 3
    assert int(out.is_undersampled.sum()) == round(0.1 * int(was.sum()))
    assert torch.equal(out.train_ids[out.y_train != 3], clean_digits.train_ids[~was])
    assert set(out.train_ids[out.y_train == 3].tolist()) <= set(
        clean_digits.train_ids[was].tolist()
    )
    position = {int(i): p for p, i in enumerate(clean_digits.train_ids)}
    rows = torch.tensor([position[int(i)] for i in out.train_ids])
    assert torch.equal(out.x_train, clean_digits.x_train[rows])
    assert torch.equal(out.x_test, clean_digits.x_test) and torch.equal(
        out.test_ids, clean_digits.test_ids
    )
    assert int(undersample(clean_digits, 3, 0.001, seed=0).is_undersampled.sum()) == 2


def test_sources_flip_only_the_noisy_source_at_its_rate(clean_digits):
    out = split_sources(clean_digits, noisy_fraction=0.4, label_noise=0.25, seed=0)
    noisy = torch.from_numpy(out.source == "noisy")
    assert int(noisy.sum()) == round(0.4 * clean_digits.n_train)
    assert set(out.source) == {"clean", "noisy"}
    assert not out.is_mislabeled[~noisy].any()
    assert int(out.is_mislabeled[noisy].sum()) == round(0.25 * int(noisy.sum()))
    with pytest.raises(DataError, match="already has flipped labels"):
        split_sources(prepare("digits", seed=0, label_noise=0.1), 0.5, 0.2, seed=0)


def _planted(data: Dataset) -> Dataset:
    data = undersample(data, 3, 0.2, seed=1)
    data = split_sources(data, 0.5, 0.2, seed=2)
    data = corrupt(data, seed=3, **FRACTIONS)
    return insert_canaries(data, 3, 3, seed=4)


def test_provenance_survives_the_round_trip_and_fills_the_examples_schema(clean_digits, tmp_path):
    data = _planted(clean_digits)
    assert not (data.is_canary & data.is_corrupted).any()  # canaries on clean inputs
    write_safetensors(tmp_path / "d.safetensors", data.tensors())
    back = Dataset.from_tensors("digits", "image", 10, load_file(str(tmp_path / "d.safetensors")))
    assert back.fingerprint == data.fingerprint
    frame = back.examples_frame()
    assert frame.equals(data.examples_frame())
    assert list(to_arrow(frame, EXAMPLES).schema.names) == EXAMPLES.names == list(frame.columns)
    train, test = frame[frame.split == "train"], frame[frame.split == "test"]
    assert train.is_noisy_input.sum() == train.is_occluded.sum() == train.is_adversarial.sum()
    assert train.is_adversarial.sum() == round(0.05 * data.n_train)
    assert set(train.source) == {"clean", "noisy"} and set(test.source) == {"test"}
    assert not test[["is_noisy_input", "is_occluded", "is_adversarial", "is_canary"]].any().any()
    assert (test.is_undersampled == (test.label == 3)).all()  # the rare class, untouched
    assert (train.is_undersampled == (train.original_label == 3)).all()
    plain = prepare("digits", seed=0, n_samples=400).examples_frame()
    assert set(plain.source) == {"main", "test"} and not plain.is_undersampled.any()


def _config(**entry) -> dict:
    return {
        "archs": ["logreg"],
        "memorization": [{"method": "feldman_zhang", "n_models": 16}],
        "datasets": [entry],
    }


def test_the_data_stage_plants_in_order_and_reports_counts(tmp_path):
    entry = {
        "name": "digits",
        "n_samples": 400,
        "undersample": {"class": 3, "keep": 0.2},
        "sources": {"noisy_fraction": 0.5, "label_noise": 0.2},
        "corruptions": FRACTIONS,
        "canaries": {"n": 2, "class": 1},
    }
    ds = parse_config(_config(**entry)).datasets[0]
    args = {"dataset": ds.model_dump(), "seed": 0, "file": "d.safetensors"}
    record = build_data(tmp_path, args, None)["dataset"]
    data = load_dataset(tmp_path, {"name": "digits", "kind": "image", "n_classes": 10, **args})
    n_three = int((prepare("digits", seed=0, n_samples=400).y_train == 3).sum())
    assert record["n_undersampled_kept"] == round(0.2 * n_three) == int(data.is_undersampled.sum())
    assert record["n_noisy_source"] == round(0.5 * data.n_train)
    assert record["n_noisy_input"] == record["n_occluded"] == record["n_adversarial"]
    assert record["n_adversarial"] == round(0.05 * data.n_train) == int(data.is_adversarial.sum())
    again = build_data(tmp_path / "again", args | {"file": "e.safetensors"}, None)
    assert again["dataset"]["fingerprint"] == record["fingerprint"]
    plain = parse_config(_config(name="digits")).datasets[0].model_dump()
    assert not {"undersample", "sources", "corruptions"} & set(plain)  # cache keys stay


def test_plantings_work_on_a_user_file_of_two_channel_images(tmp_path):
    rng = np.random.default_rng(0)
    y = np.arange(200) % 4
    x = (rng.normal(size=(200, 2, 6, 5)) + y[:, None, None, None]).astype(np.float32)
    np.savez(tmp_path / "images.npz", x=x, y=y)
    entry = {"name": "mine", "path": "images.npz", "corruptions": {"occlusion": 0.1}}
    with pytest.raises(ConfigError, match=r"undersample\.class: 4 is not a class of 'mine'"):
        parse_config(_config(**entry, undersample={"class": 4, "keep": 0.5}), tmp_path)
    ds = parse_config(_config(**entry, undersample={"class": 1, "keep": 0.5}), tmp_path).datasets[0]
    args = {"dataset": ds.model_dump(), "seed": 0, "file": "d.safetensors"}
    record = build_data(tmp_path, args, None)["dataset"]
    data = load_dataset(tmp_path, {"name": "mine", "kind": "image", "n_classes": 4, **args})
    assert record["n_undersampled_kept"] == 20 and record["n_occluded"] == round(0.1 * 140)
    occluded = data.x_train[data.is_occluded]
    assert ((occluded == 0).flatten(1).sum(1) == 2 * 3 * 2).all()  # a 3×2 patch, 2 channels


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"undersample": {"class": 10, "keep": 0.1}}, r"undersample\.class: 10 is not a class"),
        ({"undersample": {"class": 1, "keep": 1.0}}, r"undersample\.keep"),
        ({"label_noise": 0.1, "sources": {}}, r"sources: refused with label_noise"),
        ({"sources": {"noisy_fraction": 0.9999}}, r"noisy_fraction: .* leaves a source empty"),
        ({"corruptions": {"noise": 0.3, "occlusion": 0.3}}, r"corruptions: .* below 0\.5"),
        ({"corruptions": {"noise": -0.1}}, r"corruptions\.noise"),
        ({"corruptions": {"adversarial": 0.0001}}, r"adversarial: .* rounds to none"),
        ({"corruptions": {"epsilon": 0}}, r"corruptions\.epsilon"),
        (
            {"label_noise": 0.6, "corruptions": {"noise": 0.4, "adversarial": 0.09}},
            r"corruptions: 704 examples to corrupt, but only 575",
        ),
    ],
)
def test_bad_planting_keys_are_one_line_errors(tmp_path, entry, message):
    with pytest.raises(ConfigError, match=message) as error:
        parse_config(_config(name="digits", **entry))
    assert "\n" not in str(error.value) and "datasets.0." in str(error.value)


def test_build_time_counts_are_checked_too(clean_digits):
    with pytest.raises(DataError, match="rounds to none"):
        corrupt(clean_digits, seed=0, noise=0.001)
    noisy = prepare("digits", seed=0, label_noise=0.7, n_samples=400)
    with pytest.raises(DataError, match="with clean labels"):
        corrupt(noisy, seed=0, noise=0.2, occlusion=0.2)
    with pytest.raises(DataError, match="not a class"):
        undersample(clean_digits, 12, 0.5, seed=0)


def test_stored_provenance_is_checked_when_read(clean_digits):
    tensors = _planted(clean_digits).tensors()
    bad = {**tensors, "corruption": torch.full_like(tensors["corruption"], 7)}
    with pytest.raises(DataError, match="corruption codes must lie in"):
        Dataset.from_tensors("digits", "image", 10, bad)
    short = {**tensors, "train_source": tensors["train_source"][:-1]}
    with pytest.raises(DataError, match="train_source should be int8 of shape"):
        Dataset.from_tensors("digits", "image", 10, short)


@settings(max_examples=25, deadline=None)
@given(st.lists(st.floats(0, 0.6, allow_nan=False), min_size=3, max_size=3))
def test_corruption_fractions_below_half_in_all_are_accepted_others_refused(fractions):
    entry = {"name": "digits", "corruptions": dict(zip(FRACTIONS, fractions, strict=True))}
    counts = [round(f * 1437) for f in fractions]  # digits: 1437 training examples
    valid = all(f < 0.5 for f in fractions) and sum(fractions) < 0.5
    valid = valid and all(c > 0 or f == 0 for f, c in zip(fractions, counts, strict=True))
    if valid:
        parse_config(_config(**entry))
    else:
        with pytest.raises(ConfigError, match=r"^config error: datasets\.0\.corruptions") as e:
            parse_config(_config(**entry))
        assert "\n" not in str(e.value)


def test_a_study_writes_the_planted_provenance_to_examples_and_manifest(tmp_path):
    config = {
        "datasets": [
            {
                "name": "digits",
                "n_samples": 300,
                "undersample": {"class": 3, "keep": 0.25},
                "sources": {"noisy_fraction": 0.5, "label_noise": 0.2},
                "corruptions": FRACTIONS,
            }
        ],
        "archs": ["logreg"],
        "train": {"epochs": 1, "batch_size": 64},
        "memorization": [{"method": "feldman_zhang", "n_models": 8}],
        "analysis": {"n_bootstrap": 10},
    }
    run_study(parse_config(config), tmp_path)
    examples = pd.read_parquet(tmp_path / "examples.parquet")
    assert list(examples.columns) == EXAMPLES.names
    info = RunDir.existing(tmp_path).manifest.datasets["digits"]
    train = examples[examples.split == "train"]
    assert info.n_train == len(train) and info.n_undersampled_kept == train.is_undersampled.sum()
    assert info.n_adversarial == train.is_adversarial.sum() == round(0.05 * info.n_train)
    assert info.n_noisy_source == (train.source == "noisy").sum()
    assert not train[train.source == "clean"].is_mislabeled.any()
