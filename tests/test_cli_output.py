"""The command line piped: nothing cut to 80 columns, ``query --format``, plain-text method
descriptions, and light commands that start without importing torch."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from mnemoscope.catalog import build_catalog, load_catalog
from mnemoscope.cli import QUERY_TABLES, app
from mnemoscope.plaintext import rst_to_text
from mnemoscope.store.tables import TABLES
from tests.report.test_report import make_run

SQL = "SELECT dataset, arch, method, auc FROM detection ORDER BY auc DESC"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_run(tmp_path_factory.mktemp("cli") / "run")


def test_catalog_equals_the_registries():
    """catalog.json is what the registries say (regenerate: python -m mnemoscope.catalog)."""
    assert load_catalog() == build_catalog(), "stale catalog.json: python -m mnemoscope.catalog"


def test_light_commands_do_not_import_torch():
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from mnemoscope.cli import app\n"
        "for args in (['--help'], ['datasets'], ['archs'], ['methods'], ['methods', 'lira']):\n"
        "    result = CliRunner().invoke(app, args)\n"
        "    assert result.exit_code == 0, (args, result.output)\n"
        "print(sorted({'torch', 'pandas', 'pyarrow'} & set(sys.modules)))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_piped_methods_list_is_not_cut():
    result = CliRunner().invoke(app, ["methods"])  # CliRunner's output is not a terminal
    assert result.exit_code == 0
    lines = result.output.splitlines()
    for method in load_catalog()["methods"]:
        row = [line for line in lines if f"│ {method['name']} " in line]
        assert len(row) == 1, method["name"]  # one line per method: nothing wrapped
        for cell in ("summary", "cost", "reference"):
            assert method[cell] in row[0]
    assert "…" not in result.output


def test_piped_datasets_and_archs_are_not_cut():
    catalog = load_catalog()
    datasets = CliRunner().invoke(app, ["datasets"]).output
    assert all(d["description"] in datasets for d in catalog["datasets"])
    archs = CliRunner().invoke(app, ["archs"]).output
    assert all(a["description"] in archs for a in catalog["archs"])


def test_methods_name_prints_plain_text():
    result = CliRunner().invoke(app, ["methods", "lira"])
    assert result.exit_code == 0
    text = result.output
    assert text.startswith("lira (memorization)")
    for markup in ("``", ":class:", ":func:", "**"):
        assert markup not in text
    assert "Score (scores.parquet)" in text  # **Score** (``scores.parquet``) without markup
    assert all(
        len(line) <= 88
        for line in text.splitlines()
        if not line.startswith(("cost:", "reference:"))
    )


def test_rst_to_text_removes_markup_and_rewraps():
    doc = """A :class:`~mnemoscope.estimator.Estimator` on ``x``, **bold** and *it*.
    Second line of the paragraph, see :func:`mnemoscope.report.render_report`.

    - first item
      continued
    - second ``item``

    .. math::

        s_i = \\frac{a}{b}

    Literal follows::

        keep   this  spacing
    """
    text = rst_to_text(doc, width=40)
    assert "Estimator on x, bold and it. Second" in " ".join(text.split())
    assert "mnemoscope.report.render_report" in text
    assert "- first item continued" in text and "- second item" in text
    assert "    s_i = \\frac{a}{b}" in text
    assert "Literal follows:" in text and "    keep   this  spacing" in text
    assert all(len(line) <= 40 for line in text.splitlines())
    for markup in ("``", ":class:", ":func:", "**", ".. math::"):
        assert markup not in text


def test_query_help_lists_every_table():
    assert QUERY_TABLES == tuple(TABLES)
    result = CliRunner().invoke(app, ["query", "--help"], terminal_width=100)
    assert result.exit_code == 0
    flat = " ".join(result.output.replace("│", " ").split())
    for table in TABLES:
        assert table in flat
    assert "--format" in flat


def test_query_csv_and_json_equal_the_table(run_dir):
    expected = pd.read_parquet(run_dir / "detection.parquet")
    expected = expected.sort_values("auc", ascending=False)[["dataset", "arch", "method", "auc"]]
    out = CliRunner().invoke(app, ["query", str(run_dir), SQL, "--format", "csv"])
    assert out.exit_code == 0, out.output
    rows = list(csv.DictReader(io.StringIO(out.output)))
    assert [r["method"] for r in rows] == expected["method"].tolist()
    assert [float(r["auc"]) for r in rows] == expected["auc"].tolist()  # full precision
    out = CliRunner().invoke(app, ["query", str(run_dir), SQL, "--format", "json"])
    assert out.exit_code == 0, out.output
    records = json.loads(out.output)
    assert [r["dataset"] for r in records] == expected["dataset"].tolist()
    assert [r["auc"] for r in records] == pytest.approx(expected["auc"].tolist(), rel=1e-14)


def test_query_truncation_note_keeps_csv_parseable(run_dir):
    result = CliRunner().invoke(
        app, ["query", str(run_dir), SQL, "--format", "csv", "--limit", "1"]
    )
    assert result.exit_code == 0
    assert len(list(csv.DictReader(io.StringIO(result.stdout)))) == 1
    assert "--limit" in result.stderr and "--limit" not in result.stdout


def test_query_table_is_not_cut_when_piped(run_dir):
    long_name = "x" * 150
    result = CliRunner().invoke(app, ["query", str(run_dir), f"SELECT '{long_name}' AS name"])
    assert result.exit_code == 0 and long_name in result.output


def test_query_bad_format_is_one_line(run_dir):
    result = CliRunner().invoke(app, ["query", str(run_dir), SQL, "--format", "xml"])
    assert result.exit_code == 2
    assert "--format" in result.output and "Traceback" not in result.output
