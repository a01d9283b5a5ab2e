"""Tests of the HTML report on a small synthetic run directory."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from safetensors.numpy import save_file

from mnemoscope.errors import UserError
from mnemoscope.report import figures, html, most_memorized, render_report
from mnemoscope.store.atomic import write_json, write_parquet
from mnemoscope.store.manifest import DatasetInfo, Manifest, StageRecord
from mnemoscope.store.rundir import safe_name
from mnemoscope.store.tables import (
    CORRELATIONS,
    DETECTION,
    EXAMPLES,
    INFLUENCE,
    SCORES,
    without_fit,
)

RUN_NAME = "<script>alert(1)</script>"
IMAGE = "dig<b>its"  # a user-supplied dataset name that must come out escaped
SEQUENCE = "mnist1d"
ARCHS = ("mlp", "cnn")
SHAPES = {IMAGE: (1, 8, 8), SEQUENCE: (1, 40)}
N_TRAIN = {IMAGE: 60, SEQUENCE: 48}
ID_OFFSET = {IMAGE: 0, SEQUENCE: 1000}
N_FLIPPED = 6
# the provenance columns of examples.parquet: nothing planted in these runs
_UNPLANTED = {
    "is_noisy_input": False,
    "is_occluded": False,
    "is_adversarial": False,
    "is_undersampled": False,
}


def _write_dataset(run: Path, name: str, rng: np.random.Generator) -> pd.DataFrame:
    n, shape = N_TRAIN[name], SHAPES[name]
    train_ids = np.arange(n, dtype=np.int64) + ID_OFFSET[name]
    test_ids = train_ids + 500
    original = rng.integers(0, 10, n).astype(np.int64)
    labels = original.copy()
    flipped = rng.choice(n, N_FLIPPED, replace=False)
    labels[flipped] = (labels[flipped] + 1) % 10
    save_file(
        {
            "x_train": rng.normal(size=(n, *shape)).astype(np.float32),
            "y_train": labels,
            "y_train_original": original,
            "train_ids": train_ids,
            "x_test": rng.normal(size=(n, *shape)).astype(np.float32),
            "y_test": original.copy(),
            "test_ids": test_ids,
        },
        str(run / "data" / f"{safe_name(name)}.safetensors"),
    )
    train = pd.DataFrame(
        {
            "example_id": train_ids,
            "split": "train",
            "label": labels,
            "original_label": original,
            "is_mislabeled": labels != original,
            "is_canary": False,
            **_UNPLANTED,
            "source": "main",
        }
    )
    test = pd.DataFrame(
        {
            "example_id": test_ids,
            "split": "test",
            "label": original,
            "original_label": original,
            "is_mislabeled": False,
            "is_canary": False,
            **_UNPLANTED,
            "source": "test",
        }
    )
    return pd.concat([train, test], ignore_index=True).assign(dataset=name)


def _scores(name: str, examples: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    train = examples[(examples["dataset"] == name) & (examples["split"] == "train")]
    ids = train["example_id"].to_numpy()
    rows = []
    for arch in ARCHS:
        mem = rng.uniform(0, 1, ids.size) + 0.5 * train["is_mislabeled"].to_numpy()
        rows.append(
            pd.DataFrame(
                {"seed": 0, "family": "memorization", "method": "feldman_zhang", "score": mem}
            ).assign(example_id=ids, stderr=rng.uniform(0.05, 0.15, ids.size), arch=arch)
        )
        for method in ("tracin", "grad_dot"):
            for seed in (0, 1):  # influence stored per seed: the report draws the mean
                rows.append(
                    pd.DataFrame(
                        {"seed": seed, "family": "influence", "method": method},
                        index=range(ids.size),
                    ).assign(
                        example_id=ids,
                        # zeros happen (e.g. a vanishing gradient): drawn on a symlog axis
                        score=np.exp(rng.normal(0, 2, ids.size))
                        * (method == "tracin" or ids % 7 > 0),
                        stderr=np.nan,
                        arch=arch,
                    )
                )
    return pd.concat(rows, ignore_index=True).assign(dataset=name)


CORRELATION_ROWS = [
    # A within-family pair listed first in the table: the report must move it after.
    (IMAGE, "mlp", "tracin", "grad_dot", "spearman", 0.9137, 0.9021, 0.9255, 60),
    (IMAGE, "mlp", "feldman_zhang", "tracin", "spearman", 0.4213, 0.3811, 0.4732, 60),
    (IMAGE, "mlp", "feldman_zhang", "tracin", "pearson", -0.1049, -0.2203, 0.0151, 60),
    (IMAGE, "mlp", "feldman_zhang", "tracin", "kendall", 0.3068, 0.2699, 0.3402, 60),
    (SEQUENCE, "cnn", "feldman_zhang", "grad_dot", "spearman", 0.1234, np.nan, np.nan, 48),
]
DETECTION_ROWS = [
    (IMAGE, "mlp", "feldman_zhang", "mislabeled", 0.913, 6, 3),
    (IMAGE, "mlp", "tracin", "mislabeled", 0.6042, 6, 0),
    (SEQUENCE, "cnn", "grad_dot", "mislabeled", 0.5471, 6, 0),
]


def make_manifest() -> Manifest:
    kinds = {IMAGE: "image", SEQUENCE: "sequence"}
    return Manifest(
        name=RUN_NAME,
        started="2025-01-02T03:04:05+00:00",
        config={"name": RUN_NAME, "datasets": [IMAGE, SEQUENCE], "train": {"epochs": 3}},
        versions={"mnemoscope": "0.1.0", "torch": "2.13.0"},
        datasets={
            name: DatasetInfo(
                kind=kinds[name],
                input_shape=list(SHAPES[name]),
                n_classes=10,
                n_train=N_TRAIN[name],
                n_test=N_TRAIN[name],
                n_mislabeled=N_FLIPPED,
                label_noise=0.1,
                fingerprint="ab" * 32,
            )
            for name in SHAPES
        },
        stages={
            f"data/{IMAGE}": StageRecord(
                key="cd" * 32, seconds=1.25, outputs=[], finished="2025-01-02T03:04:06+00:00"
            )
        },
    )


def make_run(run: Path, empty_tables: bool = False, influence: pd.DataFrame | None = None) -> Path:
    """A complete synthetic run directory with two datasets and two architectures
    (and ``influence.parquet`` where ``influence`` is given)."""
    rng = np.random.default_rng(0)
    (run / "data").mkdir(parents=True)
    examples = pd.concat([_write_dataset(run, name, rng) for name in SHAPES], ignore_index=True)
    scores = pd.concat([_scores(name, examples, rng) for name in SHAPES], ignore_index=True)
    correlations = pd.DataFrame(
        [] if empty_tables else CORRELATION_ROWS, columns=without_fit(CORRELATIONS).names
    )
    detection = pd.DataFrame(
        [] if empty_tables else DETECTION_ROWS, columns=without_fit(DETECTION).names
    )
    write_parquet(run / "examples.parquet", examples, EXAMPLES)
    write_parquet(run / "scores.parquet", scores.assign(fit=True), SCORES)
    write_parquet(run / "correlations.parquet", correlations.assign(fit=True), CORRELATIONS)
    write_parquet(run / "detection.parquet", detection.assign(fit=True), DETECTION)
    if influence is not None:
        write_parquet(run / "influence.parquet", influence, INFLUENCE)
    write_json(run / "manifest.json", make_manifest().model_dump(mode="json"))
    return run


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str, list[dict]]:
    """Render the synthetic run once, recording what each gallery was asked to draw."""
    run = make_run(tmp_path_factory.mktemp("run") / "run")
    calls: list[dict] = []
    original = figures.gallery

    def spy(items, kind, suptitle, ncols=4):
        calls.append({"items": list(items), "kind": kind, "title": suptitle})
        return original(items, kind, suptitle, ncols)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(figures, "gallery", spy)
        out = render_report(run)
    return run, out, out.read_text(encoding="utf-8"), calls


def test_report_is_written_and_returned(rendered):
    run, out, _, _ = rendered
    assert out == run / "report.html"
    assert out.is_file()


def test_correlations_with_intervals_cross_family_first(rendered):
    _, _, text, _ = rendered
    assert "0.42 [0.38, 0.47]" in text
    assert "-0.10 [-0.22, 0.02]" in text
    assert "0.31 [0.27, 0.34]" in text
    assert "0.91 [0.90, 0.93]" in text
    assert text.index("0.42 [0.38, 0.47]") < text.index("0.91 [0.90, 0.93]")
    # a missing interval prints the value alone, never "nan"
    assert "0.12</td>" in text
    assert not re.search(r">\s*nan", text, re.IGNORECASE)


def test_detection_aucs(rendered):
    _, _, text, _ = rendered
    for auc in ("0.913", "0.604", "0.547"):
        assert auc in text
    # sorted best-first within a dataset × arch
    assert text.index("0.913") < text.index("0.604")


def test_every_image_is_an_embedded_png(rendered):
    run, _, text, _ = rendered
    sources = re.findall(r"<img[^>]*\ssrc=\"([^\"]*)\"", text)
    # the forest plot, a heatmap per dataset, the mislabel ROC and AUC plots, a scatter per
    # headline pair (one per dataset here) and per dataset × arch two galleries (most
    # memorized, most influential: no LiRA scores)
    assert len(sources) == 1 + 2 + 2 + 2 + 2 * 2 * 2
    for src in sources:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1], validate=True).startswith(b"\x89PNG")
    files = sorted(p.name for p in (run / "figures").iterdir())
    assert len(files) == len(sources)
    assert all(re.fullmatch(r"[A-Za-z0-9_.-]+\.png", name) for name in files)


def test_gallery_per_arch_with_top16(rendered):
    run, _, text, calls = rendered
    scores = pd.read_parquet(run / "scores.parquet")
    examples = pd.read_parquet(run / "examples.parquet").set_index("example_id")
    image_calls = [c for c in calls if c["kind"] == "image" and "most memorized" in c["title"]]
    assert len(image_calls) == len(ARCHS)
    assert {c["kind"] for c in calls} == {"image", "sequence"}
    for arch in ARCHS:
        assert f'class="gallery" data-arch="{arch}"' in text
        assert (run / "figures" / f"gallery_dig_b_its_{arch}_feldman_zhang.png").is_file()
    for call, arch in zip(image_calls, ARCHS, strict=True):
        rows = scores[
            (scores["dataset"] == IMAGE)
            & (scores["arch"] == arch)
            & (scores["method"] == "feldman_zhang")
        ]
        expected = rows.nlargest(16, "score")
        assert [i.score for i in call["items"]] == pytest.approx(expected["score"].tolist())
        for item, example_id in zip(call["items"], expected["example_id"], strict=True):
            assert item.x.shape == SHAPES[IMAGE]
            assert item.label == examples.loc[example_id, "label"]
            assert item.original_label == examples.loc[example_id, "original_label"]
            assert item.mislabeled == examples.loc[example_id, "is_mislabeled"]


def test_user_strings_are_escaped(rendered):
    _, _, text, _ = rendered
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "<script" not in text
    assert "dig&lt;b&gt;its" in text
    assert "<b>" not in text


def test_no_influence_section_without_an_influence_table(rendered):
    _, _, text, _ = rendered
    assert "Influence on targets" not in text


def test_no_external_resources(rendered):
    _, _, text, _ = rendered
    assert not re.search(r"(src|href)\s*=\s*[\"']?\s*(https?:)?//", text, re.IGNORECASE)
    assert "http://" not in text and "https://" not in text


def test_header_and_caveats(rendered):
    _, _, text, _ = rendered
    assert "2025-01-02T03:04:05+00:00" in text
    assert "1×8×8" in text and "1×40" in text  # input shapes
    assert re.search(rf'<td class="num">{N_FLIPPED}</td>', text)  # mislabeled from the manifest
    assert "abababababab" in text and "ab" * 32 not in text  # fingerprint shortened
    assert "2.13.0" in text and "1.2" in text  # versions and stage timings
    assert "Basu" in text and "Meeus" in text
    assert "median stderr" in text


def test_most_memorized_picks_highest_descending():
    scores = pd.DataFrame(
        {
            "dataset": ["d"] * 6 + ["other", "d"],
            "arch": ["a"] * 6 + ["a", "b"],
            "seed": [0] * 8,
            "family": ["memorization"] * 8,
            "method": ["fz"] * 8,
            "example_id": [10, 11, 12, 13, 14, 15, 16, 17],
            "score": [0.1, 0.9, 0.5, 0.7, np.nan, 0.9, 5.0, 5.0],
            "stderr": [0.01] * 8,
        }
    )
    top = most_memorized(scores, "d", "a", "fz", k=3)
    assert top["example_id"].tolist() == [11, 15, 13]  # tie broken by id; others filtered
    assert top["score"].tolist() == [0.9, 0.9, 0.7]
    assert len(most_memorized(scores, "d", "a", "fz")) == 5  # NaN never selected


def test_most_memorized_averages_seeds():
    scores = pd.DataFrame(
        {
            "dataset": "d",
            "arch": "a",
            "seed": [0, 1, 0, 1],
            "family": "memorization",
            "method": "fz",
            "example_id": [1, 1, 2, 2],
            "score": [1.0, 0.0, 0.6, 0.6],
            "stderr": np.nan,
        }
    )
    top = most_memorized(scores, "d", "a", "fz")
    assert top["example_id"].tolist() == [2, 1]
    assert top["score"].tolist() == pytest.approx([0.6, 0.5])


def test_missing_scores_raises_user_error(tmp_path, no_drawing):
    run = make_run(tmp_path / "run")
    (run / "scores.parquet").unlink()
    with pytest.raises(UserError, match=r"scores\.parquet"):
        render_report(run)
    assert not (run / "report.html").exists()


@pytest.fixture
def no_drawing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Skip matplotlib where a test is about the data, not the drawing (keeps the suite fast)."""
    for name in ("scatter_grid", "histogram_grid", "gallery"):
        monkeypatch.setattr(figures, name, lambda *args, **kwargs: b"\x89PNG\r\n\x1a\n")


