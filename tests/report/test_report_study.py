"""The study's report: the answer first, then the evidence, galleries, caveats and run
details, rendered from a small synthetic study run and checked in headless Chromium."""

from __future__ import annotations

import html as htmllib
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mnemoscope.report import html, render_report, tables
from mnemoscope.report.answer import CHEAP
from mnemoscope.report.run import load_run
from tests.report import browser
from tests.report.study_run import (
    ARCHS,
    IMAGE,
    SEQUENCE,
    UNFIT,
    UNFIT_REASON,
    make_study_run,
    make_tabular,
)

SECTIONS = ("answer", "evidence", "galleries", "caveats", "details")
EVIDENCE = (
    "heatmaps",
    "cross-arch",
    "leakage",
    "roc-mislabel",
    "roc-attacks",
    "removal",
    "summarization",
    "applications",
    "lds",
    "detection-auc",
    "scatter",
)
MAX_BYTES = 5 * 1024 * 1024


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    run = make_study_run(tmp_path_factory.mktemp("study") / "run")
    make_tabular(run)
    (run / "figures").mkdir()
    (run / "figures" / "scatter_of_an_earlier_report.png").write_bytes(b"\x89PNG")
    text = render_report(run).read_text(encoding="utf-8")
    return run, text


def _answer_sentences(text: str) -> list[str]:
    section = text[text.index('<section id="answer">') : text.index("</section>")]
    return [
        htmllib.unescape(s) for s in re.findall(r'<span class="fact">(.*?)</span>', section, re.S)
    ]


def check_in_browser(report: Path, workdir: Path, evidence: tuple[str, ...] = ()) -> dict:
    """Every section (and each ``evidence`` subsection's figure) present, every image
    loaded, no error on the console, the answer and headline figure in the first 1,000 px
    of the screenshot; returns the probe."""
    shot = browser.screenshot(report, workdir / "first-screen.png")
    assert browser.png_size(shot) == (browser.WIDTH, browser.HEIGHT)
    found = browser.probe(report, workdir)
    assert found["errors"] == [] and found["console"] == []
    boxes = found["sections"]
    tops = [boxes[name]["top"] for name in SECTIONS]
    assert tops == sorted(tops), f"sections out of order: {dict(zip(SECTIONS, tops))}"
    assert boxes["answer-text"]["bottom"] <= browser.HEIGHT
    headline = [f for f in found["figures"] if f["key"] == "headline-figure"]
    assert len(headline) == 1 and headline[0]["bottom"] <= browser.HEIGHT
    assert all(f["loaded"] and f["height"] > 50 for f in found["figures"])
    keys = {f["key"] for f in found["figures"]}
    assert set(evidence) <= keys, f"missing figures {set(evidence) - keys}"
    subsections = [boxes[name]["top"] for name in EVIDENCE if name in evidence]
    assert subsections == sorted(subsections)
    return found


def test_report_in_chromium(study, tmp_path):
    run, _ = study
    found = check_in_browser(run / "report.html", tmp_path, EVIDENCE)
    # the galleries sit after the evidence, the first screen is not provenance
    assert found["sections"]["details"]["top"] > found["sections"]["caveats"]["top"]
    assert found["sections"]["evidence"]["top"] < 2 * browser.HEIGHT


