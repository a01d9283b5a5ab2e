"""The demo: runs with no config on built-in data and finds the planted flipped labels.

Quick-demo settings (seeds 0–2) gave Feldman–Zhang AUC 0.92–0.95 (mlp) and 0.97–0.98
(cnn) on digits, so the 0.85 bound is not on a knife's edge."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from typer.testing import CliRunner

from mnemoscope.cli import app
from tests.report.test_report_study import check_in_browser

# the evidence any run has (a study adds cross-arch, leakage, removal, ...)
DEMO_FIGURES = ("heatmaps", "roc-mislabel", "roc-attacks", "detection-auc", "scatter")


def _check_demo(out, quick: bool, browser_dir=None) -> None:
    result = CliRunner().invoke(app, ["demo", "--out", str(out)] + (["--quick"] if quick else []))
    assert result.exit_code == 0, result.output
    if browser_dir is not None:  # the demo's report, opened in headless Chromium
        check_in_browser(out / "report.html", browser_dir, DEMO_FIGURES)
    manifest = json.loads((out / "manifest.json").read_text())
    assert set(manifest["datasets"]) == {"digits", "mnist1d"}
    assert manifest["config"]["archs"] == ["logreg", "mlp", "cnn"]
    assert all(d["label_noise"] == 0.1 for d in manifest["datasets"].values())
    html = (out / "report.html").read_text()
    assert "digits" in html and "mnist1d" in html and "data:image/png;base64," in html
    detection = pd.read_parquet(out / "detection.parquet").set_index(["dataset", "arch", "method"])
    assert len(detection) == 2 * 3 * 4
    attacks = pd.read_parquet(out / "attacks.parquet")
    assert len(attacks) == 2 * 3 and set(attacks["variant"]) == {"online"}
    assert "Membership inference" in html
    # one subset ensemble per dataset and arch, shared by feldman_zhang and lira
    assert sum(1 for name in manifest["stages"] if "/ensemble-" in name) == 2 * 3
    # TracIn self-influence flags flipped digits labels for every architecture
    for arch in ("logreg", "mlp", "cnn"):
        assert detection.loc[("digits", arch, "tracin"), "auc"] > 0.9
    # enough models and epochs, even in the quick demo, for Feldman–Zhang to see the
    # flipped labels memorized by the networks
    for arch in ("mlp", "cnn"):
        assert detection.loc[("digits", arch, "feldman_zhang"), "auc"] >= 0.85
        assert detection.loc[("digits", arch, "lira"), "auc"] >= 0.85


def test_quick_demo(tmp_path):
    (tmp_path / "browser").mkdir()
    _check_demo(tmp_path / "demo", quick=True, browser_dir=tmp_path / "browser")


@pytest.mark.slow
def test_full_demo(tmp_path):
    _check_demo(tmp_path / "demo", quick=False)