def test_missing_data_file_raises_user_error(tmp_path, no_drawing):
    run = make_run(tmp_path / "run")
    (run / "data" / f"{safe_name(SEQUENCE)}.safetensors").unlink()
    with pytest.raises(UserError, match=rf"{SEQUENCE}\.safetensors"):
        render_report(run)


def test_empty_correlation_and_detection_tables_render(tmp_path, no_drawing):
    run = make_run(tmp_path / "run", empty_tables=True)
    text = render_report(run).read_text(encoding="utf-8")
    assert "No correlations were computed" in text
    assert "No detection results were computed" in text
    assert "&lt;script&gt;" in text


def test_figure_names_are_sanitized_and_unique(tmp_path):
    sink = html.FigureSink(tmp_path)
    first = sink.add("../a<b>/c", b"\x89PNG", "x")
    second = sink.add("../a>b>/c", b"\x89PNG", "y")
    assert first["file"] == "figures/_a_b__c.png"
    assert second["file"] == "figures/_a_b__c_2.png"
    assert sorted(p.name for p in (tmp_path / "figures").iterdir()) == [
        "_a_b__c.png",
        "_a_b__c_2.png",
    ]


def _influence_rows() -> pd.DataFrame:
    rows = [
        # dataset, arch, seed, method, train_id, target_id, score
        (IMAGE, "mlp", 0, "grad_dot", 3, 501, 2.0),
        (IMAGE, "mlp", 1, "grad_dot", 3, 501, 4.0),  # two seeds: mean 3.0, ranked first
        (IMAGE, "mlp", 0, "grad_dot", 4, 501, 2.5),
        (IMAGE, "mlp", 0, "grad_dot", 5, 502, 2.5),  # tie with (4, 501): broken by id
        (IMAGE, "mlp", 0, "grad_dot", 6, 502, 1.0),
        (IMAGE, "mlp", 0, "grad_dot", 7, 502, 0.5),
        (IMAGE, "mlp", 0, "grad_dot", 8, 502, -1.0),  # sixth: not listed
        (IMAGE, "mlp", 0, "grad_dot", 9, 502, np.nan),  # never listed
        (SEQUENCE, "cnn", 0, "tracin", 1000, 1500, 0.125),
    ]
    return pd.DataFrame(rows, columns=INFLUENCE.names)