def test_answer_numbers_equal_the_tables(study):
    """Golden numbers: every number of the answer is re-read here from the tables."""
    run, text = study
    sentences = _answer_sentences(text)
    assert sentences, "no answer on the page"
    rho = pd.read_parquet(run / "correlations.parquet")
    leakage = pd.read_parquet(run / "leakage.parquet")
    removal = pd.read_parquet(run / "removal.parquet")
    fits = pd.read_parquet(run / "fits.parquet")
    seen = {"correlations": set(), "leakage": set(), "removal": set(), "fits": set()}
    headline = {}
    for sentence in sentences:
        if m := re.match(
            r"Across the (\d+) \(dataset, arch\) cells whose models fit, the influence score "
            r"closest to (\w+) reaches Spearman ρ from (-?[\d.]+) to (-?[\d.]+): (.*)\.$",
            sentence,
        ):
            headline["synthesis"] = m.groups()
        elif m := re.match(
            r"(\S+)/(\w+): (\w+) tracks (\w+) most closely, Spearman ρ = "
            r"(-?[\d.]+) \[(-?[\d.]+), (-?[\d.]+)\] \(n = (\d+)\)\.",
            sentence,
        ):
            dataset, arch, inf, mem = m.group(1, 2, 3, 4)
            cell = rho[(rho["dataset"] == dataset) & (rho["arch"] == arch)]
            cell = cell[(cell["method_a"] == mem) & (cell["statistic"] == "spearman")]
            best = cell.loc[cell["value"].idxmax()]
            assert bool(best["fit"]) and best["method_b"] == inf
            expected = [f"{best[c]:.2f}" for c in ("value", "ci_low", "ci_high")]
            assert list(m.group(5, 6, 7)) == expected and int(m.group(8)) == best["n"]
            seen["correlations"].add((dataset, arch))
            headline[(dataset, arch)] = (inf, best["value"])
        elif m := re.match(
            r"(\S+)/(\w+): of the (\d+) examples most exposed to (\w+) \(top 5%\), (\w+) finds "
            r"a share of ([\d.]+) \[([\d.]+), ([\d.]+)\] among its own top 5% \(ROC AUC "
            r"([\d.]+) \[([\d.]+), ([\d.]+)\]\), in ([\d.]+) s against ([\d.]+) s for (\w+)\.",
            sentence,
        ):
            dataset, arch, method = m.group(1), m.group(2), m.group(5)
            cell = leakage[(leakage["dataset"] == dataset) & (leakage["arch"] == arch)]
            cell = cell[np.isclose(cell["k"], 0.05)]
            # the best of the cheap scores (under CHEAP × the reference's seconds)
            cheap = cell[cell["seconds"] < CHEAP * cell["reference_seconds"]]
            row = cell.set_index("method").loc[method]
            assert row["precision"] == cheap["precision"].max() and bool(row["fit"])
            expected = [str(int(row["n_positive"])), row["reference"]]
            expected += [f"{row[c]:.2f}" for c in ("precision", "precision_low", "precision_high")]
            expected += [f"{row[c]:.2f}" for c in ("auc", "auc_low", "auc_high")]
            expected += [f"{row['seconds']:.1f}", f"{row['reference_seconds']:.1f}"]
            expected += [row["reference"]]
            assert [m.group(i) for i in (3, 4, 6, 7, 8, 9, 10, 11, 12, 13, 14)] == expected
            seen["leakage"].add((dataset, arch))
        elif m := re.match(
            r"(\S+)/(\w+) \((\w+)\): .*? top 10% by (\w+) .*\(accuracy gap "
            r"(-?[\d.]+) \[(-?[\d.]+), (-?[\d.]+)\] points\)\.",
            sentence,
        ):
            dataset, arch, condition, method = m.group(1, 2, 3, 4)
            row = removal[
                (removal["dataset"] == dataset)
                & (removal["arch"] == arch)
                & (removal["condition"] == condition)
                & (removal["method"] == method)
                & (removal["direction"] == "top")
                & np.isclose(removal["k"], 0.1)
            ].iloc[0]
            expected = [
                f"{100 * row[c]:.1f}" for c in ("delta_vs_random", "delta_low", "delta_high")
            ]
            assert list(m.group(5, 6, 7)) == expected
            assert ("costs more" in sentence) == (row["delta_high"] < 0)
            seen["removal"].add((dataset, arch, condition))
        elif m := re.match(
            r"Left out of the comparison: (\S+)/(\w+), whose ensemble (.*)\.$", sentence
        ):
            row = fits.set_index(["dataset", "arch"]).loc[(m.group(1), m.group(2))]
            assert not row["fit"] and m.group(3) == row["fit_reason"] == UNFIT_REASON
            seen["fits"].add((m.group(1), m.group(2)))
        else:
            pytest.fail(f"an answer sentence this test cannot check: {sentence!r}")
    fitting = {(d, a) for d in (IMAGE, SEQUENCE) for a in ARCHS} - {UNFIT}
    assert seen["correlations"] == fitting and seen["leakage"] == fitting
    # the synthesis sentence counts the cells' headline pairs and spans their ρ
    cells, _, low, high, winners = headline.pop("synthesis")
    values = [value for _, value in headline.values()]
    assert int(cells) == len(fitting) and (low, high) == (
        f"{min(values):.2f}",
        f"{max(values):.2f}",
    )
    wins = pd.Series([method for method, _ in headline.values()]).value_counts()
    assert winners == ", ".join(
        f"{m} in {wins[m]}" for m in sorted(wins.index, key=lambda m: (-wins[m], m))
    )
    assert seen["fits"] == {UNFIT}
    # both conditions of every fitting cell (the unfit one is left out of removal too)
    assert seen["removal"] == {(d, a, c) for d, a in fitting for c in ("as_configured", "clean")}