def test_influence_section_lists_counts_and_top_pairs(tmp_path, no_drawing):
    run = make_run(tmp_path / "run", influence=_influence_rows())
    rows = html.influence_rows(html.load_run(run))
    assert [(r["dataset"], r["arch"], r["method"]) for r in rows] == [
        (IMAGE, "mlp", "grad_dot"),
        (SEQUENCE, "cnn", "tracin"),
    ]
    assert (rows[0]["n_targets"], rows[0]["n_train"]) == (2, 7)
    assert [(p["train_id"], p["target_id"]) for p in rows[0]["top"]] == [
        (3, 501),
        (4, 501),
        (5, 502),
        (6, 502),
        (7, 502),
    ]
    assert rows[0]["top"][0]["score"] == "3"
    text = render_report(run).read_text(encoding="utf-8")
    assert "Influence on targets" in text
    assert "3 → 501 (3)" in text and "1000 → 1500 (0.125)" in text
    assert "8 → 502" not in text and "9 → 502" not in text
    assert "<b>" not in text and "dig&lt;b&gt;its" in text


def test_empty_influence_table_draws_no_section(tmp_path, no_drawing):
    run = make_run(tmp_path / "run", influence=pd.DataFrame(columns=INFLUENCE.names))
    text = render_report(run).read_text(encoding="utf-8")
    assert "Influence on targets" not in text


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("datasets", {"x": {"kind": 3}}),  # wrong type and missing fields
        ("stages", []),
        ("started", {"at": "now"}),
    ],
)
def test_invalid_manifest_raises_one_line_user_error(tmp_path, no_drawing, field, value):
    run = make_run(tmp_path / "run")
    manifest = make_manifest().model_dump(mode="json")
    manifest[field] = value
    write_json(run / "manifest.json", manifest)
    with pytest.raises(UserError) as caught:
        render_report(run)
    message = str(caught.value)
    assert "manifest.json" in message and field in message
    assert "\n" not in message
    assert not (run / "report.html").exists()


def test_scores_missing_a_column_raises_user_error(tmp_path, no_drawing):
    run = make_run(tmp_path / "run")
    scores = pd.read_parquet(run / "scores.parquet").drop(columns=["stderr"])
    scores.to_parquet(run / "scores.parquet", index=False)
    with pytest.raises(UserError, match=r"scores\.parquet.*stderr"):
        render_report(run)
    assert not (run / "report.html").exists()


def test_missing_manifest_raises_user_error(tmp_path, no_drawing):
    run = make_run(tmp_path / "run")
    (run / "manifest.json").unlink()
    with pytest.raises(UserError, match=r"manifest\.json"):
        render_report(run)


def test_a_corrupt_data_file_is_one_line(tmp_path):
    run = make_run(tmp_path / "run")
    data = run / "data" / f"{safe_name(IMAGE)}.safetensors"
    data.write_bytes(data.read_bytes()[:40])
    with pytest.raises(UserError, match="not a readable safetensors file"):
        render_report(run)