def test_headline_forest_plot_beside_the_answer(study):
    run, text = study
    answer = text[text.index('<section id="answer">') : text.index("</section>")]
    assert 'id="headline-figure"' in answer and "figures/forest.png" in answer
    rows = html.evidence.forest_rows(load_run(run))
    groups = {r.group for r in rows}
    assert groups == {f"{d} / {a}" for d in (IMAGE, SEQUENCE) for a in ARCHS} - {
        f"{SEQUENCE} / cnn"
    } | {f"{SEQUENCE} / cnn (not fit)"}
    assert all(r.muted == r.group.endswith("(not fit)") for r in rows)
    assert rows[0].group == f"{IMAGE} / cnn" and rows[0].label == "grad_dot"  # fit first
    assert rows[-1].muted


def test_sections_in_order_and_figures_saved(study):
    run, text = study
    order = [text.index(f'<section id="{name}">') for name in SECTIONS]
    assert order == sorted(order)
    heads = [text.index(f'<h3 id="{key}">') for key in EVIDENCE]
    assert heads == sorted(heads)
    uris = re.findall(r'<img src="data:image/png;base64,', text)
    files = re.findall(r"<code>(figures/[^<]+\.png)</code>", text)
    assert len(files) == len(uris) and all((run / f).is_file() for f in files)
    # exactly the report's figures beside it: an earlier report's are gone
    assert sorted(p.name for p in (run / "figures").iterdir()) == sorted(
        Path(f).name for f in files
    )
    assert (run / "report.html").stat().st_size < MAX_BYTES
    assert "https://" not in text and "http://" not in text
    # scatter plots only for the headline pairs: tracin and grad_dot on IMAGE, tracin on SEQUENCE
    scatters = sorted(f for f in files if "/scatter_" in f)
    assert scatters == sorted(
        [
            "figures/scatter_dig_b_its_feldman_zhang_vs_grad_dot.png",
            "figures/scatter_dig_b_its_feldman_zhang_vs_tracin.png",
            "figures/scatter_mnist1d_feldman_zhang_vs_tracin.png",
        ]
    )


def test_galleries_per_arch_and_tabular_as_a_table(study):
    run, text = study
    galleries = text[text.index('<section id="galleries">') : text.index('<section id="caveats">')]
    for arch in ARCHS:
        for kind in html.GALLERIES:
            assert f'data-arch="{arch}" data-kind="{kind}"' in galleries
    # the tabular dataset: values as a table, its first row the top LiRA score (ties by stderr)
    assert '<table class="features">' in galleries
    scores = pd.read_parquet(run / "scores.parquet")
    lira = scores[(scores["dataset"] == SEQUENCE) & (scores["arch"] == "mlp")]
    lira = lira[lira["method"] == "lira"].sort_values(
        ["score", "stderr", "example_id"], ascending=[False, True, True]
    )
    top = html.most_memorized(scores, SEQUENCE, "mlp", "lira")
    assert top["example_id"].tolist() == lira["example_id"].head(16).tolist()
    assert (lira["score"].head(16).diff().fillna(-1) == 0).any(), "no tie was planted"


def test_caveats_have_full_references_and_details_come_last(study):
    _, text = study
    caveats = text[text.index('<section id="caveats">') : text.index('<section id="details">')]
    caveats = " ".join(caveats.split())
    for needle in (
        "Influence Functions in Deep Learning Are Fragile",
        "Counterfactual Influence as a Distributional Quantity",
        "The Privacy Onion Effect",
        "Smooth Unique Information",
        "linearized",
    ):
        assert needle in caveats
    details = text[text.index('<section id="details">') :]
    assert "Versions" in details and "Stages" in details and "Datasets" in details


def test_ahead_of_only_where_the_intervals_separate(study):
    run, _ = study
    frame = pd.DataFrame(
        {
            "dataset": ["d"] * 3 + ["e"] * 2,
            "arch": ["a"] * 5,
            "method": ["x", "y", "z", "x", "y"],
            "value": [0.9, 0.88, 0.6, 0.9, 0.7],
            "ci_low": [0.85, 0.8, 0.5, 0.85, 0.6],
            "ci_high": [0.95, 0.9, 0.7, 0.95, 0.8],
        }
    )
    lines = tables.best_separators(load_run(run), frame)
    assert lines[0].startswith("d / a: x") and "tied within the CIs with y." in lines[0]
    assert "ahead of" not in lines[0]
    assert "ahead of y (0.70 [0.60, 0.80])" in lines[1]


def test_without_chromium_the_browser_test_fails_saying_how_to_install(monkeypatch):
    monkeypatch.setattr(browser.shutil, "which", lambda name: None)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match=r"in CI: .*apt-get install -y chromium"):
        browser.chromium()
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.fail.Exception, match=r"this machine: .*apt-get install -y chromium"):
        browser.chromium()
